//! Materialises tar members inside the unpack root, in overlayfs layer format.
//!
//! Every lookup goes through `open_dir_in_root` (openat2 with RESOLVE_BENEATH), which resolves
//! a member's parent directory below the root and refuses any symlink that would leave it
//! (reported as EPATHESCAPE); the member itself is then created,
//! replaced or modified with *at calls on that directory fd and a single-component name, which
//! never follow a final symlink. Together with the lexical `..` check in `path`, nothing the
//! archive says can make us touch a file outside the root.

use std::ffi::{CStr, CString};
use std::fs::{File, Permissions};
use std::io::{Read, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::PermissionsExt;

use super::error::{Error, Result};
use super::path::{show, RelPath};
use super::sys;
use super::tar::{EntryKind, Header, Timestamp};

const WHITEOUT_PREFIX: &[u8] = b".wh.";
const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";
use super::OPAQUE_XATTR;
/// Overlay metadata (opaque, redirect, metacopy, ...) is derived by the unpacker from whiteouts;
/// an image must not be able to forge it through xattr records.
const RESERVED_XATTR_PREFIX: &[u8] = b"trusted.overlay.";
const COPY_BUFFER: usize = 256 << 10;

pub struct Applier {
    root: OwnedFd,
    preserve_ownership: bool,
    /// The parent directory of the previous member; consecutive members usually share it.
    cached_parent: Option<(RelPath, OwnedFd)>,
    /// Directory times are applied at the end: creating entries inside would change them.
    dir_times: Vec<(RelPath, Timestamp, Timestamp)>,
    buffer: Vec<u8>,
    pub bytes_written: u64,
    pub xattrs_skipped: u64,
}

impl Applier {
    pub fn new(root: OwnedFd, preserve_ownership: bool) -> Applier {
        Applier {
            root,
            preserve_ownership,
            cached_parent: None,
            dir_times: Vec::new(),
            buffer: vec![0; COPY_BUFFER],
            bytes_written: 0,
            xattrs_skipped: 0,
        }
    }

    pub fn root(&self) -> &OwnedFd {
        &self.root
    }

    /// Applies one member; `data` yields its content (regular files only).
    pub fn apply(&mut self, header: &Header, data: &mut impl Read) -> Result<()> {
        let path = RelPath::parse(&header.name)?;
        // The layer root itself keeps the attributes its creator gave it, as in containerd.
        let Some((parent, base)) = path.split_last() else { return Ok(()) };
        let base = CString::new(base).expect("RelPath components contain no NUL");

        let dir = self.parent_dir(&parent)?;
        let outcome = if base.to_bytes().starts_with(WHITEOUT_PREFIX) {
            self.whiteout(&dir, &base, header).map(|()| false)
        } else {
            self.create(&dir, &base, &path, header, data)
        };
        // A member that removed something may have changed how paths resolve from here on.
        if let Ok(false) = outcome {
            self.cached_parent = Some((parent, dir));
        }
        outcome.map(|_| ())
    }

    /// Sets the deferred directory times. Call once, after the last member.
    pub fn finish(&mut self) -> Result<()> {
        self.cached_parent = None;
        for (path, atime, mtime) in std::mem::take(&mut self.dir_times) {
            let Some((parent, base)) = path.split_last() else { continue };
            let base = CString::new(base).expect("RelPath components contain no NUL");
            let dir = match sys::open_dir_in_root(self.root.as_fd(), &parent.to_cstring()) {
                Ok(dir) => dir,
                // Replaced by a later member: its times no longer apply.
                Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR) | Some(libc::EXDEV)) => continue,
                Err(e) => return Err(Error::io(format!("open directory {}", parent.display()), e)),
            };
            match sys::stat_at(dir.as_fd(), &base) {
                Ok(Some(st)) if sys::is_dir(&st) => sys::utimes_at(dir.as_fd(), &base, atime, mtime)
                    .map_err(|e| Error::io(format!("set times of {}", path.display()), e))?,
                Ok(_) => {}
                Err(e) => return Err(Error::io(format!("stat {}", path.display()), e)),
            }
        }
        Ok(())
    }

    /// Creates or replaces one non-whiteout member in `dir`. Returns whether anything was removed.
    fn create(&mut self, dir: &OwnedFd, base: &CStr, path: &RelPath, header: &Header, data: &mut impl Read) -> Result<bool> {
        let dir = dir.as_fd();
        let what = path.display();
        let existing = sys::stat_at(dir, base).map_err(|e| Error::io(format!("stat {what}"), e))?;

        if header.kind == EntryKind::HardLink {
            return self.hardlink(dir, base, path, header, existing);
        }

        let keep_existing_dir = header.kind == EntryKind::Directory && existing.as_ref().is_some_and(sys::is_dir);
        let replaced_whiteout = existing.as_ref().is_some_and(sys::is_whiteout);
        let removed = existing.is_some() && !keep_existing_dir;
        if removed {
            remove_all(dir, base).map_err(|e| Error::io(format!("remove {what} to replace it"), e))?;
        }

        match header.kind {
            EntryKind::Regular => {
                let mut file =
                    sys::create_file_at(dir, base, 0o600).map_err(|e| Error::io(format!("create {what}"), e))?;
                self.copy_data(data, &mut file, &what)?;
                if self.preserve_ownership {
                    std::os::unix::fs::fchown(&file, Some(header.uid), Some(header.gid))
                        .map_err(|e| Error::io(format!("chown {what}"), e))?;
                }
                // After chown, which clears setuid/setgid.
                file.set_permissions(Permissions::from_mode(header.mode))
                    .map_err(|e| Error::io(format!("chmod {what}"), e))?;
                for (key, value) in &header.xattrs {
                    self.set_xattr(key, value, &what, |k, v| sys::fsetxattr(&file, k, v))?;
                }
                sys::futimes(&file, header.atime.unwrap_or(header.mtime), header.mtime)
                    .map_err(|e| Error::io(format!("set times of {what}"), e))?;
                return Ok(removed);
            }
            EntryKind::Directory => {
                if !keep_existing_dir {
                    sys::mkdir_at(dir, base, 0o700).map_err(|e| Error::io(format!("mkdir {what}"), e))?;
                    // A whiteout earlier in this layer hid the lower directory; the directory this
                    // layer brings in its place must not merge with it.
                    if replaced_whiteout {
                        sys::set_xattr_at(dir, Some(base), OPAQUE_XATTR, b"y")
                            .map_err(|e| Error::io(format!("mark {what} opaque"), e))?;
                    }
                }
            }
            EntryKind::Symlink => {
                if header.link_name.is_empty() {
                    return Err(Error::format(format!("symlink {what} has an empty target")));
                }
                let target = CString::new(header.link_name.clone())
                    .map_err(|_| Error::format(format!("symlink target of {what} contains a NUL byte")))?;
                sys::symlink_at(&target, dir, base).map_err(|e| Error::io(format!("symlink {what}"), e))?;
            }
            EntryKind::CharDevice | EntryKind::BlockDevice | EntryKind::Fifo => {
                let file_type = match header.kind {
                    EntryKind::CharDevice => libc::S_IFCHR,
                    EntryKind::BlockDevice => libc::S_IFBLK,
                    _ => libc::S_IFIFO,
                };
                sys::mknod_at(dir, base, file_type | 0o600, header.dev_major, header.dev_minor)
                    .map_err(|e| Error::io(format!("mknod {what}"), e))?;
            }
            EntryKind::HardLink => unreachable!("handled above"),
        }

        // Metadata for the nodes created above (never a regular file). The node at `base` was
        // created or checked just now, so only the symlink case needs care.
        if self.preserve_ownership {
            sys::chown_at(dir, base, header.uid, header.gid).map_err(|e| Error::io(format!("chown {what}"), e))?;
        }
        if header.kind != EntryKind::Symlink {
            sys::chmod_at(dir, base, header.mode).map_err(|e| Error::io(format!("chmod {what}"), e))?;
        }
        for (key, value) in &header.xattrs {
            self.set_xattr(key, value, &what, |k, v| sys::set_xattr_at(dir, Some(base), k, v))?;
        }
        let atime = header.atime.unwrap_or(header.mtime);
        if header.kind == EntryKind::Directory {
            self.dir_times.push((path.clone(), atime, header.mtime));
        } else {
            sys::utimes_at(dir, base, atime, header.mtime).map_err(|e| Error::io(format!("set times of {what}"), e))?;
        }
        Ok(removed)
    }

    /// Hardlinks are resolved inside the root like any other path, and link the target node
    /// itself (a symlink target stays a symlink). The shared inode keeps the metadata its own
    /// member gave it.
    fn hardlink(
        &mut self,
        dir: std::os::fd::BorrowedFd<'_>,
        base: &CStr,
        path: &RelPath,
        header: &Header,
        existing: Option<libc::stat>,
    ) -> Result<bool> {
        let what = path.display();
        let target = RelPath::parse(&header.link_name)
            .map_err(|e| e.context(format!("hardlink target {}", show(&header.link_name))))?;
        let Some((target_parent, target_base)) = target.split_last() else {
            return Err(Error::format(format!("hardlink {what} points at the layer root")));
        };
        let target_base = CString::new(target_base).expect("RelPath components contain no NUL");
        let missing = || {
            Error::format(format!("hardlink {what} points at {}, which is not in this layer", show(&header.link_name)))
        };
        let target_dir = match sys::open_dir_in_root(self.root.as_fd(), &target_parent.to_cstring()) {
            Ok(fd) => fd,
            Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT) | Some(libc::ENOTDIR)) => return Err(missing()),
            Err(e) if e.raw_os_error() == Some(libc::EXDEV) => {
                return Err(Error::path_escape(format!("hardlink {what} resolves outside the layer through a symlink")))
            }
            Err(e) => return Err(Error::io(format!("resolve hardlink target of {what}"), e)),
        };
        let target_stat = sys::stat_at(target_dir.as_fd(), &target_base)
            .map_err(|e| Error::io(format!("stat hardlink target of {what}"), e))?
            .ok_or_else(missing)?;
        if sys::is_dir(&target_stat) {
            return Err(Error::format(format!("hardlink {what} points at a directory")));
        }

        if let Some(existing) = existing {
            // Already this very inode (the member names itself, or a repeated link): nothing to do,
            // and removing it first would destroy the target.
            if existing.st_dev == target_stat.st_dev && existing.st_ino == target_stat.st_ino {
                return Ok(false);
            }
            remove_all(dir, base).map_err(|e| Error::io(format!("remove {what} to replace it"), e))?;
        }
        sys::link_at(target_dir.as_fd(), &target_base, dir, base).map_err(|e| Error::io(format!("hardlink {what}"), e))?;
        Ok(existing.is_some())
    }

    /// Turns `.wh.<name>` into the overlayfs whiteout for `<name>`, and `.wh..wh..opq` into the
    /// opaque xattr on its directory. Whiteouts only hide lower layers (OCI image spec): an entry
    /// of this very layer with the same name stays, since it already hides the lower one; if it
    /// is a directory it is made opaque so the lower directory's content stays hidden too.
    fn whiteout(&mut self, dir: &OwnedFd, base: &CStr, header: &Header) -> Result<()> {
        let dir = dir.as_fd();
        let base = base.to_bytes();
        if base == OPAQUE_MARKER {
            return sys::set_xattr_at(dir, None, OPAQUE_XATTR, b"y")
                .map_err(|e| Error::io(format!("mark the directory of {} opaque", show(&header.name)), e));
        }
        // Other `.wh..wh.` names are aufs bookkeeping, which docker ignores as well.
        if base.starts_with(b".wh..wh.") {
            return Ok(());
        }
        let hidden = &base[WHITEOUT_PREFIX.len()..];
        match hidden {
            b".." => return Err(Error::path_escape(format!("whiteout {} escapes its directory", show(&header.name)))),
            b"" | b"." => return Err(Error::format(format!("whiteout {} names no entry", show(&header.name)))),
            _ => {}
        }
        let hidden = CString::new(hidden).expect("RelPath components contain no NUL");
        let what = show(&header.name);
        match sys::stat_at(dir, &hidden).map_err(|e| Error::io(format!("stat target of whiteout {what}"), e))? {
            None => {
                sys::mknod_at(dir, &hidden, libc::S_IFCHR, 0, 0)
                    .map_err(|e| Error::io(format!("create whiteout {what}"), e))?;
                if self.preserve_ownership {
                    sys::chown_at(dir, &hidden, header.uid, header.gid)
                        .map_err(|e| Error::io(format!("chown whiteout {what}"), e))?;
                }
            }
            Some(st) if sys::is_dir(&st) => sys::set_xattr_at(dir, Some(&hidden), OPAQUE_XATTR, b"y")
                .map_err(|e| Error::io(format!("mark directory hidden by {what} opaque"), e))?,
            Some(_) => {}
        }
        Ok(())
    }

    /// The directory `parent`, resolved in the root and created (0755, like docker) if missing.
    fn parent_dir(&mut self, parent: &RelPath) -> Result<OwnedFd> {
        if let Some((cached, fd)) = self.cached_parent.take() {
            if cached == *parent {
                return Ok(fd);
            }
        }
        match sys::open_dir_in_root(self.root.as_fd(), &parent.to_cstring()) {
            Ok(fd) => Ok(fd),
            Err(e) if e.raw_os_error() == Some(libc::ENOENT) => self.make_dirs(parent),
            Err(e) => Err(lookup_error(parent, e)),
        }
    }

    fn make_dirs(&mut self, parent: &RelPath) -> Result<OwnedFd> {
        let mut dir = self.root.try_clone().map_err(|e| Error::io("dup root fd", e))?;
        for (i, component) in parent.components().iter().enumerate() {
            let prefix = parent.prefix(i + 1);
            let prefix_c = prefix.to_cstring();
            dir = match sys::open_dir_in_root(self.root.as_fd(), &prefix_c) {
                Ok(fd) => fd,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => {
                    let name = CString::new(component.as_slice()).expect("RelPath components contain no NUL");
                    match sys::mkdir_at(dir.as_fd(), &name, 0o755) {
                        // Exact mode regardless of the process umask.
                        Ok(()) => sys::chmod_at(dir.as_fd(), &name, 0o755)
                            .map_err(|e| Error::io(format!("chmod {}", prefix.display()), e))?,
                        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
                        Err(e) => return Err(Error::io(format!("mkdir {}", prefix.display()), e)),
                    }
                    sys::open_dir_in_root(self.root.as_fd(), &prefix_c).map_err(|e| {
                        if e.raw_os_error() == Some(libc::ENOENT) {
                            // The layer writes through a symlink whose target it does not
                            // contain: treated as an attempt to reach outside the layer.
                            Error::path_escape(format!(
                                "{} is a symlink that does not resolve within this layer",
                                prefix.display()
                            ))
                        } else {
                            lookup_error(&prefix, e)
                        }
                    })?
                }
                Err(e) => return Err(lookup_error(&prefix, e)),
            };
        }
        Ok(dir)
    }

    fn copy_data(&mut self, data: &mut impl Read, file: &mut File, what: &str) -> Result<()> {
        loop {
            let n = match data.read(&mut self.buffer) {
                Ok(0) => return Ok(()),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(Error::io(format!("read data of {what}"), e)),
            };
            file.write_all(&self.buffer[..n]).map_err(|e| Error::io(format!("write {what}"), e))?;
            self.bytes_written += n as u64;
        }
    }

    /// Applies one xattr record. Filesystems without xattr support, and `security.*` names the
    /// kernel refuses (e.g. SELinux labels we may not set), are skipped and counted rather than
    /// failing the layer, as containerd does; any other failure is an error.
    fn set_xattr(
        &mut self,
        key: &[u8],
        value: &[u8],
        what: &str,
        set: impl FnOnce(&CStr, &[u8]) -> std::io::Result<()>,
    ) -> Result<()> {
        if key.starts_with(RESERVED_XATTR_PREFIX) {
            self.xattrs_skipped += 1;
            return Ok(());
        }
        let key_c = CString::new(key).expect("xattr names were checked for NUL bytes");
        match set(&key_c, value) {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                self.xattrs_skipped += 1;
                Ok(())
            }
            Err(e) if e.raw_os_error() == Some(libc::EPERM) && key.starts_with(b"security.") => {
                self.xattrs_skipped += 1;
                Ok(())
            }
            Err(e) => Err(Error::io(format!("set xattr {} on {what}", show(key)), e)),
        }
    }
}

/// Removes `name` from `dir`, recursively if it is a directory, never following symlinks;
/// iterative, so a hostile layer's deep directory chain cannot exhaust the stack.
fn remove_all(dir: std::os::fd::BorrowedFd<'_>, name: &CStr) -> std::io::Result<()> {
    crate::tree::remove_at(dir, name)
}

/// A failed lookup of a parent directory; EXDEV means it would leave the layer through a symlink.
fn lookup_error(dir: &RelPath, e: std::io::Error) -> Error {
    if e.raw_os_error() == Some(libc::EXDEV) {
        Error::path_escape(format!("{} resolves outside the layer through a symlink", dir.display()))
    } else {
        Error::io(format!("open directory {}", dir.display()), e)
    }
}
