//! Turning a [`Spec`] into a launch plan: every string, descriptor, bit mask and BPF program the
//! forked child needs, prepared in the parent so that the child, between fork and execve, only
//! issues system calls (no allocation, no locks).

use std::ffi::CString;
use std::os::fd::{FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use libc::{c_char, c_int, c_ulong};

use super::caps::{self, CapSet};
use super::lsm::{HostLsm, LsmPlan};
use super::mounts::{self, MountOptions};
use super::seccomp;
use super::spec::{Device, Mount, Spec};
use crate::cgroup::CgroupPaths;

/// PATH used for the executable lookup when the process environment has none (as runc/Go).
pub const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The longest mount(2) data string (one page).
const MAX_MOUNT_DATA: usize = 4095;

fn cstring(s: impl AsRef<[u8]>) -> Result<CString, String> {
    CString::new(s.as_ref()).map_err(|_| format!("{:?} contains a NUL byte", String::from_utf8_lossy(s.as_ref())))
}

/// A NULL-terminated array of C strings (argv/envp).
pub struct CStringArray {
    _strings: Vec<CString>,
    ptrs: Vec<*const c_char>,
}

impl CStringArray {
    pub fn new(items: &[String]) -> Result<Self, String> {
        let strings = items.iter().map(cstring).collect::<Result<Vec<_>, _>>()?;
        let mut ptrs: Vec<*const c_char> = strings.iter().map(|s| s.as_ptr()).collect();
        ptrs.push(std::ptr::null());
        Ok(CStringArray { _strings: strings, ptrs })
    }

    pub fn as_ptr(&self) -> *const *const c_char {
        self.ptrs.as_ptr()
    }
}

/// A path inside the container's root filesystem, split so the child can resolve (and create)
/// it one component at a time without allocating.
#[derive(Debug)]
pub struct RootPath {
    /// The path as written in the spec, for messages.
    pub display: String,
    /// "dev", "dev/pts", ...: each prefix, relative to the root.
    pub prefixes: Vec<CString>,
    /// "dev", "pts", ...: the last component of each prefix.
    pub names: Vec<CString>,
}

impl RootPath {
    pub fn new(path: &str) -> Result<Self, String> {
        let mut prefixes = Vec::new();
        let mut names = Vec::new();
        let mut acc = PathBuf::new();
        for c in Path::new(path).components() {
            match c {
                Component::RootDir | Component::CurDir => {}
                Component::Normal(n) => {
                    acc.push(n);
                    prefixes.push(cstring(acc.as_os_str().as_bytes())?);
                    names.push(cstring(n.as_bytes())?);
                }
                Component::ParentDir => return Err(format!("path {:?} contains '..'", path)),
                Component::Prefix(_) => unreachable!("no path prefixes on unix"),
            }
        }
        if prefixes.is_empty() {
            return Err(format!("path {:?} names the root itself", path));
        }
        Ok(RootPath { display: path.to_owned(), prefixes, names })
    }
}

/// What to create when a mount target is missing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Create {
    Dir,
    File,
}

/// One step of assembling the root filesystem, executed in order before pivot_root.
#[derive(Debug)]
pub enum RootfsOp {
    Mount {
        target: RootPath,
        create: Create,
        source: Option<CString>,
        fstype: Option<CString>,
        flags: c_ulong,
        data: Option<CString>,
        /// Bind mounts get their other flags by a remount of the new mount.
        remount: Option<c_ulong>,
        propagation: Vec<c_ulong>,
        /// Then made read-only with every mount below it (mount_setattr, AT_RECURSIVE).
        recursive_readonly: bool,
        /// A bind mount mapped through the container's user namespace (the plan's idmap_userns).
        idmap: bool,
    },
    /// Remounts an existing mount with these flags (MS_REMOUNT is added).
    Remount { target: RootPath, flags: c_ulong },
    Device {
        target: RootPath,
        mode: libc::mode_t,
        dev: libc::dev_t,
        uid: libc::uid_t,
        gid: libc::gid_t,
        /// Where the node's own device may be found on the node, to bind-mount when mknod is not
        /// permitted: the kernel's /dev/{char,block}/MAJ:MIN, then the container's path (the one
        /// the standard nodes have on the node too). Whichever is used must be this device.
        host_paths: [CString; 2],
    },
    Symlink { target: RootPath, link: CString },
}

impl RootfsOp {
    pub fn describe(&self) -> String {
        match self {
            RootfsOp::Mount { target, fstype, source, .. } => format!(
                "mount {} ({}) on {}",
                source.as_ref().map_or("none".into(), |s| s.to_string_lossy().into_owned()),
                fstype.as_ref().map_or("bind".into(), |s| s.to_string_lossy().into_owned()),
                target.display
            ),
            RootfsOp::Remount { target, .. } => format!("remount {}", target.display),
            RootfsOp::Device { target, .. } => format!("create device {}", target.display),
            RootfsOp::Symlink { target, .. } => format!("create symlink {}", target.display),
        }
    }
}

pub struct RootfsPlan {
    /// Propagation applied to the whole new mount namespace before anything is mounted.
    pub root_propagation: c_ulong,
    /// With shared root propagation (bidirectional volumes), the mount holding `<bundle>/rootfs`
    /// is made private (non-recursively), as runc does, so the rootfs overlay and the mounts on it
    /// never propagate back to the host while shared volumes keep their peer groups.
    pub rootfs_parent_private: Option<CString>,
    /// Directory to chdir into so the overlay's options fit in a page (relative layer paths).
    pub overlay_chdir: Option<CString>,
    pub overlay_data: CString,
    /// `<bundle>/rootfs`.
    pub rootfs_dir: CString,
    pub ops: Vec<RootfsOp>,
    /// The working directory, created if missing; None for the root itself.
    pub cwd: Option<RootPath>,
    pub readonly_paths: Vec<CString>,
    pub masked_paths: Vec<CString>,
    pub readonly_root: bool,
    /// Per op: made after pivot_root by the container's process, in its PID namespace — proc
    /// mounts, which show the mounter's PID namespace, and everything at or below them.
    pub in_pid_ns: Vec<bool>,
    /// With a user namespace: the container's user namespace (the mapping of id-mapped mounts),
    /// and the layer directories to mount id-mapped at the paths the overlay then stacks.
    pub idmap_userns: Option<OwnedFd>,
    pub idmap_layers: Vec<(CString, CString)>,
}

pub struct CapsPlan {
    pub last_cap: u32,
    pub bounding: CapSet,
    pub effective: CapSet,
    pub permitted: CapSet,
    pub inheritable: CapSet,
    pub ambient: CapSet,
}

pub struct RlimitPlan {
    pub resource: c_int,
    pub name: String,
    pub limit: libc::rlimit,
}

/// What every process started in a container does after entering it, up to execve.
pub struct ProcessPlan {
    /// Signals this process ignores, which execve would pass on ignored: the child restores
    /// them to the default. (Caught signals are reset by execve itself.)
    pub ignored_signals: Vec<c_int>,
    /// Name of the session keyring the process creates (`_ses.<container id>` as runc names it);
    /// None for an anonymous one.
    pub keyring: Option<CString>,
    /// The pod's user namespace, joined once the root filesystem is assembled (mounts are made
    /// with the node's privileges), before the process takes its identity.
    pub userns: Option<OwnedFd>,
    /// `cgroup.procs` of each hierarchy the process joins (by writing "0").
    pub cgroup_procs: Vec<Arc<OwnedFd>>,
    /// Namespaces to enter with setns, with their kind for messages.
    pub setns: Vec<(Arc<OwnedFd>, c_int, &'static str)>,
    pub unshare_cgroup: bool,
    pub oom_score_adj: Option<CString>,
    pub rlimits: Vec<RlimitPlan>,
    pub no_new_privs: bool,
    pub caps: Option<CapsPlan>,
    pub uid: libc::uid_t,
    pub gid: libc::gid_t,
    pub groups: Vec<libc::gid_t>,
    pub umask: libc::mode_t,
    pub cwd: CString,
    pub argv: CStringArray,
    pub envp: CStringArray,
    /// args[0] as given and the paths tried for it, in order (PATH lookup).
    pub program: String,
    pub candidates: Vec<CString>,
    pub seccomp: Option<seccomp::Program>,
    /// The AppArmor profile and SELinux label taken at execve.
    pub lsm: LsmPlan,
    /// Things ignored on purpose, worth a log line.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for ProcessPlan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProcessPlan")
            .field("program", &self.program)
            .field("uid", &self.uid)
            .field("gid", &self.gid)
            .field("cwd", &self.cwd)
            .finish_non_exhaustive()
    }
}

pub struct ContainerPlan {
    /// CLONE_NEW* flags for the clone that creates the container's set-up process (all but
    /// CLONE_NEWPID: the container's process is forked into its PID namespace once set up).
    pub clone_flags: c_int,
    /// The container's process is init of a PID namespace of its own.
    pub new_pid_ns: bool,
    /// The (pod's) PID namespace the container's process is forked into, when it is not the
    /// one the caller's children land in.
    pub pid_ns: Option<Arc<OwnedFd>>,
    pub process: ProcessPlan,
    pub rootfs: RootfsPlan,
}

pub struct ExecPlan {
    pub process: ProcessPlan,
    /// The container's PID namespace when it is not the one the caller's children land in;
    /// the caller must enter it (for children) around the fork.
    pub pid_ns: Option<Arc<OwnedFd>>,
    /// The container's root directory (O_PATH), where a terminal for the process is allocated.
    pub root: Option<Arc<OwnedFd>>,
}

/// What entering a running container takes: its cgroups and the namespaces it does not share
/// with the caller, opened. The same for every exec while the container runs, so a caller may
/// keep it for that long (and must drop it when the container exits: it pins the namespaces).
pub struct ExecTarget {
    pub cgroup_procs: Vec<Arc<OwnedFd>>,
    pub setns: Vec<(Arc<OwnedFd>, c_int, &'static str)>,
    pub pid_ns: Option<Arc<OwnedFd>>,
    /// The container's root directory, as its process sees it.
    pub root: Option<Arc<OwnedFd>>,
}

/// Process fields an exec may override.
#[derive(Clone, Debug, Default)]
pub struct ProcessOverrides {
    pub args: Vec<String>,
    pub env: Option<Vec<String>>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub additional_gids: Option<Vec<u32>>,
}

fn open_cloexec(path: &Path, flags: c_int) -> Result<OwnedFd, String> {
    let c = cstring(path.as_os_str().as_bytes())?;
    let fd = unsafe { libc::open(c.as_ptr(), flags | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {}: {}", path.display(), errno_text(last_errno())));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// strerror in the lower-case style of Go and runc messages ("no such file or directory").
pub fn errno_text(errno: i32) -> String {
    let s = std::io::Error::from_raw_os_error(errno).to_string();
    let s = s.split(" (os error").next().unwrap_or(&s).to_owned();
    let mut chars = s.chars();
    match chars.next() {
        Some(c) => c.to_lowercase().chain(chars).collect(),
        None => s,
    }
}

fn ns_inode(path: &Path) -> Result<(u64, u64), String> {
    let md = std::fs::metadata(path).map_err(|e| format!("stat {}: {}", path.display(), e))?;
    Ok((md.dev(), md.ino()))
}

fn cgroup_procs(cgroup: Option<&CgroupPaths>) -> Result<Vec<Arc<OwnedFd>>, String> {
    let Some(cg) = cgroup else { return Ok(Vec::new()) };
    cg.unique_dirs().into_iter().map(|dir| open_cloexec(&dir.join("cgroup.procs"), libc::O_WRONLY).map(Arc::new)).collect()
}

fn rlimit_resource(name: &str) -> Option<c_int> {
    Some(match name {
        "RLIMIT_CPU" => 0,
        "RLIMIT_FSIZE" => 1,
        "RLIMIT_DATA" => 2,
        "RLIMIT_STACK" => 3,
        "RLIMIT_CORE" => 4,
        "RLIMIT_RSS" => 5,
        "RLIMIT_NPROC" => 6,
        "RLIMIT_NOFILE" => 7,
        "RLIMIT_MEMLOCK" => 8,
        "RLIMIT_AS" => 9,
        "RLIMIT_LOCKS" => 10,
        "RLIMIT_SIGPENDING" => 11,
        "RLIMIT_MSGQUEUE" => 12,
        "RLIMIT_NICE" => 13,
        "RLIMIT_RTPRIO" => 14,
        "RLIMIT_RTTIME" => 15,
        _ => return None,
    })
}

/// The candidates execve tries for `program`: itself when it contains a '/', otherwise each
/// PATH directory joined with it (an empty entry means the working directory).
pub fn exec_candidates(program: &str, env: &[String]) -> Vec<String> {
    if program.contains('/') {
        return vec![program.to_owned()];
    }
    let path = Spec::env_value(env, "PATH").unwrap_or(DEFAULT_PATH);
    path.split(':')
        .map(|dir| if dir.is_empty() { format!("./{}", program) } else { format!("{}/{}", dir.trim_end_matches('/'), program) })
        .collect()
}

fn process_plan(spec: &Spec, o: &ProcessOverrides, cgroup_procs: Vec<Arc<OwnedFd>>, ignored_signals: Vec<c_int>) -> Result<ProcessPlan, String> {
    let p = &spec.process;
    let mut warnings = Vec::new();
    let args = if o.args.is_empty() { &p.args } else { &o.args };
    if args.is_empty() || args[0].is_empty() {
        return Err("no program to run".into());
    }
    let env = o.env.as_ref().filter(|e| !e.is_empty()).unwrap_or(&p.env);
    let cwd = o.cwd.as_deref().filter(|c| !c.is_empty()).unwrap_or(&p.cwd);
    if !cwd.starts_with('/') {
        return Err(format!("working directory {:?} is not absolute", cwd));
    }

    let mut rlimits = Vec::new();
    for r in &p.rlimits {
        let resource = rlimit_resource(&r.kind).ok_or_else(|| format!("unknown rlimit {:?}", r.kind))?;
        if r.soft > r.hard {
            return Err(format!("{}: soft limit {} exceeds hard limit {}", r.kind, r.soft, r.hard));
        }
        rlimits.push(RlimitPlan {
            resource,
            name: r.kind.clone(),
            limit: libc::rlimit { rlim_cur: r.soft as libc::rlim_t, rlim_max: r.hard as libc::rlim_t },
        });
    }

    let caps = match &p.capabilities {
        None => None,
        Some(c) => {
            let last_cap = caps::last_cap();
            // Capabilities this process does not hold cannot be granted (this matters on nodes
            // where the runtime itself runs with a reduced bounding set).
            let (_, held, _) = caps::current().map_err(|e| format!("capget: {}", e))?;
            let mut set = |names: &[String], what: &str| {
                let (s, unknown) = CapSet::from_names(names, last_cap);
                if !unknown.is_empty() {
                    warnings.push(format!("{} capabilities not supported by this kernel, ignored: {}", what, unknown.join(", ")));
                }
                let missing: Vec<&str> = s.iter().filter(|c| !held.contains(*c)).filter_map(caps::name).collect();
                if !missing.is_empty() {
                    warnings.push(format!("{} capabilities the runtime does not hold, dropped: {}", what, missing.join(", ")));
                }
                s.intersect(held)
            };
            let bounding = set(&c.bounding, "bounding");
            let effective = set(&c.effective, "effective");
            let permitted = set(&c.permitted, "permitted");
            let inheritable = set(&c.inheritable, "inheritable");
            let ambient = set(&c.ambient, "ambient");
            // The kernel only keeps ambient capabilities that are permitted and inheritable.
            let ambient = ambient.intersect(permitted).intersect(inheritable);
            Some(CapsPlan { last_cap, bounding, effective, permitted, inheritable, ambient })
        }
    };

    let seccomp = match &spec.linux.seccomp {
        None => None,
        Some(profile) => {
            let program = seccomp::compile_cached(profile)?;
            warnings.extend(program.warnings.iter().cloned());
            Some(program)
        }
    };

    let lsm = lsm_plan(spec)?;
    let program = args[0].clone();
    let candidates = exec_candidates(&program, env).iter().map(cstring).collect::<Result<Vec<_>, _>>()?;
    Ok(ProcessPlan {
        ignored_signals,
        keyring: None,
        userns: None,
        cgroup_procs,
        setns: Vec::new(),
        unshare_cgroup: false,
        oom_score_adj: p.oom_score_adj.map(|v| cstring(v.to_string())).transpose()?,
        rlimits,
        no_new_privs: p.no_new_privileges,
        caps,
        uid: o.uid.unwrap_or(p.user.uid),
        gid: o.gid.unwrap_or(p.user.gid),
        groups: o.additional_gids.clone().unwrap_or_else(|| p.user.additional_gids.clone()),
        umask: p.user.umask.unwrap_or(0o022) as libc::mode_t,
        cwd: cstring(cwd)?,
        argv: CStringArray::new(args)?,
        envp: CStringArray::new(env)?,
        program,
        candidates,
        seccomp,
        lsm,
        warnings,
    })
}

/// The labels of the spec's process (exec'd processes take the container's), refused when the
/// host cannot enforce them.
fn lsm_plan(spec: &Spec) -> Result<LsmPlan, String> {
    let p = &spec.process;
    let wanted = |l: &Option<String>| l.as_deref().is_some_and(|l| !l.is_empty());
    if !wanted(&p.apparmor_profile) && !wanted(&p.selinux_label) {
        return Ok(LsmPlan::default());
    }
    LsmPlan::new(p.apparmor_profile.as_deref(), p.selinux_label.as_deref(), HostLsm::detect(), c"/proc")
}

/// The signals this process has set to SIG_IGN: one sigaction per signal, so a caller whose
/// dispositions do not change (the monitor) asks once and passes the answer to `exec_plan`.
pub fn ignored_signals() -> Vec<c_int> {
    let mut out = Vec::new();
    for sig in 1..libc::SIGRTMAX() {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        let mut old: libc::sigaction = unsafe { std::mem::zeroed() };
        // SAFETY: a null new action only queries; `old` is a valid out pointer.
        if unsafe { libc::sigaction(sig, std::ptr::null(), &mut old) } == 0 && old.sa_sigaction == libc::SIG_IGN {
            out.push(sig);
        }
    }
    out
}

/// Prepares everything to launch the container described by `spec` from `bundle`.
pub fn container_plan(spec: &Spec, bundle: &Path) -> Result<ContainerPlan, String> {
    let mut process = process_plan(spec, &ProcessOverrides::default(), cgroup_procs(spec.crisp_cgroup.as_ref())?, ignored_signals())?;
    // The bundle directory is named after the container.
    if let Some(id) = bundle.file_name() {
        process.keyring = Some(cstring(format!("_ses.{}", id.to_string_lossy()))?);
    }

    let mut clone_flags = libc::CLONE_NEWNS;
    let new_pid_ns = spec.new_namespace("pid");
    let mut pid_ns = None;
    for (kind, flag) in [("network", libc::CLONE_NEWNET), ("ipc", libc::CLONE_NEWIPC), ("uts", libc::CLONE_NEWUTS)] {
        if spec.new_namespace(kind) {
            clone_flags |= flag;
        }
    }
    // A new cgroup namespace must be created after joining the container's cgroup, so that
    // cgroup is its root.
    process.unshare_cgroup = spec.new_namespace("cgroup");
    for (kind, proc_name, flag) in [
        ("network", "net", libc::CLONE_NEWNET),
        ("ipc", "ipc", libc::CLONE_NEWIPC),
        ("uts", "uts", libc::CLONE_NEWUTS),
        ("cgroup", "cgroup", libc::CLONE_NEWCGROUP),
        ("pid", "pid_for_children", libc::CLONE_NEWPID),
    ] {
        let Some(path) = spec.namespace_path(kind) else { continue };
        let wanted = ns_inode(Path::new(path))?;
        let current = ns_inode(&Path::new("/proc/self/ns").join(proc_name))?;
        if wanted == current {
            continue;
        }
        let fd = open_cloexec(Path::new(path), libc::O_RDONLY)?;
        if kind == "pid" {
            pid_ns = Some(Arc::new(fd));
            continue;
        }
        process.setns.push((Arc::new(fd), flag, kind_name(kind)));
    }

    if let Some(path) = spec.namespace_path("user") {
        process.userns = Some(open_cloexec(Path::new(path), libc::O_RDONLY)?);
    }
    let rootfs = rootfs_plan(spec, bundle, &mut process.warnings)?;
    Ok(ContainerPlan { clone_flags, new_pid_ns, pid_ns, process, rootfs })
}

fn kind_name(kind: &str) -> &'static str {
    match kind {
        "network" => "network",
        "ipc" => "ipc",
        "uts" => "uts",
        "cgroup" => "cgroup",
        "pid" => "pid",
        _ => "mount",
    }
}

/// Opens what entering the running container whose main process is `pid` takes (see `ExecTarget`).
pub fn exec_target(spec: &Spec, pid: libc::pid_t) -> Result<ExecTarget, String> {
    let cgroup_procs = cgroup_procs(spec.crisp_cgroup.as_ref())?;
    // The container's PID may be reused once it is gone: open its namespaces first and let the
    // caller check the process is still the container afterwards.
    let proc_ns = PathBuf::from(format!("/proc/{}/ns", pid));
    let mut setns = Vec::new();
    for (name, flag) in [("ipc", libc::CLONE_NEWIPC), ("uts", libc::CLONE_NEWUTS), ("net", libc::CLONE_NEWNET), ("cgroup", libc::CLONE_NEWCGROUP), ("mnt", libc::CLONE_NEWNS)] {
        let target = proc_ns.join(name);
        let current = Path::new("/proc/self/ns").join(name);
        if name != "mnt" && ns_inode(&target)? == ns_inode(&current)? {
            continue;
        }
        let kind = match name {
            "net" => "network",
            "mnt" => "mount",
            other => kind_name(other),
        };
        setns.push((Arc::new(open_cloexec(&target, libc::O_RDONLY)?), flag, kind));
    }
    // Last: once in the container's user namespace, the node's namespaces are out of reach.
    if spec.namespace_path("user").is_some() {
        setns.push((Arc::new(open_cloexec(&proc_ns.join("user"), libc::O_RDONLY)?), libc::CLONE_NEWUSER, "user"));
    }
    let target_pid = proc_ns.join("pid");
    let pid_ns = if ns_inode(&target_pid)? == ns_inode(Path::new("/proc/self/ns/pid_for_children"))? {
        None
    } else {
        Some(Arc::new(open_cloexec(&target_pid, libc::O_RDONLY)?))
    };
    // Only ever a starting point for lookups confined to it (RESOLVE_IN_ROOT).
    let root = open_cloexec(&PathBuf::from(format!("/proc/{}/root", pid)), libc::O_PATH | libc::O_DIRECTORY).ok().map(Arc::new);
    Ok(ExecTarget { cgroup_procs, setns, pid_ns, root })
}

/// A process to exec into the running container `target` was opened for, with the caller's
/// ignored signals (see `ignored_signals`).
pub fn exec_plan(spec: &Spec, target: &ExecTarget, overrides: &ProcessOverrides, ignored_signals: &[c_int]) -> Result<ExecPlan, String> {
    let mut process = process_plan(spec, overrides, target.cgroup_procs.clone(), ignored_signals.to_vec())?;
    process.setns = target.setns.clone();
    Ok(ExecPlan { process, pid_ns: target.pid_ns.clone(), root: target.root.clone() })
}

fn dir_for_idmap(bundle: &Path) -> PathBuf {
    bundle.join("idmap")
}

/// Rewrites the `lowerdir=` of overlay options to id-mapped copies of its layers, mounted at
/// `<dir>/v<mount>-<n>` before the root is assembled.
fn idmapped_lowerdirs(data: &str, dir: &Path, mount: usize, idmap_layers: &mut Vec<(CString, CString)>) -> Result<String, String> {
    let mut out = Vec::new();
    for opt in data.split(',').filter(|o| !o.is_empty()) {
        let Some(list) = opt.strip_prefix("lowerdir=") else {
            out.push(opt.to_string());
            continue;
        };
        let mut mapped = Vec::new();
        for (n, layer) in list.split(':').enumerate() {
            let at = dir.join(format!("v{mount}-{n}"));
            std::fs::create_dir_all(&at).map_err(|e| format!("create {}: {}", at.display(), e))?;
            idmap_layers.push((cstring(layer)?, cstring(at.as_os_str().as_bytes())?));
            mapped.push(at.to_string_lossy().into_owned());
        }
        out.push(format!("lowerdir={}", mapped.join(":")));
    }
    Ok(out.join(","))
}

fn overlay_data(rootfs: &super::spec::CrispRootfs) -> Result<(Option<CString>, CString), String> {
    let render = |strip: &Path| -> String {
        let rel = |p: &Path| p.strip_prefix(strip).unwrap_or(p).to_string_lossy().into_owned();
        let lower: Vec<String> = rootfs.lower_dirs.iter().map(|d| rel(d)).collect();
        format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), rel(&rootfs.upper_dir), rel(&rootfs.work_dir))
    };
    let full = render(Path::new("\0"));
    if full.len() <= MAX_MOUNT_DATA {
        return Ok((None, cstring(full)?));
    }
    // Too long for one page: mount from the directory all layers share, with relative paths.
    let all: Vec<&PathBuf> = rootfs.lower_dirs.iter().chain([&rootfs.upper_dir, &rootfs.work_dir]).collect();
    let mut common: PathBuf = all[0].parent().map(Path::to_path_buf).unwrap_or_default();
    while !all.iter().all(|p| p.starts_with(&common) && *p != &common) {
        if !common.pop() {
            break;
        }
    }
    if common.as_os_str().len() <= 1 {
        return Err(format!("overlay options are {} bytes, more than a page, and the layers share no directory", full.len()));
    }
    let short = render(&common);
    if short.len() > MAX_MOUNT_DATA {
        return Err(format!("overlay options are {} bytes even with paths relative to {}", short.len(), common.display()));
    }
    Ok((Some(cstring(common.as_os_str().as_bytes())?), cstring(short)?))
}

/// Unescapes the octal sequences (`\040` for a space) mountinfo uses in paths.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            out.push((bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0'));
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount point (from /proc/self/mountinfo text) of the mount that contains `path`.
pub(crate) fn mount_point_containing(mountinfo: &str, path: &Path) -> String {
    let target = path.to_string_lossy();
    let mut best = String::from("/");
    for line in mountinfo.lines() {
        let Some(field) = line.split(' ').nth(4) else { continue };
        let point = unescape_mountinfo(field);
        let contains = point == "/" || target == point.as_str() || target.starts_with(&format!("{}/", point));
        if contains && point.len() >= best.len() {
            best = point;
        }
    }
    best
}

fn rootfs_plan(spec: &Spec, bundle: &Path, warnings: &mut Vec<String>) -> Result<RootfsPlan, String> {
    let rootfs = spec.crisp_rootfs.as_ref().ok_or("crispRootfs is missing")?;
    let idmap_userns = match spec.namespace_path("user") {
        Some(path) => Some(open_cloexec(Path::new(path), libc::O_RDONLY)?),
        None => None,
    };
    let mut idmap_layers = Vec::new();
    let (overlay_chdir, overlay_data) = if idmap_userns.is_some() {
        // Files of the image layers belong to the node's ids; seen through mounts mapped into the
        // container's user namespace they belong to its ids. Every layer is mounted so, at
        // `<bundle>/idmap/<n>`, and the overlay stacks those. The writable layer is not mapped
        // (overlay creates its work directory as the node's root, whom the mapping cannot
        // represent): it belongs to the container's root on the node, and copies up keep the
        // mapped owners.
        let dir = dir_for_idmap(bundle);
        let mut mapped = super::spec::CrispRootfs { lower_dirs: Vec::new(), upper_dir: rootfs.upper_dir.clone(), work_dir: rootfs.work_dir.clone() };
        let mut add = |src: &Path, name: String| -> Result<PathBuf, String> {
            let at = dir.join(name);
            std::fs::create_dir_all(&at).map_err(|e| format!("create {}: {}", at.display(), e))?;
            idmap_layers.push((cstring(src.as_os_str().as_bytes())?, cstring(at.as_os_str().as_bytes())?));
            Ok(at)
        };
        for (i, lower) in rootfs.lower_dirs.iter().enumerate() {
            mapped.lower_dirs.push(add(lower, i.to_string())?);
        }
        overlay_data(&mapped)?
    } else {
        overlay_data(rootfs)?
    };
    let root_propagation = match spec.linux.rootfs_propagation.as_deref() {
        Some(p) => mounts::propagation_flag(p).ok_or_else(|| format!("unknown rootfsPropagation {:?}", p))?,
        None => libc::MS_PRIVATE | libc::MS_REC,
    };
    let rootfs_dir = bundle.join("rootfs");
    let rootfs_parent_private = if root_propagation & libc::MS_SHARED != 0 {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| format!("read mountinfo: {}", e))?;
        Some(cstring(mount_point_containing(&mountinfo, &rootfs_dir).as_bytes())?)
    } else {
        None
    };

    let mount_label = spec.linux.mount_label.as_deref().filter(|l| !l.is_empty());
    if let Some(label) = mount_label {
        if !HostLsm::detect().selinux {
            return Err(format!("SELinux mount label {:?} was asked for, but SELinux is not enabled on this host; refusing to run the container without it", label));
        }
    }
    let mut ops = Vec::new();
    let mut dev_tmpfs = false;
    let mut dev_pts = false;
    for m in &spec.mounts {
        let kind = m.kind.as_deref().unwrap_or("");
        let mut opts = mounts::parse_options(&m.options);
        if !opts.is_bind() {
            opts.data = super::lsm::with_mount_label(kind, &opts.data, mount_label);
        }
        if kind == "overlay" && m.is_idmapped() && idmap_userns.is_some() {
            // A read-only overlay (an image volume): its layers are mapped like the root's.
            opts.data = idmapped_lowerdirs(&opts.data, &dir_for_idmap(bundle), ops.len(), &mut idmap_layers)?;
        }
        let dest = clean_destination(&m.destination);
        if dest == "/dev" && !opts.is_bind() && kind != "bind" {
            dev_tmpfs = true;
        }
        if dest == "/dev/pts" {
            dev_pts = true;
        }
        match kind {
            "cgroup" | "cgroup2" => cgroup_mount(spec, &dest, &opts, &mut ops, warnings)?,
            _ => ops.push(mount_op(m, &dest, kind, opts)?),
        }
    }

    let mut devices: Vec<Device> = spec.linux.devices.clone();
    if dev_tmpfs {
        // A fresh /dev gets the nodes every container has, as runc does.
        for (name, major, minor) in [("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8), ("urandom", 1, 9), ("tty", 5, 0)] {
            let path = format!("/dev/{}", name);
            if !devices.iter().any(|d| clean_destination(&d.path) == path) {
                devices.push(Device { path, kind: "c".into(), major, minor, file_mode: Some(0o666), uid: Some(0), gid: Some(0) });
            }
        }
    }
    for d in &devices {
        let fmt = match d.kind.as_str() {
            "c" | "u" => libc::S_IFCHR,
            "b" => libc::S_IFBLK,
            "p" => libc::S_IFIFO,
            other => return Err(format!("device {} has unknown type {:?}", d.path, other)),
        };
        let path = clean_destination(&d.path);
        ops.push(RootfsOp::Device {
            target: RootPath::new(&path)?,
            mode: fmt | (d.file_mode.unwrap_or(0o666) & 0o7777) as libc::mode_t,
            dev: libc::makedev(d.major as u32, d.minor as u32),
            uid: d.uid.unwrap_or(0),
            gid: d.gid.unwrap_or(0),
            host_paths: [cstring(&format!("/dev/{}/{}:{}", if fmt == libc::S_IFBLK { "block" } else { "char" }, d.major, d.minor))?, cstring(&path)?],
        });
    }
    if dev_tmpfs {
        let mut links = vec![("/dev/fd", "/proc/self/fd"), ("/dev/stdin", "/proc/self/fd/0"), ("/dev/stdout", "/proc/self/fd/1"), ("/dev/stderr", "/proc/self/fd/2")];
        if dev_pts && !devices.iter().any(|d| clean_destination(&d.path) == "/dev/ptmx") {
            links.push(("/dev/ptmx", "pts/ptmx"));
        }
        for (path, link) in links {
            ops.push(RootfsOp::Symlink { target: RootPath::new(path)?, link: cstring(link)? });
        }
    }

    let paths = |list: &[String]| -> Result<Vec<CString>, String> {
        list.iter().filter(|p| p.starts_with('/')).map(|p| cstring(clean_destination(p))).collect()
    };
    let in_pid_ns = in_pid_ns(&ops);
    Ok(RootfsPlan {
        in_pid_ns,
        root_propagation,
        rootfs_parent_private,
        overlay_chdir,
        overlay_data,
        rootfs_dir: cstring(rootfs_dir.as_os_str().as_bytes())?,
        ops,
        cwd: if clean_destination(&spec.process.cwd) == "/" { None } else { Some(RootPath::new(&spec.process.cwd)?) },
        readonly_paths: paths(&spec.linux.readonly_paths)?,
        masked_paths: paths(&spec.linux.masked_paths)?,
        readonly_root: spec.readonly_root(),
        idmap_userns,
        idmap_layers,
    })
}

/// Which ops must run in the container's PID namespace: proc mounts, and every op at or below
/// one (the set-up process sees the node's PID namespace).
fn in_pid_ns(ops: &[RootfsOp]) -> Vec<bool> {
    fn target(op: &RootfsOp) -> &str {
        match op {
            RootfsOp::Mount { target, .. } | RootfsOp::Remount { target, .. } | RootfsOp::Device { target, .. } | RootfsOp::Symlink { target, .. } => {
                target.display.as_str()
            }
        }
    }
    let mut proc_targets: Vec<&str> = Vec::new();
    ops.iter()
        .map(|op| {
            let t = target(op);
            if matches!(op, RootfsOp::Mount { fstype: Some(f), .. } if f.as_bytes() == b"proc") {
                proc_targets.push(t);
                return true;
            }
            proc_targets.iter().any(|p| t == *p || t.strip_prefix(*p).is_some_and(|rest| rest.starts_with('/')))
        })
        .collect()
}

/// Normalises a destination: no duplicate or trailing slashes, no "." components.
fn clean_destination(dest: &str) -> String {
    let parts: Vec<&str> = dest.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
    format!("/{}", parts.join("/"))
}

fn mount_op(m: &Mount, dest: &str, kind: &str, opts: MountOptions) -> Result<RootfsOp, String> {
    let target = RootPath::new(dest)?;
    let bind = opts.is_bind() || kind == "bind";
    if bind {
        let source = m.source.as_deref().filter(|s| !s.is_empty()).ok_or_else(|| format!("bind mount on {} has no source", dest))?;
        let md = std::fs::metadata(source).map_err(|e| format!("bind mount source {}: {}", source, e))?;
        let remount = opts.remount_flags();
        return Ok(RootfsOp::Mount {
            target,
            create: if md.is_dir() { Create::Dir } else { Create::File },
            source: Some(cstring(source)?),
            fstype: None,
            flags: libc::MS_BIND | (opts.flags & libc::MS_REC),
            data: None,
            remount: (remount != 0).then_some(remount),
            recursive_readonly: opts.recursive_readonly,
            idmap: m.is_idmapped(),
            propagation: opts.propagation,
        });
    }
    if kind.is_empty() {
        return Err(format!("mount on {} has no type", dest));
    }
    if opts.data.len() > MAX_MOUNT_DATA {
        return Err(format!("mount options for {} are longer than a page", dest));
    }
    Ok(RootfsOp::Mount {
        target,
        create: Create::Dir,
        source: Some(cstring(m.source.as_deref().filter(|s| !s.is_empty()).unwrap_or(kind))?),
        fstype: Some(cstring(kind)?),
        flags: opts.flags,
        data: (!opts.data.is_empty()).then(|| cstring(&opts.data)).transpose()?,
        remount: None,
        recursive_readonly: opts.recursive_readonly,
        // Only bind mounts are mapped by the child; an overlay's layers are mapped beforehand.
        idmap: false,
        propagation: opts.propagation,
    })
}

/// A cgroup filesystem for the container: with a cgroup namespace on v2 the real thing;
/// otherwise the container's own cgroup directories bind-mounted where the hierarchies
/// would be (a tmpfs with one directory per v1 hierarchy).
fn cgroup_mount(spec: &Spec, dest: &str, opts: &MountOptions, ops: &mut Vec<RootfsOp>, warnings: &mut Vec<String>) -> Result<(), String> {
    let Some(cg) = spec.crisp_cgroup.as_ref() else {
        warnings.push(format!("no container cgroup is known; the cgroup mount on {} is skipped", dest));
        return Ok(());
    };
    let flags = opts.flags & !(libc::MS_BIND | libc::MS_REC);
    if cg.version == 2 {
        if spec.new_namespace("cgroup") {
            ops.push(RootfsOp::Mount {
                idmap: false,
                recursive_readonly: false,
                target: RootPath::new(dest)?,
                create: Create::Dir,
                source: Some(cstring("cgroup2")?),
                fstype: Some(cstring("cgroup2")?),
                flags,
                data: None,
                remount: None,
                propagation: opts.propagation.clone(),
            });
        } else if let Some(dir) = cg.unique_dirs().first() {
            ops.push(RootfsOp::Mount {
                idmap: false,
                recursive_readonly: false,
                target: RootPath::new(dest)?,
                create: Create::Dir,
                source: Some(cstring(dir.as_os_str().as_bytes())?),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: (flags != 0).then_some(flags),
                propagation: opts.propagation.clone(),
            });
        }
        return Ok(());
    }
    let base = flags & !libc::MS_RDONLY;
    ops.push(RootfsOp::Mount {
        idmap: false,
        recursive_readonly: false,
        target: RootPath::new(dest)?,
        create: Create::Dir,
        source: Some(cstring("tmpfs")?),
        fstype: Some(cstring("tmpfs")?),
        flags: base,
        data: Some(cstring("mode=755")?),
        remount: None,
        propagation: Vec::new(),
    });
    let mut mounted: Vec<String> = Vec::new();
    for (controller, dir) in &cg.paths {
        // The hierarchy's directory name under /sys/fs/cgroup ("cpu,cpuacct", "systemd").
        let Ok(rel) = dir.strip_prefix(crate::cgroup::CGROUP_ROOT) else { continue };
        let Some(Component::Normal(hierarchy)) = rel.components().next() else { continue };
        let hierarchy = hierarchy.to_string_lossy().into_owned();
        if !mounted.contains(&hierarchy) {
            ops.push(RootfsOp::Mount {
                idmap: false,
                recursive_readonly: false,
                target: RootPath::new(&format!("{}/{}", dest, hierarchy))?,
                create: Create::Dir,
                source: Some(cstring(dir.as_os_str().as_bytes())?),
                fstype: None,
                flags: libc::MS_BIND,
                data: None,
                remount: Some(flags | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC),
                propagation: Vec::new(),
            });
            mounted.push(hierarchy.clone());
        }
        let name = controller.strip_prefix("name=").unwrap_or(controller);
        if name != hierarchy {
            ops.push(RootfsOp::Symlink { target: RootPath::new(&format!("{}/{}", dest, name))?, link: cstring(&hierarchy)? });
        }
    }
    if flags & libc::MS_RDONLY != 0 {
        ops.push(RootfsOp::Remount { target: RootPath::new(dest)?, flags: base | libc::MS_RDONLY });
    }
    Ok(())
}

#[cfg(test)]
mod tests {

    #[test]
    fn an_id_mapped_overlay_stacks_mapped_copies_of_its_layers() {
        let dir = std::env::temp_dir().join(format!("crisp-idmap-plan-{}", std::process::id()));
        let mut layers = Vec::new();
        let data = idmapped_lowerdirs("ro,lowerdir=/snap/2/fs:/snap/1/fs", &dir, 7, &mut layers).unwrap();
        assert_eq!(data, format!("ro,lowerdir={0}/v7-0:{0}/v7-1", dir.display()));
        assert_eq!(layers, vec![
            (cstring("/snap/2/fs").unwrap(), cstring(format!("{}/v7-0", dir.display())).unwrap()),
            (cstring("/snap/1/fs").unwrap(), cstring(format!("{}/v7-1", dir.display())).unwrap()),
        ]);
        assert!(dir.join("v7-1").is_dir(), "the mountpoints are made by the plan");
        std::fs::remove_dir_all(&dir).unwrap();
        let opts = mounts::parse_options(&["ro".to_string(), "idmap".to_string(), "lowerdir=/a:/b".to_string()]);
        assert_eq!(opts.data, "lowerdir=/a:/b", "idmap is not a filesystem option");
    }
    use super::*;
    use crate::container::spec::CrispRootfs;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> Spec {
        let mut base = json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["sh"], "env": ["PATH=/usr/bin:/bin"], "cwd": "/"},
            "crispRootfs": {"lowerDirs": ["/l1"], "upperDir": "/u", "workDir": "/w"},
        });
        for (k, val) in v.as_object().unwrap() {
            base[k] = val.clone();
        }
        Spec::parse(&serde_json::to_vec(&base).unwrap()).unwrap()
    }

    #[test]
    fn proc_and_what_lies_below_it_are_mounted_in_the_pid_namespace() {
        let s = spec(json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc"},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/proc/driver/x", "type": "bind", "source": "/etc/hostname", "options": ["rbind", "ro"]},
                {"destination": "/procedure", "type": "tmpfs", "source": "tmpfs"}
            ]
        }));
        let plan = rootfs_plan(&s, Path::new("/b"), &mut Vec::new()).unwrap();
        let after: Vec<String> = plan.ops.iter().zip(&plan.in_pid_ns).filter(|(_, d)| **d).map(|(o, _)| o.describe()).collect();
        assert_eq!(after, ["mount proc (proc) on /proc", "mount /etc/hostname (bind) on /proc/driver/x"]);
        assert_eq!(plan.in_pid_ns.len(), plan.ops.len());
    }

    #[test]
    fn ignored_signals_are_the_ones_set_to_sig_ign() {
        // SIGURG is discarded by default anyway, so ignoring it for a moment disturbs nothing.
        let set = |handler: libc::sighandler_t| {
            let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
            act.sa_sigaction = handler;
            assert_eq!(unsafe { libc::sigaction(libc::SIGURG, &act, std::ptr::null_mut()) }, 0);
        };
        set(libc::SIG_IGN);
        let ignored = ignored_signals();
        set(libc::SIG_DFL);
        assert!(ignored.contains(&libc::SIGURG), "{:?}", ignored);
        assert!(!ignored_signals().contains(&libc::SIGURG));
        assert!(!ignored.contains(&libc::SIGKILL));
    }

    #[test]
    fn root_paths_split_into_prefixes() {
        let p = RootPath::new("/dev//pts/").unwrap();
        assert_eq!(p.prefixes, vec![cstring("dev").unwrap(), cstring("dev/pts").unwrap()]);
        assert_eq!(p.names, vec![cstring("dev").unwrap(), cstring("pts").unwrap()]);
        assert!(RootPath::new("/a/../b").is_err());
        assert!(RootPath::new("/").is_err());
        assert_eq!(clean_destination("/a//b/./c/"), "/a/b/c");
    }

    #[test]
    fn exec_candidates_follow_path() {
        let env = vec!["PATH=/usr/local/bin::/bin/".to_string()];
        assert_eq!(exec_candidates("ls", &env), vec!["/usr/local/bin/ls", "./ls", "/bin/ls"]);
        assert_eq!(exec_candidates("/bin/ls", &env), vec!["/bin/ls"]);
        assert_eq!(exec_candidates("./x", &[]), vec!["./x"]);
        assert_eq!(exec_candidates("ls", &[]).len(), DEFAULT_PATH.split(':').count());
    }

    #[test]
    fn overlay_options_fall_back_to_relative_paths() {
        let short = CrispRootfs { lower_dirs: vec!["/s/1/fs".into(), "/s/2/fs".into()], upper_dir: "/c/u".into(), work_dir: "/c/w".into() };
        let (dir, data) = overlay_data(&short).unwrap();
        assert!(dir.is_none());
        assert_eq!(data.to_str().unwrap(), "lowerdir=/s/1/fs:/s/2/fs,upperdir=/c/u,workdir=/c/w");

        let root = "/var/lib/crisp/snapshots";
        let lower: Vec<PathBuf> = (0..80).map(|i| PathBuf::from(format!("{}/{:040}/fs", root, i))).collect();
        let long = CrispRootfs { lower_dirs: lower, upper_dir: format!("{}/c/upper", root).into(), work_dir: format!("{}/c/work", root).into() };
        let (dir, data) = overlay_data(&long).unwrap();
        assert_eq!(dir.unwrap().to_str().unwrap(), root);
        let data = data.to_str().unwrap();
        assert!(data.starts_with("lowerdir=0000000000000000000000000000000000000000/fs:"), "{}", &data[..80]);
        assert!(data.ends_with(",upperdir=c/upper,workdir=c/work"));
        assert!(data.len() <= MAX_MOUNT_DATA);
    }

    #[test]
    fn mounts_devices_and_dev_links_are_planned_in_order() {
        let s = spec(json!({
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
                {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
                {"destination": "/etc/hostname", "type": "bind", "source": "/etc/hostname", "options": ["rbind", "ro", "rprivate"]}
            ],
            "linux": {"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 384, "uid": 0, "gid": 0}]}
        }));
        let mut warnings = Vec::new();
        let plan = rootfs_plan(&s, Path::new("/b"), &mut warnings).unwrap();
        assert_eq!(plan.rootfs_dir.to_str().unwrap(), "/b/rootfs");
        assert_eq!(plan.root_propagation, libc::MS_PRIVATE | libc::MS_REC);
        let described: Vec<String> = plan.ops.iter().map(RootfsOp::describe).collect();
        assert_eq!(described[..4], [
            "mount proc (proc) on /proc".to_string(),
            "mount tmpfs (tmpfs) on /dev".into(),
            "mount devpts (devpts) on /dev/pts".into(),
            "mount /etc/hostname (bind) on /etc/hostname".into(),
        ]);
        match &plan.ops[3] {
            RootfsOp::Mount { create, flags, remount, propagation, .. } => {
                assert_eq!(*create, Create::File);
                assert_eq!(*flags, libc::MS_BIND | libc::MS_REC);
                assert_eq!(*remount, Some(libc::MS_RDONLY));
                assert_eq!(propagation, &vec![libc::MS_PRIVATE | libc::MS_REC]);
            }
            other => panic!("{:?}", other),
        }
        match &plan.ops[2] {
            RootfsOp::Mount { data, flags, .. } => {
                assert_eq!(data.as_ref().unwrap().to_str().unwrap(), "newinstance,ptmxmode=0666,mode=0620,gid=5");
                assert_eq!(*flags, libc::MS_NOSUID | libc::MS_NOEXEC);
            }
            other => panic!("{:?}", other),
        }
        let devices: Vec<&str> = plan.ops.iter().filter_map(|o| match o {
            RootfsOp::Device { target, .. } => Some(target.display.as_str()),
            _ => None,
        }).collect();
        assert_eq!(devices, ["/dev/fuse", "/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom", "/dev/tty"]);
        match &plan.ops[4] {
            RootfsOp::Device { mode, dev, .. } => {
                assert_eq!(*mode, libc::S_IFCHR | 0o600);
                assert_eq!(*dev, libc::makedev(10, 229));
            }
            other => panic!("{:?}", other),
        }
        let links: Vec<(&str, &str)> = plan.ops.iter().filter_map(|o| match o {
            RootfsOp::Symlink { target, link } => Some((target.display.as_str(), link.to_str().unwrap())),
            _ => None,
        }).collect();
        assert!(links.contains(&("/dev/ptmx", "pts/ptmx")));
        assert!(links.contains(&("/dev/fd", "/proc/self/fd")));
    }

    #[test]
    fn v1_cgroup_mounts_become_per_hierarchy_binds() {
        let s = spec(json!({
            "mounts": [{"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}],
            "crispCgroup": {"version": 1, "paths": {
                "cpu": "/sys/fs/cgroup/cpu,cpuacct/k/c1", "cpuacct": "/sys/fs/cgroup/cpu,cpuacct/k/c1",
                "memory": "/sys/fs/cgroup/memory/k/c1", "name=systemd": "/sys/fs/cgroup/systemd/k/c1"}}
        }));
        let mut warnings = Vec::new();
        let plan = rootfs_plan(&s, Path::new("/b"), &mut warnings).unwrap();
        let described: Vec<String> = plan.ops.iter().map(RootfsOp::describe).collect();
        assert_eq!(described, vec![
            "mount tmpfs (tmpfs) on /sys/fs/cgroup",
            "mount /sys/fs/cgroup/cpu,cpuacct/k/c1 (bind) on /sys/fs/cgroup/cpu,cpuacct",
            "create symlink /sys/fs/cgroup/cpu",
            "create symlink /sys/fs/cgroup/cpuacct",
            "mount /sys/fs/cgroup/memory/k/c1 (bind) on /sys/fs/cgroup/memory",
            "mount /sys/fs/cgroup/systemd/k/c1 (bind) on /sys/fs/cgroup/systemd",
            "remount /sys/fs/cgroup",
        ]);
        // Without a known cgroup the mount is skipped with a warning.
        let s = spec(json!({"mounts": [{"destination": "/sys/fs/cgroup", "type": "cgroup2", "source": "cgroup"}]}));
        let plan = rootfs_plan(&s, Path::new("/b"), &mut warnings).unwrap();
        assert!(plan.ops.is_empty());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn shared_root_propagation_keeps_peers_but_privatises_the_rootfs_parent() {
        let s = spec(json!({"linux": {"rootfsPropagation": "rshared"}}));
        let plan = rootfs_plan(&s, Path::new("/b"), &mut Vec::new()).unwrap();
        assert_eq!(plan.root_propagation, libc::MS_SHARED | libc::MS_REC);
        assert!(plan.rootfs_parent_private.is_some());
        let plain = rootfs_plan(&spec(json!({})), Path::new("/b"), &mut Vec::new()).unwrap();
        assert!(plain.rootfs_parent_private.is_none());
    }

    #[test]
    fn mount_point_lookup_picks_the_longest_containing_mount() {
        let info = "22 1 8:1 / / rw - ext4 /dev/vda rw\n\
                    30 22 0:5 / /run rw - tmpfs tmpfs rw\n\
                    31 30 0:6 / /run/crisp\\040x rw - tmpfs tmpfs rw\n\
                    32 30 0:7 / /runner rw - tmpfs tmpfs rw\n";
        assert_eq!(mount_point_containing(info, Path::new("/run/crisp x/containers/a/rootfs")), "/run/crisp x");
        assert_eq!(mount_point_containing(info, Path::new("/run/crisp/containers")), "/run");
        assert_eq!(mount_point_containing(info, Path::new("/runnerx/a")), "/");
        assert_eq!(mount_point_containing(info, Path::new("/var/lib")), "/");
    }

    #[test]
    fn process_plan_collects_limits_caps_and_program() {
        let s = spec(json!({"process": {
            "args": ["sleep", "1"], "env": ["PATH=/bin", "A=b"], "cwd": "/tmp",
            "user": {"uid": 1000, "gid": 1000, "additionalGids": [10]},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 4096, "soft": 1024}],
            "capabilities": {"bounding": ["CAP_CHOWN", "CAP_KILL", "CAP_FAKE"], "effective": ["CAP_KILL"], "permitted": ["CAP_KILL"],
                             "inheritable": [], "ambient": ["CAP_KILL", "CAP_CHOWN"]},
            "noNewPrivileges": true,
            "oomScoreAdj": 100
        }}));
        let p = process_plan(&s, &ProcessOverrides::default(), Vec::new(), Vec::new()).unwrap();
        assert_eq!(p.rlimits[0].resource, libc::RLIMIT_NOFILE as c_int);
        assert_eq!((p.rlimits[0].limit.rlim_cur, p.rlimits[0].limit.rlim_max), (1024, 4096));
        assert_eq!(p.candidates, vec![cstring("/bin/sleep").unwrap()]);
        assert_eq!((p.uid, p.gid, p.groups.clone()), (1000, 1000, vec![10]));
        assert_eq!(p.oom_score_adj.as_ref().unwrap().to_str().unwrap(), "100");
        let caps = p.caps.as_ref().unwrap();
        let (_, held, _) = caps::current().unwrap();
        assert_eq!(caps.bounding, CapSet(1 | 1 << 5).intersect(held));
        // Ambient needs inheritable too, which is empty here.
        assert_eq!(caps.ambient, CapSet(0));
        assert!(p.warnings.iter().any(|w| w.contains("CAP_FAKE")));

        let o = ProcessOverrides { args: vec!["id".into()], env: Some(vec!["PATH=/usr/bin".into()]), uid: Some(0), ..Default::default() };
        let p = process_plan(&s, &o, Vec::new(), Vec::new()).unwrap();
        assert_eq!(p.candidates, vec![cstring("/usr/bin/id").unwrap()]);
        assert_eq!(p.uid, 0);
        assert_eq!(p.gid, 1000);

        let bad = spec(json!({"process": {"args": ["x"], "rlimits": [{"type": "RLIMIT_BOGUS", "hard": 1, "soft": 1}]}}));
        assert!(process_plan(&bad, &ProcessOverrides::default(), Vec::new(), Vec::new()).unwrap_err().contains("RLIMIT_BOGUS"));
    }

    #[test]
    fn errno_text_is_lower_case_strerror() {
        assert_eq!(errno_text(libc::ENOENT), "no such file or directory");
        assert_eq!(errno_text(libc::EACCES), "permission denied");
    }
}
