//! Disk usage of a directory tree, as du and containerd's snapshotter report it: allocated blocks
//! (st_blocks × 512, so sparse files cost what they occupy), each hard-linked inode once, without
//! crossing into other filesystems. Runs off the daemon's event loop: walking a writable layer of
//! thousands of files as individual async stat calls would flood it.

use std::collections::HashSet;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub bytes: u64,
    pub inodes: u64,
}

fn gone(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR))
}

/// Usage of `root`, or None if it does not exist. Entries that vanish mid-walk are skipped.
pub fn disk_usage(root: &Path) -> io::Result<Option<Usage>> {
    let meta = match fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if gone(&e) => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut usage = Usage { bytes: meta.blocks() * 512, inodes: 1 };
    if !meta.is_dir() {
        return Ok(Some(usage));
    }
    let device = meta.dev();
    let mut linked: HashSet<u64> = HashSet::new();
    let mut dirs: Vec<PathBuf> = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        let entries = match fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if gone(&e) => continue,
            Err(e) => return Err(e),
        };
        for entry in entries {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            let meta = match entry.metadata() {
                Ok(m) => m,
                Err(e) if gone(&e) => continue,
                Err(e) => return Err(e),
            };
            if meta.dev() != device {
                continue;
            }
            if meta.nlink() > 1 && !meta.is_dir() && !linked.insert(meta.ino()) {
                continue;
            }
            usage.bytes += meta.blocks() * 512;
            usage.inodes += 1;
            if meta.is_dir() {
                dirs.push(entry.path());
            }
        }
    }
    Ok(Some(usage))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_blocks_and_inodes_with_hard_links_once() {
        let dir = std::env::temp_dir().join(format!("crisp-du-test-{}", std::process::id()));
        fs::create_dir_all(dir.join("sub")).unwrap();
        fs::write(dir.join("a"), vec![1u8; 64 * 1024]).unwrap();
        fs::write(dir.join("sub/b"), b"small").unwrap();
        fs::hard_link(dir.join("a"), dir.join("sub/a-link")).unwrap();
        std::os::unix::fs::symlink("a", dir.join("s")).unwrap();
        let u = disk_usage(&dir).unwrap().unwrap();
        // root, a, sub, sub/b, s (the hard link is the same inode as a)
        assert_eq!(u.inodes, 5);
        assert!(u.bytes >= 64 * 1024, "{u:?}");
        assert!(u.bytes < 2 * 64 * 1024 + 64 * 1024, "the hard link is not counted twice: {u:?}");
        assert_eq!(disk_usage(&dir.join("missing")).unwrap(), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
