//! Pseudo-terminal pairs for containers and execs started with a TTY.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use crate::sys::cvt;

/// TIOCGPTPEER (Linux ≥ 4.13): opens the slave side from the master without a path lookup.
const TIOCGPTPEER: libc::c_ulong = 0x5441;

/// `f_type` of devpts (linux/magic.h).
const DEVPTS_SUPER_MAGIC: i64 = 0x1cd1;

/// A new (master, slave) pair on the node's devpts, both close-on-exec; the master is
/// non-blocking.
pub fn open_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let master = cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    pair_from(unsafe { OwnedFd::from_raw_fd(master) })
}

/// A pair on the devpts instance at `dev/pts` under `root` (a container's root directory), so
/// the terminal has a name where the process runs: `tty` and ttyname(3) find it in the
/// container's /dev/pts, as they do with runc's consoles. The lookup cannot leave `root`, and
/// what it finds is opened only once it is known to be a devpts `ptmx` (a container may put
/// anything at that path). Without one, the pair is the node's.
pub fn open_pair_in(root: Option<RawFd>) -> io::Result<(OwnedFd, OwnedFd)> {
    match root.and_then(open_container_ptmx) {
        Some(master) => pair_from(master),
        None => open_pair(),
    }
}

fn is_devpts_ptmx(fd: RawFd) -> bool {
    let mut fs: libc::statfs = unsafe { std::mem::zeroed() };
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    let read = unsafe { libc::fstatfs(fd, &mut fs) == 0 && libc::fstat(fd, &mut st) == 0 };
    read && fs.f_type as i64 == DEVPTS_SUPER_MAGIC
        && st.st_mode & libc::S_IFMT == libc::S_IFCHR
        && st.st_rdev == libc::makedev(5, 2)
}

fn open_container_ptmx(root: RawFd) -> Option<OwnedFd> {
    let resolve = libc::RESOLVE_IN_ROOT | libc::RESOLVE_NO_MAGICLINKS;
    let path = crate::sys::openat2_raw(root, c"dev/pts/ptmx".as_ptr(), libc::O_PATH | libc::O_CLOEXEC | libc::O_NOFOLLOW, resolve);
    if path < 0 {
        return None;
    }
    let path = unsafe { OwnedFd::from_raw_fd(path) };
    if !is_devpts_ptmx(path.as_raw_fd()) {
        return None;
    }
    let link = std::ffi::CString::new(format!("/proc/self/fd/{}", path.as_raw_fd())).ok()?;
    let master = unsafe { libc::open(link.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return None;
    }
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    is_devpts_ptmx(master.as_raw_fd()).then_some(master)
}

/// Unlocks the slave of `master`, opens it, makes the master non-blocking.
fn pair_from(master: OwnedFd) -> io::Result<(OwnedFd, OwnedFd)> {
    let m = master.as_raw_fd();
    let mut unlock: libc::c_int = 0;
    cvt(unsafe { libc::ioctl(m, libc::TIOCSPTLCK, &mut unlock) })?;
    let slave = cvt(unsafe { libc::ioctl(m, TIOCGPTPEER as _, libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    let slave = unsafe { OwnedFd::from_raw_fd(slave) };
    crate::sys::set_nonblocking(m)?;
    Ok((master, slave))
}

/// Sets the terminal's window size.
pub fn set_size(fd: &OwnedFd, rows: u16, cols: u16) -> io::Result<()> {
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open_dir(path: &std::path::Path) -> OwnedFd {
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        let fd = unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
        assert!(fd >= 0);
        unsafe { OwnedFd::from_raw_fd(fd) }
    }

    #[test]
    fn a_pair_comes_from_the_devpts_under_the_root_and_never_from_what_a_root_puts_there() {
        // The node's own root: its /dev/pts/ptmx is a devpts instance's.
        let root = open_dir(std::path::Path::new("/"));
        let (master, slave) = open_pair_in(Some(root.as_raw_fd())).unwrap();
        assert!(is_devpts_ptmx(master.as_raw_fd()));
        assert_eq!(unsafe { libc::isatty(slave.as_raw_fd()) }, 1);
        // A root whose dev/pts/ptmx is a plain file, or a link out of it: the node's pair,
        // nothing opened there.
        let dir = std::env::temp_dir().join(format!("crisp-test-pty-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("dev/pts")).unwrap();
        std::fs::write(dir.join("dev/pts/ptmx"), b"").unwrap();
        let fake = open_dir(&dir);
        assert!(open_container_ptmx(fake.as_raw_fd()).is_none());
        let (_master, slave) = open_pair_in(Some(fake.as_raw_fd())).unwrap();
        assert_eq!(unsafe { libc::isatty(slave.as_raw_fd()) }, 1);
        std::fs::remove_file(dir.join("dev/pts/ptmx")).unwrap();
        std::os::unix::fs::symlink("/dev/pts/ptmx", dir.join("dev/pts/ptmx")).unwrap();
        // Absolute inside the root: it names the file it links to there, which is gone.
        assert!(open_container_ptmx(fake.as_raw_fd()).is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn slave_writes_reach_the_master() {
        let (master, slave) = open_pair().unwrap();
        set_size(&master, 24, 80).unwrap();
        assert_eq!(unsafe { libc::isatty(slave.as_raw_fd()) }, 1);
        crate::sys::write_all_fd(slave.as_raw_fd(), b"hi\n").unwrap();
        let mut buf = [0u8; 16];
        let mut got = Vec::new();
        for _ in 0..100 {
            let n = unsafe { libc::read(master.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                got.extend_from_slice(&buf[..n as usize]);
                if got.ends_with(b"\n") {
                    break;
                }
            } else {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        }
        // The line discipline turns "\n" into "\r\n" on output.
        assert_eq!(got, b"hi\r\n");
    }
}
