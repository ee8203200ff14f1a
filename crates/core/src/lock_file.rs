//! An exclusive advisory lock held for the life of the process: `flock` on a root-only file. The
//! kernel drops it when the last descriptor closes, so a holder killed by SIGKILL leaves no stale
//! lock; unlike a named socket, no other user can take the name first, since only root can open
//! the file.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys::{cvt, cvt_retry};

/// Why a lock could not be taken.
#[derive(Debug)]
pub enum LockError {
    /// Another open file description holds it (another process, or another open in this one).
    Held,
    Io(io::Error),
}

impl From<io::Error> for LockError {
    fn from(e: io::Error) -> LockError {
        LockError::Io(e)
    }
}

/// Opens (creating if needed, mode 0600) the regular file at `path` without following a symlink
/// there, makes it 0600 if it was not, and takes an exclusive lock on it without waiting. The
/// descriptor is close-on-exec, so spawned children (the pod monitors, which outlive the daemon)
/// never inherit the lock. Dropping the descriptor releases it.
pub fn lock_exclusive(path: &Path) -> Result<OwnedFd, LockError> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: c is a valid NUL-terminated path; the returned descriptor is owned below.
    let raw = cvt_retry(|| unsafe {
        libc::open(c.as_ptr(), libc::O_RDWR | libc::O_CREAT | libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NOCTTY | libc::O_NONBLOCK, 0o600 as libc::c_uint)
    })?;
    // SAFETY: raw was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: fstat on an open descriptor into a live stat buffer.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    if st.st_mode & libc::S_IFMT != libc::S_IFREG {
        return Err(LockError::Io(io::Error::new(io::ErrorKind::InvalidInput, format!("{} is not a regular file", path.display()))));
    }
    if st.st_mode & 0o7777 != 0o600 {
        // SAFETY: fchmod on an open descriptor.
        cvt(unsafe { libc::fchmod(fd.as_raw_fd(), 0o600) })?;
    }
    // SAFETY: flock on an open descriptor.
    match cvt_retry(|| unsafe { libc::flock(fd.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) }) {
        Ok(_) => Ok(fd),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Err(LockError::Held),
        Err(e) => Err(LockError::Io(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn one_holder_at_a_time_released_on_close_file_made_private() {
        let dir = std::env::temp_dir().join(format!("crisp-lock-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("lock");
        std::fs::write(&file, b"").unwrap();
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o666)).unwrap();
        let held = lock_exclusive(&file).unwrap();
        assert_eq!(std::fs::metadata(&file).unwrap().permissions().mode() & 0o7777, 0o600);
        assert!(matches!(lock_exclusive(&file), Err(LockError::Held)), "a second open file description is refused");
        drop(held);
        let again = lock_exclusive(&file).unwrap();
        drop(again);
        // A symlink planted at the lock's path is not followed.
        let link = dir.join("link");
        std::os::unix::fs::symlink(&file, &link).unwrap();
        match lock_exclusive(&link) {
            Err(LockError::Io(e)) => assert_eq!(e.raw_os_error(), Some(libc::ELOOP)),
            other => panic!("a symlink was followed: {other:?}"),
        }
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
