//! Removing a directory tree in one call. Node's recursive rm walks the tree from JavaScript
//! with a trip to the threadpool per entry; a container's writable layer and bundle go on every
//! RemoveContainer, so they are removed here in one worker task instead.

use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// Removes `path` and everything under it; a missing path is fine. Symlinks inside are removed,
/// never followed (the tree may hold what a container wrote).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = if meta.is_dir() {
        let parent = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let name = path.file_name().ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
        let parent = fs::File::open(parent)?;
        remove_at(parent.as_fd(), &cstring(name.as_bytes())?)
    } else {
        fs::remove_file(path)
    };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn open_subdir(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<OwnedFd> {
    // SAFETY: valid descriptor and NUL-terminated name; the result is owned below.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: just opened, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn stat_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, live buffer.
    cvt(unsafe { libc::fstatat(dir.as_raw_fd(), name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) })?;
    Ok(st)
}

fn unlink_at(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> io::Result<()> {
    // SAFETY: valid descriptor and NUL-terminated name.
    match cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), if remove_dir { libc::AT_REMOVEDIR } else { 0 }) }) {
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Unlinks every non-directory in `dir` and returns the names of its subdirectories.
fn clear_files(dir: BorrowedFd<'_>) -> io::Result<Vec<CString>> {
    let mut subdirs = Vec::new();
    // fdopendir takes the descriptor it is given: hand it a duplicate.
    // SAFETY: duplicating an open descriptor.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: dup is an open directory descriptor that the stream now owns.
    let stream = unsafe { libc::fdopendir(dup) };
    if stream.is_null() {
        let e = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so dup is still ours to close.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir reports errors only through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a live stream; the entry is valid until the next readdir on it.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            // SAFETY: reading the thread-local errno.
            let errno = unsafe { *libc::__errno_location() };
            break if errno == 0 { Ok(()) } else { Err(io::Error::from_raw_os_error(errno)) };
        }
        // SAFETY: d_name is NUL-terminated within the entry.
        let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
        if name.to_bytes() != b"." && name.to_bytes() != b".." {
            // SAFETY: d_type is a plain field of the entry.
            names.push((name.to_owned(), unsafe { (*entry).d_type }));
        }
    };
    // SAFETY: closes the stream and its descriptor (the duplicate) exactly once.
    unsafe { libc::closedir(stream) };
    result?;
    for (name, kind) in names {
        let dir_entry = match kind {
            libc::DT_DIR => true,
            libc::DT_UNKNOWN => match stat_at(dir, &name) {
                Ok(st) => is_dir(&st),
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            },
            _ => false,
        };
        if dir_entry {
            subdirs.push(name);
        } else {
            unlink_at(dir, &name, false)?;
        }
    }
    Ok(subdirs)
}

/// One directory on the way down: its name in its parent, identity and subdirectories left.
struct Level {
    name: CString,
    dev: u64,
    ino: u64,
    pending: Vec<CString>,
}

/// Removes `name` in `dir`, recursively if it is a directory, never following a symlink; a
/// missing entry is fine. Iterative, holding two descriptors at a time however deep the tree
/// goes (a writable layer or a layer tar can nest directories far past PATH_MAX, and a recursive
/// walk would run out of stack or descriptors): the walk climbs back through `..`, checked by
/// device and inode against the directory it came from.
pub fn remove_at(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let st = match stat_at(dir, name) {
        Ok(st) => st,
        Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
        Err(e) => return Err(e),
    };
    if !is_dir(&st) {
        return unlink_at(dir, name, false);
    }
    let dotdot = CString::new("..").expect("no NUL");
    let mut current = open_subdir(dir, name)?;
    let mut levels = vec![Level { name: name.to_owned(), dev: st.st_dev, ino: st.st_ino, pending: clear_files(current.as_fd())? }];
    loop {
        let top = levels.last_mut().expect("non-empty");
        if let Some(child) = top.pending.pop() {
            let st = match stat_at(current.as_fd(), &child) {
                Ok(st) if is_dir(&st) => st,
                Ok(_) => {
                    unlink_at(current.as_fd(), &child, false)?;
                    continue;
                }
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => continue,
                Err(e) => return Err(e),
            };
            let sub = open_subdir(current.as_fd(), &child)?;
            let pending = clear_files(sub.as_fd())?;
            levels.push(Level { name: child, dev: st.st_dev, ino: st.st_ino, pending });
            current = sub;
            continue;
        }
        // `current` is empty now: climb to its parent and remove it there.
        let done = levels.pop().expect("non-empty");
        let Some(parent) = levels.last() else {
            drop(current);
            return unlink_at(dir, &done.name, true);
        };
        let up = open_subdir(current.as_fd(), &dotdot)?;
        let up_st = stat_at(up.as_fd(), c".")?;
        if up_st.st_dev != parent.dev || up_st.st_ino != parent.ino {
            return Err(io::Error::other(format!("directory {} was moved while it was being removed", done.name.to_string_lossy())));
        }
        current = up;
        unlink_at(current.as_fd(), &done.name, true)?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_a_tree_without_following_links_out_of_it() {
        let base = std::env::temp_dir().join(format!("crisp-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let outside = base.join("outside");
        let tree = base.join("tree");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        symlink(&outside, tree.join("a/link-to-outside")).unwrap();
        symlink("/", tree.join("root-link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists(), "a symlink in the tree is removed, not followed");
        remove_tree(&tree).unwrap();
        // A file or a dangling link is removed as itself.
        symlink(base.join("nowhere"), base.join("dangling")).unwrap();
        remove_tree(&base.join("dangling")).unwrap();
        assert!(fs::symlink_metadata(base.join("dangling")).is_err());
        fs::remove_dir_all(&base).unwrap();
    }

    #[test]
    fn removes_a_chain_deeper_than_path_max_and_the_descriptor_limit() {
        let base = std::env::temp_dir().join(format!("crisp-tree-deep-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        fs::create_dir_all(&base).unwrap();
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: reading this process's limit into a live struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        // Deeper than the descriptor limit and, at 11 bytes a level, far past PATH_MAX.
        let depth = (limit.rlim_cur as usize).min(30_000) + 200;
        let name = CString::new("dddddddddd").unwrap();
        let file = CString::new("f").unwrap();
        let mut fd = open_subdir(fs::File::open(&std::env::temp_dir()).unwrap().as_fd(), &cstring(base.file_name().unwrap().as_bytes()).unwrap()).unwrap();
        for _ in 0..depth {
            // SAFETY: valid descriptors and names.
            unsafe {
                assert_eq!(libc::mkdirat(fd.as_raw_fd(), name.as_ptr(), 0o755), 0);
                let f = libc::openat(fd.as_raw_fd(), file.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                assert!(f >= 0);
                libc::close(f);
            }
            fd = open_subdir(fd.as_fd(), &name).unwrap();
        }
        drop(fd);
        remove_tree(&base).unwrap();
        assert!(fs::symlink_metadata(&base).is_err(), "the whole chain is gone");
    }
}
