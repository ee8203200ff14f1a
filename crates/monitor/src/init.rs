//! The pod's init: PID 1 of the pod's PID namespace.
//!
//! It exists so that containers are never PID 1 (they keep default signal semantics) and so
//! that processes orphaned inside the pod are reaped. It runs until the monitor releases it
//! (writes to or closes the release pipe) or dies (the pipe reaches EOF, and PR_SET_PDEATHSIG
//! kills it outright). When it exits, the kernel kills everything left in the namespace.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use crisp_core::sys::{self, Fork, SigSet, SignalFd};

/// The descriptor the release pipe is moved to inside the init.
const RELEASE_FD: RawFd = 3;

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

/// Forks the pod init. The caller must already have unshared CLONE_NEWPID, so the child is
/// PID 1 of the new namespace, and must be single-threaded.
pub fn spawn() -> io::Result<PodInit> {
    let (read_end, write_end) = sys::pipe_cloexec()?;
    match unsafe { sys::fork() }? {
        Fork::Child => {
            drop(write_end);
            let code = match run(read_end) {
                Ok(()) => 0,
                Err(e) => {
                    crate::log!(Error, "pod init failed: {}", e);
                    1
                }
            };
            unsafe { libc::_exit(code) }
        }
        Fork::Parent(pid) => {
            drop(read_end);
            Ok(PodInit { pid, release: Some(write_end) })
        }
    }
}

fn run(release: OwnedFd) -> io::Result<()> {
    // Die with the monitor. If it already died between fork and here, the release pipe is at
    // EOF and the loop below exits on its first poll.
    sys::set_parent_death_signal(libc::SIGKILL)?;
    let _ = sys::set_process_name("crisp-pod-init");

    // Keep only stdio and the release pipe: in particular not the readiness descriptor, whose
    // EOF the daemon is waiting for.
    if release.as_raw_fd() != RELEASE_FD {
        sys::cvt(unsafe { libc::dup2(release.as_raw_fd(), RELEASE_FD) })?;
    }
    std::mem::forget(release);
    sys::close_fds_from(RELEASE_FD + 1)?;
    sys::set_cloexec(RELEASE_FD, true)?;

    // Everything stays blocked: as PID 1 unhandled signals from inside the namespace are
    // discarded anyway, and SIGCHLD is consumed through a signalfd.
    SigSet::all().set_mask()?;
    let sigfd = SignalFd::new(&SigSet::of(&[libc::SIGCHLD]))?;

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
