//! Launching real containers through the plan/launch API (root only; skipped otherwise, or
//! when busybox is not installed).

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use serde_json::json;

use super::child::{ChildIo, Record, KIND_ERROR, KIND_FORKED, KIND_READY, RECORD_SIZE};
use super::launch::{describe_failure, spawn_container};
use super::plan::container_plan;
use super::spec::Spec;
use crate::sys;

const BUSYBOX: &str = "/bin/busybox";

struct Fixture(PathBuf);

impl Drop for Fixture {
    fn drop(&mut self) {
        // Every mount lived in the containers' own mount namespaces; only files remain.
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn usable() -> bool {
    (unsafe { libc::geteuid() }) == 0 && Path::new(BUSYBOX).exists()
}

fn fixture(tag: &str) -> Fixture {
    let dir = std::env::temp_dir().join(format!("crisp-test-launch-{}-{}", tag, std::process::id()));
    let _ = fs::remove_dir_all(&dir);
    let lower = dir.join("lower");
    fs::create_dir_all(lower.join("bin")).unwrap();
    fs::create_dir_all(lower.join("etc")).unwrap();
    fs::copy(BUSYBOX, lower.join("bin/busybox")).unwrap();
    for applet in ["sh", "cat", "echo", "grep", "head", "ls", "pwd", "id", "readlink", "true", "wc"] {
        symlink("busybox", lower.join("bin").join(applet)).unwrap();
    }
    fs::write(lower.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    for sub in ["b/rootfs", "b/upper", "b/work"] {
        fs::create_dir_all(dir.join(sub)).unwrap();
    }
    Fixture(dir)
}

fn spec(fx: &Fixture, args: &[&str], cwd: &str) -> Spec {
    let b = fx.0.join("b");
    let v = json!({
        "ociVersion": "1.1.0",
        "process": {"args": args, "env": ["PATH=/bin"], "cwd": cwd, "user": {"uid": 0, "gid": 0}},
        "root": {"path": "rootfs"},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid", "mode=755"]},
            {"destination": "/etc/hostname", "type": "bind", "source": fx.0.join("lower/etc/passwd"), "options": ["rbind", "ro"]}
        ],
        "linux": {"namespaces": [{"type": "mount"}, {"type": "pid"}, {"type": "uts"}, {"type": "ipc"}]},
        "crispRootfs": {"lowerDirs": [fx.0.join("lower")], "upperDir": b.join("upper"), "workDir": b.join("work")}
    });
    Spec::parse(&serde_json::to_vec(&v).unwrap()).unwrap()
}

fn read_all(fd: i32) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
        if n <= 0 {
            return out;
        }
        out.extend_from_slice(&buf[..n as usize]);
    }
}

fn read_record(fd: i32) -> Option<Record> {
    let mut raw = [0u8; RECORD_SIZE];
    let n = unsafe { libc::read(fd, raw.as_mut_ptr().cast(), RECORD_SIZE) };
    (n == RECORD_SIZE as isize).then(|| Record::from_bytes(&raw))
}

/// Launches `spec`, opens the gate, and returns (first status record, stdout, exit status).
fn launch(fx: &Fixture, spec: &Spec) -> (Option<Record>, Option<Record>, String, sys::ExitStatus) {
    launch_bundle(&fx.0.join("b"), spec)
}

/// `launch` from the bundle directory `bundle` (which names the container).
fn launch_bundle(bundle: &Path, spec: &Spec) -> (Option<Record>, Option<Record>, String, sys::ExitStatus) {
    let plan = container_plan(spec, bundle).unwrap();
    let (out_r, out_w) = sys::pipe_cloexec().unwrap();
    let (status_r, status_w) = sys::pipe_cloexec().unwrap();
    let (gate_r, gate_w) = sys::pipe_cloexec().unwrap();
    let null = fs::File::open("/dev/null").unwrap();
    let io = ChildIo {
        stdin: null.as_raw_fd(),
        stdout: out_w.as_raw_fd(),
        stderr: out_w.as_raw_fd(),
        tty: false,
        status: status_w.as_raw_fd(),
        gate: gate_r.as_raw_fd(),
        hooks_gate: -1,
        forked: status_w.as_raw_fd(),
    };
    let setup = spawn_container(&plan, &io).unwrap();
    drop((out_w, status_w, gate_r));
    // The set-up process reports the container's process (and exits) before that reports.
    let mut ready = read_record(status_r.as_raw_fd());
    let mut pid = setup;
    if let Some(forked) = ready.filter(|r| r.kind == KIND_FORKED) {
        assert_eq!(sys::wait_pid(setup).unwrap(), sys::ExitStatus::Exited(0));
        pid = forked.index as libc::pid_t;
        ready = read_record(status_r.as_raw_fd());
    }
    let mut after = None;
    if ready.map(|r| r.kind) == Some(KIND_READY) {
        sys::write_all_fd(gate_w.as_raw_fd(), b"s").unwrap();
        after = read_record(status_r.as_raw_fd());
    }
    drop(gate_w);
    let out = String::from_utf8_lossy(&read_all(out_r.as_raw_fd())).into_owned();
    let status = sys::wait_pid(pid).unwrap();
    if let Some(rec) = after.or(ready).filter(|r| r.kind == KIND_ERROR) {
        eprintln!("failure: {}", describe_failure(&plan.process, Some(&plan.rootfs), &rec).1);
    }
    (ready, after, out, status)
}

#[test]
fn a_container_runs_in_its_own_root_and_namespaces() {
    if !usable() {
        eprintln!("skipped: needs root and busybox");
        return;
    }
    let fx = fixture("run");
    let script = "echo pid=$$; pwd; ls /; cat /etc/hostname | head -1; ls /dev; readlink /proc/self/ns/mnt";
    let s = spec(&fx, &["sh", "-c", script], "/work/dir");
    let (ready, after, out, status) = launch(&fx, &s);
    assert_eq!(ready.map(|r| r.kind), Some(KIND_READY));
    assert_eq!(after, None, "exec succeeded, so the status pipe only reached EOF");
    assert_eq!(status, sys::ExitStatus::Exited(0), "{}", out);
    let lines: Vec<&str> = out.lines().collect();
    // PID 1 of its own namespace, in the working directory it asked for (created on demand).
    assert_eq!(lines[0], "pid=1");
    assert_eq!(lines[1], "/work/dir");
    for entry in ["bin", "dev", "etc", "proc", "work"] {
        assert!(lines.contains(&entry), "{} missing from / in {:?}", entry, lines);
    }
    // The file bind mount, the default device nodes and links of a tmpfs /dev.
    assert!(lines.contains(&"root:x:0:0:root:/root:/bin/sh"));
    for dev in ["null", "zero", "urandom", "tty", "fd", "stdout"] {
        assert!(lines.contains(&dev), "/dev/{} missing in {:?}", dev, lines);
    }
    let host_mnt = fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(lines.last().copied(), host_mnt.to_str());
    // The mountpoints created for the container went to the upper layer, not the image.
    assert!(fx.0.join("b/upper/work/dir").is_dir());
    assert!(!fx.0.join("lower/proc").exists());
}

#[test]
fn set_up_and_exec_failures_are_reported() {
    if !usable() {
        eprintln!("skipped: needs root and busybox");
        return;
    }
    let fx = fixture("fail");
    let s = spec(&fx, &["/bin/missing"], "/");
    let (ready, after, _, status) = launch(&fx, &s);
    assert_eq!(ready.map(|r| r.kind), Some(KIND_READY));
    let rec = after.expect("an exec failure record");
    assert_eq!((rec.kind, rec.errno), (KIND_ERROR, libc::ENOENT));
    let plan = container_plan(&s, &fx.0.join("b")).unwrap();
    assert_eq!(describe_failure(&plan.process, Some(&plan.rootfs), &rec).1, "exec: \"/bin/missing\": no such file or directory");
    assert_eq!(status, sys::ExitStatus::Exited(super::child::SETUP_FAILED_EXIT));

    // A mount destination that climbs out through a symlink is resolved inside the root: the
    // tmpfs covers the container's /target (hiding its marker file), not anything on the host.
    fs::create_dir_all(fx.0.join("lower/data")).unwrap();
    fs::create_dir_all(fx.0.join("lower/target")).unwrap();
    fs::write(fx.0.join("lower/target/marker"), "").unwrap();
    symlink("/../../../../../target", fx.0.join("lower/data/link")).unwrap();
    let tmpfs_on = |dest: &str| super::spec::Mount {
        destination: dest.into(),
        kind: Some("tmpfs".into()),
        source: Some("tmpfs".into()),
        options: vec![],
        ..Default::default()
    };
    let mut s = spec(&fx, &["sh", "-c", "echo entries=$(ls -A /target | wc -l)"], "/");
    s.mounts.push(tmpfs_on("/data/link"));
    let (_, _, out, status) = launch(&fx, &s);
    assert_eq!(status, sys::ExitStatus::Exited(0), "{}", out);
    assert_eq!(out.trim(), "entries=0");
    assert!(!Path::new("/target").exists());

    // A dangling link is refused rather than followed anywhere.
    symlink("/../../../../tmp/crisp-escaped", fx.0.join("lower/data/dangling")).unwrap();
    let mut s = spec(&fx, &["true"], "/");
    s.mounts.push(tmpfs_on("/data/dangling"));
    let (ready, _, _, status) = launch(&fx, &s);
    let rec = ready.expect("a set-up failure record");
    assert_eq!(rec.kind, KIND_ERROR);
    let plan = container_plan(&s, &fx.0.join("b")).unwrap();
    let message = describe_failure(&plan.process, Some(&plan.rootfs), &rec).1;
    assert_eq!(message, "mount tmpfs (tmpfs) on /data/dangling: resolve target: no such file or directory");
    assert_eq!(status, sys::ExitStatus::Exited(super::child::SETUP_FAILED_EXIT));
    assert!(!Path::new("/tmp/crisp-escaped").exists());
}

#[test]
fn a_container_gets_a_session_keyring_of_its_own_named_after_it() {
    if !usable() {
        return;
    }
    let fx = fixture("keyring");
    // The bundle directory names the container; /proc/keys lists the keyrings it may see, those
    // of the other tests' containers (all in bundles named "b") included.
    let bundle = fx.0.join("keyring-ctr");
    fs::create_dir_all(bundle.join("rootfs")).unwrap();
    let s = spec(&fx, &["sh", "-c", "grep -c ' _ses\\.keyring-ctr: ' /proc/keys"], "/");
    let (_, _, out, status) = launch_bundle(&bundle, &s);
    assert_eq!(status, sys::ExitStatus::Exited(0), "{}", out);
    assert_eq!(out.trim(), "1");
}

#[test]
fn masks_are_the_hosts_null_device_whatever_the_containers_dev_holds() {
    if !usable() {
        return;
    }
    let fx = fixture("masks");
    // /dev is a plain directory the container controls (a volume), with a regular file planted
    // as "null": masks must neither be skipped for want of a /dev/null nor bind the planted file.
    let dev = fx.0.join("dev-volume");
    fs::create_dir_all(&dev).unwrap();
    fs::write(dev.join("null"), "planted\n").unwrap();
    let script = "wc -c < /proc/keys; wc -c < /proc/timer_list; ls /proc/sys/fs | wc -l; cat /dev/null";
    let mut s = spec(&fx, &["sh", "-c", script], "/");
    s.mounts.retain(|m| m.destination != "/dev");
    s.mounts.push(super::spec::Mount {
        destination: "/dev".into(),
        kind: Some("bind".into()),
        source: Some(dev.to_string_lossy().into_owned()),
        options: vec!["rbind".into(), "rw".into()],
        ..Default::default()
    });
    s.linux.masked_paths = vec!["/proc/keys".into(), "/proc/timer_list".into(), "/proc/sys/fs".into(), "/proc/not-in-this-kernel".into()];
    let (_, _, out, status) = launch(&fx, &s);
    assert_eq!(status, sys::ExitStatus::Exited(0), "{}", out);
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    assert_eq!(lines, ["0", "0", "0", "planted"], "masked files read empty, a masked directory is an empty tmpfs");
}

#[test]
fn a_label_the_host_cannot_enforce_is_refused_before_anything_runs() {
    let host = super::lsm::HostLsm::detect();
    if !usable() || host.apparmor || host.selinux {
        eprintln!("skipped: needs root, busybox and a host without AppArmor and SELinux");
        return;
    }
    let fx = fixture("lsm");
    let refused = |edit: &dyn Fn(&mut Spec)| {
        let mut s = spec(&fx, &["true"], "/");
        edit(&mut s);
        match container_plan(&s, &fx.0.join("b")) {
            Ok(_) => panic!("the plan was made without its label"),
            Err(e) => e,
        }
    };
    let e = refused(&|s| s.process.apparmor_profile = Some("k8s-nginx".into()));
    assert!(e.contains("AppArmor profile \"k8s-nginx\" was asked for, but this host does not enforce AppArmor"), "{e}");
    let e = refused(&|s| s.process.selinux_label = Some("system_u:system_r:container_t:s0:c1,c2".into()));
    assert!(e.contains("SELinux is not enabled"), "{e}");
    let e = refused(&|s| s.linux.mount_label = Some("system_u:object_r:container_file_t:s0".into()));
    assert!(e.contains("SELinux mount label"), "{e}");

    // Unconfined asks for nothing this host lacks.
    let mut s = spec(&fx, &["true"], "/");
    s.process.apparmor_profile = Some("unconfined".into());
    let (_, _, out, status) = launch(&fx, &s);
    assert_eq!(status, sys::ExitStatus::Exited(0), "{}", out);
}
