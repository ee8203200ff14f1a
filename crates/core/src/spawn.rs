//! Starting helper processes without forking the daemon. Node's child_process forks the whole
//! daemon (hundreds of MB of address space) on the event loop for every spawn; posix_spawn (a
//! vfork-style clone in glibc) costs a fraction of that, which matters for the per-pod monitor
//! started on every RunPodSandbox and the CNI plugins every pod start and stop runs.

use std::ffi::CString;
use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use std::path::Path;
use std::ptr::null_mut;

/// glibc's POSIX_SPAWN_SETSID (not exported by the libc crate version in use).
const POSIX_SPAWN_SETSID: libc::c_int = 0x80;

/// A process started in its own session, with stdin on /dev/null, stdout and stderr appended to
/// `log_path`, and descriptor 3 the write end of a pipe whose read end is returned (the child's
/// readiness channel). Signal mask and dispositions are reset, since the daemon ignores SIGPIPE.
pub struct Spawned {
    pub pid: libc::pid_t,
    pub ready: OwnedFd,
}

fn cstr(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "string contains a NUL byte"))
}

fn check(rc: libc::c_int) -> io::Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::from_raw_os_error(rc))
    }
}

/// The file actions a spawn needs before exec.
enum FileAction<'a> {
    Open { fd: libc::c_int, path: &'a CString, flags: libc::c_int, mode: libc::mode_t },
    Dup2 { from: libc::c_int, to: libc::c_int },
}

fn argv_of(program: &Path, args: &[&str]) -> io::Result<(CString, Vec<CString>)> {
    let program_c = cstr(program.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "program path is not UTF-8"))?)?;
    let mut argv = vec![program_c.clone()];
    for a in args {
        argv.push(cstr(a)?);
    }
    Ok((program_c, argv))
}

/// posix_spawn in a new session (its own process group), signals unblocked and at their
/// defaults (the daemon ignores SIGPIPE), with `actions` applied and exactly `env`.
fn spawn_in_session(program: &CString, argv: &[CString], env: &[CString], actions: &[FileAction<'_>]) -> io::Result<libc::pid_t> {
    let mut argv_p: Vec<*mut libc::c_char> = argv.iter().map(|c| c.as_ptr() as *mut libc::c_char).collect();
    argv_p.push(null_mut());
    let mut env_p: Vec<*mut libc::c_char> = env.iter().map(|c| c.as_ptr() as *mut libc::c_char).collect();
    env_p.push(null_mut());
    // SAFETY: the attribute and file-action objects are initialised before use and destroyed on
    // every path; every pointer passed refers to a live CString or array the caller holds.
    unsafe {
        let mut fa: libc::posix_spawn_file_actions_t = std::mem::zeroed();
        check(libc::posix_spawn_file_actions_init(&mut fa))?;
        let mut attr: libc::posix_spawnattr_t = std::mem::zeroed();
        if let Err(e) = check(libc::posix_spawnattr_init(&mut attr)) {
            libc::posix_spawn_file_actions_destroy(&mut fa);
            return Err(e);
        }
        let result = (|| -> io::Result<libc::pid_t> {
            for action in actions {
                match *action {
                    FileAction::Open { fd, path, flags, mode } => check(libc::posix_spawn_file_actions_addopen(&mut fa, fd, path.as_ptr(), flags, mode))?,
                    // dup2 clears close-on-exec on the new descriptor.
                    FileAction::Dup2 { from, to } => check(libc::posix_spawn_file_actions_adddup2(&mut fa, from, to))?,
                }
            }
            let mut empty: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut empty);
            check(libc::posix_spawnattr_setsigmask(&mut attr, &empty))?;
            let mut all: libc::sigset_t = std::mem::zeroed();
            libc::sigfillset(&mut all);
            check(libc::posix_spawnattr_setsigdefault(&mut attr, &all))?;
            let flags = libc::POSIX_SPAWN_SETSIGMASK | libc::POSIX_SPAWN_SETSIGDEF | POSIX_SPAWN_SETSID;
            check(libc::posix_spawnattr_setflags(&mut attr, flags as libc::c_short))?;
            let mut pid: libc::pid_t = 0;
            check(libc::posix_spawn(&mut pid, program.as_ptr(), &fa, &attr, argv_p.as_ptr(), env_p.as_ptr()))?;
            Ok(pid)
        })();
        libc::posix_spawnattr_destroy(&mut attr);
        libc::posix_spawn_file_actions_destroy(&mut fa);
        result
    }
}

pub fn spawn_detached(program: &Path, args: &[&str], log_path: &Path) -> io::Result<Spawned> {
    use std::os::fd::AsRawFd;
    let (program_c, argv) = argv_of(program, args)?;
    let log_c = cstr(log_path.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "log path is not UTF-8"))?)?;
    let devnull = cstr("/dev/null")?;
    let (read_end, write_end) = pipe_cloexec()?;
    // The monitor and what it starts must not inherit the daemon's environment.
    let env = [cstr("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")?];
    let pid = spawn_in_session(
        &program_c,
        &argv,
        &env,
        &[
            FileAction::Open { fd: 0, path: &devnull, flags: libc::O_RDONLY, mode: 0 },
            FileAction::Open { fd: 1, path: &log_c, flags: libc::O_WRONLY | libc::O_APPEND | libc::O_CREAT, mode: 0o640 },
            FileAction::Dup2 { from: 1, to: 2 },
            FileAction::Dup2 { from: write_end.as_raw_fd(), to: 3 },
        ],
    )?;
    Ok(Spawned { pid, ready: read_end })
}

/// A process started in its own session with its standard streams on pipes: the daemon's ends
/// (close-on-exec) are returned. Used for CNI plugins, which are short-lived but many.
pub struct SpawnedPiped {
    pub pid: libc::pid_t,
    /// Write end of the child's stdin.
    pub stdin: OwnedFd,
    /// Read ends of the child's stdout and stderr.
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds is a valid two-element array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: pipe2 just returned these descriptors; each is owned exactly once here.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Starts `program` with `args` (argv[0] is the program path) and exactly `env`, in a new
/// session (so its process group can be killed as a whole), signals reset to default and
/// unblocked.
pub fn spawn_piped(program: &Path, args: &[String], env: &[String]) -> io::Result<SpawnedPiped> {
    use std::os::fd::AsRawFd;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (program_c, argv) = argv_of(program, &args)?;
    let env_c = env.iter().map(|e| cstr(e)).collect::<io::Result<Vec<_>>>()?;
    let (stdin_r, stdin_w) = pipe_cloexec()?;
    let (stdout_r, stdout_w) = pipe_cloexec()?;
    let (stderr_r, stderr_w) = pipe_cloexec()?;
    let pid = spawn_in_session(
        &program_c,
        &argv,
        &env_c,
        &[
            FileAction::Dup2 { from: stdin_r.as_raw_fd(), to: 0 },
            FileAction::Dup2 { from: stdout_w.as_raw_fd(), to: 1 },
            FileAction::Dup2 { from: stderr_w.as_raw_fd(), to: 2 },
        ],
    )?;
    Ok(SpawnedPiped { pid, stdin: stdin_w, stdout: stdout_r, stderr: stderr_r })
}

/// How a collected child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

/// Collects a child that has exited, with how it ended; Ok(None) while it still runs. ECHILD
/// (not ours, or collected already) is an error here: the caller owns this child.
pub fn wait_status(pid: libc::pid_t) -> io::Result<Option<ExitStatus>> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    if rc == 0 {
        return Ok(None);
    }
    if rc != pid {
        return Err(io::Error::last_os_error());
    }
    if libc::WIFSIGNALED(status) {
        Ok(Some(ExitStatus::Signal(libc::WTERMSIG(status))))
    } else {
        Ok(Some(ExitStatus::Code(libc::WEXITSTATUS(status))))
    }
}

/// Collects the exit status of a child that has exited; Ok(false) while it still runs.
pub fn reap(pid: libc::pid_t) -> io::Result<bool> {
    let mut status = 0;
    // SAFETY: status is a valid out pointer.
    let rc = unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
    match rc {
        0 => Ok(false),
        r if r == pid => Ok(true),
        _ => {
            let err = io::Error::last_os_error();
            // Not our child (re-adopted after a restart) or already collected.
            if err.raw_os_error() == Some(libc::ECHILD) {
                Ok(true)
            } else {
                Err(err)
            }
        }
    }
}

/// Mounts a tmpfs (a pod's /dev/shm) with the usual nosuid,nodev,noexec flags.
pub fn mount_tmpfs(target: &Path, options: &str) -> io::Result<()> {
    let target_c = cstr(target.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))?)?;
    let fstype = cstr("tmpfs")?;
    // The source name shows in mountinfo; "shm" as containerd and CRI-O name a pod's /dev/shm.
    let source = cstr("shm")?;
    let data = cstr(options)?;
    let flags = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    // SAFETY: all pointers refer to live NUL-terminated strings.
    let rc = unsafe { libc::mount(source.as_ptr(), target_c.as_ptr(), fstype.as_ptr(), flags, data.as_ptr().cast()) };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches a mount; a path that is not mounted (EINVAL) or gone (ENOENT) is fine.
pub fn unmount(target: &Path) -> io::Result<()> {
    let target_c = cstr(target.to_str().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path is not UTF-8"))?)?;
    // SAFETY: target_c is a live NUL-terminated string.
    let rc = unsafe { libc::umount2(target_c.as_ptr(), libc::MNT_DETACH) };
    if rc != 0 {
        let err = io::Error::last_os_error();
        if !matches!(err.raw_os_error(), Some(libc::EINVAL) | Some(libc::ENOENT)) {
            return Err(err);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn spawned_process_gets_the_ready_pipe_on_fd3_and_a_new_session() {
        let dir = std::env::temp_dir().join(format!("crisp-spawn-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let log = dir.join("log");
        let script = "echo ready >&3; echo logged; cut -d' ' -f6 /proc/$$/stat >&3";
        let spawned = spawn_detached(Path::new("/bin/sh"), &["-c", script], &log).unwrap();
        let mut out = String::new();
        std::fs::File::from(spawned.ready).read_to_string(&mut out).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("ready"));
        let sid: i32 = lines.next().map(|s| s.trim().parse().unwrap_or(-1)).unwrap_or(spawned.pid);
        assert_eq!(sid, spawned.pid, "the child leads its own session");
        for _ in 0..200 {
            if reap(spawned.pid).unwrap() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        assert_eq!(std::fs::read_to_string(&log).unwrap(), "logged\n");
        assert!(reap(spawned.pid).unwrap(), "an already collected child counts as gone");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    fn wait_for(pid: libc::pid_t) -> ExitStatus {
        for _ in 0..1000 {
            if let Some(status) = wait_status(pid).unwrap() {
                return status;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        panic!("child {} did not exit", pid);
    }

    #[test]
    fn piped_child_gets_stdin_env_and_its_own_session() {
        use std::io::Write;
        let script = "read line; echo \"got $line $CRISP_TEST_VAR\"; echo oops >&2; cut -d' ' -f6 /proc/$$/stat; exit 3";
        let env = vec!["CRISP_TEST_VAR=value".to_string(), "PATH=/usr/bin:/bin".to_string()];
        let child = spawn_piped(Path::new("/bin/sh"), &["-c".to_string(), script.to_string()], &env).unwrap();
        std::fs::File::from(child.stdin).write_all(b"hello\n").unwrap();
        let mut out = String::new();
        std::fs::File::from(child.stdout).read_to_string(&mut out).unwrap();
        let mut err = String::new();
        std::fs::File::from(child.stderr).read_to_string(&mut err).unwrap();
        let mut lines = out.lines();
        assert_eq!(lines.next(), Some("got hello value"));
        assert_eq!(lines.next().map(|s| s.trim().parse::<i32>().unwrap()), Some(child.pid), "the child leads its own session");
        assert_eq!(err, "oops\n");
        assert_eq!(wait_for(child.pid), ExitStatus::Code(3));
        assert!(wait_status(child.pid).is_err(), "a collected child is not ours any more");
    }

    #[test]
    fn piped_child_killed_by_a_signal_and_a_missing_program() {
        let child = spawn_piped(Path::new("/bin/sh"), &["-c".to_string(), "kill -9 $$".to_string()], &[]).unwrap();
        assert_eq!(wait_for(child.pid), ExitStatus::Signal(libc::SIGKILL));
        let err = spawn_piped(Path::new("/nonexistent/crisp-plugin"), &[], &[]).err().expect("no such program");
        assert_eq!(err.raw_os_error(), Some(libc::ENOENT));
    }

    #[test]
    fn tmpfs_mount_and_idempotent_unmount() {
        if unsafe { libc::geteuid() } != 0 {
            return;
        }
        let dir = std::env::temp_dir().join(format!("crisp-tmpfs-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        mount_tmpfs(&dir, "mode=1777,size=1m").unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(mounts.contains(dir.to_str().unwrap()));
        unmount(&dir).unwrap();
        unmount(&dir).unwrap();
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.to_str().unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
