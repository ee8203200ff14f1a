//! Process and mount exports for the pod runtime: starting the per-pod monitor with posix_spawn
//! (no fork of the daemon), reaping it, and a pod's /dev/shm tmpfs.
//!
//! Error codes: an errno name (`ENOENT`, `EPERM`, ...) or `EIO`.

use std::os::fd::IntoRawFd;
use std::path::Path;

use crisp_core::{atomic_file, du, lock_file, rootfs_diff, spawn, tree};
use crisp_core::unpack::errno_name;

use crate::js::{self, Args, Env, IntoJs, JsError, Value};

pub fn register(env: Env, exports: Value) -> Result<(), JsError> {
    js::register(env, exports, "spawnDetached", spawn_detached)?;
    js::register(env, exports, "reapChild", reap_child)?;
    js::register(env, exports, "mountTmpfs", mount_tmpfs)?;
    js::register(env, exports, "unmountPath", unmount_path)?;
    js::register(env, exports, "diskUsage", disk_usage)?;
    js::register(env, exports, "writeFileAtomic", write_file_atomic)?;
    js::register(env, exports, "spawnPiped", spawn_piped)?;
    js::register(env, exports, "removeTree", remove_tree)?;
    js::register(env, exports, "waitChild", wait_child)?;
    js::register(env, exports, "lockFile", lock_file_export)?;
    js::register(env, exports, "writeRootfsDiff", write_rootfs_diff)?;
    Ok(())
}

fn io_error(what: &str, e: std::io::Error) -> JsError {
    JsError::new(e.raw_os_error().map_or("EIO", errno_name), format!("{what}: {e}"))
}

/// `spawnDetached(program: string, arg: string, logPath: string): {pid: number, readyFd: number}`
/// — synchronous: posix_spawn returns as soon as the child exists. The caller owns `readyFd`.
fn spawn_detached(env: Env, args: &Args) -> Result<Value, JsError> {
    let program = args.path(0, "program")?;
    let arg = args.string(1, "arg")?;
    let log_path = args.path(2, "logPath")?;
    let spawned = spawn::spawn_detached(Path::new(&program), &[&arg], Path::new(&log_path))
        .map_err(|e| io_error(&format!("spawn {program}"), e))?;
    let out = env.object()?;
    out.set_number("pid", f64::from(spawned.pid))?;
    out.set_number("readyFd", f64::from(spawned.ready.into_raw_fd()))?;
    Ok(out.raw())
}

/// `reapChild(pid: number): boolean` — true once the child has exited and been collected (or is
/// not a child of this process).
fn reap_child(env: Env, args: &Args) -> Result<Value, JsError> {
    let pid = args.number(0, "pid")?;
    let done = spawn::reap(pid as libc::pid_t).map_err(|e| io_error("waitpid", e))?;
    env.boolean(done)
}

/// `mountTmpfs(target: string, options: string): void` (nosuid,nodev,noexec).
fn mount_tmpfs(env: Env, args: &Args) -> Result<Value, JsError> {
    let target = args.path(0, "target")?;
    let options = args.string(1, "options")?;
    spawn::mount_tmpfs(Path::new(&target), &options).map_err(|e| io_error(&format!("mount tmpfs on {target}"), e))?;
    env.undefined()
}

/// `unmountPath(target: string): void` — lazy unmount; not mounted or missing is fine.
fn unmount_path(env: Env, args: &Args) -> Result<Value, JsError> {
    let target = args.path(0, "target")?;
    spawn::unmount(Path::new(&target)).map_err(|e| io_error(&format!("unmount {target}"), e))?;
    env.undefined()
}

/// Usage of a directory tree; `null` when it does not exist.
struct UsageResult(Option<du::Usage>);

impl IntoJs for UsageResult {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        match self.0 {
            None => env.string("null"),
            // Decimal strings: byte counts of big layers outgrow a double's exact integers only in
            // theory, but bigint on the JS side keeps the arithmetic exact anyway.
            Some(u) => env.string(&format!("{{\"bytes\":\"{}\",\"inodes\":\"{}\"}}", u.bytes, u.inodes)),
        }
    }
}

/// `diskUsage(dir: string): Promise<string>` — JSON `{"bytes","inodes"}` (decimal strings) or
/// `null`, walked on libuv's threadpool.
fn disk_usage(env: Env, args: &Args) -> Result<Value, JsError> {
    let dir = args.path(0, "dir")?;
    js::promise(env, "crisp.diskUsage", move || {
        du::disk_usage(Path::new(&dir)).map(UsageResult).map_err(|e| io_error(&format!("disk usage of {dir}"), e))
    })
}

/// Nothing to hand back but completion.
struct Written;

impl IntoJs for Written {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        env.undefined()
    }
}

/// `writeFileAtomic(path: string, data: string, mode: number, durable: boolean): Promise<void>` —
/// temp file, optional fsync, rename, optional directory fsync: one threadpool task.
fn write_file_atomic(env: Env, args: &Args) -> Result<Value, JsError> {
    let target = args.path(0, "path")?;
    let data = args.string(1, "data")?;
    let mode = args.number(2, "mode")?;
    if !(0.0..=4095.0).contains(&mode) || mode.fract() != 0.0 {
        return Err(JsError::invalid_arg_value(format!("mode must be an integer permission mode, received {mode}")));
    }
    let durable = args.boolean(3, "durable")?;
    js::promise(env, "crisp.writeFileAtomic", move || {
        atomic_file::write_atomic(Path::new(&target), data.as_bytes(), mode as u32, durable)
            .map(|()| Written)
            .map_err(|e| io_error(&format!("write {target}"), e))
    })
}

fn string_list(text: &str, name: &str) -> Result<Vec<String>, JsError> {
    serde_json::from_str(text).map_err(|e| JsError::invalid_arg_value(format!("The \"{name}\" argument must be a JSON array of strings: {e}")))
}

/// `spawnPiped(program: string, args: string, env: string): {pid, stdin, stdout, stderr}` —
/// `args` and `env` are JSON string arrays (`env` entries are `KEY=value`). Synchronous:
/// posix_spawn returns once the program is exec'd (or fails with its errno). The caller owns the
/// three descriptors and must collect the child with `waitChild`.
fn spawn_piped(env: Env, args: &Args) -> Result<Value, JsError> {
    let program = args.path(0, "program")?;
    let argv = string_list(&args.string(1, "args")?, "args")?;
    let envp = string_list(&args.string(2, "env")?, "env")?;
    let spawned = spawn::spawn_piped(Path::new(&program), &argv, &envp).map_err(|e| io_error(&format!("spawn {program}"), e))?;
    let out = env.object()?;
    out.set_number("pid", f64::from(spawned.pid))?;
    out.set_number("stdin", f64::from(spawned.stdin.into_raw_fd()))?;
    out.set_number("stdout", f64::from(spawned.stdout.into_raw_fd()))?;
    out.set_number("stderr", f64::from(spawned.stderr.into_raw_fd()))?;
    Ok(out.raw())
}

/// `waitChild(pid: number): undefined | {code: number} | {signal: number}` — collects a child
/// started by `spawnPiped` once it has exited; `undefined` while it runs.
fn wait_child(env: Env, args: &Args) -> Result<Value, JsError> {
    let pid = args.number(0, "pid")?;
    match spawn::wait_status(pid as libc::pid_t).map_err(|e| io_error("waitpid", e))? {
        None => env.undefined(),
        Some(status) => {
            let out = env.object()?;
            match status {
                spawn::ExitStatus::Code(code) => out.set_number("code", f64::from(code))?,
                spawn::ExitStatus::Signal(signal) => out.set_number("signal", f64::from(signal))?,
            }
            Ok(out.raw())
        }
    }
}

/// `removeTree(path: string): Promise<void>` — the directory tree (or file) at `path`, removed
/// in one threadpool task without following symlinks; missing is fine.
fn remove_tree(env: Env, args: &Args) -> Result<Value, JsError> {
    let target = args.path(0, "path")?;
    js::promise(env, "crisp.removeTree", move || {
        tree::remove_tree(Path::new(&target)).map(|()| Written).map_err(|e| io_error(&format!("remove {target}"), e))
    })
}

/// `lockFile(path: string): number` — an exclusive `flock` on the 0600 file at `path` (created if
/// missing, never through a symlink), held by the returned close-on-exec descriptor for as long as
/// it stays open. Code `EAGAIN` when another open file holds it.
fn lock_file_export(env: Env, args: &Args) -> Result<Value, JsError> {
    let target = args.path(0, "path")?;
    match lock_file::lock_exclusive(Path::new(&target)) {
        Ok(fd) => env.number(f64::from(fd.into_raw_fd())),
        Err(lock_file::LockError::Held) => Err(JsError::new("EAGAIN", format!("{target} is locked by another process"))),
        Err(lock_file::LockError::Io(e)) => Err(io_error(&format!("lock {target}"), e)),
    }
}

/// How many members a rootfs diff archived and skipped.
struct DiffWritten(rootfs_diff::DiffTarResult);

impl IntoJs for DiffWritten {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        env.string(&format!("{{\"entries\":{},\"skipped\":{}}}", self.0.entries, self.0.skipped))
    }
}

/// `writeRootfsDiff(upperDir: string, members: string, out: string): Promise<string>` — the
/// members (a JSON array of paths relative to `upperDir`) written as a tar at `out` (created
/// 0600), each read through descriptors and never through a symlink; resolves with JSON
/// `{"entries","skipped"}`. One threadpool task.
fn write_rootfs_diff(env: Env, args: &Args) -> Result<Value, JsError> {
    let upper = args.path(0, "upperDir")?;
    let members = string_list(&args.string(1, "members")?, "members")?;
    let out = args.path(2, "out")?;
    js::promise(env, "crisp.writeRootfsDiff", move || {
        rootfs_diff::write_diff_tar(Path::new(&upper), &members, Path::new(&out))
            .map(DiffWritten)
            .map_err(|e| io_error(&format!("write the rootfs diff of {upper}"), e))
    })
}
