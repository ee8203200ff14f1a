//! Crash-safe replacement of a small file in one call: the daemon's state records go through
//! here so that a checkpoint costs one trip to a worker thread instead of one per system call.
//!
//! A crash at any point leaves either the old or the new content under the name: the data goes
//! to a temporary file in the same directory, which is renamed over the target. With `durable`,
//! the file is fsynced before the rename and the directory after it, so the new content also
//! survives a power loss once the call returns.

use std::ffi::OsString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// `<dir>/.<name>.<pid>-<n>.tmp`: unique among this process's concurrent writers, and dotted so
/// directory listings that look for records skip it.
fn temp_path(target: &Path) -> io::Result<PathBuf> {
    let name = target
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, format!("{} has no file name", target.display())))?;
    let mut tmp = OsString::from(".");
    tmp.push(name);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    tmp.push(format!(".{}-{}.tmp", std::process::id(), n));
    Ok(target.with_file_name(tmp))
}

/// Replaces `target` with `data`, created with `mode` (before the umask).
pub fn write_atomic(target: &Path, data: &[u8], mode: u32, durable: bool) -> io::Result<()> {
    let tmp = temp_path(target)?;
    let result = (|| {
        let mut file = OpenOptions::new().write(true).create_new(true).mode(mode).custom_flags(libc::O_CLOEXEC).open(&tmp)?;
        file.write_all(data)?;
        if durable {
            file.sync_all()?;
        }
        drop(file);
        fs::rename(&tmp, target)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    if durable {
        let dir = match target.parent() {
            Some(p) if !p.as_os_str().as_bytes().is_empty() => p,
            _ => Path::new("."),
        };
        File::open(dir)?.sync_all()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crisp-atomic-{}-{}", name, std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn replaces_content_and_leaves_no_temporary_file() {
        let dir = scratch("replace");
        let target = dir.join("state.json");
        fs::write(&target, b"old").unwrap();
        for durable in [false, true] {
            write_atomic(&target, b"{\"new\":true}", 0o600, durable).unwrap();
            assert_eq!(fs::read(&target).unwrap(), b"{\"new\":true}");
        }
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("state.json")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn creates_with_the_requested_mode() {
        let dir = scratch("mode");
        let target = dir.join("f");
        write_atomic(&target, b"x", 0o600, true).unwrap();
        assert_eq!(fs::metadata(&target).unwrap().permissions().mode() & 0o777, 0o600);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_failed_rename_removes_the_temporary_file() {
        let dir = scratch("fail");
        // Renaming a file over a non-empty directory fails.
        let target = dir.join("taken");
        fs::create_dir(&target).unwrap();
        fs::write(target.join("inside"), b"").unwrap();
        assert!(write_atomic(&target, b"x", 0o600, false).is_err());
        let names: Vec<_> = fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name()).collect();
        assert_eq!(names, vec![OsString::from("taken")]);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn a_missing_directory_is_an_error() {
        let err = write_atomic(Path::new("/nonexistent-crisp-dir/f"), b"x", 0o600, false).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }
}
