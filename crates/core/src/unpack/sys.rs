//! Thin safe wrappers over the system calls the unpacker needs. Every call that takes a name
//! operates on a single component relative to a directory fd the caller already resolved inside
//! the root, so none of them can walk out of it; the only multi-component lookup is
//! `open_dir_in_root`, which the kernel confines with RESOLVE_IN_ROOT.

use std::ffi::{CStr, CString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::tar::Timestamp;

fn check(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn check_fd(ret: libc::c_long) -> io::Result<OwnedFd> {
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this descriptor to us and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as libc::c_int) })
}

/// Opens the unpack destination itself (a trusted path chosen by the runtime).
pub fn open_root(path: &Path) -> io::Result<OwnedFd> {
    let path = CString::new(path.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))?;
    // SAFETY: `path` is a valid NUL-terminated string for the duration of the call.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    check_fd(fd as libc::c_long)
}

/// Opens directory `path` (relative, possibly multi-component) beneath `root`: a lookup that
/// would leave `root` — through `..`, an absolute symlink or a relative one climbing out — fails
/// with EXDEV instead of being followed, and /proc magic links are refused. Layers are untrusted:
/// writing through such a symlink is treated as an escape attempt, not reinterpreted.
pub fn open_dir_in_root(root: BorrowedFd<'_>, path: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    check_fd(crate::sys::openat2_raw(root.as_raw_fd(), path.as_ptr(), flags, libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS) as libc::c_long)
}

/// Opens subdirectory `name` of `dir` without following a symlink, readable (for listing).
pub fn open_subdir_nofollow(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid fd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    check_fd(fd as libc::c_long)
}

/// `lstat` of `name` in `dir`; `None` if it does not exist.
pub fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Option<libc::stat>> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: `st` is a writable stat buffer; fd and name are valid.
    let ret = unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), st.as_mut_ptr(), libc::AT_SYMLINK_NOFOLLOW) };
    match check(ret) {
        // SAFETY: fstatat succeeded, so it filled the buffer.
        Ok(()) => Ok(Some(unsafe { st.assume_init() })),
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(None),
        Err(e) => Err(e),
    }
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t) })
}

/// Creates a device node or FIFO; `mode` includes the file type bits.
pub fn mknod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32, major: u32, minor: u32) -> io::Result<()> {
    let dev = libc::makedev(major, minor);
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, dev) })
}

pub fn symlink_at(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated strings.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) })
}

/// Hardlinks `old_dir/old_name` (not following it if it is a symlink) as `new_dir/new_name`.
pub fn link_at(old_dir: BorrowedFd<'_>, old_name: &CStr, new_dir: BorrowedFd<'_>, new_name: &CStr) -> io::Result<()> {
    // SAFETY: valid fds and NUL-terminated names.
    check(unsafe { libc::linkat(old_dir.as_raw_fd(), old_name.as_ptr(), new_dir.as_raw_fd(), new_name.as_ptr(), 0) })
}

/// `lchown` relative to `dir`.
pub fn chown_at(dir: BorrowedFd<'_>, name: &CStr, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::fchownat(dir.as_raw_fd(), name.as_ptr(), uid, gid, libc::AT_SYMLINK_NOFOLLOW) })
}

/// `chmod` relative to `dir`. Linux cannot chmod a symlink, so this follows one: callers only
/// use it on nodes they have just created or checked not to be symlinks.
pub fn chmod_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: valid fd and NUL-terminated name.
    check(unsafe { libc::fchmodat(dir.as_raw_fd(), name.as_ptr(), mode as libc::mode_t, 0) })
}

fn timespec(t: Timestamp) -> libc::timespec {
    libc::timespec { tv_sec: t.secs as libc::time_t, tv_nsec: t.nanos as libc::c_long }
}

/// Sets access and modification times of `name` in `dir` without following a symlink.
pub fn utimes_at(dir: BorrowedFd<'_>, name: &CStr, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `times` is the two-element array utimensat expects; fd and name are valid.
    check(unsafe { libc::utimensat(dir.as_raw_fd(), name.as_ptr(), times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW) })
}

pub fn futimes(file: &File, atime: Timestamp, mtime: Timestamp) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    // SAFETY: `times` is the two-element array futimens expects; the fd is open.
    check(unsafe { libc::futimens(file.as_raw_fd(), times.as_ptr()) })
}

/// Creates `name` in `dir` as a new regular file, failing if anything already exists there.
pub fn create_file_at(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<File> {
    // SAFETY: valid fd and NUL-terminated name.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::O_WRONLY | libc::O_CREAT | libc::O_EXCL | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode as libc::c_uint,
        )
    };
    check_fd(fd as libc::c_long).map(File::from)
}

pub fn fsetxattr(file: &File, key: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: key is NUL-terminated, value pointer/length describe a live slice.
    check(unsafe { libc::fsetxattr(file.as_raw_fd(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0) })
}

/// Path that reaches `dir` (and optionally one entry in it) through the process's own fd
/// table. Used for calls that have no *at variant; the fd was already resolved in the root.
fn proc_fd_path(dir: BorrowedFd<'_>, name: Option<&CStr>) -> CString {
    let mut path = format!("/proc/self/fd/{}", dir.as_raw_fd()).into_bytes();
    if let Some(name) = name {
        path.push(b'/');
        path.extend_from_slice(name.to_bytes());
    }
    CString::new(path).expect("fd number and checked name contain no NUL")
}

/// Sets an xattr on `name` in `dir` (on the symlink itself if it is one), or on `dir` itself.
pub fn set_xattr_at(dir: BorrowedFd<'_>, name: Option<&CStr>, key: &CStr, value: &[u8]) -> io::Result<()> {
    let path = proc_fd_path(dir, name);
    // SAFETY: path and key are NUL-terminated, value pointer/length describe a live slice.
    let ret = unsafe {
        match name {
            // The final component is the entry: never follow it.
            Some(_) => libc::lsetxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0),
            // The path is the fd's magic link itself, which must be followed to reach `dir`.
            None => libc::setxattr(path.as_ptr(), key.as_ptr(), value.as_ptr().cast(), value.len(), 0),
        }
    };
    check(ret)
}

pub fn geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

pub fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// An overlayfs whiteout: a character device with device number 0/0.
pub fn is_whiteout(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == 0
}

/// Flushes the filesystem holding directory `dir` (an O_PATH fd cannot be synced directly).
pub fn syncfs(dir: BorrowedFd<'_>) -> io::Result<()> {
    let readable = open_subdir_nofollow(dir, c".")?;
    // SAFETY: the fd is open for the duration of the call.
    check(unsafe { libc::syncfs(readable.as_raw_fd()) })
}

/// `lgetxattr`; `None` if the attribute is not set.
#[cfg(test)]
pub fn lget_xattr(path: &Path, key: &CStr) -> io::Result<Option<Vec<u8>>> {
    let path = CString::new(path.as_os_str().as_bytes()).expect("test paths contain no NUL");
    let mut value = vec![0u8; 64 << 10];
    // SAFETY: path and key are NUL-terminated; the buffer pointer/length describe a live Vec.
    let ret = unsafe { libc::lgetxattr(path.as_ptr(), key.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if ret < 0 {
        let err = io::Error::last_os_error();
        return if err.raw_os_error() == Some(libc::ENODATA) { Ok(None) } else { Err(err) };
    }
    value.truncate(ret as usize);
    Ok(Some(value))
}
