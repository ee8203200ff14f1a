//! Linux namespace pinning and entering.
//!
//! A namespace lives as long as a process is in it or something holds a reference to it. crisp
//! keeps a pod's namespaces alive independently of any process by bind-mounting their nsfs files
//! (`/proc/<pid>/ns/<type>`) onto ordinary files in the sandbox's directory. Those pinned paths are
//! what containers join (setns) and what CNI plugins get as the network namespace path.
//!
//! Propagation: the pin is a plain bind mount that keeps the propagation type of the mount it is
//! created under. Under a private parent nothing propagates; under a shared parent the mount is
//! copied to peer namespaces and, because the pin itself stays in that peer group, unpinning
//! propagates the unmount to the same peers. Making the pin private after the fact would instead
//! strand those copies (and the namespace) in the peers, so it is deliberately left alone.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use crate::sys;

/// The namespace kinds crisp pins or enters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum NsType {
    Net,
    Ipc,
    Uts,
    Pid,
    Mnt,
    Cgroup,
    User,
}

impl NsType {
    /// The CLONE_NEW* flag of this namespace type.
    pub fn clone_flag(self) -> libc::c_int {
        match self {
            NsType::Net => libc::CLONE_NEWNET,
            NsType::Ipc => libc::CLONE_NEWIPC,
            NsType::Uts => libc::CLONE_NEWUTS,
            NsType::Pid => libc::CLONE_NEWPID,
            NsType::Mnt => libc::CLONE_NEWNS,
            NsType::Cgroup => libc::CLONE_NEWCGROUP,
            NsType::User => libc::CLONE_NEWUSER,
        }
    }

    /// The file name of this namespace under /proc/<pid>/ns/.
    pub fn proc_name(self) -> &'static str {
        match self {
            NsType::Net => "net",
            NsType::Ipc => "ipc",
            NsType::Uts => "uts",
            NsType::Pid => "pid",
            NsType::Mnt => "mnt",
            NsType::Cgroup => "cgroup",
            NsType::User => "user",
        }
    }

    pub fn from_proc_name(name: &str) -> Option<Self> {
        Some(match name {
            "net" => NsType::Net,
            "ipc" => NsType::Ipc,
            "uts" => NsType::Uts,
            "pid" => NsType::Pid,
            "mnt" => NsType::Mnt,
            "cgroup" => NsType::Cgroup,
            "user" => NsType::User,
            _ => return None,
        })
    }
}

/// The identity of a namespace: the (device, inode) of its nsfs file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NsId {
    pub dev: u64,
    pub ino: u64,
}

/// The identity of the namespace at `path` (a /proc/<pid>/ns/* file or a pinned file).
pub fn ns_id(path: &Path) -> io::Result<NsId> {
    let md = fs::metadata(path)?;
    Ok(NsId { dev: md.dev(), ino: md.ino() })
}

/// Whether `path` currently is an nsfs file, i.e. a live namespace reference (a pinned file
/// reports nsfs; the empty placeholder under it reports the placeholder's filesystem).
pub fn is_nsfs(path: &Path) -> io::Result<bool> {
    Ok(sys::fs_magic(path)? == sys::NSFS_MAGIC)
}

/// Pins the namespace `source` (e.g. `/proc/<pid>/ns/net`) at `target` by bind-mounting it onto
/// an empty file created there.
///
/// Idempotent: pinning the same namespace again at the same target is a no-op; a target that
/// already pins a different namespace is an AlreadyExists error.
pub fn pin(source: &Path, target: &Path) -> io::Result<()> {
    let wanted = ns_id(source)?;
    if target.exists() && is_nsfs(target)? {
        return if ns_id(target)? == wanted {
            Ok(())
        } else {
            Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                format!("{} already pins another namespace", target.display()),
            ))
        };
    }
    // An empty, read-only placeholder; the bind mount covers it.
    OpenOptions::new().write(true).create(true).truncate(false).mode(0o444).open(target)?;
    if let Err(e) = sys::mount(Some(source), target, None, libc::MS_BIND, None) {
        let _ = fs::remove_file(target);
        return Err(io::Error::new(
            e.kind(),
            format!("bind-mount {} onto {}: {}", source.display(), target.display(), e),
        ));
    }
    Ok(())
}

/// Removes a pin: detaches every mount stacked on `target`, then deletes the placeholder.
/// Idempotent: a missing target is success. Errors are the raw OS errors (errno preserved).
pub fn unpin(target: &Path) -> io::Result<()> {
    // A pin may have been stacked more than once (e.g. a retried pin that raced); detach until
    // the path no longer reports nsfs. Bounded so a pathological state cannot spin forever.
    for _ in 0..16 {
        match is_nsfs(target) {
            Ok(true) => {}
            Ok(false) => break,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
        match sys::umount2(target, libc::MNT_DETACH | libc::UMOUNT_NOFOLLOW) {
            Ok(()) => {}
            Err(e) if sys::errno(&e) == libc::EINVAL => break, // not a mount point
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(e),
        }
    }
    match fs::remove_file(target) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Unpins every namespace file in `dir` and removes the directory. Idempotent.
pub fn unpin_dir(dir: &Path) -> io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let mut first_err = None;
    for entry in entries {
        let path = entry?.path();
        if let Err(e) = unpin(&path) {
            first_err.get_or_insert(e);
        }
    }
    if let Some(e) = first_err {
        return Err(e);
    }
    match fs::remove_dir(dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves the calling thread into the namespace at `path`, checking it is of type `ns`.
///
/// Entering a PID namespace only affects children forked afterwards; entering a mount namespace
/// requires a single-threaded caller. Those are the kernel's rules, not this function's.
pub fn setns_path(path: &Path, ns: NsType) -> io::Result<()> {
    let file = File::open(path)?;
    sys::setns(file.as_raw_fd(), ns.clone_flag())
        .map_err(|e| io::Error::new(e.kind(), format!("setns {} ({}): {}", path.display(), ns.proc_name(), e)))
}

/// Sets IFF_UP on the loopback interface of the calling thread's network namespace.
pub fn bring_loopback_up() -> io::Result<()> {
    let sock = sys::cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    let sock = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(sock) };
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    sys::cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) })?;
    let flags = unsafe { req.ifr_ifru.ifru_flags };
    if flags & libc::IFF_UP as libc::c_short != 0 {
        return Ok(());
    }
    req.ifr_ifru.ifru_flags = flags | libc::IFF_UP as libc::c_short;
    sys::cvt(unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    fn is_root() -> bool {
        unsafe { libc::geteuid() == 0 }
    }

    struct TempDir(PathBuf);

    impl TempDir {
        fn new(tag: &str) -> Self {
            let dir = std::env::temp_dir().join(format!("crisp-test-ns-{}-{}", tag, std::process::id()));
            let _ = unpin_dir(&dir.join("ns"));
            let _ = fs::remove_dir_all(&dir);
            fs::create_dir_all(&dir).unwrap();
            TempDir(dir)
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = unpin_dir(&self.0.join("ns"));
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// Runs `f` in a forked child and returns its exit code; the child never returns to the test
    /// harness (it calls _exit), so namespace changes cannot leak into other tests.
    fn in_child(f: impl FnOnce() -> i32) -> i32 {
        match unsafe { sys::fork() }.unwrap() {
            sys::Fork::Child => {
                let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)).unwrap_or(101);
                unsafe { libc::_exit(code) }
            }
            sys::Fork::Parent(pid) => sys::wait_pid(pid).unwrap().code(),
        }
    }

    #[test]
    fn ns_type_names_round_trip() {
        for t in [NsType::Net, NsType::Ipc, NsType::Uts, NsType::Pid, NsType::Mnt, NsType::Cgroup, NsType::User] {
            assert_eq!(NsType::from_proc_name(t.proc_name()), Some(t));
        }
        assert_eq!(NsType::from_proc_name("time"), None);
    }

    #[test]
    fn unpin_of_missing_paths_is_a_no_op() {
        let dir = TempDir::new("missing");
        unpin(&dir.0.join("nope")).unwrap();
        unpin_dir(&dir.0.join("nope-dir")).unwrap();
    }

    #[test]
    fn pin_enter_and_unpin_a_network_namespace() {
        if !is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = TempDir::new("net");
        let ns_dir = dir.0.join("ns");
        fs::create_dir_all(&ns_dir).unwrap();
        let target = ns_dir.join("net");
        let host_net = ns_id(Path::new("/proc/self/ns/net")).unwrap();

        // A child creates a netns, brings lo up and pins it; the pin must outlive the child.
        let pin_target = target.clone();
        let code = in_child(move || {
            if unshare_ok(libc::CLONE_NEWNET).is_err() {
                return 2;
            }
            if bring_loopback_up().is_err() {
                return 3;
            }
            match pin(Path::new("/proc/self/ns/net"), &pin_target) {
                Ok(()) => {}
                Err(_) => return 4,
            }
            // Pinning again is idempotent.
            if pin(Path::new("/proc/self/ns/net"), &pin_target).is_err() {
                return 5;
            }
            0
        });
        assert_eq!(code, 0);
        assert!(is_nsfs(&target).unwrap());
        let pinned = ns_id(&target).unwrap();
        assert_ne!(pinned, host_net);

        // Pinning a different namespace over it is refused.
        let err = pin(Path::new("/proc/self/ns/net"), &target).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::AlreadyExists);

        // Another child enters it by path and sees the same namespace with lo up.
        let enter_target = target.clone();
        let code = in_child(move || {
            if setns_path(&enter_target, NsType::Net).is_err() {
                return 2;
            }
            if ns_id(Path::new("/proc/thread-self/ns/net")).ok() != Some(pinned) {
                return 3;
            }
            if !loopback_is_up() {
                return 4;
            }
            0
        });
        assert_eq!(code, 0);

        // Entering with the wrong type is rejected by the kernel.
        let wrong = target.clone();
        assert_eq!(in_child(move || if setns_path(&wrong, NsType::Uts).is_err() { 0 } else { 1 }), 0);

        unpin_dir(&ns_dir).unwrap();
        assert!(!ns_dir.exists());
        assert!(!mountinfo_mentions(&dir.0));
        unpin_dir(&ns_dir).unwrap();
    }

    fn unshare_ok(flags: libc::c_int) -> io::Result<()> {
        sys::unshare(flags)
    }

    fn loopback_is_up() -> bool {
        let sock = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
        if sock < 0 {
            return false;
        }
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
            *dst = *src as libc::c_char;
        }
        let ok = unsafe { libc::ioctl(sock, libc::SIOCGIFFLAGS, &mut req) } == 0;
        unsafe { libc::close(sock) };
        ok && unsafe { req.ifr_ifru.ifru_flags } & libc::IFF_UP as libc::c_short != 0
    }

    fn mountinfo_mentions(dir: &Path) -> bool {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap();
        let needle = dir.to_str().unwrap();
        info.lines().any(|l| l.split(' ').nth(4).is_some_and(|m| m.starts_with(needle)))
    }
}
