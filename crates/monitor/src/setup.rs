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
    if flags != 0 {
        sys::unshare(flags).stage("namespaces")?;
    }

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
        sys::unshare(libc::CLONE_NEWPID).stage("pid_namespace")?;
        sb.init = Some(init::spawn().stage("pid_namespace")?);
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
