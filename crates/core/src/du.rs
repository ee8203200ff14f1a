//! Disk usage of a directory tree, as du and containerd's snapshotter report it: allocated blocks
//! (st_blocks × 512, so sparse files cost what they occupy), each hard-linked inode once, without
//! crossing into other filesystems. Runs off the daemon's event loop: walking a writable layer of
//! thousands of files as individual async stat calls would flood it.
//!
//! The tree is a container's writable layer, so its shape is chosen by whoever runs in it. The
//! walk therefore goes through directory descriptors (`openat`/`fstatat` by entry name, never a
//! path, never following a symlink): a directory chain deeper than PATH_MAX is measured like any
//! other. At most `OPEN_DIRS` descriptors are held however deep it goes (a level whose descriptor
//! was given up is reopened through `..` of its child, checked by device and inode, when the walk
//! climbs back). An entry that cannot be read is skipped and counted, and the rest is still
//! measured: one bad entry must not make the whole layer unmeasurable.

use std::collections::HashSet;
use std::ffi::{CStr, CString};
use std::fs;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
    /// Entries (and the subtrees below them) that could not be read and are not counted.
    pub skipped: u64,
}

/// Directory descriptors the walk keeps open at most, the root's included.
const OPEN_DIRS: usize = 64;

fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

fn open_dir_at(dir: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: a valid descriptor and NUL-terminated name; the result is owned below.
        let fd = unsafe { libc::openat(dir, name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd >= 0 {
            // SAFETY: just opened, owned by nobody else.
            return Ok(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        let e = last_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            return Err(e);
        }
    }
}

fn stat_at(dir: RawFd, name: &CStr) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, live buffer.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } == 0 {
        Ok(st)
    } else {
        Err(last_error())
    }
}

fn stat_fd(fd: RawFd) -> io::Result<libc::stat> {
    // SAFETY: as in stat_at.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor and live buffer.
    if unsafe { libc::fstat(fd, &mut st) } == 0 {
        Ok(st)
    } else {
        Err(last_error())
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// One directory on the way from the root to where the walk is.
struct Level {
    /// None once given up to stay within OPEN_DIRS.
    fd: Option<OwnedFd>,
    dev: u64,
    ino: u64,
    /// Its name in its parent, to reopen it by name when `..` does not lead back to it.
    name: CString,
    /// Subdirectories still to walk.
    pending: Vec<CString>,
}

struct Walk {
    device: u64,
    linked: HashSet<u64>,
    usage: Usage,
}

impl Walk {
    fn count(&mut self, st: &libc::stat) -> bool {
        if st.st_dev != self.device {
            return false;
        }
        if st.st_nlink > 1 && !is_dir(st) && !self.linked.insert(st.st_ino) {
            return false;
        }
        self.usage.bytes += st.st_blocks as u64 * 512;
        self.usage.inodes += 1;
        true
    }

    /// Counts the entries of the open directory `fd` and returns the names of its subdirectories.
    fn read_entries(&mut self, fd: &OwnedFd) -> Vec<CString> {
        let mut subdirs = Vec::new();
        // fdopendir takes the descriptor it is given: hand it a duplicate.
        // SAFETY: duplicating an open descriptor.
        let dup = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
        if dup < 0 {
            self.usage.skipped += 1;
            return subdirs;
        }
        // SAFETY: dup is an open directory descriptor that the stream now owns.
        let stream = unsafe { libc::fdopendir(dup) };
        if stream.is_null() {
            // SAFETY: fdopendir failed, so dup is still ours to close.
            unsafe { libc::close(dup) };
            self.usage.skipped += 1;
            return subdirs;
        }
        loop {
            // SAFETY: errno is thread-local; readdir reports errors only through it.
            unsafe { *libc::__errno_location() = 0 };
            // SAFETY: a live stream; the entry is valid until the next readdir on it.
            let entry = unsafe { libc::readdir(stream) };
            if entry.is_null() {
                // SAFETY: reading the thread-local errno.
                if unsafe { *libc::__errno_location() } != 0 {
                    self.usage.skipped += 1;
                }
                break;
            }
            // SAFETY: d_name is NUL-terminated within the entry.
            let name = unsafe { CStr::from_ptr((*entry).d_name.as_ptr()) };
            let bytes = name.to_bytes();
            if bytes == b"." || bytes == b".." {
                continue;
            }
            match stat_at(fd.as_raw_fd(), name) {
                Ok(st) => {
                    if self.count(&st) && is_dir(&st) {
                        subdirs.push(name.to_owned());
                    }
                }
                Err(e) if gone(&e) => {}
                Err(_) => self.usage.skipped += 1,
            }
        }
        // SAFETY: closes the stream and its descriptor (the duplicate) exactly once.
        unsafe { libc::closedir(stream) };
        subdirs
    }
}

/// Reopens `levels[index]`, whose descriptor was given up: through `..` of the level below it
/// when that still leads back to it, else by name from the nearest ancestor still open.
fn reopen(levels: &mut [Level], index: usize, child: &OwnedFd) -> Option<OwnedFd> {
    let parent_name = CString::new("..").expect("no NUL");
    let matches = |fd: &OwnedFd, level: &Level| stat_fd(fd.as_raw_fd()).map(|st| st.st_dev == level.dev && st.st_ino == level.ino).unwrap_or(false);
    if let Ok(fd) = open_dir_at(child.as_raw_fd(), &parent_name) {
        if matches(&fd, &levels[index]) {
            return Some(fd);
        }
    }
    // The child was moved meanwhile: come down again by names.
    let open = (0..index).rev().find(|&i| levels[i].fd.is_some())?;
    let mut fd = open_dir_at(levels[open].fd.as_ref()?.as_raw_fd(), &levels[open + 1].name).ok()?;
    for level in &levels[open + 2..=index] {
        fd = open_dir_at(fd.as_raw_fd(), &level.name).ok()?;
    }
    matches(&fd, &levels[index]).then_some(fd)
}

/// Usage of `root`, or None if it does not exist. Entries that vanish mid-walk are not counted;
/// entries that cannot be read are skipped (and counted in `skipped`). Only a failure to read
/// `root` itself is an error.
pub fn disk_usage(root: &Path) -> io::Result<Option<Usage>> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        return Ok(Some(Usage { bytes: meta.blocks() * 512, inodes: 1, skipped: 0 }));
    }
    let c_root = CString::new(root.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let root_fd = match open_dir_at(libc::AT_FDCWD, &c_root) {
        Ok(fd) => fd,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let st = stat_fd(root_fd.as_raw_fd())?;
    let mut walk = Walk { device: st.st_dev, linked: HashSet::new(), usage: Usage { bytes: st.st_blocks as u64 * 512, inodes: 1, skipped: 0 } };
    let pending = walk.read_entries(&root_fd);
    let mut levels = vec![Level { fd: Some(root_fd), dev: st.st_dev, ino: st.st_ino, name: c_root, pending }];
    let mut open_count = 1usize;
    while let Some(top) = levels.last_mut() {
        let Some(name) = top.pending.pop() else {
            // Done with this directory: climb back, reopening the parent if it was given up.
            let done = levels.pop().expect("non-empty");
            let child = done.fd.expect("the level being walked is open");
            open_count -= 1;
            let Some(parent) = levels.len().checked_sub(1) else { break };
            if levels[parent].fd.is_none() {
                match reopen(&mut levels, parent, &child) {
                    Some(fd) => {
                        levels[parent].fd = Some(fd);
                        open_count += 1;
                    }
                    None => {
                        // Its remaining subdirectories cannot be reached any more.
                        walk.usage.skipped += 1;
                        levels[parent].pending.clear();
                        // Popping it needs a descriptor to climb from: lend it the child's.
                        levels[parent].fd = Some(child);
                        open_count += 1;
                    }
                }
            }
            continue;
        };
        let parent_fd = top.fd.as_ref().expect("the level being walked is open").as_raw_fd();
        let fd = match open_dir_at(parent_fd, &name) {
            Ok(fd) => fd,
            Err(e) if gone(&e) => continue,
            Err(_) => {
                walk.usage.skipped += 1;
                continue;
            }
        };
        let st = match stat_fd(fd.as_raw_fd()) {
            // Swapped for another filesystem's directory between the stat and the open.
            Ok(st) if st.st_dev == walk.device => st,
            Ok(_) => continue,
            Err(_) => {
                walk.usage.skipped += 1;
                continue;
            }
        };
        let pending = walk.read_entries(&fd);
        levels.push(Level { fd: Some(fd), dev: st.st_dev, ino: st.st_ino, name, pending });
        open_count += 1;
        if open_count > OPEN_DIRS {
            // Give up the descriptor of the shallowest open level but the root: the walk comes
            // back to it last.
            if let Some(level) = levels[1..].iter_mut().find(|l| l.fd.is_some()) {
                level.fd = None;
                open_count -= 1;
            }
        }
    }
    Ok(Some(walk.usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp(name: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("crisp-du-test-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Creates `depth` nested directories named `name` below `dir` (relative to an fd, as a
    /// container can), each also holding `extra_dir` (if given) and a one-block file; returns
    /// the number of inodes made.
    fn deep_chain(dir: &Path, depth: usize, name: &str, extra_dir: Option<&str>) -> u64 {
        let c_name = CString::new(name).unwrap();
        let file = CString::new("f").unwrap();
        let mut fd = open_dir_at(libc::AT_FDCWD, &CString::new(dir.as_os_str().as_bytes()).unwrap()).unwrap();
        let mut made = 0;
        for _ in 0..depth {
            // SAFETY: valid descriptors and names.
            unsafe {
                assert_eq!(libc::mkdirat(fd.as_raw_fd(), c_name.as_ptr(), 0o755), 0);
                if let Some(extra) = extra_dir {
                    let extra = CString::new(extra).unwrap();
                    assert_eq!(libc::mkdirat(fd.as_raw_fd(), extra.as_ptr(), 0o755), 0);
                    made += 1;
                }
                let f = libc::openat(fd.as_raw_fd(), file.as_ptr(), libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC, 0o644);
                assert!(f >= 0);
                assert_eq!(libc::write(f, b"x".as_ptr().cast(), 1), 1);
                libc::close(f);
            }
            made += 2;
            fd = open_dir_at(fd.as_raw_fd(), &c_name).unwrap();
        }
        made
    }

    /// Removes a tree deeper than PATH_MAX and the descriptor limit (std's remove_dir_all
    /// recurses, with a descriptor per level).
    fn remove(dir: &Path) {
        crate::tree::remove_tree(dir).unwrap();
    }

    #[test]
    fn counts_blocks_and_inodes_with_hard_links_once() {
        let dir = temp("basic");
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a"), vec![1u8; 64 * 1024]).unwrap();
        fs::write(dir.join("sub/b"), b"small").unwrap();
        fs::hard_link(dir.join("a"), dir.join("sub/a-link")).unwrap();
        std::os::unix::fs::symlink("a", dir.join("s")).unwrap();
        let u = disk_usage(&dir).unwrap().unwrap();
        // root, a, sub, sub/b, s (the hard link is the same inode as a)
        assert_eq!(u.inodes, 5);
        assert_eq!(u.skipped, 0);
        assert!(u.bytes >= 64 * 1024, "{u:?}");
        assert!(u.bytes < 2 * 64 * 1024 + 64 * 1024, "the hard link is not counted twice: {u:?}");
        assert_eq!(disk_usage(&dir.join("missing")).unwrap(), None);
        remove(&dir);
    }

    #[test]
    fn a_chain_deeper_than_path_max_is_measured_whole() {
        let dir = temp("deep");
        // 1500 levels of 20-byte names: 31500 bytes of path, far past PATH_MAX (4096).
        let made = deep_chain(&dir, 1500, "dddddddddddddddddddd", None);
        fs::write(dir.join("big"), vec![7u8; 1 << 20]).unwrap();
        let u = disk_usage(&dir).unwrap().unwrap();
        assert_eq!(u.skipped, 0, "{u:?}");
        assert_eq!(u.inodes, 1 + made + 1, "{u:?}");
        assert!(u.bytes >= 1 << 20, "the file next to the chain is counted: {u:?}");
        remove(&dir);
    }

    #[test]
    fn a_deep_comb_stays_within_the_descriptor_budget() {
        let dir = temp("comb");
        // Every level has a second subdirectory still to walk when the walk goes down the
        // first: without a budget this holds one descriptor per level.
        let mut limit: libc::rlimit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: reading this process's limit into a live struct.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) }, 0);
        let depth = (limit.rlim_cur as usize).min(30_000) + 200;
        let made = deep_chain(&dir, depth, "d", Some("e"));
        let u = disk_usage(&dir).unwrap().unwrap();
        assert_eq!(u.skipped, 0, "{u:?}");
        assert_eq!(u.inodes, 1 + made, "{u:?}");
        remove(&dir);
    }
}
