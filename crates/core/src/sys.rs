//! Thin, safe wrappers over the Linux system calls crisp needs that std does not expose.
//!
//! Every wrapper returns `io::Result` carrying the raw errno, so callers can branch on the exact
//! failure (EBUSY, EACCES, ENOENT...) instead of parsing strings.

use std::ffi::{CString, OsStr};
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Converts a `-1`-on-error libc return into an `io::Result`.
pub fn cvt<T: IsMinusOne>(ret: T) -> io::Result<T> {
    if ret.is_minus_one() {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Like [`cvt`] but retries while the call is interrupted by a signal.
pub fn cvt_retry<T: IsMinusOne, F: FnMut() -> T>(mut f: F) -> io::Result<T> {
    loop {
        match cvt(f()) {
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            other => return other,
        }
    }
}

pub trait IsMinusOne: Copy {
    fn is_minus_one(self) -> bool;
}

macro_rules! impl_is_minus_one {
    ($($t:ty)*) => {$(
        impl IsMinusOne for $t {
            fn is_minus_one(self) -> bool { self == -1 }
        }
    )*};
}
impl_is_minus_one! { i32 i64 isize }

/// A path or string as a NUL-terminated C string; interior NULs are an InvalidInput error.
pub fn cstr<S: AsRef<OsStr> + ?Sized>(s: &S) -> io::Result<CString> {
    CString::new(s.as_ref().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

/// The errno of an `io::Error`, or 0 when it did not come from the OS.
pub fn errno(err: &io::Error) -> i32 {
    err.raw_os_error().unwrap_or(0)
}

pub fn unshare(flags: libc::c_int) -> io::Result<()> {
    cvt(unsafe { libc::unshare(flags) }).map(drop)
}

pub fn setns(fd: RawFd, nstype: libc::c_int) -> io::Result<()> {
    cvt(unsafe { libc::setns(fd, nstype) }).map(drop)
}

pub fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> io::Result<()> {
    let source = source.map(cstr).transpose()?;
    let target = cstr(target)?;
    let fstype = fstype.map(cstr).transpose()?;
    let data = data.map(cstr).transpose()?;
    let ptr = |c: &Option<CString>| c.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    cvt(unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            data.as_ref().map_or(std::ptr::null(), |d| d.as_ptr() as *const libc::c_void),
        )
    })
    .map(drop)
}

pub fn umount2(target: &Path, flags: libc::c_int) -> io::Result<()> {
    let target = cstr(target)?;
    cvt(unsafe { libc::umount2(target.as_ptr(), flags) }).map(drop)
}

pub fn sethostname(name: &str) -> io::Result<()> {
    cvt(unsafe { libc::sethostname(name.as_ptr() as *const libc::c_char, name.len()) }).map(drop)
}

/// Starts a new session; EPERM (already a process group leader, e.g. spawned detached) is fine.
pub fn setsid_if_needed() -> io::Result<()> {
    match cvt(unsafe { libc::setsid() }) {
        Ok(_) => Ok(()),
        Err(e) if errno(&e) == libc::EPERM => Ok(()),
        Err(e) => Err(e),
    }
}

pub enum Fork {
    Parent(libc::pid_t),
    Child,
}

/// fork(2).
///
/// # Safety
/// In the child only async-signal-safe operations are sound if the parent has other threads;
/// callers must only fork from a single-threaded process or restrict the child accordingly.
pub unsafe fn fork() -> io::Result<Fork> {
    match cvt(unsafe { libc::fork() })? {
        0 => Ok(Fork::Child),
        pid => Ok(Fork::Parent(pid)),
    }
}

pub fn set_parent_death_signal(sig: libc::c_int) -> io::Result<()> {
    cvt(unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, sig as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Makes orphaned descendants reparent to this process instead of the namespace's init.
pub fn set_child_subreaper() -> io::Result<()> {
    cvt(unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1 as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Sets the thread name shown in /proc/<pid>/comm (truncated to 15 bytes by the kernel).
pub fn set_process_name(name: &str) -> io::Result<()> {
    let name = cstr(name)?;
    cvt(unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr() as libc::c_ulong, 0, 0, 0) }).map(drop)
}

/// Closes every descriptor >= `low`. Uses close_range(2) and falls back to walking /proc/self/fd.
pub fn close_fds_from(low: RawFd) -> io::Result<()> {
    let ret = unsafe { libc::syscall(libc::SYS_close_range, low as libc::c_uint, libc::c_uint::MAX, 0 as libc::c_uint) };
    if ret == 0 {
        return Ok(());
    }
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd >= low)
        .collect();
    for fd in fds {
        unsafe { libc::close(fd) };
    }
    Ok(())
}

pub fn set_cloexec(fd: RawFd, on: bool) -> io::Result<()> {
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) })?;
    let new = if on { flags | libc::FD_CLOEXEC } else { flags & !libc::FD_CLOEXEC };
    if new != flags {
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, new) })?;
    }
    Ok(())
}

pub fn set_nonblocking(fd: RawFd) -> io::Result<()> {
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    if flags & libc::O_NONBLOCK == 0 {
        cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
    Ok(())
}

/// A pipe whose both ends are close-on-exec.
pub fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

pub fn kill(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
}

// Filesystem magics as returned by [`fs_magic`] (libc's constants vary in type by architecture).
#[allow(clippy::unnecessary_cast)]
pub const NSFS_MAGIC: i64 = libc::NSFS_MAGIC as i64;
#[allow(clippy::unnecessary_cast)]
pub const CGROUP2_MAGIC: i64 = libc::CGROUP2_SUPER_MAGIC as i64;
#[allow(clippy::unnecessary_cast)]
pub const PROC_MAGIC: i64 = libc::PROC_SUPER_MAGIC as i64;

/// Filesystem magic (statfs f_type) of the filesystem holding `path`.
#[allow(clippy::unnecessary_cast)] // f_type's type varies by architecture
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    let p = cstr(path)?;
    let mut buf = MaybeUninit::<libc::statfs>::uninit();
    cvt_retry(|| unsafe { libc::statfs(p.as_ptr(), buf.as_mut_ptr()) })?;
    Ok(unsafe { buf.assume_init() }.f_type as i64)
}

/// A set of signals.
#[derive(Clone, Copy)]
pub struct SigSet(libc::sigset_t);

impl SigSet {
    pub fn empty() -> Self {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        unsafe { libc::sigemptyset(set.as_mut_ptr()) };
        SigSet(unsafe { set.assume_init() })
    }

    pub fn all() -> Self {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        unsafe { libc::sigfillset(set.as_mut_ptr()) };
        SigSet(unsafe { set.assume_init() })
    }

    pub fn of(signals: &[libc::c_int]) -> Self {
        let mut set = Self::empty();
        for &s in signals {
            unsafe { libc::sigaddset(&mut set.0, s) };
        }
        set
    }

    pub fn contains(&self, sig: libc::c_int) -> bool {
        unsafe { libc::sigismember(&self.0, sig) == 1 }
    }

    /// Blocks these signals for the calling thread and returns the previous mask.
    pub fn block(&self) -> io::Result<SigSet> {
        self.mask(libc::SIG_BLOCK)
    }

    /// Replaces the calling thread's mask with this set, returning the previous mask.
    pub fn set_mask(&self) -> io::Result<SigSet> {
        self.mask(libc::SIG_SETMASK)
    }

    fn mask(&self, how: libc::c_int) -> io::Result<SigSet> {
        let mut old = Self::empty();
        match unsafe { libc::pthread_sigmask(how, &self.0, &mut old.0) } {
            0 => Ok(old),
            e => Err(io::Error::from_raw_os_error(e)),
        }
    }
}

/// Resets a signal's disposition to the default action (dispositions survive fork and exec
/// only when not ignored or default, so children must reset what we ignore).
pub fn reset_signal(sig: libc::c_int) -> io::Result<()> {
    set_signal_disposition(sig, libc::SIG_DFL)
}

pub fn ignore_signal(sig: libc::c_int) -> io::Result<()> {
    set_signal_disposition(sig, libc::SIG_IGN)
}

fn set_signal_disposition(sig: libc::c_int, handler: libc::sighandler_t) -> io::Result<()> {
    let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
    action.sa_sigaction = handler;
    cvt(unsafe { libc::sigaction(sig, &action, std::ptr::null_mut()) }).map(drop)
}

/// A signalfd(2) receiving the signals of a (blocked) set, non-blocking and close-on-exec.
pub struct SignalFd(OwnedFd);

impl SignalFd {
    pub fn new(set: &SigSet) -> io::Result<Self> {
        let fd = cvt(unsafe { libc::signalfd(-1, &set.0, libc::SFD_NONBLOCK | libc::SFD_CLOEXEC) })?;
        Ok(SignalFd(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    /// The next pending signal number, or None when none is pending.
    pub fn read(&self) -> io::Result<Option<libc::c_int>> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        match cvt_retry(|| unsafe { libc::read(self.0.as_raw_fd(), info.as_mut_ptr().cast(), size) }) {
            Ok(n) if n as usize == size => Ok(Some(unsafe { info.assume_init() }.ssi_signo as libc::c_int)),
            Ok(_) => Err(io::Error::new(io::ErrorKind::UnexpectedEof, "short signalfd read")),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
            Err(e) => Err(e),
        }
    }
}

impl AsRawFd for SignalFd {
    fn as_raw_fd(&self) -> RawFd {
        self.0.as_raw_fd()
    }
}

/// An epoll instance; events carry a caller-chosen u64 token.
pub struct Epoll(OwnedFd);

pub const EPOLLIN: u32 = libc::EPOLLIN as u32;
pub const EPOLLOUT: u32 = libc::EPOLLOUT as u32;
pub const EPOLLHUP: u32 = libc::EPOLLHUP as u32;
pub const EPOLLERR: u32 = libc::EPOLLERR as u32;
pub const EPOLLRDHUP: u32 = libc::EPOLLRDHUP as u32;

#[derive(Clone, Copy, Debug)]
pub struct EpollEvent {
    pub token: u64,
    pub events: u32,
}

impl Epoll {
    pub fn new() -> io::Result<Self> {
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll(unsafe { OwnedFd::from_raw_fd(fd) }))
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    pub fn delete(&self, fd: RawFd) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0)
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        cvt(unsafe { libc::epoll_ctl(self.0.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    /// Waits for events; `timeout_ms` < 0 waits forever. EINTR yields an empty batch.
    pub fn wait(&self, out: &mut Vec<EpollEvent>, capacity: usize, timeout_ms: i32) -> io::Result<()> {
        out.clear();
        let mut raw: Vec<libc::epoll_event> = Vec::with_capacity(capacity);
        let n = match cvt(unsafe {
            libc::epoll_wait(self.0.as_raw_fd(), raw.as_mut_ptr(), capacity as libc::c_int, timeout_ms)
        }) {
            Ok(n) => n as usize,
            Err(e) if errno(&e) == libc::EINTR => 0,
            Err(e) => return Err(e),
        };
        unsafe { raw.set_len(n) };
        out.extend(raw.iter().map(|e| EpollEvent { token: e.u64, events: e.events }));
        Ok(())
    }
}

/// How a child terminated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl ExitStatus {
    fn from_raw(status: libc::c_int) -> Option<Self> {
        if libc::WIFEXITED(status) {
            Some(ExitStatus::Exited(libc::WEXITSTATUS(status)))
        } else if libc::WIFSIGNALED(status) {
            Some(ExitStatus::Signaled { signal: libc::WTERMSIG(status), core_dumped: libc::WCOREDUMP(status) })
        } else {
            None
        }
    }

    /// The shell-style exit code: the status, or 128 + signal number.
    pub fn code(&self) -> i32 {
        match *self {
            ExitStatus::Exited(c) => c,
            ExitStatus::Signaled { signal, .. } => 128 + signal,
        }
    }
}

/// Reaps one terminated child without blocking. `Ok(None)` when none has terminated (or there
/// are no children at all).
pub fn reap_any() -> io::Result<Option<(libc::pid_t, ExitStatus)>> {
    loop {
        let mut status = 0;
        match cvt_retry(|| unsafe { libc::waitpid(-1, &mut status, libc::WNOHANG) }) {
            Ok(0) => return Ok(None),
            Ok(pid) => match ExitStatus::from_raw(status) {
                Some(s) => return Ok(Some((pid, s))),
                None => continue, // stopped/continued reports are not terminations
            },
            Err(e) if errno(&e) == libc::ECHILD => return Ok(None),
            Err(e) => return Err(e),
        }
    }
}

/// Blocks until `pid` terminates and returns how.
pub fn wait_pid(pid: libc::pid_t) -> io::Result<ExitStatus> {
    loop {
        let mut status = 0;
        cvt_retry(|| unsafe { libc::waitpid(pid, &mut status, 0) })?;
        if let Some(s) = ExitStatus::from_raw(status) {
            return Ok(s);
        }
    }
}

/// Writes all of `buf` to a raw descriptor, retrying on EINTR and short writes.
pub fn write_all_fd(fd: RawFd, mut buf: &[u8]) -> io::Result<()> {
    while !buf.is_empty() {
        let n = cvt_retry(|| unsafe { libc::write(fd, buf.as_ptr().cast(), buf.len()) })?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        buf = &buf[n as usize..];
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub fn now_unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Monotonic clock in milliseconds (for deadlines unaffected by wall-clock changes).
pub fn monotonic_ms() -> u64 {
    let mut ts = MaybeUninit::<libc::timespec>::uninit();
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, ts.as_mut_ptr()) };
    let ts = unsafe { ts.assume_init() };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_status_codes_follow_the_shell_convention() {
        assert_eq!(ExitStatus::Exited(3).code(), 3);
        assert_eq!(ExitStatus::Signaled { signal: 9, core_dumped: false }.code(), 137);
    }

    #[test]
    fn sigset_membership() {
        let set = SigSet::of(&[libc::SIGCHLD, libc::SIGTERM]);
        assert!(set.contains(libc::SIGCHLD));
        assert!(set.contains(libc::SIGTERM));
        assert!(!set.contains(libc::SIGINT));
        assert!(SigSet::all().contains(libc::SIGUSR1));
    }

    #[test]
    fn cstr_rejects_interior_nul() {
        assert!(cstr("a\0b").is_err());
        assert_eq!(cstr("/proc").unwrap().as_bytes(), b"/proc");
    }

    #[test]
    fn pipes_are_cloexec() {
        let (r, w) = pipe_cloexec().unwrap();
        for fd in [r.as_raw_fd(), w.as_raw_fd()] {
            let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
            assert_ne!(flags & libc::FD_CLOEXEC, 0);
        }
        write_all_fd(w.as_raw_fd(), b"x").unwrap();
        let mut b = [0u8; 1];
        assert_eq!(unsafe { libc::read(r.as_raw_fd(), b.as_mut_ptr().cast(), 1) }, 1);
        assert_eq!(&b, b"x");
    }

    #[test]
    fn proc_is_procfs() {
        assert_eq!(fs_magic(Path::new("/proc")).unwrap(), PROC_MAGIC);
    }
}

/// openat2(2) with `flags` and `resolve` (RESOLVE_* from <linux/openat2.h>), retried while the
/// kernel answers EAGAIN (a concurrent rename raced the lookup) or EINTR. Returns the descriptor,
/// or -1 with errno set. Async-signal-safe: usable between fork and exec.
pub fn openat2_raw(dir: RawFd, path: *const libc::c_char, flags: libc::c_int, resolve: u64) -> libc::c_int {
    /// `struct open_how`.
    #[repr(C)]
    struct OpenHow {
        flags: u64,
        mode: u64,
        resolve: u64,
    }
    let how = OpenHow { flags: flags as u64, mode: 0, resolve };
    loop {
        // SAFETY: `path` is the caller's C string; `how` outlives the call and has the size passed.
        let fd = unsafe { libc::syscall(libc::SYS_openat2, dir, path, &how as *const OpenHow, std::mem::size_of::<OpenHow>()) } as libc::c_int;
        if fd >= 0 {
            return fd;
        }
        // SAFETY: reading this thread's errno.
        let e = unsafe { *libc::__errno_location() };
        if e != libc::EAGAIN && e != libc::EINTR {
            return -1;
        }
    }
}
