//! The pod's init: PID 1 of the pod's PID namespace.
//!
//! It exists so that containers are never PID 1 (they keep default signal semantics) and so
//! that processes orphaned inside the pod are reaped. It runs until the monitor releases it
//! (writes to or closes the release pipe) or dies (the pipe reaches EOF, and PR_SET_PDEATHSIG
//! kills it outright). When it exits, the kernel kills everything left in the namespace.
//!
//! Every container of the pod sees it as /proc/1, so it holds nothing of the node: before it
//! serves, it moves to its own mount namespace whose only mount is an empty read-only 0555
//! tmpfs (its root and working directory), has /dev/null as stdio, drops every capability and
//! the bounding set, sets no_new_privs, is not dumpable (its /proc files are root's and need
//! CAP_SYS_PTRACE) and runs under a seccomp filter allowing only what its loop calls.

use std::cell::Cell;
use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use crisp_core::container::caps::{self, CapUserData, CapUserHeader, LINUX_CAPABILITY_VERSION_3};
use crisp_core::container::seccomp;
use crisp_core::container::spec::{Seccomp, SeccompSyscall};
use crisp_core::sys::{self, SigSet, SignalFd};

/// The descriptor the release pipe is moved to inside the init.
const RELEASE_FD: RawFd = 3;
/// The descriptor its set-up report goes to (closed once it serves).
const REPORT_FD: RawFd = 4;

/// What the init's loop calls, and what the Rust runtime may call on its error path.
const ALLOWED_SYSCALLS: &[&str] = &[
    "read", "write", "close", "poll", "ppoll", "wait4", "waitid", "exit", "exit_group", "rt_sigreturn",
    "restart_syscall", "brk", "mmap", "munmap", "madvise", "futex", "sigaltstack", "rt_sigprocmask",
];

/// A running pod init, as seen from the monitor.
pub struct PodInit {
    pub pid: libc::pid_t,
    /// Write end of the release pipe; dropping it tells the init to exit.
    release: Option<OwnedFd>,
}

impl PodInit {
    /// Tells the init to exit. Idempotent.
    pub fn release(&mut self) {
        self.release = None;
    }

    pub fn released(&self) -> bool {
        self.release.is_none()
    }
}

/// The filter the init runs under: anything outside the list fails with EPERM.
fn filter() -> Result<seccomp::Program, String> {
    seccomp::compile(&Seccomp {
        default_action: "SCMP_ACT_ERRNO".into(),
        default_errno_ret: Some(libc::EPERM as u32),
        syscalls: vec![SeccompSyscall { names: ALLOWED_SYSCALLS.iter().map(|s| s.to_string()).collect(), action: "SCMP_ACT_ALLOW".into(), ..Default::default() }],
        ..Default::default()
    })
}

/// Starts the pod init as PID 1 of a new PID namespace and waits until it has confined itself.
/// `empty_root_at` is a directory of the node its private root is mounted on (in its own mount
/// namespace only). The caller must be single-threaded.
pub fn spawn(empty_root_at: &Path) -> io::Result<PodInit> {
    let program = filter().map_err(io::Error::other)?;
    let at = sys::cstr(empty_root_at)?;
    let last_cap = caps::last_cap();
    let (release_r, release_w) = sys::pipe_cloexec()?;
    let (report_r, report_w) = sys::pipe_cloexec()?;
    let null = sys::cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    let null = unsafe { OwnedFd::from_raw_fd(null) };
    // A raw clone: like fork, but the child is init of a PID namespace of its own, so the
    // monitor's children stay in the node's.
    let flags = (libc::CLONE_NEWPID | libc::SIGCHLD) as libc::c_ulong;
    let pid = sys::cvt(unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) })?;
    if pid == 0 {
        let setup = Setup {
            release: release_r.as_raw_fd(),
            report: Cell::new(report_w.as_raw_fd()),
            monitor_ends: [release_w.as_raw_fd(), report_r.as_raw_fd()],
            null: null.as_raw_fd(),
            at: &at,
            last_cap,
        };
        let sigfd = match unsafe { confine(&setup) }.and_then(|()| serving_setup(&program)) {
            Ok(sigfd) => sigfd,
            Err(step) => {
                let e = io::Error::last_os_error();
                let _ = sys::write_all_fd(setup.report.get(), format!("{step}: {e}").as_bytes());
                unsafe { libc::_exit(1) };
            }
        };
        unsafe { libc::close(REPORT_FD) };
        let code = if serve(&sigfd).is_ok() { 0 } else { 1 };
        unsafe { libc::_exit(code) }
    }
    let pid = pid as libc::pid_t;
    drop((release_r, report_w, null));
    // EOF without a word: it is confined and serving.
    let mut report = Vec::new();
    let mut buf = [0u8; 512];
    loop {
        match unsafe { libc::read(report_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) } {
            0 => break,
            n if n > 0 => report.extend_from_slice(&buf[..n as usize]),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => continue,
            _ => break,
        }
    }
    if !report.is_empty() {
        let _ = sys::kill(pid, libc::SIGKILL);
        let _ = sys::wait_pid(pid);
        return Err(io::Error::other(format!("pod init: {}", String::from_utf8_lossy(&report))));
    }
    Ok(PodInit { pid, release: Some(release_w) })
}

/// What the forked init needs, prepared by the monitor (the child allocates nothing).
struct Setup<'a> {
    release: RawFd,
    /// Where a failure is reported: the report pipe, moved to REPORT_FD early on.
    report: Cell<RawFd>,
    /// The monitor's ends of both pipes: closed first, or releasing would not reach EOF here.
    monitor_ends: [RawFd; 2],
    null: RawFd,
    at: &'a CString,
    last_cap: u32,
}

/// Confines the freshly forked init; on failure returns the step, with errno set.
unsafe fn confine(s: &Setup<'_>) -> Result<(), &'static str> {
    let ok = |r: libc::c_long, step: &'static str| if r == -1 { Err(step) } else { Ok(()) };
    let ok_fd = |fd: libc::c_int, step: &'static str| if fd < 0 { Err(step) } else { Ok(fd) };
    unsafe {
        // Die with the monitor. If it already died, the release pipe is at EOF and the loop
        // exits on its first poll.
        ok(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) as _, "set the parent death signal")?;
        ok(libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) as _, "make it non-dumpable")?;
        let _ = libc::prctl(libc::PR_SET_NAME, c"crisp-pod-init".as_ptr() as libc::c_ulong, 0, 0, 0);

        // Only stdio (/dev/null: nothing of the node's log), the release pipe and the report
        // pipe; the rest (the readiness descriptor the daemon waits on) is closed.
        for fd in s.monitor_ends {
            libc::close(fd);
        }
        // Moved out of the way first: either may have the other's target number.
        let release = ok_fd(libc::fcntl(s.release, libc::F_DUPFD_CLOEXEC, 10), "keep the release pipe")?;
        let report = ok_fd(libc::fcntl(s.report.get(), libc::F_DUPFD_CLOEXEC, 10), "keep the report pipe")?;
        s.report.set(report);
        for fd in 0..3 {
            ok(libc::dup2(s.null, fd) as _, "point stdio at /dev/null")?;
        }
        ok(libc::dup2(release, RELEASE_FD) as _, "keep the release pipe")?;
        ok(libc::dup2(report, REPORT_FD) as _, "keep the report pipe")?;
        s.report.set(REPORT_FD);
        ok(libc::syscall(libc::SYS_close_range, (REPORT_FD + 1) as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint), "close descriptors")?;

        // Its own root: an empty read-only tmpfs in a mount namespace of its own, which is all
        // /proc/1/root and /proc/1/mountinfo show.
        ok(libc::unshare(libc::CLONE_NEWNS) as _, "create a mount namespace")?;
        ok(libc::mount(std::ptr::null(), c"/".as_ptr(), std::ptr::null(), libc::MS_REC | libc::MS_PRIVATE, std::ptr::null()) as _, "make mounts private")?;
        let flags = libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
        ok(libc::mount(c"crisp-pod-init".as_ptr(), s.at.as_ptr(), c"tmpfs".as_ptr(), flags, c"mode=0555,size=4k".as_ptr().cast()) as _, "mount its empty root")?;
        ok(libc::chdir(s.at.as_ptr()) as _, "enter its empty root")?;
        ok(libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()), "pivot_root")?;
        ok(libc::umount2(c".".as_ptr(), libc::MNT_DETACH) as _, "detach the node's mounts")?;
        ok(libc::chdir(c"/".as_ptr()) as _, "chdir /")?;

        // No capability, none to regain.
        for cap in 0..=s.last_cap {
            ok(libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) as _, "drop the bounding set")?;
        }
        ok(libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong, 0, 0, 0) as _, "clear ambient capabilities")?;
        let mut header = CapUserHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
        let none = [CapUserData::default(); 2];
        ok(libc::syscall(libc::SYS_capset, &mut header, none.as_ptr()), "drop capabilities")?;
        ok(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) as _, "set no_new_privs")?;
    }
    Ok(())
}

/// Blocks every signal and opens the signalfd the loop reads, then installs the seccomp filter:
/// from then on only the loop's calls are allowed.
fn serving_setup(program: &seccomp::Program) -> Result<SignalFd, &'static str> {
    // Everything stays blocked: as PID 1 unhandled signals from inside the namespace are
    // discarded anyway, and SIGCHLD is consumed through a signalfd.
    SigSet::all().set_mask().map_err(|_| "block signals")?;
    let sigfd = SignalFd::new(&SigSet::of(&[libc::SIGCHLD])).map_err(|_| "create a signalfd")?;
    if unsafe { seccomp::install(&program.filter, program.flags) } != 0 {
        return Err("install the seccomp filter");
    }
    Ok(sigfd)
}

/// Reaps children until released.
fn serve(sigfd: &SignalFd) -> io::Result<()> {
    let mut fds = [
        libc::pollfd { fd: RELEASE_FD, events: libc::POLLIN, revents: 0 },
        libc::pollfd { fd: sigfd.as_raw_fd(), events: libc::POLLIN, revents: 0 },
    ];
    loop {
        match sys::cvt(unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) }) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        if fds[1].revents != 0 {
            while sigfd.read()?.is_some() {}
            while sys::reap_any()?.is_some() {}
        }
        if fds[0].revents != 0 {
            // Any byte, EOF or error on the pipe means the monitor is done with us.
            return Ok(());
        }
    }
}
