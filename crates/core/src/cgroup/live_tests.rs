//! Tests against the host's real cgroup hierarchies (need root; skipped otherwise). Every cgroup
//! they create is named `crisp-test-*` and removed even when an assertion fails.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use super::*;

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Kills and removes the test cgroups on drop, so a failing assertion leaves nothing behind.
struct Cleanup(Vec<Box<dyn CgroupManager>>, Vec<Child>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for child in &mut self.1 {
            let _ = child.kill();
            let _ = child.wait();
        }
        for m in &self.0 {
            let _ = m.kill_all();
            let _ = m.remove();
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep").arg("300").stdin(Stdio::null()).spawn().expect("spawn sleep")
}

/// A sleeper that joins `paths` before exec, so the memory it maps is charged to that cgroup
/// (v1 does not move existing charges with a migrating process).
fn sleeper_in(paths: &CgroupPaths) -> Child {
    use std::os::unix::process::CommandExt;
    let paths = paths.clone();
    let mut cmd = Command::new("sleep");
    cmd.arg("300").stdin(Stdio::null());
    unsafe {
        cmd.pre_exec(move || paths.join(0).map_err(|e| std::io::Error::other(e.to_string())));
    }
    cmd.spawn().expect("spawn sleep in cgroup")
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {}", path.display(), e)).trim().to_owned()
}

#[test]
fn detect_reports_the_host_layout() {
    let system = CgroupSystem::detect().unwrap();
    let v2_root = crate::sys::fs_magic(Path::new(CGROUP_ROOT)).unwrap() == crate::sys::CGROUP2_MAGIC;
    assert_eq!(system.version() == Version::V2, v2_root);
    let controllers = system.controllers();
    if system.version() == Version::V1 {
        assert!(controllers.iter().any(|c| c == "memory"), "{:?}", controllers);
    }
}

#[test]
fn full_lifecycle_on_the_detected_hierarchy() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let system = CgroupSystem::detect().unwrap();
    let top = format!("/crisp-test-{}-lifecycle", std::process::id());
    let path = resolve_path(&top, "pod").unwrap();
    let top_mgr = system.manager(&top).unwrap();
    let mgr = system.manager(&path).unwrap();
    let mut guard = Cleanup(vec![system.manager(&path).unwrap(), system.manager(&top).unwrap()], Vec::new());
    let controllers = system.controllers();
    let has = |c: &str| controllers.iter().any(|x| x == c);

    mgr.create().unwrap();
    mgr.create().unwrap(); // idempotent
    let paths = mgr.paths();
    for dir in paths.unique_dirs() {
        assert!(dir.is_dir(), "{} missing", dir.display());
    }

    let mut r = Resources {
        cpu_shares: Some(512),
        cpu_quota: Some(50_000),
        cpu_period: Some(100_000),
        memory_limit: Some(64 << 20),
        pids_limit: Some(32),
        ..Default::default()
    };
    if has("cpuset") {
        r.cpuset_cpus = Some("0".into());
    }
    mgr.apply(&r).unwrap();

    match system.version() {
        Version::V1 => {
            let dir = |c: &str| paths.paths[c].clone();
            assert_eq!(read(&dir("cpu").join("cpu.shares")), "512");
            assert_eq!(read(&dir("cpu").join("cpu.cfs_quota_us")), "50000");
            assert_eq!(read(&dir("cpu").join("cpu.cfs_period_us")), "100000");
            assert_eq!(read(&dir("memory").join("memory.limit_in_bytes")), (64u64 << 20).to_string());
            assert_eq!(read(&dir("pids").join("pids.max")), "32");
            if has("cpuset") {
                assert_eq!(read(&dir("cpuset").join("cpuset.cpus")), "0");
                // The intermediate level inherited the root's mems, or tasks could not join.
                let parent_mems = read(&dir("cpuset").parent().unwrap().join("cpuset.mems"));
                assert!(!parent_mems.is_empty());
                assert_eq!(read(&dir("cpuset").join("cpuset.mems")), parent_mems);
            }
            if dir("memory").join("memory.memsw.limit_in_bytes").exists() {
                // Raising both limits must order the writes so the kernel accepts each one.
                mgr.apply(&Resources {
                    memory_limit: Some(256 << 20),
                    memory_swap_limit: Some(512 << 20),
                    ..Default::default()
                })
                .unwrap();
                assert_eq!(read(&dir("memory").join("memory.memsw.limit_in_bytes")), (512u64 << 20).to_string());
                mgr.apply(&Resources { memory_limit: Some(32 << 20), memory_swap_limit: Some(32 << 20), ..Default::default() })
                    .unwrap();
                assert_eq!(read(&dir("memory").join("memory.limit_in_bytes")), (32u64 << 20).to_string());
                assert_eq!(read(&dir("memory").join("memory.memsw.limit_in_bytes")), (32u64 << 20).to_string());
            }
            let err = mgr
                .apply(&Resources { unified: [("memory.high".to_string(), "1G".to_string())].into(), ..Default::default() })
                .unwrap_err();
            assert!(matches!(err, Error::InvalidArgument(_)));
        }
        Version::V2 => {
            let dir = paths.paths[CgroupPaths::UNIFIED_KEY].clone();
            assert_eq!(read(&dir.join("cpu.weight")), cpu_shares_to_weight(512).to_string());
            assert_eq!(read(&dir.join("cpu.max")), "50000 100000");
            assert_eq!(read(&dir.join("memory.max")), (64u64 << 20).to_string());
            assert_eq!(read(&dir.join("pids.max")), "32");
        }
    }

    // Lifting limits.
    mgr.apply(&Resources { cpu_quota: Some(-1), pids_limit: Some(-1), memory_limit: Some(-1), ..Default::default() })
        .unwrap();
    let st = mgr.stats().unwrap();
    assert_eq!(st.pids.as_ref().map(|p| p.limit), Some(None));
    assert_eq!(st.memory.as_ref().map(|m| m.limit_bytes), Some(None));

    // Processes join (at exec and by pid), show up in pids (recursively from the parent too)
    // and in the stats.
    guard.1.push(sleeper_in(&paths));
    guard.1.push(sleeper());
    let pids: Vec<libc::pid_t> = guard.1.iter().map(|c| c.id() as libc::pid_t).collect();
    mgr.add_process(pids[1]).unwrap();
    let mut expected = pids.clone();
    expected.sort_unstable();
    assert_eq!(mgr.pids(false).unwrap(), expected);
    assert!(pids.iter().all(|p| top_mgr.pids(true).unwrap().contains(p)));
    assert!(top_mgr.pids(false).unwrap().is_empty());
    let st = mgr.stats().unwrap();
    assert_eq!(st.pids.map(|p| p.current), Some(2));
    let mem = st.memory.expect("memory stats");
    assert!(mem.usage_bytes > 0);
    assert!(mem.working_set_bytes <= mem.usage_bytes);
    assert!(st.cpu.is_some());

    // Removal with a live process fails (after the short EBUSY retry); killing empties it.
    assert_eq!(mgr.remove().unwrap_err().errno(), Some(libc::EBUSY));
    top_mgr.kill_all().unwrap();
    for mut child in guard.1.drain(..) {
        assert!(!child.wait().unwrap().success());
    }
    assert!(mgr.pids(true).unwrap().is_empty());

    top_mgr.remove().unwrap();
    for dir in paths.unique_dirs() {
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(!dir.parent().unwrap().exists());
    }
    top_mgr.remove().unwrap(); // idempotent
    assert!(mgr.stats().unwrap().pids.is_none());
}

/// Exercises the v2 manager on a hybrid host's controller-less unified mount, where only core
/// files (and whatever controllers v1 left unclaimed) exist.
#[test]
fn v2_manager_on_the_hybrid_unified_mount() {
    let mountpoint = Path::new("/sys/fs/cgroup/unified");
    if !is_root() || crate::sys::fs_magic(mountpoint).ok() != Some(crate::sys::CGROUP2_MAGIC) {
        eprintln!("skipped: needs root and a cgroup2 mount at {}", mountpoint.display());
        return;
    }
    let subtree_before = read(&mountpoint.join("cgroup.subtree_control"));
    let path = format!("/crisp-test-{}-v2", std::process::id());
    let mgr = V2Manager::new(mountpoint, path.clone());
    let mut guard = Cleanup(vec![Box::new(V2Manager::new(mountpoint, path))], Vec::new());

    mgr.create().unwrap();
    let dir = mgr.paths().paths[CgroupPaths::UNIFIED_KEY].clone();
    assert!(dir.is_dir());

    // No memory controller here: the limit is reported as unsupported, not silently dropped.
    let err = mgr.apply(&Resources { memory_limit: Some(1 << 30), ..Default::default() }).unwrap_err();
    assert!(matches!(err, Error::Unsupported(_)), "{}", err);
    let err = mgr
        .apply(&Resources { unified: [("cgroup.procs".to_string(), "1".to_string())].into(), ..Default::default() })
        .unwrap_err();
    assert!(matches!(err, Error::InvalidArgument(_)));

    guard.1.push(sleeper());
    let pid = guard.1[0].id() as libc::pid_t;
    mgr.add_process(pid).unwrap();
    assert_eq!(mgr.pids(true).unwrap(), vec![pid]);
    let st = mgr.stats().unwrap();
    assert!(st.cpu.is_some(), "cpu.stat is a core file");
    assert!(st.memory.is_none());

    mgr.kill_all().unwrap();
    assert!(!guard.1.pop().unwrap().wait().unwrap().success());
    mgr.remove().unwrap();
    assert!(!dir.exists());

    // Leave the root's delegation as it was.
    let subtree_after = read(&mountpoint.join("cgroup.subtree_control"));
    for c in subtree_after.split_whitespace() {
        if !subtree_before.split_whitespace().any(|b| b == c) {
            let _ = fsutil::write(&mountpoint.join("cgroup.subtree_control"), &format!("-{}", c));
        }
    }
    assert_eq!(read(&mountpoint.join("cgroup.subtree_control")), subtree_before);
}

/// The v2 device filter, on whatever cgroup2 hierarchy the host has (the unified one on a hybrid
/// host): a process in the cgroup may open only what the rules allow.
#[test]
fn the_v2_device_filter_allows_only_what_the_rules_allow() {
    if !is_root() {
        return;
    }
    let root = ["/sys/fs/cgroup/unified", "/sys/fs/cgroup"]
        .into_iter()
        .map(Path::new)
        .find(|p| crate::sys::fs_magic(p).ok() == Some(crate::sys::CGROUP2_MAGIC));
    let Some(root) = root else { return };
    let dir = root.join(format!("crisp-test-devices-{}", std::process::id()));
    std::fs::create_dir(&dir).unwrap();
    struct Remove<'a>(&'a Path);
    impl Drop for Remove<'_> {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir(self.0);
        }
    }
    let _remove = Remove(&dir);
    let rule = |allow: bool, kind: &str, major: Option<i64>, minor: Option<i64>, access: &str| devices::DeviceRule {
        allow,
        kind: Some(kind.into()),
        major,
        minor,
        access: Some(access.into()),
    };
    devices::apply_v2(&dir, &[rule(false, "a", None, None, "rwm"), rule(true, "c", Some(1), Some(3), "rwm"), rule(true, "c", Some(1), Some(5), "r")]).unwrap();

    // A shell in the cgroup reports what it could open.
    use std::os::unix::process::CommandExt;
    let procs = dir.join("cgroup.procs");
    let mut cmd = Command::new("/bin/sh");
    cmd.args(["-c", "for f in '</dev/null' '>/dev/null' '</dev/zero' '>/dev/zero' '</dev/full'; do (eval \"exec 3$f\") 2>/dev/null && echo \"$f ok\" || echo \"$f denied\"; done"]);
    unsafe {
        cmd.pre_exec(move || std::fs::write(&procs, b"0"));
    }
    let out = cmd.output().expect("run sh in the cgroup");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "</dev/null ok\n>/dev/null ok\n</dev/zero ok\n>/dev/zero denied\n</dev/full denied\n"
    );
}
