//! Finding a file in an image's unpacked layers the way the container's overlay root will show
//! it, without mounting anything: the topmost layer that has the path wins; a whiteout, a
//! non-directory in place of a parent, or a directory marked opaque hides the layers below.
//! Symlinks are never followed (a link in a layer points into the container, not the host),
//! so a path reached through one is reported as not found.

use std::ffi::{CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

use crate::unpack::OPAQUE_XATTR;

/// What the merged view holds at a path, for reading a file.
#[derive(Debug, PartialEq, Eq)]
pub enum Located {
    /// A regular file: where it is, and its size.
    File { path: PathBuf, size: u64 },
    /// Something else (directory, device, link, ...), or nothing at all.
    NotAFile,
}

/// What the merged view holds at a path, for mounting it.
#[derive(Debug, PartialEq, Eq)]
pub enum Entry {
    /// A regular file, and where.
    File(PathBuf),
    /// A directory, made of these layers' directories (topmost first): stacked read-only they
    /// show what the container's root would.
    Dir(Vec<PathBuf>),
    /// A link, device, socket or fifo.
    Other,
    /// Nothing (absent, whited out, or hidden by an opaque directory).
    Missing,
}

/// Looks `path` (absolute, inside the image) up through `lower_dirs`, topmost first.
pub fn locate(lower_dirs: &[PathBuf], path: &str) -> io::Result<Located> {
    let names = components(path)?;
    if names.is_empty() {
        return Ok(Located::NotAFile);
    }
    for layer in lower_dirs {
        let step = lookup_in_layer(layer, &names)?;
        match step.kind {
            Kind::File(size) => return Ok(Located::File { path: join(layer, &names), size }),
            Kind::Absent if !step.hides_below => {}
            _ => return Ok(Located::NotAFile),
        }
    }
    Ok(Located::NotAFile)
}

/// What `path` (absolute, inside the image; `/` is the whole image) is in the merged view.
pub fn entry(lower_dirs: &[PathBuf], path: &str) -> io::Result<Entry> {
    let names = components(path)?;
    let mut dirs = Vec::new();
    for layer in lower_dirs {
        let step = lookup_in_layer(layer, &names)?;
        match step.kind {
            // A directory above hides whatever non-directory a lower layer has here.
            Kind::File(_) if dirs.is_empty() => return Ok(Entry::File(join(layer, &names))),
            Kind::Other if dirs.is_empty() => return Ok(Entry::Other),
            Kind::Dir => dirs.push(join(layer, &names)),
            Kind::Absent => {}
            Kind::File(_) | Kind::Other | Kind::Hidden => break,
        }
        if step.hides_below {
            break;
        }
    }
    Ok(if dirs.is_empty() { Entry::Missing } else { Entry::Dir(dirs) })
}

fn join(layer: &Path, names: &[CString]) -> PathBuf {
    let mut full = layer.to_path_buf();
    full.extend(names.iter().map(|n| OsStr::from_bytes(n.as_bytes())));
    full
}

/// What one layer has at a path.
enum Kind {
    File(u64),
    Dir,
    Other,
    /// A whiteout, or a non-directory where a parent directory would be.
    Hidden,
    Absent,
}

struct Step {
    kind: Kind,
    /// An opaque directory on the way (or the directory itself): lower layers add nothing here.
    hides_below: bool,
}

fn lookup_in_layer(layer: &Path, names: &[CString]) -> io::Result<Step> {
    let root = CString::new(layer.as_os_str().as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: a valid C string; the descriptor is owned below.
    let fd = unsafe { libc::open(root.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let mut dir = unsafe { OwnedFd::from_raw_fd(fd) };
    let mut opaque = is_opaque(dir.as_raw_fd())?;
    let Some((last, parents)) = names.split_last() else {
        return Ok(Step { kind: Kind::Dir, hides_below: opaque });
    };
    for name in parents {
        // SAFETY: `dir` is open and `name` a valid C string.
        let fd = unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
        if fd < 0 {
            let err = io::Error::last_os_error();
            return match err.raw_os_error() {
                Some(libc::ENOENT) => Ok(Step { kind: Kind::Absent, hides_below: opaque }),
                // A file, a whiteout or a link where a directory would be: it covers lower layers.
                Some(libc::ENOTDIR) | Some(libc::ELOOP) => Ok(Step { kind: Kind::Hidden, hides_below: true }),
                _ => Err(err),
            };
        }
        // SAFETY: as above.
        dir = unsafe { OwnedFd::from_raw_fd(fd) };
        opaque |= is_opaque(dir.as_raw_fd())?;
    }
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `last` a valid C string, `st` writable.
    if unsafe { libc::fstatat(dir.as_raw_fd(), last.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) } != 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) => Ok(Step { kind: Kind::Absent, hides_below: opaque }),
            _ => Err(err),
        };
    }
    let kind = match st.st_mode & libc::S_IFMT {
        libc::S_IFREG => Kind::File(st.st_size as u64),
        libc::S_IFDIR => {
            // SAFETY: as above.
            let fd = unsafe { libc::openat(dir.as_raw_fd(), last.as_ptr(), libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(io::Error::last_os_error());
            }
            // SAFETY: as above.
            let own = unsafe { OwnedFd::from_raw_fd(fd) };
            opaque |= is_opaque(own.as_raw_fd())?;
            Kind::Dir
        }
        // overlayfs's whiteout: a 0/0 character device.
        libc::S_IFCHR if st.st_rdev == 0 => Kind::Hidden,
        _ => Kind::Other,
    };
    // Anything that is not a directory covers what lower layers have at the path.
    let hides_below = opaque || !matches!(kind, Kind::Dir);
    Ok(Step { kind, hides_below })
}

fn is_opaque(fd: RawFd) -> io::Result<bool> {
    let mut value = [0u8; 2];
    // SAFETY: `fd` is open; the buffer is writable for its length.
    let n = unsafe { libc::fgetxattr(fd, OPAQUE_XATTR.as_ptr(), value.as_mut_ptr().cast(), value.len()) };
    if n < 0 {
        let err = io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENODATA) | Some(libc::ENOTSUP) => Ok(false),
            _ => Err(err),
        };
    }
    Ok(n == 1 && value[0] == b'y')
}

/// The names of an absolute in-image path; `..` cannot climb out (it is refused).
fn components(path: &str) -> io::Result<Vec<CString>> {
    let p = Path::new(path);
    if !p.is_absolute() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{path:?} is not an absolute path")));
    }
    let mut out = Vec::new();
    for c in p.components() {
        match c {
            Component::RootDir | Component::CurDir => {}
            Component::Normal(name) => out.push(CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?),
            Component::ParentDir | Component::Prefix(_) => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("{path:?} climbs with \"..\"")))
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::symlink;

    struct Layers {
        base: PathBuf,
    }

    impl Layers {
        fn new(tag: &str) -> Layers {
            let base = std::env::temp_dir().join(format!("crisp-layer-lookup-{tag}-{}", std::process::id()));
            let _ = fs::remove_dir_all(&base);
            fs::create_dir_all(&base).unwrap();
            Layers { base }
        }
        fn layer(&self, name: &str) -> PathBuf {
            let dir = self.base.join(name);
            fs::create_dir_all(&dir).unwrap();
            dir
        }
        fn file(&self, layer: &str, rel: &str, content: &str) {
            let p = self.layer(layer).join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, content).unwrap();
        }
    }

    impl Drop for Layers {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.base);
        }
    }

    fn whiteout(path: &Path) {
        let c = CString::new(path.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path; a 0/0 character device is overlayfs's whiteout.
        assert_eq!(unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | 0o000, 0) }, 0, "{}", io::Error::last_os_error());
    }

    fn mark_opaque(dir: &Path) {
        let c = CString::new(dir.as_os_str().as_bytes()).unwrap();
        // SAFETY: valid path and value.
        let rc = unsafe { libc::setxattr(c.as_ptr(), OPAQUE_XATTR.as_ptr(), b"y".as_ptr().cast(), 1, 0) };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
    }

    fn found(l: &Layers, layers: &[&str], path: &str) -> Option<String> {
        let dirs: Vec<PathBuf> = layers.iter().map(|n| l.layer(n)).collect();
        match locate(&dirs, path).unwrap() {
            Located::File { path, size } => {
                let content = fs::read_to_string(&path).unwrap();
                assert_eq!(content.len() as u64, size);
                Some(content)
            }
            Located::NotAFile => None,
        }
    }

    #[test]
    fn the_topmost_layer_wins_and_lower_ones_show_through() {
        let l = Layers::new("top");
        l.file("lower", "etc/passwd", "lower");
        l.file("lower", "etc/group", "group");
        l.file("upper", "etc/passwd", "upper");
        assert_eq!(found(&l, &["upper", "lower"], "/etc/passwd").as_deref(), Some("upper"));
        assert_eq!(found(&l, &["upper", "lower"], "/etc/group").as_deref(), Some("group"));
        assert_eq!(found(&l, &["upper", "lower"], "/etc/shadow"), None);
        assert_eq!(found(&l, &["upper", "lower"], "/etc"), None, "a directory is not a file");
    }

    #[test]
    fn a_whiteout_hides_the_file_below() {
        let l = Layers::new("whiteout");
        l.file("lower", "etc/passwd", "lower");
        fs::create_dir_all(l.layer("upper").join("etc")).unwrap();
        whiteout(&l.layer("upper").join("etc/passwd"));
        assert_eq!(found(&l, &["upper", "lower"], "/etc/passwd"), None);
        // A whiteout of the parent directory hides everything under it.
        let l2 = Layers::new("whiteout-dir");
        l2.file("lower", "etc/passwd", "lower");
        l2.layer("upper");
        whiteout(&l2.layer("upper").join("etc"));
        assert_eq!(found(&l2, &["upper", "lower"], "/etc/passwd"), None);
    }

    #[test]
    fn an_opaque_directory_hides_what_lower_layers_have_under_it() {
        let l = Layers::new("opaque");
        l.file("lower", "etc/passwd", "lower");
        l.file("lower", "other/file", "other");
        l.file("upper", "etc/hosts", "hosts");
        mark_opaque(&l.layer("upper").join("etc"));
        assert_eq!(found(&l, &["upper", "lower"], "/etc/passwd"), None);
        assert_eq!(found(&l, &["upper", "lower"], "/etc/hosts").as_deref(), Some("hosts"));
        assert_eq!(found(&l, &["upper", "lower"], "/other/file").as_deref(), Some("other"), "only under the opaque directory");
        // An opaque layer root hides every lower layer.
        let l2 = Layers::new("opaque-root");
        l2.file("lower", "etc/passwd", "lower");
        mark_opaque(&l2.layer("upper"));
        assert_eq!(found(&l2, &["upper", "lower"], "/etc/passwd"), None);
    }

    #[test]
    fn links_and_non_directories_in_the_way_are_not_followed() {
        let l = Layers::new("links");
        l.file("lower", "etc/passwd", "lower");
        let upper = l.layer("upper");
        symlink("/etc", upper.join("etc")).unwrap();
        assert_eq!(found(&l, &["upper", "lower"], "/etc/passwd"), None, "a link in place of /etc hides the lower /etc");
        let l2 = Layers::new("file-link");
        let only = l2.layer("only");
        fs::create_dir_all(only.join("etc")).unwrap();
        symlink("/etc/passwd", only.join("etc/passwd")).unwrap();
        assert_eq!(found(&l2, &["only"], "/etc/passwd"), None, "a link to the host's file is not read");
        let l3 = Layers::new("file-parent");
        l3.file("lower", "etc/passwd", "lower");
        l3.file("upper", "etc", "a file named etc");
        assert_eq!(found(&l3, &["upper", "lower"], "/etc/passwd"), None);
    }

    #[test]
    fn a_directory_is_the_stack_of_the_layers_that_show_through() {
        let l = Layers::new("dirs");
        l.file("bottom", "data/a", "a");
        l.file("middle", "data/b", "b");
        l.file("top", "data/c", "c");
        mark_opaque(&l.layer("middle").join("data"));
        let dirs: Vec<PathBuf> = ["top", "middle", "bottom"].iter().map(|n| l.layer(n)).collect();
        assert_eq!(entry(&dirs, "/data").unwrap(), Entry::Dir(vec![l.layer("top").join("data"), l.layer("middle").join("data")]), "the opaque middle hides the bottom");
        assert_eq!(entry(&dirs, "/").unwrap(), Entry::Dir(dirs.clone()), "the whole image");
        assert_eq!(entry(&dirs, "/data/a").unwrap(), Entry::Missing);
        assert_eq!(entry(&dirs, "/data/c").unwrap(), Entry::File(l.layer("top").join("data/c")));
        assert_eq!(entry(&dirs, "/nothing").unwrap(), Entry::Missing);
        symlink("c", l.layer("top").join("data/link")).unwrap();
        assert_eq!(entry(&dirs, "/data/link").unwrap(), Entry::Other);

        // A file above a lower directory replaces it; a directory above a lower file too.
        let l2 = Layers::new("dirs-types");
        l2.file("bottom", "x/inner", "inner");
        l2.file("top", "x", "now a file");
        l2.file("bottom", "y", "a file below");
        l2.file("top", "y/inner", "a directory above");
        let dirs2: Vec<PathBuf> = ["top", "bottom"].iter().map(|n| l2.layer(n)).collect();
        assert_eq!(entry(&dirs2, "/x").unwrap(), Entry::File(l2.layer("top").join("x")));
        assert_eq!(entry(&dirs2, "/y").unwrap(), Entry::Dir(vec![l2.layer("top").join("y")]));
        whiteout(&l2.layer("top").join("z"));
        l2.file("bottom", "z/inner", "whited out");
        assert_eq!(entry(&dirs2, "/z").unwrap(), Entry::Missing);
    }

    #[test]
    fn paths_must_be_absolute_and_stay_inside() {
        let l = Layers::new("paths");
        let dirs = vec![l.layer("a")];
        assert!(locate(&dirs, "etc/passwd").is_err());
        assert!(locate(&dirs, "/etc/../../passwd").is_err());
        assert_eq!(locate(&dirs, "/").unwrap(), Located::NotAFile);
        assert!(locate(&[l.base.join("missing")], "/etc/passwd").is_err(), "a missing layer is an error, not an empty one");
    }
}
