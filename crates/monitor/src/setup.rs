//! Turning the monitor process into a pod sandbox: cgroup, namespaces, hostname, loopback,
//! sysctls, OOM score, the pod init, and the pinned namespace files.

use std::collections::BTreeMap;
use std::fmt;
use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use crisp_core::monitor_proto::{self, MonitorConfig, NamespaceMode, PidNamespaceMode};
use crisp_core::ns::{self, NsType};
use crisp_core::sys;

use crate::init::{self, PodInit};
use crate::log;

/// A setup step that failed, named so the daemon can report where.
#[derive(Debug)]
pub struct StageError {
    pub stage: &'static str,
    pub message: String,
}

impl fmt::Display for StageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.stage, self.message)
    }
}

trait Stage<T> {
    fn stage(self, stage: &'static str) -> Result<T, StageError>;
}

impl<T, E: fmt::Display> Stage<T> for Result<T, E> {
    fn stage(self, stage: &'static str) -> Result<T, StageError> {
        self.map_err(|e| StageError { stage, message: e.to_string() })
    }
}

/// The set-up sandbox.
pub struct Sandbox {
    pub config: MonitorConfig,
    pub bundle: PathBuf,
    pub init: Option<PodInit>,
    /// Pinned namespace files by kind.
    pub pinned: BTreeMap<String, PathBuf>,
}

pub fn load_config(bundle: &Path) -> Result<MonitorConfig, StageError> {
    let path = bundle.join(monitor_proto::CONFIG_FILE);
    let raw = fs::read(&path).map_err(|e| format!("read {}: {}", path.display(), e)).stage("config")?;
    let config: MonitorConfig =
        serde_json::from_slice(&raw).map_err(|e| format!("parse {}: {}", path.display(), e)).stage("config")?;
    config.validate().stage("config")?;
    Ok(config)
}

/// Runs every setup step in order. On failure, whatever was already created (pod init, pins)
/// is torn down again before returning.
pub fn run(bundle: &Path, config: MonitorConfig) -> Result<Sandbox, StageError> {
    let mut sandbox = Sandbox { config, bundle: bundle.to_path_buf(), init: None, pinned: BTreeMap::new() };
    match steps(&mut sandbox) {
        Ok(()) => Ok(sandbox),
        Err(e) => {
            undo(&mut sandbox);
            Err(e)
        }
    }
}

fn steps(sb: &mut Sandbox) -> Result<(), StageError> {
    let cfg = sb.config.clone();

    sys::setsid_if_needed().stage("session")?;
    // Orphans of processes the monitor starts outside a pod PID namespace come back to it.
    sys::set_child_subreaper().stage("session")?;
    std::env::set_current_dir("/").stage("session")?;

    if let Some(cgroup) = &cfg.cgroup {
        cgroup.join(0).stage("cgroup")?;
    }

    if let Some(want) = cfg.oom_score_adj {
        let effective = apply_oom_score_adj(want).stage("oom_score_adj")?;
        if effective != want {
            log!(Warn, "oom_score_adj {} not permitted (no CAP_SYS_RESOURCE); keeping {}", want, effective);
        }
    }

    let ns = &cfg.namespaces;
    let mut flags = 0;
    if ns.network == NamespaceMode::Pod {
        flags |= libc::CLONE_NEWNET;
    }
    if ns.ipc == NamespaceMode::Pod {
        flags |= libc::CLONE_NEWIPC;
    }
    if ns.uts == NamespaceMode::Pod {
        flags |= libc::CLONE_NEWUTS;
    }
    let mut holder: Option<(libc::pid_t, std::os::fd::OwnedFd)> = None;
    if let Some(userns) = &cfg.userns {
        holder = Some(create_in_userns(userns, flags).stage("user_namespace")?);
    } else if flags != 0 {
        sys::unshare(flags).stage("namespaces")?;
    }
    let result = steps_in_namespaces(sb, &cfg, holder.as_ref().map(|(pid, _)| *pid));
    if let Some((pid, hold)) = holder {
        // Its namespaces are pinned (or the set-up is being undone): it may go.
        drop(hold);
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::wait_pid(pid);
    }
    result
}

/// Creates the pod's user namespace with its mappings and, inside it, the namespaces in `flags`
/// (so they belong to it), and moves the monitor into the latter. The monitor itself stays in
/// the node's user namespace: it needs its privileges there. Returns the helper process that
/// holds the user namespace until it is pinned, and the pipe end that keeps it waiting.
fn create_in_userns(userns: &monitor_proto::UsernsConfig, flags: libc::c_int) -> io::Result<(libc::pid_t, std::os::fd::OwnedFd)> {
    let (to_parent_r, to_parent_w) = sys::pipe_cloexec()?;
    let (to_child_r, to_child_w) = sys::pipe_cloexec()?;
    // SAFETY: the monitor is single-threaded here; the child makes raw system calls only.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        let (w, r) = (std::os::fd::AsRawFd::as_raw_fd(&to_parent_w), std::os::fd::AsRawFd::as_raw_fd(&to_child_r));
        let step = |ok: bool, code: libc::c_int| {
            if !ok {
                // SAFETY: ends the forked child without running the parent's destructors.
                unsafe { libc::_exit(code) };
            }
        };
        let mut b = [0u8; 1];
        // SAFETY (all below): plain system calls on descriptors this process holds.
        step(unsafe { libc::unshare(libc::CLONE_NEWUSER) } == 0, 10);
        step(unsafe { libc::write(w, b"u".as_ptr().cast(), 1) } == 1, 11);
        step(unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) } == 1, 12);
        step(flags == 0 || unsafe { libc::unshare(flags) } == 0, 13);
        step(unsafe { libc::write(w, b"n".as_ptr().cast(), 1) } == 1, 14);
        // Held until the parent closes its end (or kills it).
        let _ = unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        unsafe { libc::_exit(0) };
    }
    drop(to_parent_w);
    drop(to_child_r);
    let fail = |what: &str, e: io::Error| -> io::Error {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::wait_pid(pid);
        io::Error::new(e.kind(), format!("{what}: {e}"))
    };
    let wait_byte = |what: &str| -> io::Result<()> {
        let mut b = [0u8; 1];
        match unsafe { libc::read(std::os::fd::AsRawFd::as_raw_fd(&to_parent_r), b.as_mut_ptr().cast(), 1) } {
            1 => Ok(()),
            _ => Err(io::Error::other(format!("the namespace helper failed before {what}"))),
        }
    };
    wait_byte("its user namespace existed").map_err(|e| fail("create the user namespace", e))?;
    // A privileged writer may map any range and keeps setgroups allowed.
    fs::write(format!("/proc/{pid}/uid_map"), monitor_proto::UsernsConfig::map_text(&userns.uid_mappings)).map_err(|e| fail("write uid_map", e))?;
    fs::write(format!("/proc/{pid}/gid_map"), monitor_proto::UsernsConfig::map_text(&userns.gid_mappings)).map_err(|e| fail("write gid_map", e))?;
    sys::write_all_fd(std::os::fd::AsRawFd::as_raw_fd(&to_child_w), b"m").map_err(|e| fail("resume the namespace helper", e))?;
    wait_byte("its namespaces existed").map_err(|e| fail("create the pod namespaces", e))?;
    for (name, flag) in [("net", libc::CLONE_NEWNET), ("ipc", libc::CLONE_NEWIPC), ("uts", libc::CLONE_NEWUTS)] {
        if flags & flag == 0 {
            continue;
        }
        let file = fs::File::open(format!("/proc/{pid}/ns/{name}")).map_err(|e| fail("open the pod namespaces", e))?;
        if unsafe { libc::setns(std::os::fd::AsRawFd::as_raw_fd(&file), flag) } != 0 {
            return Err(fail(&format!("join the pod's {name} namespace"), io::Error::last_os_error()));
        }
    }
    // The open write end keeps the helper (and its user namespace) waiting until it is pinned.
    Ok((pid, to_child_w))
}

fn steps_in_namespaces(sb: &mut Sandbox, cfg: &MonitorConfig, userns_holder: Option<libc::pid_t>) -> Result<(), StageError> {
    let ns = &cfg.namespaces;

    if let Some(hostname) = cfg.hostname.as_deref().filter(|h| !h.is_empty()) {
        sys::sethostname(hostname).stage("hostname")?;
    }

    if ns.network == NamespaceMode::Pod {
        ns::bring_loopback_up().stage("loopback")?;
    }

    for (key, value) in &cfg.sysctls {
        // /proc/sys resolves net, ipc and uts entries against the writer's namespaces, so this
        // reaches the pod's namespaces even though /proc is the node's mount.
        let path = monitor_proto::sysctl_path(key).stage("sysctls")?;
        write_existing(Path::new(&path), value).map_err(|e| format!("{} = {:?}: {}", key, value, e)).stage("sysctls")?;
        log!(Debug, "sysctl {} = {:?}", key, value);
    }

    if ns.pid == PidNamespaceMode::Pod {
        // The monitor stays in the node's PID namespace for its children: what it starts (set-up
        // processes, hooks) enters the pod's only when it has become part of a container.
        sb.init = Some(init::spawn(&sb.bundle).stage("pid_namespace")?);
    }

    let ns_dir = sb.bundle.join(monitor_proto::NS_DIR);
    let mut pins: Vec<(NsType, String)> = Vec::new();
    let self_ns = |t: NsType| format!("/proc/{}/ns/{}", std::process::id(), t.proc_name());
    if ns.network == NamespaceMode::Pod {
        pins.push((NsType::Net, self_ns(NsType::Net)));
    }
    if ns.ipc == NamespaceMode::Pod {
        pins.push((NsType::Ipc, self_ns(NsType::Ipc)));
    }
    if ns.uts == NamespaceMode::Pod {
        pins.push((NsType::Uts, self_ns(NsType::Uts)));
    }
    if let Some(init) = &sb.init {
        pins.push((NsType::Pid, format!("/proc/{}/ns/pid", init.pid)));
    }
    if let Some(holder) = userns_holder {
        pins.push((NsType::User, format!("/proc/{holder}/ns/user")));
    }
    if !pins.is_empty() {
        create_dir(&ns_dir).stage("pin")?;
    }
    for (kind, source) in pins {
        let target = ns_dir.join(kind.proc_name());
        ns::pin(Path::new(&source), &target).stage("pin")?;
        sb.pinned.insert(kind.proc_name().to_owned(), target);
    }
    Ok(())
}

/// Best-effort teardown of a half-built sandbox.
pub fn undo(sb: &mut Sandbox) {
    if let Some(mut init) = sb.init.take() {
        init.release();
        let _ = sys::kill(init.pid, libc::SIGKILL);
        let _ = sys::wait_pid(init.pid);
    }
    for path in std::mem::take(&mut sb.pinned).values() {
        if let Err(e) = ns::unpin(path) {
            log!(Warn, "unpin {}: {}", path.display(), e);
        }
    }
    let _ = fs::remove_dir(sb.bundle.join(monitor_proto::NS_DIR));
}

fn create_dir(dir: &Path) -> io::Result<()> {
    match fs::create_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

fn write_existing(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    fs::OpenOptions::new().write(true).open(path)?.write_all(value.as_bytes())
}

/// Sets oom_score_adj, keeping the current value when lowering it is not permitted (lowering
/// needs CAP_SYS_RESOURCE). Returns the value in effect.
fn apply_oom_score_adj(want: i32) -> io::Result<i32> {
    let path = Path::new("/proc/self/oom_score_adj");
    let current: i32 = fs::read_to_string(path)?
        .trim()
        .parse()
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "unparsable oom_score_adj"))?;
    if current == want {
        return Ok(want);
    }
    match write_existing(path, &want.to_string()) {
        Ok(()) => Ok(want),
        Err(e) if want < current && matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM)) => Ok(current),
        Err(e) => Err(e),
    }
}
