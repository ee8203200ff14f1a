//! The checkpoint's `rootfs-diff.tar`: chosen entries of a container's writable layer, read while
//! the container keeps running. The container can rename and replace anything in its layer at
//! any time, so no entry is reopened by path: each parent directory is resolved beneath the layer
//! with `openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS)` (a directory swapped for a symlink fails
//! the lookup instead of leading onto the host), each entry is read through its own descriptor,
//! opened with `O_NOFOLLOW` and checked to be the inode that was stat'ed. Entries that changed
//! kind or vanished meanwhile are skipped and counted.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

/// What was written.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DiffTarResult {
    pub entries: u64,
    /// Members not archived: gone, changed kind, or behind a symlink when they were read.
    pub skipped: u64,
}

fn cstring(bytes: &[u8]) -> io::Result<CString> {
    CString::new(bytes).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

fn owned(fd: libc::c_long) -> io::Result<OwnedFd> {
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a descriptor just returned by the kernel, owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// Directory `rel` (relative, `""` for the root itself) beneath `root`, never through a symlink.
fn open_beneath(root: RawFd, rel: &CStr) -> io::Result<OwnedFd> {
    let flags = libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_SYMLINKS | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;
    let path = if rel.to_bytes().is_empty() { c"." } else { rel };
    owned(crate::sys::openat2_raw(root, path.as_ptr(), flags, resolve) as libc::c_long)
}

fn stat_at(dir: RawFd, name: &CStr, flags: libc::c_int) -> io::Result<libc::stat> {
    // SAFETY: an all-zero stat is a valid value of this plain C struct.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: valid descriptor, NUL-terminated name, live buffer.
    if unsafe { libc::fstatat(dir, name.as_ptr(), &mut st, flags) } == 0 {
        Ok(st)
    } else {
        Err(io::Error::last_os_error())
    }
}

fn read_link_at(dir: RawFd, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize + 1];
    // SAFETY: valid descriptor and name; the buffer is writable for its length.
    let n = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn header_for(st: &libc::stat, kind: tar::EntryType, size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(kind);
    header.set_mode(st.st_mode & 0o7777);
    header.set_uid(u64::from(st.st_uid));
    header.set_gid(u64::from(st.st_gid));
    header.set_mtime(st.st_mtime.max(0) as u64);
    header.set_size(size);
    header
}

/// Writes the members `members` of `upper` (relative paths, parents listed before children) to
/// a new tar file at `out` (mode 0600), synced before returning.
pub fn write_diff_tar(upper: &Path, members: &[String], out: &Path) -> io::Result<DiffTarResult> {
    let root = {
        let c = cstring(upper.as_os_str().as_bytes())?;
        // SAFETY: a valid NUL-terminated path.
        owned(unsafe { libc::open(c.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) } as libc::c_long)?
    };
    let file = std::fs::OpenOptions::new().write(true).create_new(true).mode(0o600).custom_flags(libc::O_CLOEXEC).open(out)?;
    let mut builder = tar::Builder::new(io::BufWriter::with_capacity(1 << 20, file));
    let mut result = DiffTarResult::default();
    for member in members {
        let rel = Path::new(member);
        let (parent, name) = match (rel.parent(), rel.file_name()) {
            (Some(parent), Some(name)) => (parent, name),
            _ => {
                result.skipped += 1;
                continue;
            }
        };
        match append_member(&mut builder, root.as_raw_fd(), parent.as_os_str(), name, rel) {
            Ok(true) => result.entries += 1,
            Ok(false) => result.skipped += 1,
            Err(e) => return Err(e),
        }
    }
    let mut writer = builder.into_inner()?;
    writer.flush()?;
    let file = writer.into_inner().map_err(|e| e.into_error())?;
    file.sync_all()?;
    Ok(result)
}

/// Appends one member; false when it could not be read as what it was (skipped). Errors are
/// failures to write the archive.
fn append_member<W: Write>(builder: &mut tar::Builder<W>, root: RawFd, parent: &OsStr, name: &OsStr, rel: &Path) -> io::Result<bool> {
    let Ok(dir) = open_beneath(root, &cstring(parent.as_bytes())?) else { return Ok(false) };
    let c_name = cstring(name.as_bytes())?;
    let Ok(st) = stat_at(dir.as_raw_fd(), &c_name, libc::AT_SYMLINK_NOFOLLOW) else { return Ok(false) };
    match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => {
            // SAFETY: valid descriptor and name; the result is owned below.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), c_name.as_ptr(), libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC) };
            let Ok(fd) = owned(fd as libc::c_long) else { return Ok(false) };
            let Ok(now) = stat_at(fd.as_raw_fd(), c"", libc::AT_EMPTY_PATH) else { return Ok(false) };
            if now.st_mode & libc::S_IFMT != libc::S_IFREG || now.st_ino != st.st_ino || now.st_dev != st.st_dev {
                return Ok(false);
            }
            let size = now.st_size.max(0) as u64;
            let mut header = header_for(&now, tar::EntryType::Regular, size);
            // The file may shrink or grow while it is read: exactly `size` bytes go in.
            let data = File::from(fd).take(size).chain(io::repeat(0)).take(size);
            builder.append_data(&mut header, rel, data)?;
        }
        libc::S_IFDIR => {
            let mut header = header_for(&st, tar::EntryType::Directory, 0);
            builder.append_data(&mut header, rel, io::empty())?;
        }
        libc::S_IFLNK => {
            let Ok(target) = read_link_at(dir.as_raw_fd(), &c_name) else { return Ok(false) };
            let mut header = header_for(&st, tar::EntryType::Symlink, 0);
            builder.append_link(&mut header, rel, OsStr::from_bytes(&target))?;
        }
        kind @ (libc::S_IFCHR | libc::S_IFBLK | libc::S_IFIFO) => {
            let entry = match kind {
                libc::S_IFCHR => tar::EntryType::Char,
                libc::S_IFBLK => tar::EntryType::Block,
                _ => tar::EntryType::Fifo,
            };
            let mut header = header_for(&st, entry, 0);
            if kind != libc::S_IFIFO {
                // SAFETY: major/minor are pure arithmetic on the device number.
                let (major, minor) = unsafe { (libc::major(st.st_rdev), libc::minor(st.st_rdev)) };
                header.set_device_major(major)?;
                header.set_device_minor(minor)?;
            }
            builder.append_data(&mut header, rel, io::empty())?;
        }
        // Sockets have no archive form.
        _ => return Ok(false),
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn a_directory_swapped_for_a_symlink_does_not_pull_host_files_into_the_archive() {
        let base = std::env::temp_dir().join(format!("crisp-diff-tar-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&base);
        let upper = base.join("upper");
        let host = base.join("host");
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::create_dir_all(&host).unwrap();
        std::fs::write(upper.join("etc/passwd"), b"container-file").unwrap();
        std::fs::write(host.join("passwd"), b"host-secret").unwrap();
        std::fs::write(upper.join("top"), b"top-file").unwrap();
        std::os::unix::fs::symlink("/nowhere", upper.join("link")).unwrap();
        // The container swaps its directory for a link to the host after the diff was listed.
        let members: Vec<String> = ["etc", "etc/passwd", "top", "link"].iter().map(|s| s.to_string()).collect();
        std::fs::rename(upper.join("etc"), upper.join("etc.old")).unwrap();
        std::os::unix::fs::symlink(&host, upper.join("etc")).unwrap();
        let out = base.join("diff.tar");
        let result = write_diff_tar(&upper, &members, &out).unwrap();
        assert_eq!(result, DiffTarResult { entries: 3, skipped: 1 }, "etc is a link now, etc/passwd is behind it");

        let mut archive = tar::Archive::new(File::open(&out).unwrap());
        let mut seen = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            assert!(!data.windows(11).any(|w| w == b"host-secret"), "a host file is in the archive as {}", path.display());
            seen.push((path.to_string_lossy().into_owned(), entry.header().entry_type(), data));
        }
        assert_eq!(seen.len(), 3);
        assert_eq!(seen[0].0, "etc");
        assert!(seen[0].1.is_symlink(), "etc is archived as the link it now is, not followed");
        assert_eq!((seen[1].0.as_str(), seen[1].2.as_slice()), ("top", &b"top-file"[..]));
        assert!(seen[2].1.is_symlink());
        assert_eq!(std::fs::metadata(&out).unwrap().permissions().mode() & 0o777, 0o600);
        std::fs::remove_dir_all(&base).unwrap();
    }
}
