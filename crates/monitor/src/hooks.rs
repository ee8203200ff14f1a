//! OCI lifecycle hooks (CDI device specs bring them), run by the monitor as runc runs them:
//! prestart, createRuntime (runtime namespaces) and createContainer (container namespaces) while
//! the container's set-up waits before pivot_root, so `<bundle>/rootfs` is the assembled root;
//! startContainer before the process execs, entered into the container as an exec is (its
//! binary comes from the container's root, so it runs with the container's identity,
//! capabilities and seccomp filter, in all its namespaces and its cgroup); poststart and poststop
//! (runtime namespaces) after it started and after it exited.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::process::ExitStatusExt;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crisp_core::container::child::{ChildIo, Record, KIND_ERROR, RECORD_SIZE};
use crisp_core::container::launch;
use crisp_core::container::plan::{self, ExecPlan, ExecTarget, ProcessOverrides};
use crisp_core::container::spec::{Hook, Spec};
use crisp_core::sys;

/// For a hook without a timeout of its own: kubelet gives up on a container start after two
/// minutes, and the pod's other containers wait while a hook runs.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
/// How much of a failed hook's output goes into the error.
const OUTPUT_LIMIT: u64 = 2048;
/// The namespaces a hook joins: those the container has before its process execs.
const NAMESPACES: [(&str, libc::c_int); 4] = [("ipc", libc::CLONE_NEWIPC), ("uts", libc::CLONE_NEWUTS), ("net", libc::CLONE_NEWNET), ("mnt", libc::CLONE_NEWNS)];

/// The OCI state a hook reads on stdin; `status` is creating, created, running or stopped.
pub fn state_json(id: &str, status: &str, pid: libc::pid_t, bundle: &Path, annotations: &BTreeMap<String, String>) -> String {
    serde_json::json!({
        "ociVersion": "1.2.0",
        "id": id,
        "status": status,
        "pid": pid,
        "bundle": bundle.to_string_lossy(),
        "annotations": annotations,
    })
    .to_string()
}

/// Runs `hook` (of kind `kind`, for messages) with `state` on its stdin, in the namespaces of
/// process `in_namespaces_of` or else the monitor's own; waits for it, at most its timeout. Its
/// output is kept in `<bundle>/hook.log` and quoted when it fails.
pub fn run(kind: &str, hook: &Hook, state: &str, in_namespaces_of: Option<libc::pid_t>, bundle: &Path) -> Result<(), String> {
    let fail = |what: String| format!("{kind} hook {}: {}", hook.path, what);
    // Opened here: between fork and exec the child only calls setns.
    let mut namespaces: Vec<(OwnedFd, libc::c_int)> = Vec::new();
    if let Some(pid) = in_namespaces_of {
        for (name, flag) in NAMESPACES {
            let file = File::open(format!("/proc/{pid}/ns/{name}")).map_err(|e| fail(format!("open the container's {name} namespace: {e}")))?;
            namespaces.push((OwnedFd::from(file), flag));
        }
    }
    let HookIo { stdin: stdin_r, log, out, err } = hook_io(state, bundle).map_err(fail)?;

    let mut cmd = Command::new(&hook.path);
    if let Some((arg0, rest)) = hook.args.split_first() {
        cmd.arg0(arg0).args(rest);
    }
    cmd.env_clear();
    for entry in &hook.env {
        if let Some((k, v)) = entry.split_once('=') {
            cmd.env(k, v);
        }
    }
    cmd.stdin(Stdio::from(stdin_r)).stdout(Stdio::from(out)).stderr(Stdio::from(err));
    let fds: Vec<(libc::c_int, libc::c_int)> = namespaces.iter().map(|(f, flag)| (f.as_raw_fd(), *flag)).collect();
    // SAFETY: the closure runs in the forked child and only makes async-signal-safe calls.
    unsafe {
        cmd.pre_exec(move || {
            // A fresh process's signals: the monitor blocks the ones it reads through a signalfd
            // and ignores SIGPIPE, which execve would pass on.
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            libc::sigprocmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
            for &(fd, flag) in &fds {
                if libc::setns(fd, flag) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
            }
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(|e| fail(e.to_string()))?;
    drop(namespaces);
    wait_hook(hook, child.id() as libc::pid_t, log).map_err(fail)
}

/// The plan for running a startContainer hook inside the running-to-be container whose
/// namespaces and cgroups `target` holds: its path (resolved in the container's root) with its
/// arguments and environment, everything else the container process's.
pub fn plan_in_container(spec: &Spec, target: &ExecTarget, hook: &Hook, ignored_signals: &[libc::c_int]) -> Result<ExecPlan, String> {
    let args = if hook.args.is_empty() { vec![hook.path.clone()] } else { hook.args.clone() };
    let overrides = ProcessOverrides { args, env: Some(hook.env.clone()), ..Default::default() };
    let mut plan = plan::exec_plan(spec, target, &overrides, ignored_signals)?;
    plan.process.program = hook.path.clone();
    plan.process.candidates = vec![sys::cstr(&hook.path).map_err(|e| e.to_string())?];
    Ok(plan)
}

/// Runs a hook planned by `plan_in_container` with `state` on its stdin and waits for it, at
/// most its timeout.
pub fn run_in_container(kind: &str, hook: &Hook, state: &str, plan: &ExecPlan, bundle: &Path) -> Result<(), String> {
    let fail = |what: String| format!("{kind} hook {}: {}", hook.path, what);
    let HookIo { stdin, log, out, err } = hook_io(state, bundle).map_err(fail)?;
    let (status_r, status_w) = sys::pipe_cloexec().map_err(|e| fail(format!("pipe: {e}")))?;
    let io = ChildIo {
        stdin: stdin.as_raw_fd(),
        stdout: out.as_raw_fd(),
        stderr: err.as_raw_fd(),
        tty: false,
        status: status_w.as_raw_fd(),
        gate: -1,
        hooks_gate: -1,
        forked: -1,
    };
    let pid = launch::spawn_exec(plan, &io).map_err(|e| fail(e.to_string()))?;
    drop((stdin, out, err, status_w));
    // EOF once it exec'd (the pipe is close-on-exec), or a record saying which step failed.
    let mut raw = [0u8; RECORD_SIZE];
    let n = loop {
        let n = unsafe { libc::read(status_r.as_raw_fd(), raw.as_mut_ptr().cast(), RECORD_SIZE) };
        if n >= 0 || io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break n;
        }
    };
    if n == RECORD_SIZE as isize {
        let rec = Record::from_bytes(&raw);
        if rec.kind == KIND_ERROR {
            let _ = sys::wait_pid(pid);
            return Err(fail(launch::describe_failure(&plan.process, None, &rec).1));
        }
    }
    wait_hook(hook, pid, log).map_err(fail)
}

/// A hook's stdin (the state, written whole: it is far smaller than a pipe's buffer) and its
/// output, kept in `<bundle>/hook.log`.
struct HookIo {
    stdin: OwnedFd,
    log: File,
    out: File,
    err: File,
}

fn hook_io(state: &str, bundle: &Path) -> Result<HookIo, String> {
    let (stdin_r, stdin_w) = sys::pipe_cloexec().map_err(|e| format!("pipe: {e}"))?;
    sys::write_all_fd(stdin_w.as_raw_fd(), state.as_bytes()).map_err(|e| format!("write the state: {e}"))?;
    drop(stdin_w);
    let log_path = bundle.join("hook.log");
    let log = OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&log_path).map_err(|e| format!("{}: {e}", log_path.display()))?;
    let out = log.try_clone().map_err(|e| e.to_string())?;
    let err = log.try_clone().map_err(|e| e.to_string())?;
    Ok(HookIo { stdin: stdin_r, log, out, err })
}

/// Waits for the hook process `pid` (the caller's child) at most its timeout, then kills it and
/// its process group; a failure quotes the end of its output.
fn wait_hook(hook: &Hook, pid: libc::pid_t, mut log: File) -> Result<(), String> {
    let timeout = hook.timeout.map_or(DEFAULT_TIMEOUT, Duration::from_secs);
    let deadline = Instant::now() + timeout;
    let status = loop {
        let mut raw = 0;
        match unsafe { libc::waitpid(pid, &mut raw, libc::WNOHANG) } {
            p if p == pid => break std::process::ExitStatus::from_raw(raw),
            0 if Instant::now() >= deadline => {
                let _ = sys::kill(-pid, libc::SIGKILL);
                let _ = sys::kill(pid, libc::SIGKILL);
                let _ = sys::wait_pid(pid);
                return Err(format!("did not finish within {} s", timeout.as_secs()));
            }
            0 => std::thread::sleep(Duration::from_millis(2)),
            _ if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) => {}
            _ => return Err(format!("wait: {}", io::Error::last_os_error())),
        }
    };
    if status.success() {
        return Ok(());
    }
    let mut output = String::new();
    let len = log.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = log.seek(SeekFrom::Start(len.saturating_sub(OUTPUT_LIMIT)));
    let _ = log.take(OUTPUT_LIMIT).read_to_string(&mut output);
    let output = output.trim();
    Err(if output.is_empty() { status.to_string() } else { format!("{status}: {output}") })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundle(tag: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(format!("crisp-hooks-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn is_root() -> bool {
        unsafe { libc::geteuid() == 0 }
    }

    #[test]
    fn a_hook_reads_the_state_and_a_slow_one_is_stopped_at_its_timeout() {
        // Joining namespaces needs root; the monitor's own namespaces stand in for a container's.
        if !is_root() {
            return;
        }
        let dir = bundle("run");
        let pid = std::process::id() as libc::pid_t;
        let state = state_json("c1", "creating", pid, &dir, &BTreeMap::from([("a".to_string(), "b".to_string())]));
        let copy = Hook {
            path: "/bin/sh".into(),
            args: vec!["sh".into(), "-c".into(), "cat > \"$OUT\"".into()],
            env: vec![format!("OUT={}", dir.join("state").display())],
            timeout: Some(5),
        };
        run("createContainer", &copy, &state, Some(pid), &dir).unwrap();
        let got: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("state")).unwrap()).unwrap();
        assert_eq!(got["id"], "c1");
        assert_eq!(got["status"], "creating");
        assert_eq!(got["pid"], pid);
        assert_eq!(got["annotations"]["a"], "b");

        let slow = Hook { path: "/bin/sleep".into(), args: vec!["sleep".into(), "30".into()], env: vec![], timeout: Some(1) };
        let started = Instant::now();
        let err = run("createContainer", &slow, &state, Some(pid), &dir).unwrap_err();
        assert!(err.contains("did not finish within 1 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));

        let failing = Hook { path: "/bin/sh".into(), args: vec!["sh".into(), "-c".into(), "echo broken >&2; exit 4".into()], env: vec![], timeout: None };
        let err = run("poststop", &failing, &state, None, &dir).unwrap_err();
        assert_eq!(err, "poststop hook /bin/sh: exit status: 4: broken");
        assert!(run("createRuntime", &Hook { path: "/nonexistent/hook".into(), ..Hook::default() }, &state, None, &dir).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
