//! Linux security module labels of container processes: the AppArmor profile and the SELinux
//! process label a spec asks for, taken at execve.
//!
//! A label is set by writing the thread's `attr/.../exec` file in procfs. The file is reached
//! through a descriptor of the runtime's own /proc, opened when the plan is made (before any
//! namespace is entered or root pivoted) and checked with fstatfs to be procfs: a path lookup
//! in the child would go through the container's /proc, which an image or a volume may replace
//! (runc's CVE-2019-16884), and a write that lands anywhere but procfs would leave the process
//! unconfined while reporting success.
//!
//! A spec that names a label the host cannot enforce is refused: the daemon only writes labels
//! it means to have enforced, so running the container without it would be a silent downgrade.

use std::ffi::{CStr, CString};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};


/// `f_type` of procfs (linux/magic.h).
pub const PROC_SUPER_MAGIC: i64 = 0x9fa0;
/// `f_type` of selinuxfs.
const SELINUX_MAGIC: i64 = 0xf97c_ff8c_u32 as i64;

/// The security modules the host enforces.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostLsm {
    pub apparmor: bool,
    pub selinux: bool,
}

impl HostLsm {
    /// What the running kernel enforces: AppArmor's module parameter, SELinux's filesystem.
    pub fn detect() -> HostLsm {
        let apparmor = std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|s| s.trim_start().starts_with('Y'));
        let selinux = fs_magic_of_path(c"/sys/fs/selinux") == Some(SELINUX_MAGIC)
            && std::fs::read_to_string("/sys/fs/selinux/enforce").is_ok();
        HostLsm { apparmor, selinux }
    }
}

fn fs_magic_of_path(path: &CStr) -> Option<i64> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid C string and out pointer.
    (unsafe { libc::statfs(path.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

fn fs_magic(fd: RawFd) -> Option<i64> {
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: an out pointer to a statfs; a bad descriptor is reported as an error.
    (unsafe { libc::fstatfs(fd, &mut st) } == 0).then_some(st.f_type as i64)
}

/// One label write: the attr files to try in order (the first that exists is used) and the
/// bytes to write.
#[derive(Debug)]
pub struct AttrWrite {
    /// For messages: "AppArmor profile \"x\"".
    pub what: String,
    pub files: Vec<CString>,
    pub value: CString,
}

/// The labels a process takes at execve, prepared in the parent.
#[derive(Debug, Default)]
pub struct LsmPlan {
    /// The procfs the attr files are under; None when there is nothing to write.
    pub proc_dir: Option<OwnedFd>,
    /// Filesystem type `proc_dir` must have (procfs; tests use another).
    pub magic: i64,
    pub writes: Vec<AttrWrite>,
}

impl LsmPlan {
    /// The labels `apparmor_profile` and `selinux_label` of a spec, on a host enforcing `host`,
    /// with their attr files under `proc` (normally "/proc"). Refuses a label the host cannot
    /// enforce. "unconfined" on a host without AppArmor asks for nothing.
    pub fn new(apparmor_profile: Option<&str>, selinux_label: Option<&str>, host: HostLsm, proc: &CStr) -> Result<LsmPlan, String> {
        let mut writes = Vec::new();
        if let Some(profile) = apparmor_profile.filter(|p| !p.is_empty()) {
            if !host.apparmor {
                if profile != "unconfined" {
                    return Err(format!("AppArmor profile {:?} was asked for, but this host does not enforce AppArmor; refusing to run the container without it", profile));
                }
            } else {
                writes.push(AttrWrite {
                    what: format!("AppArmor profile {:?}", profile),
                    // Kernels since 5.8 have a directory per module; older ones only the shared file.
                    files: vec![c"thread-self/attr/apparmor/exec".to_owned(), c"thread-self/attr/exec".to_owned()],
                    value: CString::new(format!("exec {}", profile)).map_err(|_| format!("AppArmor profile {:?} contains a NUL byte", profile))?,
                });
            }
        }
        if let Some(label) = selinux_label.filter(|l| !l.is_empty()) {
            if !host.selinux {
                return Err(format!("SELinux label {:?} was asked for, but SELinux is not enabled on this host; refusing to run the container without it", label));
            }
            writes.push(AttrWrite {
                what: format!("SELinux label {:?}", label),
                files: vec![c"thread-self/attr/exec".to_owned()],
                value: CString::new(label).map_err(|_| format!("SELinux label {:?} contains a NUL byte", label))?,
            });
        }
        if writes.is_empty() {
            return Ok(LsmPlan::default());
        }
        let proc_dir = open_checked_dir(proc, PROC_SUPER_MAGIC)?;
        Ok(LsmPlan { proc_dir: Some(proc_dir), magic: PROC_SUPER_MAGIC, writes })
    }

    /// For a failure record: what write `index` was.
    pub fn describe(&self, index: usize) -> String {
        match self.writes.get(index) {
            Some(w) => format!("set the {} for execve", w.what),
            None => "set the security label for execve".to_owned(),
        }
    }

    /// Writes every label. Async-signal-safe (system calls on prepared data only); on failure
    /// returns the index of the write and errno.
    ///
    /// # Safety
    /// The plan's descriptor must still be open (it is owned by the plan).
    pub unsafe fn apply(&self) -> Result<(), (usize, i32)> {
        let Some(dir) = &self.proc_dir else { return Ok(()) };
        for (i, w) in self.writes.iter().enumerate() {
            // SAFETY: the descriptor is open; the strings live in the plan.
            unsafe { write_attr(dir.as_raw_fd(), self.magic, &w.files, w.value.as_bytes()) }.map_err(|e| (i, e))?;
        }
        Ok(())
    }
}

/// Opens the directory `path` and checks that its filesystem has type `magic`.
pub fn open_checked_dir(path: &CStr, magic: i64) -> Result<OwnedFd, String> {
    // SAFETY: a valid C string.
    let fd = unsafe { libc::open(path.as_ptr(), libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(format!("open {}: {}", path.to_string_lossy(), std::io::Error::last_os_error()));
    }
    // SAFETY: a descriptor just opened and owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    match fs_magic(fd.as_raw_fd()) {
        Some(m) if m == magic => Ok(fd),
        Some(m) => Err(format!("{} is not procfs (filesystem type {:#x}): security labels cannot be set through it", path.to_string_lossy(), m)),
        None => Err(format!("statfs {}: {}", path.to_string_lossy(), std::io::Error::last_os_error())),
    }
}


fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO)
}

/// Writes `value` to the first of `files` (relative to `dir`) that exists, in one write.
/// The lookup stays beneath `dir` and on its filesystem, and the file opened must be on a
/// filesystem of type `magic`: a label written anywhere else would not be a label.
///
/// # Safety
/// `dir` must be an open descriptor. Allocates nothing: callable between fork and execve.
pub unsafe fn write_attr(dir: RawFd, magic: i64, files: &[CString], value: &[u8]) -> Result<(), i32> {
    if fs_magic(dir) != Some(magic) {
        return Err(libc::EXDEV);
    }
    let flags = libc::O_WRONLY | libc::O_CLOEXEC | libc::O_NOFOLLOW;
    let resolve = libc::RESOLVE_BENEATH | libc::RESOLVE_NO_XDEV | libc::RESOLVE_NO_MAGICLINKS;
    let mut last = libc::ENOENT;
    for file in files {
        let fd = crate::sys::openat2_raw(dir, file.as_ptr(), flags, resolve);
        if fd < 0 {
            last = errno();
            if last == libc::ENOENT {
                continue;
            }
            return Err(last);
        }
        let result = if fs_magic(fd) != Some(magic) {
            Err(libc::EXDEV)
        } else {
            // SAFETY: a valid buffer of the length passed.
            let n = unsafe { libc::write(fd, value.as_ptr().cast(), value.len()) };
            if n < 0 {
                Err(errno())
            } else if n as usize != value.len() {
                Err(libc::EIO)
            } else {
                Ok(())
            }
        };
        // SAFETY: closes the descriptor opened above.
        unsafe { libc::close(fd) };
        return result;
    }
    Err(last)
}

/// Mount data with the SELinux `context=` a container's own filesystems (tmpfs, devpts, mqueue)
/// get, as runc labels them; other filesystems keep theirs.
pub fn with_mount_label(kind: &str, data: &str, label: Option<&str>) -> String {
    let Some(label) = label.filter(|l| !l.is_empty()) else { return data.to_owned() };
    if !matches!(kind, "tmpfs" | "devpts" | "mqueue") {
        return data.to_owned();
    }
    let context = format!("context=\"{}\"", label);
    if data.is_empty() {
        context
    } else {
        format!("{},{}", context, data)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::path::PathBuf;

    /// A directory laid out like procfs's attr files, on whatever filesystem the temp dir is.
    struct FakeProc(PathBuf);

    impl Drop for FakeProc {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    fn fake_proc(tag: &str, apparmor_dir: bool) -> FakeProc {
        let dir = std::env::temp_dir().join(format!("crisp-test-lsm-{}-{}", tag, std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let attr = dir.join("thread-self/attr");
        fs::create_dir_all(&attr).unwrap();
        fs::write(attr.join("exec"), "").unwrap();
        if apparmor_dir {
            fs::create_dir_all(attr.join("apparmor")).unwrap();
            fs::write(attr.join("apparmor/exec"), "").unwrap();
        }
        FakeProc(dir)
    }

    fn cpath(p: &std::path::Path) -> CString {
        CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
    }

    /// The plan `new` makes, pointed at the fake procfs (whose filesystem type it accepts).
    fn plan_at(fake: &FakeProc, apparmor: Option<&str>, selinux: Option<&str>, host: HostLsm) -> Result<LsmPlan, String> {
        let mut plan = LsmPlan::new(apparmor, selinux, host, c"/proc")?;
        if plan.proc_dir.is_some() {
            let path = cpath(&fake.0);
            let magic = fs_magic_of_path(&path).unwrap();
            plan.proc_dir = Some(open_checked_dir(&path, magic).unwrap());
            plan.magic = magic;
        }
        Ok(plan)
    }

    const BOTH: HostLsm = HostLsm { apparmor: true, selinux: true };

    #[test]
    fn labels_a_host_cannot_enforce_are_refused_and_nothing_asked_is_nothing_written() {
        let none = HostLsm::default();
        let err = LsmPlan::new(Some("k8s-nginx"), None, none, c"/proc").unwrap_err();
        assert!(err.contains("AppArmor profile \"k8s-nginx\"") && err.contains("does not enforce AppArmor"), "{err}");
        let err = LsmPlan::new(None, Some("system_u:system_r:container_t:s0:c1,c2"), none, c"/proc").unwrap_err();
        assert!(err.contains("SELinux is not enabled"), "{err}");
        // SELinux alone does not enforce AppArmor profiles, and the other way round.
        assert!(LsmPlan::new(Some("p"), None, HostLsm { apparmor: false, selinux: true }, c"/proc").is_err());
        assert!(LsmPlan::new(None, Some("l"), HostLsm { apparmor: true, selinux: false }, c"/proc").is_err());

        for (aa, se) in [(None, None), (Some(""), Some("")), (Some("unconfined"), None)] {
            let plan = LsmPlan::new(aa, se, none, c"/proc").unwrap();
            assert!(plan.proc_dir.is_none() && plan.writes.is_empty());
            assert_eq!(unsafe { plan.apply() }, Ok(()));
        }
    }

    #[test]
    fn the_plan_opens_the_real_procfs_and_refuses_a_directory_that_is_not() {
        let plan = LsmPlan::new(Some("crisp-default"), Some("system_u:system_r:container_t:s0"), BOTH, c"/proc").unwrap();
        assert!(plan.proc_dir.is_some());
        assert_eq!(plan.magic, PROC_SUPER_MAGIC);
        assert_eq!(plan.writes[0].value.as_bytes(), b"exec crisp-default");
        assert_eq!(plan.writes[1].value.as_bytes(), b"system_u:system_r:container_t:s0");
        assert_eq!(plan.describe(0), "set the AppArmor profile \"crisp-default\" for execve");

        // A look-alike of /proc (what a container volume could put there) is not procfs.
        let fake = fake_proc("notproc", true);
        let err = LsmPlan::new(Some("p"), None, BOTH, &cpath(&fake.0)).unwrap_err();
        assert!(err.contains("is not procfs"), "{err}");
    }

    #[test]
    fn labels_are_written_to_the_modules_attr_files_through_the_descriptor() {
        let fake = fake_proc("write", true);
        let plan = plan_at(&fake, Some("k8s-nginx"), Some("system_u:system_r:container_t:s0:c5,c9"), BOTH).unwrap();
        assert_eq!(unsafe { plan.apply() }, Ok(()));
        let attr = fake.0.join("thread-self/attr");
        assert_eq!(fs::read_to_string(attr.join("apparmor/exec")).unwrap(), "exec k8s-nginx");
        assert_eq!(fs::read_to_string(attr.join("exec")).unwrap(), "system_u:system_r:container_t:s0:c5,c9");

        // A kernel without the per-module directory: AppArmor uses the shared file.
        let old = fake_proc("old-kernel", false);
        let plan = plan_at(&old, Some("k8s-nginx"), None, BOTH).unwrap();
        assert_eq!(unsafe { plan.apply() }, Ok(()));
        assert_eq!(fs::read_to_string(old.0.join("thread-self/attr/exec")).unwrap(), "exec k8s-nginx");
    }

    #[test]
    fn a_write_that_cannot_land_in_procfs_fails_instead_of_being_skipped() {
        let fake = fake_proc("fail", true);
        let plan = plan_at(&fake, Some("p"), None, BOTH).unwrap();
        let dir = plan.proc_dir.as_ref().unwrap().as_raw_fd();
        let files = &plan.writes[0].files;

        // The descriptor's filesystem is checked on every write.
        assert_eq!(unsafe { write_attr(dir, PROC_SUPER_MAGIC, files, b"exec p") }, Err(libc::EXDEV));
        // No attr file at all.
        fs::remove_dir_all(fake.0.join("thread-self/attr")).unwrap();
        assert_eq!(unsafe { plan.apply() }, Err((0, libc::ENOENT)));
        // A symlink planted where the file should be is not followed out of the directory.
        fs::create_dir_all(fake.0.join("thread-self/attr/apparmor")).unwrap();
        let outside = std::env::temp_dir().join(format!("crisp-test-lsm-outside-{}", std::process::id()));
        fs::write(&outside, "").unwrap();
        std::os::unix::fs::symlink(&outside, fake.0.join("thread-self/attr/apparmor/exec")).unwrap();
        assert_eq!(unsafe { plan.apply() }, Err((0, libc::ELOOP)));
        assert_eq!(fs::read_to_string(&outside).unwrap(), "");
        let _ = fs::remove_file(&outside);
    }

    #[test]
    fn the_real_procfs_is_reached_through_thread_self_and_its_answer_is_reported() {
        // This host may have no module that takes labels; the write then reaches the kernel's
        // attr file and fails there (EINVAL), not in the path lookup (ENOENT, ELOOP, EXDEV).
        let plan = LsmPlan::new(Some("crisp-test-no-such-profile"), None, HostLsm { apparmor: true, selinux: false }, c"/proc").unwrap();
        let host = HostLsm::detect();
        let result = std::thread::spawn(move || unsafe { plan.apply() }).join().unwrap();
        if !host.apparmor {
            assert_eq!(result, Err((0, libc::EINVAL)));
        } else {
            // AppArmor refuses to switch to a profile it does not have.
            assert!(matches!(result, Err((0, e)) if e != libc::ELOOP && e != libc::EXDEV), "{result:?}");
        }
    }

    #[test]
    fn selinux_mount_labels_go_on_the_containers_own_filesystems() {
        let l = Some("system_u:object_r:container_file_t:s0:c1,c2");
        assert_eq!(with_mount_label("tmpfs", "mode=755", l), "context=\"system_u:object_r:container_file_t:s0:c1,c2\",mode=755");
        assert_eq!(with_mount_label("mqueue", "", l), "context=\"system_u:object_r:container_file_t:s0:c1,c2\"");
        assert_eq!(with_mount_label("proc", "", l), "");
        assert_eq!(with_mount_label("tmpfs", "mode=755", None), "mode=755");
    }
}
