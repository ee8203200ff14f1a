//! The code that runs in a freshly forked container (or exec) process, between fork and execve.
//!
//! Everything here is async-signal-safe: raw system calls on data the parent prepared
//! ([`super::plan`]), no allocation, no locks, no panics. A failing step is reported as a
//! fixed-size [`Record`] on the status pipe (close-on-exec, so a successful execve shows up
//! as EOF) and the process exits.

use std::ffi::CString;
use std::os::fd::{AsRawFd, RawFd};

use libc::{c_char, c_int, c_uint, c_ulong};

use super::plan::{CapsPlan, ContainerPlan, Create, ProcessPlan, RootPath, RootfsOp, RootfsPlan};
use super::seccomp;

/// Exit status of a child whose set-up failed (the reason went through the status pipe).
pub const SETUP_FAILED_EXIT: c_int = 126;
/// Exit status of a created container whose start gate was closed without starting it.
pub const ABANDONED_EXIT: c_int = 125;

/// A fixed-size message on the status pipe.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Record {
    pub kind: u32,
    pub stage: u32,
    /// Which mount, rlimit, namespace... of the plan the stage was working on.
    pub index: u32,
    pub errno: i32,
}

pub const RECORD_SIZE: usize = std::mem::size_of::<Record>();
pub const KIND_READY: u32 = 1;
pub const KIND_ERROR: u32 = 2;
/// The root filesystem is assembled, before pivot_root: createContainer hooks may run now.
pub const KIND_HOOKS: u32 = 3;
/// The set-up process forked the process that becomes the container's (or exec's), whose pid (in
/// the set-up process's PID namespace, the monitor's) is `index`; the set-up process exits.
pub const KIND_FORKED: u32 = 4;

impl Record {
    pub fn to_bytes(self) -> [u8; RECORD_SIZE] {
        let mut out = [0u8; RECORD_SIZE];
        out[0..4].copy_from_slice(&self.kind.to_ne_bytes());
        out[4..8].copy_from_slice(&self.stage.to_ne_bytes());
        out[8..12].copy_from_slice(&self.index.to_ne_bytes());
        out[12..16].copy_from_slice(&self.errno.to_ne_bytes());
        out
    }

    pub fn from_bytes(b: &[u8; RECORD_SIZE]) -> Record {
        let word = |i: usize| [b[i], b[i + 1], b[i + 2], b[i + 3]];
        Record {
            kind: u32::from_ne_bytes(word(0)),
            stage: u32::from_ne_bytes(word(4)),
            index: u32::from_ne_bytes(word(8)),
            errno: i32::from_ne_bytes(word(12)),
        }
    }
}

/// struct mount_attr of mount_setattr(2).
#[repr(C)]
struct MountAttr {
    attr_set: u64,
    attr_clr: u64,
    propagation: u64,
    userns_fd: u64,
}

const MOUNT_ATTR_RDONLY: u64 = 0x1;
/// mount_setattr(2): apply to the whole mount tree (not in this libc release).
const AT_RECURSIVE: c_int = 0x8000;

/// keyctl(2) operation: join (here: create) a session keyring.
const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;

/// The set-up steps, as reported in error records.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Stage {
    Signals = 1,
    CgroupJoin,
    Setns,
    UnshareCgroup,
    Session,
    Stdio,
    RootPropagation,
    Overlay,
    RootfsOpen,
    MountTarget,
    Mount,
    Remount,
    MountPropagation,
    Device,
    Symlink,
    Cwd,
    Pivot,
    ReadonlyPath,
    MaskedPath,
    ReadonlyRoot,
    OomScoreAdj,
    Rlimit,
    NoNewPrivs,
    Seccomp,
    CapBounding,
    Groups,
    Setgid,
    Setuid,
    Capset,
    Ambient,
    ParentDeath,
    Chdir,
    Gate,
    Exec,
    CloseFds,
    Keyring,
    RecursiveReadonly,
    IdmapMount,
    JoinUserns,
    MaskSource,
    Lsm,
    JoinPidns,
    Fork,
    Dumpable,
}

impl Stage {
    pub fn from_u32(v: u32) -> Option<Stage> {
        use Stage::*;
        const ALL: [Stage; 44] = [
            Signals, CgroupJoin, Setns, UnshareCgroup, Session, Stdio, RootPropagation, Overlay, RootfsOpen, MountTarget,
            Mount, Remount, MountPropagation, Device, Symlink, Cwd, Pivot, ReadonlyPath, MaskedPath, ReadonlyRoot,
            OomScoreAdj, Rlimit, NoNewPrivs, Seccomp, CapBounding, Groups, Setgid, Setuid, Capset, Ambient,
            ParentDeath, Chdir, Gate, Exec, CloseFds, Keyring, RecursiveReadonly, IdmapMount, JoinUserns,
            MaskSource, Lsm, JoinPidns, Fork, Dumpable,
        ];
        ALL.iter().copied().find(|s| *s as u32 == v)
    }
}

/// The descriptors a child starts from.
#[derive(Clone, Copy)]
pub struct ChildIo {
    pub stdin: RawFd,
    pub stdout: RawFd,
    pub stderr: RawFd,
    /// stdin/stdout/stderr are a terminal's slave side, to become the controlling terminal.
    pub tty: bool,
    /// Write end of the status pipe (close-on-exec).
    pub status: RawFd,
    /// Read end of the start gate, or -1 to exec right away.
    pub gate: RawFd,
    /// Read end of the hooks gate: with one, the child reports KIND_HOOKS once its mounts are
    /// made and waits for a byte before pivot_root. -1 for none.
    pub hooks_gate: RawFd,
    /// Where the set-up process reports KIND_FORKED: the status pipe (then the forked process
    /// waits for the set-up process to exit, so the report precedes its own), or a pipe of its
    /// own the caller reads before the status pipe.
    pub forked: RawFd,
}

fn errno() -> i32 {
    unsafe { *libc::__errno_location() }
}

/// Reports a failure and exits.
unsafe fn fail(io: &ChildIo, stage: Stage, index: usize, err: i32) -> ! {
    let rec = Record { kind: KIND_ERROR, stage: stage as u32, index: index as u32, errno: err };
    write_record(io.status, rec);
    unsafe { libc::_exit(SETUP_FAILED_EXIT) }
}

fn write_record(fd: RawFd, rec: Record) {
    let bytes = rec.to_bytes();
    loop {
        let n = unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
        if n >= 0 || errno() != libc::EINTR {
            return;
        }
    }
}

/// Runs `$call`; on -1 reports `$stage`/`$index` with errno and exits.
macro_rules! check {
    ($io:expr, $stage:expr, $index:expr, $call:expr) => {{
        let r = $call;
        if r == -1 {
            unsafe { fail($io, $stage, $index, errno()) }
        }
        r
    }};
}

/// "/proc/self/fd/<fd>" in a caller-provided buffer.
struct FdPath {
    buf: [u8; 32],
}

impl FdPath {
    fn new(fd: RawFd) -> FdPath {
        let mut buf = [0u8; 32];
        let prefix = b"/proc/self/fd/";
        buf[..prefix.len()].copy_from_slice(prefix);
        let mut digits = [0u8; 12];
        let mut n = fd as u32;
        let mut len = 0;
        loop {
            digits[len] = b'0' + (n % 10) as u8;
            len += 1;
            n /= 10;
            if n == 0 {
                break;
            }
        }
        for i in 0..len {
            buf[prefix.len() + i] = digits[len - 1 - i];
        }
        FdPath { buf }
    }

    fn as_ptr(&self) -> *const c_char {
        self.buf.as_ptr().cast()
    }
}

/// Opens `path` (relative) as if `root` were "/": symlinks and ".." cannot leave it.
fn open_in_root(root: RawFd, path: *const c_char) -> c_int {
    crate::sys::openat2_raw(root, path, libc::O_PATH | libc::O_CLOEXEC, libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS)
}

/// Resolves `p` inside `root`, creating missing components (directories, and for the last
/// one `create`), and returns an O_PATH descriptor of it, or -1 with errno set.
fn resolve(root: RawFd, p: &RootPath, create: Option<Create>) -> c_int {
    resolve_components(root, &p.prefixes, &p.names, create)
}

/// Resolves (creating directories) the parent of `p`; returns its descriptor and the index of
/// `p`'s last name.
fn resolve_parent(root: RawFd, p: &RootPath) -> (c_int, usize) {
    let last = p.prefixes.len() - 1;
    if last == 0 {
        return (unsafe { libc::fcntl(root, libc::F_DUPFD_CLOEXEC, 0) }, 0);
    }
    (resolve_components(root, &p.prefixes[..last], &p.names[..last], Some(Create::Dir)), last)
}

fn resolve_components(root: RawFd, prefixes: &[CString], names: &[CString], create: Option<Create>) -> c_int {
    let last = prefixes.len() - 1;
    let fd = open_in_root(root, prefixes[last].as_ptr());
    if fd >= 0 || errno() != libc::ENOENT || create.is_none() {
        return fd;
    }
    // Walk from the top, creating what is missing. Each new entry is made in the descriptor
    // of its resolved parent, so it lands inside the root whatever symlinks the image has.
    let mut parent: c_int = -1;
    for i in 0..=last {
        let dir = if parent >= 0 { parent } else { root };
        let mut fd = open_in_root(root, prefixes[i].as_ptr());
        if fd < 0 && errno() == libc::ENOENT {
            let made = if i == last && create == Some(Create::File) {
                let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
                let f = unsafe { libc::openat(dir, names[i].as_ptr(), flags, 0o644) };
                close_if(f);
                f
            } else {
                unsafe { libc::mkdirat(dir, names[i].as_ptr(), 0o755) }
            };
            if made < 0 && errno() != libc::EEXIST {
                let e = errno();
                close_if(parent);
                set_errno(e);
                return -1;
            }
            fd = open_in_root(root, prefixes[i].as_ptr());
        }
        let e = errno();
        close_if(parent);
        if fd < 0 {
            set_errno(e);
            return -1;
        }
        parent = fd;
    }
    parent
}

fn close_if(fd: c_int) {
    if fd >= 0 {
        unsafe { libc::close(fd) };
    }
}

fn set_errno(e: i32) {
    unsafe { *libc::__errno_location() = e };
}

fn mount_raw(source: *const c_char, target: *const c_char, fstype: *const c_char, flags: c_ulong, data: *const c_char) -> c_int {
    unsafe { libc::mount(source, target, fstype, flags, data.cast()) }
}

fn opt_ptr(s: &Option<CString>) -> *const c_char {
    s.as_ref().map_or(std::ptr::null(), |c| c.as_ptr())
}

/// The MS_* flags currently in effect on the mount holding `fd`.
fn mount_flags_of(fd: RawFd) -> c_ulong {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatvfs(fd, &mut st) } != 0 {
        return 0;
    }
    super::mounts::flags_from_statfs(st.f_flag as u64)
}

fn path_mount_flags(path: *const c_char) -> c_ulong {
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(path, &mut st) } != 0 {
        return 0;
    }
    super::mounts::flags_from_statfs(st.f_flag as u64)
}

/// The container's main process: set up everything, report ready, wait at the gate, exec.
///
/// # Safety
/// Must only be called in a freshly forked child of a single-threaded parent.
pub unsafe fn container_main(plan: &ContainerPlan, io: &ChildIo) -> ! {
    unsafe {
        setup_process(io);
        enter(&plan.process, plan.pid_ns.as_deref().map(|f| f.as_raw_fd()), io);
        let mask_source = rootfs(&plan.rootfs, io);
        let userns = plan.process.userns.as_ref().map_or(-1, |f| f.as_raw_fd());
        fork_process(io, plan.new_pid_ns, &[io.status, io.gate, userns, mask_source, lsm_dir(&plan.process)]);
        after_pivot(&plan.rootfs, mask_source, io);
        early(&plan.process, io);
        finish(&plan.process, io)
    }
}

/// A process exec'd into a running container.
///
/// # Safety
/// Must only be called in a freshly forked child of a single-threaded parent.
pub unsafe fn exec_main(plan: &ProcessPlan, pid_ns: Option<RawFd>, io: &ChildIo) -> ! {
    unsafe {
        setup_process(io);
        enter(plan, pid_ns, io);
        fork_process(io, false, &[io.status, lsm_dir(plan)]);
        early(plan, io);
        finish(plan, io)
    }
}

/// The procfs directory the process's security labels are written through, kept across the
/// fork into the PID namespace (-1 when there are none).
fn lsm_dir(p: &ProcessPlan) -> RawFd {
    p.lsm.proc_dir.as_ref().map_or(-1, |f| f.as_raw_fd())
}

/// The set-up process (a child of the monitor, in the monitor's PID namespace, which nothing in
/// a container sees) is not dumpable, which its forked process inherits until execve: its /proc
/// files are root's and need CAP_SYS_PTRACE. It dies with the monitor.
unsafe fn setup_process(io: &ChildIo) {
    check!(io, Stage::Dumpable, 0, unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) });
    check!(io, Stage::ParentDeath, 0, unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) });
}

/// Cgroup and namespaces: everything but the PID namespace, which the process is forked into
/// last (see `fork_process`). `pid_ns` is joined (for children) before any user namespace in
/// the plan's list: joining a PID namespace owned by the node's needs the node's privileges.
unsafe fn enter(p: &ProcessPlan, pid_ns: Option<RawFd>, io: &ChildIo) {
    // Device nodes and mountpoints get exactly the modes asked for.
    unsafe { libc::umask(0) };

    for (i, fd) in p.cgroup_procs.iter().enumerate() {
        loop {
            let n = unsafe { libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) };
            if n == 1 {
                break;
            }
            if n < 0 && errno() == libc::EINTR {
                continue;
            }
            unsafe { fail(io, Stage::CgroupJoin, i, errno()) }
        }
    }
    let mut pid_joined = pid_ns.is_none();
    for (i, (fd, flag, _)) in p.setns.iter().enumerate() {
        if *flag == libc::CLONE_NEWUSER && !pid_joined {
            check!(io, Stage::JoinPidns, 0, unsafe { libc::setns(pid_ns.unwrap_or(-1), libc::CLONE_NEWPID) });
            pid_joined = true;
        }
        check!(io, Stage::Setns, i, unsafe { libc::setns(fd.as_raw_fd(), *flag) });
    }
    if let (Some(fd), false) = (pid_ns, pid_joined) {
        check!(io, Stage::JoinPidns, 0, unsafe { libc::setns(fd, libc::CLONE_NEWPID) });
    }
    if p.unshare_cgroup {
        check!(io, Stage::UnshareCgroup, 0, unsafe { libc::unshare(libc::CLONE_NEWCGROUP) });
    }
}

/// Forks the process that becomes the container's (or exec's) into the PID namespace joined for
/// children (as its init with `new_pid_ns`), as a child of the monitor (CLONE_PARENT), so the
/// monitor reaps it and gets its exit status. The set-up process reports its pid and exits; the
/// new process returns with stdio in place and no other descriptor than `keep`. It is visible in
/// its PID namespace from here on, after its mounts are the container's.
unsafe fn fork_process(io: &ChildIo, new_pid_ns: bool, keep: &[RawFd]) {
    let ordered = io.forked == io.status;
    let mut hold = [-1 as c_int; 2];
    if ordered {
        check!(io, Stage::Fork, 0, unsafe { libc::pipe2(hold.as_mut_ptr(), libc::O_CLOEXEC) });
    }
    // Stdio in place and every other descriptor of the monitor's closed before the fork: the
    // forked process is visible in the container's PID namespace from its first instruction.
    for (i, (from, to)) in [(io.stdin, 0), (io.stdout, 1), (io.stderr, 2)].into_iter().enumerate() {
        if from == to {
            check!(io, Stage::Stdio, i, unsafe { libc::fcntl(to, libc::F_SETFD, 0) });
        } else {
            check!(io, Stage::Stdio, i, unsafe { libc::dup2(from, to) });
        }
    }
    let mut kept = [-1 as c_int; 10];
    let mut n = 0;
    for fd in keep.iter().chain([io.forked, hold[0], hold[1]].iter()) {
        if *fd >= 0 && n < kept.len() {
            kept[n] = *fd;
            n += 1;
        }
    }
    check!(io, Stage::CloseFds, 0, unsafe { close_all_but(&mut kept[..n]) });
    let flags = libc::CLONE_PARENT | if new_pid_ns { libc::CLONE_NEWPID } else { 0 };
    let pid = check!(io, Stage::Fork, 0, unsafe { libc::syscall(libc::SYS_clone, flags as c_ulong, 0usize, 0usize, 0usize, 0usize) } as c_int);
    if pid > 0 {
        write_record(io.forked, Record { kind: KIND_FORKED, index: pid as u32, ..Default::default() });
        unsafe { libc::_exit(0) }
    }
    // A fresh process: its parent death signal is not inherited.
    check!(io, Stage::ParentDeath, 0, unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) });
    if ordered {
        unsafe { libc::close(hold[1]) };
        // EOF once the set-up process exited: its report is in the pipe before anything of ours.
        let mut b = [0u8; 1];
        while unsafe { libc::read(hold[0], b.as_mut_ptr().cast(), 1) } < 0 && errno() == libc::EINTR {}
        unsafe { libc::close(hold[0]) };
    } else {
        unsafe { libc::close(io.forked) };
    }
}

/// Closes every descriptor from 3 on except those in `keep` (sorted here): a descriptor the
/// monitor holds (sockets, other containers' pipes and namespaces) must not be reachable
/// through /proc/<pid>/fd of a process in a container, not even until execve.
unsafe fn close_all_but(keep: &mut [c_int]) -> c_int {
    keep.sort_unstable();
    let mut from: c_int = 3;
    let close = |lo: c_int, hi: c_uint| -> c_int {
        let r = unsafe { libc::syscall(libc::SYS_close_range, lo as c_uint, hi, 0 as c_uint) } as c_int;
        if r == 0 || errno() != libc::ENOSYS {
            return r;
        }
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let max = lim.rlim_cur.min(hi as libc::rlim_t + 1).min(1 << 20) as c_int;
        for fd in lo..max {
            unsafe { libc::close(fd) };
        }
        0
    };
    for &k in keep.iter() {
        if k < from {
            continue;
        }
        if k > from && close(from, (k - 1) as c_uint) != 0 {
            return -1;
        }
        from = k + 1;
    }
    close(from, c_uint::MAX)
}

/// Signals, session and stdio, in the process that execs.
unsafe fn early(p: &ProcessPlan, io: &ChildIo) {
    // The parent blocks the signals it reads through a signalfd and ignores SIGPIPE; a
    // container starts with everything default and unblocked. Handlers the parent installed
    // are reset by execve; ignored signals would stay ignored, so they are reset here.
    for &sig in &p.ignored_signals {
        let mut act: libc::sigaction = unsafe { std::mem::zeroed() };
        act.sa_sigaction = libc::SIG_DFL;
        unsafe { libc::sigaction(sig, &act, std::ptr::null_mut()) };
    }
    let mut empty: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe { libc::sigemptyset(&mut empty) };
    check!(io, Stage::Signals, 0, unsafe { libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut()) });

    // Its own session and process group: signals to the group reach everything it starts,
    // and a terminal can become its controlling terminal.
    check!(io, Stage::Session, 0, unsafe { libc::setsid() });
    // And its own (anonymous) session keyring, as runc gives every container process: the
    // monitor's would otherwise be shared by all of the pod's containers and the host session.
    // A kernel without keys support has nothing to share.
    let name = p.keyring.as_ref().map_or(std::ptr::null(), |n| n.as_ptr());
    if unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_JOIN_SESSION_KEYRING, name) } < 0 && errno() != libc::ENOSYS {
        unsafe { fail(io, Stage::Keyring, 0, errno()) }
    }
    if io.tty {
        // Stdio is the terminal's slave side already (see `fork_process`).
        check!(io, Stage::Stdio, 0, unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) });
    }
    // Nothing but stdio survives execve.
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, libc::CLOSE_RANGE_CLOEXEC) };
    if r != 0 {
        let mut lim: libc::rlimit = unsafe { std::mem::zeroed() };
        unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
        let max = if lim.rlim_cur > 65_536 { 65_536 } else { lim.rlim_cur as c_int };
        for fd in 3..max {
            unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
        }
    }

    if let Some(adj) = &p.oom_score_adj {
        let fd = unsafe { libc::open(c"/proc/self/oom_score_adj".as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC) };
        if fd >= 0 {
            let bytes = adj.as_bytes();
            // Lowering it needs CAP_SYS_RESOURCE; without it the current value stays.
            unsafe { libc::write(fd, bytes.as_ptr().cast(), bytes.len()) };
            unsafe { libc::close(fd) };
        }
    }
}

/// Assembles the root filesystem and pivots into it.
/// Assembles the root and pivots into it; returns the detached copy of the host's /dev/null the
/// masks are made from (-1 without masked paths), for `after_pivot`.
unsafe fn rootfs(r: &RootfsPlan, io: &ChildIo) -> c_int {
    // Before anything is mounted: nothing may propagate back to the host.
    check!(io, Stage::RootPropagation, 0, mount_raw(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), r.root_propagation, std::ptr::null()));
    if let Some(parent) = &r.rootfs_parent_private {
        check!(io, Stage::RootPropagation, 1, mount_raw(std::ptr::null(), parent.as_ptr(), std::ptr::null(), libc::MS_PRIVATE, std::ptr::null()));
    }
    if let Some(dir) = &r.overlay_chdir {
        check!(io, Stage::Overlay, 0, unsafe { libc::chdir(dir.as_ptr()) });
    }
    if let Some(userns) = &r.idmap_userns {
        for (i, (src, at)) in r.idmap_layers.iter().enumerate() {
            check!(io, Stage::IdmapMount, i, unsafe { idmapped_bind(src.as_ptr(), libc::AT_FDCWD, at.as_ptr(), userns.as_raw_fd(), false) });
        }
    }
    check!(io, Stage::Overlay, 0, mount_raw(c"overlay".as_ptr(), r.rootfs_dir.as_ptr(), c"overlay".as_ptr(), 0, r.overlay_data.as_ptr()));
    let root = check!(io, Stage::RootfsOpen, 0, unsafe { libc::open(r.rootfs_dir.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) });

    for (i, op) in r.ops.iter().enumerate() {
        if r.in_pid_ns[i] {
            // Mounted by the container's process, in its PID namespace (see `after_pivot`); its
            // mountpoint is made now, while the root may still be written.
            if let RootfsOp::Mount { target, create, .. } = op {
                let fd = check!(io, Stage::MountTarget, i, resolve(root, target, Some(*create)));
                unsafe { libc::close(fd) };
            }
            continue;
        }
        unsafe { rootfs_op(r, root, i, op, io) };
    }
    if let Some(cwd) = &r.cwd {
        let fd = check!(io, Stage::Cwd, 0, resolve(root, cwd, Some(Create::Dir)));
        unsafe { libc::close(fd) };
    }

    if io.hooks_gate >= 0 {
        // createContainer hooks run now, in this mount namespace, where the bundle's rootfs
        // directory shows the assembled root (it is an empty directory on the host).
        write_record(io.status, Record { kind: KIND_HOOKS, ..Default::default() });
        unsafe { wait_gate(io.hooks_gate) };
    }

    // Masks are bind mounts of the host's /dev/null, taken now as a detached copy: after the
    // pivot, the container's /dev may be anything (a volume, or a node the image planted), and a
    // mask that cannot find its source must not be skipped.
    let mask_source = if r.masked_paths.is_empty() { -1 } else { unsafe { open_mask_source(io) } };

    // pivot_root(".", ".") stacks the old root on top of the new one; detaching it leaves the
    // container with no reference to the host's mounts. The old root is made a slave first so
    // the detach cannot propagate anywhere.
    // The old root is reached through a descriptor opened before the pivot: after pivot_root(".",
    // ".") the working directory is still the new root, and changing its propagation would turn
    // the container's own mounts (bidirectional volumes) into slaves.
    let old_root = check!(io, Stage::Pivot, 0, unsafe { libc::open(c"/".as_ptr(), libc::O_DIRECTORY | libc::O_RDONLY | libc::O_CLOEXEC) });
    check!(io, Stage::Pivot, 0, unsafe { libc::fchdir(root) });
    check!(io, Stage::Pivot, 1, unsafe { libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) } as c_int);
    check!(io, Stage::Pivot, 2, unsafe { libc::fchdir(old_root) });
    check!(io, Stage::Pivot, 2, mount_raw(std::ptr::null(), c".".as_ptr(), std::ptr::null(), libc::MS_SLAVE | libc::MS_REC, std::ptr::null()));
    check!(io, Stage::Pivot, 3, unsafe { libc::umount2(c".".as_ptr(), libc::MNT_DETACH) });
    check!(io, Stage::Pivot, 4, unsafe { libc::chdir(c"/".as_ptr()) });
    unsafe {
        libc::close(old_root);
        libc::close(root);
    }
    mask_source
}

/// What is mounted after pivot_root, by the container's process: /proc (it shows the PID
/// namespace of the process that mounts it) and whatever is below it, then the read-only and
/// masked paths (mostly under /proc) and the read-only root.
unsafe fn after_pivot(r: &RootfsPlan, mask_source: c_int, io: &ChildIo) {
    if r.in_pid_ns.iter().any(|d| *d) {
        let root = check!(io, Stage::RootfsOpen, 0, unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) });
        for (i, op) in r.ops.iter().enumerate() {
            if r.in_pid_ns[i] {
                unsafe { rootfs_op(r, root, i, op, io) };
            }
        }
        unsafe { libc::close(root) };
    }
    for (i, p) in r.readonly_paths.iter().enumerate() {
        if mount_raw(p.as_ptr(), p.as_ptr(), std::ptr::null(), libc::MS_BIND | libc::MS_REC, std::ptr::null()) != 0 {
            if errno() == libc::ENOENT {
                continue;
            }
            unsafe { fail(io, Stage::ReadonlyPath, i, errno()) }
        }
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | path_mount_flags(p.as_ptr());
        check!(io, Stage::ReadonlyPath, i, mount_raw(std::ptr::null(), p.as_ptr(), std::ptr::null(), flags, std::ptr::null()));
    }
    // The first mask attaches the detached copy; later ones clone that mount, which is now in
    // this namespace.
    let mut mask_attached = false;
    for (i, p) in r.masked_paths.iter().enumerate() {
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::stat(p.as_ptr(), &mut st) } != 0 {
            // Not in this kernel (or not in the container's /proc): nothing to hide.
            if errno() == libc::ENOENT {
                continue;
            }
            unsafe { fail(io, Stage::MaskedPath, i, errno()) }
        }
        if st.st_mode & libc::S_IFMT == libc::S_IFDIR {
            check!(io, Stage::MaskedPath, i, mount_raw(c"tmpfs".as_ptr(), p.as_ptr(), c"tmpfs".as_ptr(), libc::MS_RDONLY, std::ptr::null()));
            continue;
        }
        let source = if mask_attached { open_tree_clone(mask_source) } else { mask_source };
        if source < 0 {
            unsafe { fail(io, Stage::MaskSource, i, errno()) }
        }
        let rc = unsafe { libc::syscall(libc::SYS_move_mount, source, c"".as_ptr(), libc::AT_FDCWD, p.as_ptr(), MOVE_MOUNT_F_EMPTY_PATH) };
        let e = errno();
        if source != mask_source {
            unsafe { libc::close(source) };
        }
        if rc != 0 {
            unsafe { fail(io, Stage::MaskedPath, i, e) }
        }
        mask_attached = true;
    }
    close_if(mask_source);
    if r.readonly_root {
        let fd = unsafe { libc::open(c"/".as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        let keep = if fd >= 0 { mount_flags_of(fd) } else { 0 };
        close_if(fd);
        let flags = libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | keep;
        check!(io, Stage::ReadonlyRoot, 0, mount_raw(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), flags, std::ptr::null()));
    }
}

/// One step of assembling the root filesystem `root` (a descriptor of its top directory).
unsafe fn rootfs_op(r: &RootfsPlan, root: c_int, i: usize, op: &RootfsOp, io: &ChildIo) {
    match op {
        RootfsOp::Mount { target, create, source, fstype, flags, data, remount, propagation, recursive_readonly, idmap } => {
            let fd = check!(io, Stage::MountTarget, i, resolve(root, target, Some(*create)));
            let path = FdPath::new(fd);
            if *idmap {
                let userns = r.idmap_userns.as_ref().map_or(-1, |f| f.as_raw_fd());
                let src = opt_ptr(source);
                check!(io, Stage::Mount, i, unsafe { idmapped_bind(src, fd, c"".as_ptr(), userns, *flags & libc::MS_REC != 0) });
            } else if r.in_pid_ns[i] {
                // After pivot_root, where /proc (and so /proc/self/fd) may not be mounted yet:
                // mounted on the working directory instead.
                check!(io, Stage::Mount, i, unsafe { libc::fchdir(fd) });
                check!(io, Stage::Mount, i, mount_raw(opt_ptr(source), c".".as_ptr(), opt_ptr(fstype), *flags, opt_ptr(data)));
                check!(io, Stage::Mount, i, unsafe { libc::chdir(c"/".as_ptr()) });
            } else {
                check!(io, Stage::Mount, i, mount_raw(opt_ptr(source), path.as_ptr(), opt_ptr(fstype), *flags, opt_ptr(data)));
            }
            unsafe { libc::close(fd) };
            if remount.is_some() || !propagation.is_empty() || *recursive_readonly {
                // The descriptor named the mountpoint underneath; reopen to reach the new mount.
                let fd = check!(io, Stage::MountTarget, i, resolve(root, target, None));
                let path = FdPath::new(fd);
                if let Some(extra) = remount {
                    let flags = libc::MS_BIND | libc::MS_REMOUNT | extra;
                    check!(io, Stage::Remount, i, mount_raw(std::ptr::null(), path.as_ptr(), std::ptr::null(), flags, std::ptr::null()));
                }
                for p in propagation {
                    check!(io, Stage::MountPropagation, i, mount_raw(std::ptr::null(), path.as_ptr(), std::ptr::null(), *p, std::ptr::null()));
                }
                if *recursive_readonly {
                    // Mounts under a bind source come along with rbind; ro on the top one
                    // leaves them writable, so every one of them is made read-only.
                    let attr = MountAttr { attr_set: MOUNT_ATTR_RDONLY, attr_clr: 0, propagation: 0, userns_fd: 0 };
                    check!(io, Stage::RecursiveReadonly, i, unsafe {
                        libc::syscall(libc::SYS_mount_setattr, fd, c"".as_ptr(), libc::AT_EMPTY_PATH | AT_RECURSIVE, &attr as *const MountAttr, std::mem::size_of::<MountAttr>())
                    } as c_int);
                }
                unsafe { libc::close(fd) };
            }
        }
        RootfsOp::Remount { target, flags } => {
            let fd = check!(io, Stage::MountTarget, i, resolve(root, target, None));
            let path = FdPath::new(fd);
            check!(io, Stage::Remount, i, mount_raw(std::ptr::null(), path.as_ptr(), std::ptr::null(), libc::MS_REMOUNT | flags, std::ptr::null()));
            unsafe { libc::close(fd) };
        }
        RootfsOp::Device { target, mode, dev, uid, gid, host_paths } => {
            let (dir, n) = resolve_parent(root, target);
            if dir < 0 {
                unsafe { fail(io, Stage::Device, i, errno()) }
            }
            let name = target.names[n].as_ptr();
            if unsafe { libc::mknodat(dir, name, *mode, *dev) } != 0 {
                match errno() {
                    libc::EEXIST => {}
                    libc::EPERM => {
                        // No mknod (no CAP_MKNOD in the node's user namespace): bind the node's
                        // own node for this device, never whatever the container's path names
                        // on the node.
                        let source = check!(io, Stage::Device, i, open_device_node(host_paths, *mode, *dev));
                        let f = unsafe { libc::openat(dir, name, libc::O_CREAT | libc::O_WRONLY | libc::O_NOFOLLOW | libc::O_CLOEXEC, 0o644) };
                        if f < 0 {
                            unsafe { fail(io, Stage::Device, i, errno()) }
                        }
                        unsafe { libc::close(f) };
                        let fd = check!(io, Stage::Device, i, resolve(root, target, None));
                        let (from, to) = (FdPath::new(source), FdPath::new(fd));
                        check!(io, Stage::Device, i, mount_raw(from.as_ptr(), to.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()));
                        unsafe {
                            libc::close(fd);
                            libc::close(source);
                        }
                    }
                    e => unsafe { fail(io, Stage::Device, i, e) },
                }
            }
            check!(io, Stage::Device, i, unsafe { libc::fchownat(dir, name, *uid, *gid, libc::AT_SYMLINK_NOFOLLOW) });
            unsafe { libc::close(dir) };
        }
        RootfsOp::Symlink { target, link } => {
            let (dir, n) = resolve_parent(root, target);
            if dir < 0 {
                unsafe { fail(io, Stage::Symlink, i, errno()) }
            }
            if unsafe { libc::symlinkat(link.as_ptr(), dir, target.names[n].as_ptr()) } != 0 && errno() != libc::EEXIST {
                unsafe { fail(io, Stage::Symlink, i, errno()) }
            }
            unsafe { libc::close(dir) };
        }
    }
}

/// An O_PATH descriptor of the first of `candidates` that is a device node of `mode`'s type
/// with number `dev`; -1 with ENODEV when none is. Async-signal-safe.
pub(super) fn open_device_node(candidates: &[CString], mode: libc::mode_t, dev: libc::dev_t) -> c_int {
    for path in candidates {
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_CLOEXEC) };
        if fd < 0 {
            continue;
        }
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } == 0 && st.st_mode & libc::S_IFMT == mode & libc::S_IFMT && st.st_rdev == dev {
            return fd;
        }
        unsafe { libc::close(fd) };
    }
    set_errno(libc::ENODEV);
    -1
}

const OPEN_TREE_CLONE: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;
const MOVE_MOUNT_T_EMPTY_PATH: libc::c_uint = 0x40;
const MOUNT_ATTR_IDMAP: u64 = 0x0010_0000;

/// Bind-mounts `source` on `target` (a path, or with an empty path the directory `target_fd`
/// names) through a detached copy mapped into `userns`. Returns -1 with errno set on failure,
/// like the system calls it makes.
unsafe fn idmapped_bind(source: *const c_char, target_fd: c_int, target: *const c_char, userns: RawFd, recursive: bool) -> c_int {
    let rec = if recursive { AT_RECURSIVE as libc::c_uint } else { 0 };
    let tree = unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, source, OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | rec) } as c_int;
    if tree < 0 {
        return -1;
    }
    let attr = MountAttr { attr_set: MOUNT_ATTR_IDMAP, attr_clr: 0, propagation: 0, userns_fd: userns as u64 };
    let flags = libc::AT_EMPTY_PATH | if recursive { AT_RECURSIVE } else { 0 };
    let mut rc = unsafe { libc::syscall(libc::SYS_mount_setattr, tree, c"".as_ptr(), flags, &attr as *const MountAttr, std::mem::size_of::<MountAttr>()) } as c_int;
    if rc == 0 {
        // A /proc/self/fd path of an O_PATH descriptor is refused as a move_mount target: the
        // descriptor itself is passed instead.
        let t_empty = if target_fd == libc::AT_FDCWD { 0 } else { MOVE_MOUNT_T_EMPTY_PATH };
        rc = unsafe { libc::syscall(libc::SYS_move_mount, tree, c"".as_ptr(), target_fd, target, MOVE_MOUNT_F_EMPTY_PATH | t_empty) } as c_int;
    }
    let e = errno();
    unsafe { libc::close(tree) };
    set_errno(e);
    rc
}

/// A detached copy of the host's /dev/null, checked to be the null device, for masked paths.
unsafe fn open_mask_source(io: &ChildIo) -> c_int {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint;
    let tree = check!(io, Stage::MaskSource, 0, unsafe { libc::syscall(libc::SYS_open_tree, libc::AT_FDCWD, c"/dev/null".as_ptr(), flags) } as c_int);
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    check!(io, Stage::MaskSource, 0, unsafe { libc::fstat(tree, &mut st) });
    if st.st_mode & libc::S_IFMT != libc::S_IFCHR || st.st_rdev != libc::makedev(1, 3) {
        unsafe { fail(io, Stage::MaskSource, 0, libc::ENODEV) }
    }
    tree
}

/// A new detached copy of the mount `fd` names (-1 with errno set on failure).
fn open_tree_clone(fd: c_int) -> c_int {
    let flags = OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | libc::AT_EMPTY_PATH as libc::c_uint;
    unsafe { libc::syscall(libc::SYS_open_tree, fd, c"".as_ptr(), flags) as c_int }
}

/// Waits for one byte on `gate` and closes it. A gate closed unopened means the container is
/// being torn down (or the monitor died before the death signal was armed).
unsafe fn wait_gate(gate: RawFd) {
    let mut b = [0u8; 1];
    loop {
        let n = unsafe { libc::read(gate, b.as_mut_ptr().cast(), 1) };
        if n == 1 {
            break;
        }
        if n < 0 && errno() == libc::EINTR {
            continue;
        }
        unsafe { libc::_exit(ABANDONED_EXIT) }
    }
    unsafe { libc::close(gate) };
}

/// Limits, privileges, identity, then the gate and execve.
unsafe fn finish(p: &ProcessPlan, io: &ChildIo) -> ! {
    for (i, r) in p.rlimits.iter().enumerate() {
        let mut want = r.limit;
        if unsafe { libc::prlimit(0, r.resource as _, &want, std::ptr::null_mut()) } != 0 {
            if errno() != libc::EPERM {
                unsafe { fail(io, Stage::Rlimit, i, errno()) }
            }
            // Raising a hard limit needs CAP_SYS_RESOURCE: keep the current hard limit.
            let mut cur: libc::rlimit = unsafe { std::mem::zeroed() };
            check!(io, Stage::Rlimit, i, unsafe { libc::prlimit(0, r.resource as _, std::ptr::null(), &mut cur) });
            if want.rlim_max > cur.rlim_max {
                want.rlim_max = cur.rlim_max;
            }
            if want.rlim_cur > want.rlim_max {
                want.rlim_cur = want.rlim_max;
            }
            check!(io, Stage::Rlimit, i, unsafe { libc::prlimit(0, r.resource as _, &want, std::ptr::null_mut()) });
        }
    }

    // The AppArmor profile or SELinux label the process takes at execve, set while it still has
    // the node's privileges and before no_new_privs.
    if let Err((i, e)) = unsafe { p.lsm.apply() } {
        unsafe { fail(io, Stage::Lsm, i, e) }
    }

    // Limits above are raised with the node's privileges; identity and capabilities below are
    // the user namespace's.
    if let Some(userns) = &p.userns {
        check!(io, Stage::JoinUserns, 0, unsafe { libc::setns(userns.as_raw_fd(), libc::CLONE_NEWUSER) });
    }
    if p.no_new_privs {
        check!(io, Stage::NoNewPrivs, 0, unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) });
    }
    // Without no_new_privs, installing a filter needs CAP_SYS_ADMIN, which may be dropped
    // below; with it, the filter goes in last so it only has to allow execve.
    if let (Some(s), false) = (&p.seccomp, p.no_new_privs) {
        check!(io, Stage::Seccomp, 0, unsafe { seccomp::install(&s.filter, s.flags) } as c_int);
    }

    if let Some(c) = &p.caps {
        for cap in 0..=c.last_cap {
            if !c.bounding.contains(cap) {
                check!(io, Stage::CapBounding, cap as usize, unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as c_ulong, 0, 0, 0) });
            }
        }
        // Keep the permitted set across the switch to a non-root uid; capset trims it below.
        check!(io, Stage::Capset, 0, unsafe { libc::prctl(libc::PR_SET_KEEPCAPS, 1, 0, 0, 0) });
    }
    check!(io, Stage::Groups, 0, unsafe { libc::syscall(libc::SYS_setgroups, p.groups.len(), p.groups.as_ptr()) } as c_int);
    check!(io, Stage::Setgid, 0, unsafe { libc::syscall(libc::SYS_setresgid, p.gid, p.gid, p.gid) } as c_int);
    check!(io, Stage::Setuid, 0, unsafe { libc::syscall(libc::SYS_setresuid, p.uid, p.uid, p.uid) } as c_int);
    if let Some(c) = &p.caps {
        unsafe { apply_caps(c, io) };
    }

    // The monitor holds the container's output and exit status: without it the container
    // cannot be managed, so it goes down with it (as does the pod's init). Set after the
    // credential change, which clears it.
    check!(io, Stage::ParentDeath, 0, unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as c_ulong, 0, 0, 0) });
    check!(io, Stage::Chdir, 0, unsafe { libc::chdir(p.cwd.as_ptr()) });
    unsafe { libc::umask(p.umask) };

    if io.gate >= 0 {
        write_record(io.status, Record { kind: KIND_READY, ..Default::default() });
        unsafe { wait_gate(io.gate) };
    }

    if let (Some(s), true) = (&p.seccomp, p.no_new_privs) {
        check!(io, Stage::Seccomp, 0, unsafe { seccomp::install(&s.filter, s.flags) } as c_int);
    }

    // PATH lookup the way execvp does it: a missing or non-directory candidate moves on to the
    // next; a permission problem is remembered and reported if nothing else works.
    let mut denied: Option<usize> = None;
    let mut last_err = libc::ENOENT;
    for (i, candidate) in p.candidates.iter().enumerate() {
        unsafe { libc::execve(candidate.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
        let e = errno();
        match e {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => {
                denied.get_or_insert(i);
            }
            _ => unsafe { fail(io, Stage::Exec, i, e) },
        }
        last_err = e;
    }
    match denied {
        Some(i) => unsafe { fail(io, Stage::Exec, i, libc::EACCES) },
        None => unsafe { fail(io, Stage::Exec, p.candidates.len().saturating_sub(1), if last_err == libc::ENOTDIR { libc::ENOTDIR } else { libc::ENOENT }) },
    }
}

unsafe fn apply_caps(c: &CapsPlan, io: &ChildIo) {
    let mut header = super::caps::CapUserHeader { version: super::caps::LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let split = |s: super::caps::CapSet| (s.0 as u32, (s.0 >> 32) as u32);
    let (e0, e1) = split(c.effective);
    let (p0, p1) = split(c.permitted);
    let (i0, i1) = split(c.inheritable);
    let data = [
        super::caps::CapUserData { effective: e0, permitted: p0, inheritable: i0 },
        super::caps::CapUserData { effective: e1, permitted: p1, inheritable: i1 },
    ];
    check!(io, Stage::Capset, 1, unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } as c_int);
    for cap in c.ambient.iter() {
        check!(io, Stage::Ambient, cap as usize, unsafe {
            libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_RAISE as c_ulong, cap as c_ulong, 0, 0)
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_round_trip() {
        let r = Record { kind: KIND_ERROR, stage: Stage::Mount as u32, index: 7, errno: libc::EPERM };
        assert_eq!(Record::from_bytes(&r.to_bytes()), r);
        assert_eq!(RECORD_SIZE, 16);
        for v in 1..=44 {
            assert_eq!(Stage::from_u32(v).map(|s| s as u32), Some(v));
        }
        assert_eq!(Stage::from_u32(0), None);
        assert_eq!(Stage::from_u32(45), None);
    }

    #[test]
    fn a_device_is_bound_from_a_node_with_its_own_number_never_from_another_at_its_path() {
        let null = libc::makedev(1, 3);
        let zero = libc::makedev(1, 5);
        // The container asked for 1:5 at /dev/null: /dev/null on the node is another device.
        let fd = open_device_node(&[c"/nonexistent".to_owned(), c"/dev/null".to_owned()], libc::S_IFCHR | 0o666, zero);
        assert_eq!((fd, errno()), (-1, libc::ENODEV));
        // A block device of the same number is not the character device either.
        assert_eq!(open_device_node(&[c"/dev/null".to_owned()], libc::S_IFBLK | 0o666, null), -1);
        // The kernel's /dev/char link (when the node has one) or the node at the path.
        let fd = open_device_node(&[c"/dev/char/1:5".to_owned(), c"/dev/zero".to_owned()], libc::S_IFCHR | 0o666, zero);
        assert!(fd >= 0);
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        assert_eq!(unsafe { libc::fstat(fd, &mut st) }, 0);
        assert_eq!(st.st_rdev, zero);
        unsafe { libc::close(fd) };
    }

    #[test]
    fn fd_paths_are_formatted_without_allocating() {
        for fd in [0, 7, 10, 123, 65535] {
            let p = FdPath::new(fd);
            let s = unsafe { std::ffi::CStr::from_ptr(p.as_ptr()) };
            assert_eq!(s.to_str().unwrap(), format!("/proc/self/fd/{}", fd));
        }
    }
}
