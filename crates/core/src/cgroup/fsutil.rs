//! File operations on cgroup interface files, with errors that name the file.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long removal keeps retrying EBUSY, across every hierarchy of one cgroup.
pub const REMOVE_RETRY: Duration = Duration::from_secs(1);

use super::{Error, Result};

pub fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).map_err(|e| Error::io(format!("read {}", path.display()), e))
}

/// Reads a file that may legitimately be absent (a controller not enabled, an old kernel).
pub fn read_optional(path: &Path) -> Result<Option<String>> {
    match fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

/// Writes a value with a single write(2), as cgroup files require (no truncation, no O_CREAT).
pub fn write(path: &Path, value: &str) -> Result<()> {
    let mut file = OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|e| Error::io(format!("open {}", path.display()), e))?;
    file.write_all(value.as_bytes())
        .map_err(|e| Error::io(format!("write {:?} to {}", value, path.display()), e))
}

pub fn create_dir(path: &Path) -> Result<()> {
    match fs::create_dir(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(Error::io(format!("mkdir {}", path.display()), e)),
    }
}

/// The pids listed in `dir`/cgroup.procs (and, if `recursive`, in every descendant).
pub fn procs(dir: &Path, recursive: bool, out: &mut Vec<libc::pid_t>) -> Result<()> {
    let Some(contents) = read_optional(&dir.join("cgroup.procs"))? else { return Ok(()) };
    out.extend(contents.lines().filter_map(|l| l.trim().parse::<libc::pid_t>().ok()));
    if recursive {
        for child in child_dirs(dir)? {
            procs(&child, true, out)?;
        }
    }
    Ok(())
}

/// The child cgroups of `dir` (its subdirectories). A vanished `dir` has none.
pub fn child_dirs(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(Error::io(format!("list {}", dir.display()), e)),
    };
    let mut dirs = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| Error::io(format!("list {}", dir.display()), e))?;
        if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            dirs.push(entry.path());
        }
    }
    Ok(dirs)
}

/// Removes a cgroup directory and its descendants, deepest first. A cgroup whose processes
/// were just killed reports EBUSY until they are gone, so EBUSY is retried with backoff until
/// `deadline`.
pub fn remove_tree(dir: &Path, deadline: Instant) -> Result<()> {
    for child in child_dirs(dir)? {
        remove_tree(&child, deadline)?;
    }
    let mut delay = Duration::from_millis(5);
    loop {
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
                delay = (delay * 2).min(Duration::from_millis(100));
            }
            Err(e) => return Err(Error::io(format!("rmdir {}", dir.display()), e)),
        }
    }
}

/// SIGKILLs every process listed in `dir` and its descendants.
pub fn kill_procs(dir: &Path) -> Result<()> {
    let mut pids = Vec::new();
    procs(dir, true, &mut pids)?;
    for pid in pids {
        // ESRCH: it exited meanwhile, which is what we want.
        let _ = crate::sys::kill(pid, libc::SIGKILL);
    }
    Ok(())
}
