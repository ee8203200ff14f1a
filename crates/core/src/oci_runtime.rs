//! Driving an OCI runtime binary (runc, crun, youki, runsc …) through its command line, as
//! containerd's runc shim does: the argument lists of its subcommands, running it with a bounded
//! time and its error output captured, the console socket through which it hands over a
//! terminal's master side (SCM_RIGHTS), and the pid file it writes.
//!
//! Everything here is synchronous and self-contained; the per-pod monitor decides when to call it.

use std::fmt;
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::monitor_proto::OciRuntime;

/// How long one runtime command may take before it is killed.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// Error output kept for a message.
const STDERR_CAP: usize = 16 << 10;

/// The argument vector of one runtime subcommand: global options (`--root`, then the configured
/// extra arguments, which for runc and crun are global options such as `--systemd-cgroup`), then
/// the subcommand and its own.
pub fn argv(rt: &OciRuntime, sub: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(root) = rt.root.as_deref().filter(|r| !r.is_empty()) {
        out.push("--root".to_owned());
        out.push(root.to_owned());
    }
    out.extend(rt.args.iter().cloned());
    out.extend(sub.iter().cloned());
    out
}

fn strings(parts: &[&str]) -> Vec<String> {
    parts.iter().map(|s| (*s).to_owned()).collect()
}

pub fn create_args(id: &str, bundle: &Path, pid_file: &Path, console_socket: Option<&Path>) -> Vec<String> {
    let mut out = strings(&["create", "--bundle"]);
    out.push(bundle.display().to_string());
    out.push("--pid-file".into());
    out.push(pid_file.display().to_string());
    if let Some(s) = console_socket {
        out.push("--console-socket".into());
        out.push(s.display().to_string());
    }
    out.push(id.to_owned());
    out
}

pub fn start_args(id: &str) -> Vec<String> {
    strings(&["start", id])
}

pub fn kill_args(id: &str, signal: i32) -> Vec<String> {
    vec!["kill".into(), id.to_owned(), signal.to_string()]
}

pub fn delete_args(id: &str) -> Vec<String> {
    strings(&["delete", "--force", id])
}

/// `exec --detach`: the runtime returns once the process runs, which the caller (a subreaper)
/// then parents.
pub fn exec_args(id: &str, process_file: &Path, pid_file: &Path, console_socket: Option<&Path>) -> Vec<String> {
    let mut out = strings(&["exec", "--process"]);
    out.push(process_file.display().to_string());
    out.push("--detach".into());
    out.push("--pid-file".into());
    out.push(pid_file.display().to_string());
    if let Some(s) = console_socket {
        out.push("--tty".into());
        out.push("--console-socket".into());
        out.push(s.display().to_string());
    }
    out.push(id.to_owned());
    out
}

/// `update --resources -`: the resources JSON (an OCI `linux.resources` object) on stdin.
pub fn update_args(id: &str) -> Vec<String> {
    strings(&["update", "--resources", "-", id])
}

/// A runtime command that could not be run, timed out or failed.
#[derive(Debug)]
pub struct RuntimeError {
    pub command: String,
    pub what: String,
    pub stderr: String,
}

impl fmt::Display for RuntimeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.command, self.what)?;
        let text = self.stderr.trim();
        if !text.is_empty() {
            write!(f, ": {}", text)?;
        }
        Ok(())
    }
}

impl std::error::Error for RuntimeError {}

/// The standard descriptors a runtime command gets. Absent ones: stdin reads /dev/null (or the
/// given input), stdout goes to /dev/null, stderr is captured for the error message.
#[derive(Default)]
pub struct CommandIo {
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    /// Written to stdin (when `stdin` is not given).
    pub input: Option<Vec<u8>>,
}

/// Runs the runtime with `sub` and waits for it (at most `timeout`, then it is killed). Its
/// signal mask and dispositions are reset first: the caller's (blocked SIGCHLD for a signalfd,
/// ignored signals) would otherwise pass on to the container's processes. Returns its captured
/// error output on success too (runtimes warn there).
pub fn run(rt: &OciRuntime, sub: &[String], io: CommandIo, timeout: Duration) -> Result<String, RuntimeError> {
    let name = Path::new(&rt.path).file_name().map_or_else(|| rt.path.clone(), |n| n.to_string_lossy().into_owned());
    let command = format!("{} {}", name, sub.first().map_or("", String::as_str));
    let fail = |what: String, stderr: String| RuntimeError { command: command.clone(), what, stderr };
    let mut cmd = Command::new(&rt.path);
    cmd.args(argv(rt, sub));
    cmd.stdin(match (io.stdin, &io.input) {
        (Some(fd), _) => Stdio::from(fd),
        (None, Some(_)) => Stdio::piped(),
        (None, None) => Stdio::null(),
    });
    cmd.stdout(io.stdout.map_or_else(Stdio::null, Stdio::from));
    let captured = io.stderr.is_none();
    cmd.stderr(io.stderr.map_or_else(Stdio::piped, Stdio::from));
    // SAFETY: between fork and exec only async-signal-safe calls (sigprocmask, sigaction).
    unsafe {
        cmd.pre_exec(|| {
            reset_signals();
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| fail(format!("could not be started ({}): {}", rt.path, e), String::new()))?;
    if let (Some(input), Some(mut stdin)) = (io.input, child.stdin.take()) {
        // Small (a resources object); a runtime that does not read it fails on its own.
        let _ = stdin.write_all(&input);
    }
    let mut stderr_pipe = if captured { child.stderr.take() } else { None };
    let mut stderr = Vec::new();
    let outcome = wait_bounded(&mut child, stderr_pipe.as_mut(), &mut stderr, timeout);
    let text = String::from_utf8_lossy(&stderr).into_owned();
    match outcome {
        Ok(status) if status.success() => Ok(text),
        Ok(status) => Err(fail(format!("failed ({})", status), text)),
        Err(e) => Err(fail(e.to_string(), text)),
    }
}

/// Waits for `child`, collecting what it writes to `pipe` meanwhile; kills it at the deadline.
fn wait_bounded(child: &mut Child, mut pipe: Option<&mut std::process::ChildStderr>, out: &mut Vec<u8>, timeout: Duration) -> io::Result<std::process::ExitStatus> {
    let deadline = Instant::now() + timeout;
    if let Some(p) = pipe.as_deref_mut() {
        crate::sys::set_nonblocking(p.as_raw_fd())?;
    }
    let mut sleep_ms = 1;
    loop {
        if let Some(p) = pipe.as_deref_mut() {
            drain_into(p, out);
        }
        if let Some(status) = child.try_wait()? {
            if let Some(p) = pipe.as_deref_mut() {
                drain_into(p, out);
            }
            return Ok(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(io::Error::new(io::ErrorKind::TimedOut, format!("timed out after {} s", timeout.as_secs())));
        }
        match pipe.as_deref() {
            Some(p) => {
                let mut pfd = libc::pollfd { fd: p.as_raw_fd(), events: libc::POLLIN, revents: 0 };
                // SAFETY: one valid pollfd.
                unsafe { libc::poll(&mut pfd, 1, sleep_ms) };
            }
            None => std::thread::sleep(Duration::from_millis(sleep_ms as u64)),
        }
        sleep_ms = (sleep_ms * 2).min(10);
    }
}

fn drain_into(p: &mut impl Read, out: &mut Vec<u8>) {
    let mut buf = [0u8; 4096];
    loop {
        match p.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) if out.len() < STDERR_CAP => out.extend_from_slice(&buf[..n.min(STDERR_CAP - out.len())]),
            Ok(_) => {}
        }
    }
}

/// Unblocks every signal and sets every catchable one to its default action.
fn reset_signals() {
    // SAFETY: plain signal system calls on valid, local arguments.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
        for sig in 1..libc::SIGRTMAX() {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::signal(sig, libc::SIG_DFL);
            }
        }
    }
}

/// Reads the pid a runtime wrote with `--pid-file`.
pub fn read_pid_file(path: &Path) -> io::Result<libc::pid_t> {
    let text = std::fs::read_to_string(path)?;
    text.trim()
        .parse::<libc::pid_t>()
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, format!("pid file {} holds {:?}, not a pid", path.display(), text.trim())))
}

/// The listening socket a runtime connects to (`--console-socket`) to send the master side of the
/// terminal it allocated in the container. Removed when dropped.
pub struct ConsoleSocket {
    listener: UnixListener,
    path: PathBuf,
}

impl ConsoleSocket {
    pub fn bind(path: &Path) -> io::Result<Self> {
        let _ = std::fs::remove_file(path);
        let listener = UnixListener::bind(path)?;
        Ok(ConsoleSocket { listener, path: path.to_owned() })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The terminal master the runtime sent. Called after the runtime command returned: its
    /// connection and message wait in the socket's queues, so this does not block for long.
    pub fn receive(&self, timeout: Duration) -> io::Result<OwnedFd> {
        let mut pfd = libc::pollfd { fd: self.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd.
        let ready = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if ready <= 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "the runtime sent no terminal on the console socket"));
        }
        let (conn, _) = self.listener.accept()?;
        receive_fd(conn.as_raw_fd(), timeout)
    }
}

impl Drop for ConsoleSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Receives one descriptor passed with SCM_RIGHTS on a connected unix socket.
pub fn receive_fd(sock: RawFd, timeout: Duration) -> io::Result<OwnedFd> {
    let mut pfd = libc::pollfd { fd: sock, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    if unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) } <= 0 {
        return Err(io::Error::new(io::ErrorKind::TimedOut, "no descriptor arrived on the console socket"));
    }
    let mut data = [0u8; 256];
    let mut iov = libc::iovec { iov_base: data.as_mut_ptr().cast(), iov_len: data.len() };
    // Room for a few descriptors, so that one sent with extras is still received (and closed).
    let space = unsafe { libc::CMSG_SPACE((4 * std::mem::size_of::<RawFd>()) as u32) } as usize;
    let mut control = vec![0u8; space];
    // SAFETY: a zeroed msghdr is valid; the pointers set below live until recvmsg returns.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    let n = crate::sys::cvt_retry(|| unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) })?;
    let mut received: Vec<OwnedFd> = Vec::new();
    // SAFETY: walking the control messages recvmsg filled in, within msg_controllen.
    unsafe {
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let payload = (*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize;
                let first = libc::CMSG_DATA(cmsg) as *const RawFd;
                for i in 0..payload / std::mem::size_of::<RawFd>() {
                    received.push(OwnedFd::from_raw_fd(std::ptr::read_unaligned(first.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
    }
    if received.is_empty() {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("the console socket got {} bytes but no descriptor", n)));
    }
    Ok(received.swap_remove(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rt(root: Option<&str>, args: &[&str]) -> OciRuntime {
        OciRuntime { path: "/usr/sbin/runc".into(), args: strings(args), root: root.map(str::to_owned) }
    }

    #[test]
    fn global_options_come_before_the_subcommand() {
        let r = rt(Some("/run/crisp/runc"), &["--systemd-cgroup"]);
        assert_eq!(argv(&r, &start_args("c1")), strings(&["--root", "/run/crisp/runc", "--systemd-cgroup", "start", "c1"]));
        assert_eq!(argv(&rt(None, &[]), &delete_args("c1")), strings(&["delete", "--force", "c1"]));
        assert_eq!(argv(&rt(Some(""), &[]), &kill_args("c1", 15)), strings(&["kill", "c1", "15"]));
    }

    #[test]
    fn create_and_exec_name_their_files_and_console_socket() {
        let b = Path::new("/b");
        assert_eq!(create_args("c", b, Path::new("/b/pid"), None), strings(&["create", "--bundle", "/b", "--pid-file", "/b/pid", "c"]));
        assert_eq!(
            create_args("c", b, Path::new("/b/pid"), Some(Path::new("/s"))),
            strings(&["create", "--bundle", "/b", "--pid-file", "/b/pid", "--console-socket", "/s", "c"])
        );
        assert_eq!(
            exec_args("c", Path::new("/p.json"), Path::new("/e.pid"), Some(Path::new("/s"))),
            strings(&["exec", "--process", "/p.json", "--detach", "--pid-file", "/e.pid", "--tty", "--console-socket", "/s", "c"])
        );
        assert_eq!(update_args("c"), strings(&["update", "--resources", "-", "c"]));
    }

    fn script(dir: &Path, body: &str) -> OciRuntime {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join("runtime");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        OciRuntime { path: path.display().to_string(), args: vec![], root: None }
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("crisp-oci-{}-{}", name, std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_failing_runtime_is_reported_with_its_error_output() {
        let dir = temp_dir("fail");
        let r = script(&dir, "echo \"bad option: $1\" >&2; exit 3");
        let e = run(&r, &start_args("c1"), CommandIo::default(), COMMAND_TIMEOUT).unwrap_err();
        let text = e.to_string();
        assert!(text.starts_with("runtime start failed (exit status: 3)"), "{text}");
        assert!(text.ends_with(": bad option: start"), "{text}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn input_reaches_stdin_and_success_returns_warnings() {
        let dir = temp_dir("input");
        let out = dir.join("got");
        let r = script(&dir, &format!("cat > {}; echo careful >&2", out.display()));
        let io = CommandIo { input: Some(b"{\"cpu\":{}}".to_vec()), ..Default::default() };
        let warnings = run(&r, &update_args("c1"), io, COMMAND_TIMEOUT).unwrap();
        assert_eq!(warnings.trim(), "careful");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "{\"cpu\":{}}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_hanging_runtime_is_killed_at_the_deadline() {
        let dir = temp_dir("hang");
        let r = script(&dir, "exec sleep 30");
        let started = Instant::now();
        let e = run(&r, &start_args("c1"), CommandIo::default(), Duration::from_millis(200)).unwrap_err();
        assert!(e.to_string().contains("timed out"), "{e}");
        assert!(started.elapsed() < Duration::from_secs(5));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_missing_binary_says_so() {
        let r = OciRuntime { path: "/nonexistent/runtime".into(), args: vec![], root: None };
        let e = run(&r, &start_args("c"), CommandIo::default(), COMMAND_TIMEOUT).unwrap_err();
        assert!(e.to_string().contains("could not be started (/nonexistent/runtime)"), "{e}");
    }

    #[test]
    fn pid_files_hold_one_positive_number() {
        let dir = temp_dir("pid");
        let f = dir.join("pid");
        std::fs::write(&f, "4242").unwrap();
        assert_eq!(read_pid_file(&f).unwrap(), 4242);
        std::fs::write(&f, "0\n").unwrap();
        assert!(read_pid_file(&f).is_err());
        std::fs::write(&f, "x").unwrap();
        assert!(read_pid_file(&f).is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn the_console_socket_receives_a_descriptor_sent_with_scm_rights() {
        let dir = temp_dir("console");
        let sock = ConsoleSocket::bind(&dir.join("c.sock")).unwrap();
        let (r, w) = crate::sys::pipe_cloexec().unwrap();
        // The sender connects, sends and closes before the receiver accepts, as a runtime does.
        let client = std::os::unix::net::UnixStream::connect(sock.path()).unwrap();
        send_fd(client.as_raw_fd(), w.as_raw_fd());
        drop(client);
        drop(w);
        let got = sock.receive(Duration::from_secs(1)).unwrap();
        crate::sys::write_all_fd(got.as_raw_fd(), b"hi").unwrap();
        drop(got);
        let mut buf = String::new();
        std::fs::File::from(r).read_to_string(&mut buf).unwrap();
        assert_eq!(buf, "hi");
        let path = sock.path().to_owned();
        drop(sock);
        assert!(!path.exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_console_socket_nobody_connects_to_times_out() {
        let dir = temp_dir("console-timeout");
        let sock = ConsoleSocket::bind(&dir.join("c.sock")).unwrap();
        assert_eq!(sock.receive(Duration::from_millis(20)).unwrap_err().kind(), io::ErrorKind::TimedOut);
        drop(sock);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn send_fd(sock: RawFd, fd: RawFd) {
        let mut byte = [0u8; 1];
        let mut iov = libc::iovec { iov_base: byte.as_mut_ptr().cast(), iov_len: 1 };
        let space = unsafe { libc::CMSG_SPACE(std::mem::size_of::<RawFd>() as u32) } as usize;
        let mut control = vec![0u8; space];
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = space as _;
        unsafe {
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(std::mem::size_of::<RawFd>() as u32) as _;
            std::ptr::write_unaligned(libc::CMSG_DATA(cmsg) as *mut RawFd, fd);
            assert_eq!(libc::sendmsg(sock, &msg, 0), 1);
        }
    }
}
