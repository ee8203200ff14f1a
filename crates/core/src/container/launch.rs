//! Forking container and exec processes from a prepared plan, and explaining their failures.

use std::io;
use std::os::fd::AsRawFd;

use super::child::{self, ChildIo, Record, Stage, RECORD_SIZE};
use super::plan::{errno_text, ContainerPlan, ExecPlan, ProcessPlan, RootfsPlan};
use crate::sys::cvt;

/// Forks the set-up process of a container: it gets the container's new namespaces (all but the
/// PID namespace), joins its cgroup, assembles and pivots into its root filesystem, then forks
/// the container's process into its PID namespace (`fork_process` in `child`), reports its pid
/// as a KIND_FORKED record on `io.status` and exits. The container's process reports ready (or
/// an error) on `io.status` too, and waits at `io.gate` before execve. Returns the set-up
/// process's pid; the container's process is the caller's child too.
///
/// The caller must be single-threaded: the children run plain system calls until execve.
pub fn spawn_container(plan: &ContainerPlan, io: &ChildIo) -> io::Result<libc::pid_t> {
    debug_assert_eq!(io.forked, io.status);
    // A raw clone behaves like fork but can create namespaces for the child.
    let flags = (plan.clone_flags | libc::SIGCHLD) as libc::c_ulong;
    let pid = cvt(unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) })?;
    if pid == 0 {
        unsafe { child::container_main(plan, io) }
    }
    Ok(pid as libc::pid_t)
}

/// Forks a process that enters a running container and execs there: a set-up process enters
/// its cgroup and namespaces, then forks the process into its PID namespace, so the process is
/// never seen in the container before it is in the container's mounts. Returns the pid of the
/// process that execs (the caller's child), once the set-up process is done and reaped; if the
/// set-up process failed, its own pid (unreaped; its error record is on `io.status`).
///
/// The caller must be single-threaded.
pub fn spawn_exec(plan: &ExecPlan, io: &ChildIo) -> io::Result<libc::pid_t> {
    let (report_r, report_w) = crate::sys::pipe_cloexec()?;
    let io = ChildIo { forked: report_w.as_raw_fd(), ..*io };
    let setup = cvt(unsafe { libc::fork() })?;
    if setup == 0 {
        unsafe { child::exec_main(&plan.process, plan.pid_ns.as_deref().map(|f| f.as_raw_fd()), &io) }
    }
    drop(report_w);
    let mut raw = [0u8; RECORD_SIZE];
    let mut got = 0;
    while got < RECORD_SIZE {
        match unsafe { libc::read(report_r.as_raw_fd(), raw[got..].as_mut_ptr().cast(), RECORD_SIZE - got) } {
            n if n > 0 => got += n as usize,
            n if n < 0 && crate::sys::errno(&io::Error::last_os_error()) == libc::EINTR => {}
            _ => break,
        }
    }
    if got < RECORD_SIZE {
        // It failed (and said why on the status pipe) or was killed: the caller reaps it.
        return Ok(setup);
    }
    let rec = Record::from_bytes(&raw);
    // It exits right after reporting.
    crate::sys::wait_pid(setup)?;
    Ok(rec.index as libc::pid_t)
}

/// Whether a set-up failure is the spec's fault (a missing binary, a bad mount option) rather
/// than the node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureKind {
    Spec,
    Runtime,
}

/// A readable account of an error record from a child.
pub fn describe_failure(process: &ProcessPlan, rootfs: Option<&RootfsPlan>, rec: &Record) -> (FailureKind, String) {
    let errno = rec.errno;
    let kind = match errno {
        libc::ENOENT | libc::ENOTDIR | libc::EACCES | libc::ENOEXEC | libc::EINVAL | libc::ELOOP | libc::ENAMETOOLONG
        | libc::EISDIR | libc::E2BIG => FailureKind::Spec,
        _ => FailureKind::Runtime,
    };
    let i = rec.index as usize;
    let Some(stage) = Stage::from_u32(rec.stage) else {
        return (FailureKind::Runtime, format!("container set-up failed at unknown step {}: {}", rec.stage, errno_text(errno)));
    };
    let op = || rootfs.and_then(|r| r.ops.get(i)).map_or_else(|| format!("rootfs step {}", i), |o| o.describe());
    let step = match stage {
        Stage::Exec => {
            let message = if process.program.contains('/') {
                format!("exec: {:?}: {}", process.program, errno_text(errno))
            } else if errno == libc::ENOENT {
                format!("exec: {:?}: executable file not found in $PATH", process.program)
            } else {
                let path = process.candidates.get(i).map_or_else(|| process.program.clone(), |c| c.to_string_lossy().into_owned());
                format!("exec: {:?}: {}", path, errno_text(errno))
            };
            return (kind, message);
        }
        Stage::Signals => "reset signal mask".to_owned(),
        Stage::CgroupJoin => "join cgroup".to_owned(),
        Stage::Setns => format!("join {} namespace", process.setns.get(i).map_or("a", |s| s.2)),
        Stage::UnshareCgroup => "create cgroup namespace".to_owned(),
        Stage::Session => "create session".to_owned(),
        Stage::Stdio => "set up stdio".to_owned(),
        Stage::RootPropagation => "make the mount namespace private".to_owned(),
        Stage::Overlay => "mount the overlay root filesystem".to_owned(),
        Stage::RootfsOpen => "open the root filesystem".to_owned(),
        Stage::MountTarget => format!("{}: resolve target", op()),
        Stage::Mount => op(),
        Stage::Remount => format!("{}: remount", op()),
        Stage::MountPropagation => format!("{}: set propagation", op()),
        Stage::Device | Stage::Symlink => op(),
        Stage::Cwd => "create the working directory".to_owned(),
        Stage::Pivot => "pivot_root".to_owned(),
        Stage::ReadonlyPath => format!(
            "make {} read-only",
            rootfs.and_then(|r| r.readonly_paths.get(i)).map_or_else(String::new, |p| p.to_string_lossy().into_owned())
        ),
        Stage::MaskedPath => format!(
            "mask {}",
            rootfs.and_then(|r| r.masked_paths.get(i)).map_or_else(String::new, |p| p.to_string_lossy().into_owned())
        ),
        Stage::ReadonlyRoot => "make the root filesystem read-only".to_owned(),
        Stage::OomScoreAdj => "set oom_score_adj".to_owned(),
        Stage::Rlimit => format!("set {}", process.rlimits.get(i).map_or("rlimit", |r| r.name.as_str())),
        Stage::NoNewPrivs => "set no_new_privs".to_owned(),
        Stage::Seccomp => "install the seccomp filter".to_owned(),
        Stage::CapBounding => format!("drop {} from the bounding set", super::caps::name(i as u32).unwrap_or("a capability")),
        Stage::Groups => format!("set supplementary groups {:?}", process.groups),
        Stage::Setgid => format!("set gid {}", process.gid),
        Stage::Setuid => format!("set uid {}", process.uid),
        Stage::Capset => "set capabilities".to_owned(),
        Stage::Ambient => format!("raise ambient {}", super::caps::name(i as u32).unwrap_or("capability")),
        Stage::ParentDeath => "set the parent death signal".to_owned(),
        Stage::Chdir => format!("chdir to {}", process.cwd.to_string_lossy()),
        Stage::Gate => "wait for start".to_owned(),
        Stage::CloseFds => "close descriptors".to_owned(),
        Stage::Keyring => "create a session keyring".to_owned(),
        Stage::RecursiveReadonly => format!("{}: make read-only recursively", op()),
        Stage::IdmapMount => format!("id-mapped mount {}", rootfs.and_then(|r| r.idmap_layers.get(i)).map_or_else(op, |(src, _)| src.to_string_lossy().into_owned())),
        Stage::JoinUserns => "join the pod's user namespace".to_owned(),
        Stage::MaskSource => "take the host's /dev/null to mask paths with".to_owned(),
        Stage::Lsm => process.lsm.describe(i),
        Stage::JoinPidns => "join the PID namespace".to_owned(),
        Stage::Fork => "fork the process into its PID namespace".to_owned(),
        Stage::Dumpable => "make the set-up process non-dumpable".to_owned(),
    };
    (kind, format!("{}: {}", step, errno_text(errno)))
}
