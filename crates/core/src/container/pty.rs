//! Pseudo-terminal pairs for containers and execs started with a TTY.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};

use crate::sys::cvt;

/// TIOCGPTPEER (Linux ≥ 4.13): opens the slave side from the master without a path lookup.
const TIOCGPTPEER: libc::c_ulong = 0x5441;

/// A new (master, slave) pair, both close-on-exec; the master is non-blocking.
pub fn open_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let master = cvt(unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) })?;
    let master = unsafe { OwnedFd::from_raw_fd(master) };
    use std::os::fd::AsRawFd;
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
    use std::os::fd::AsRawFd;
    let ws = libc::winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 };
    cvt(unsafe { libc::ioctl(fd.as_raw_fd(), libc::TIOCSWINSZ, &ws) }).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

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
