//! The pod's containers and exec'd processes: creating, starting, signalling, exec, output to
//! CRI log files, and recording exits.
//!
//! Everything is driven by the server's epoll loop: each container contributes a status pipe
//! (set-up progress from its child, EOF once it exec'd) and its output descriptors, each exec a
//! status pipe and its output pipes. Replies to `create`, `start` and `exec` are sent when the
//! child reports, never by blocking the loop. Interactive execs and attached clients (stream
//! sessions) are in `streams`.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use crisp_core::cgroup::CgroupPaths;
use crisp_core::container::child::{ChildIo, Record, KIND_ERROR, KIND_FORKED, KIND_HOOKS, KIND_READY, RECORD_SIZE};
use crisp_core::container::crilog::{self, LineSplitter, Stream};
use crisp_core::container::launch::{self, FailureKind};
use crisp_core::container::plan::{self, ContainerPlan, ProcessOverrides};
use crisp_core::container::pty;
use crisp_core::container::spec::{Hook, Spec};
use crisp_core::monitor_proto::{
    self, frame, ContainerInfo, ContainerRef, ContainerState, CreateReply, CreateRequest, ErrorCode, Event, ExecReply,
    ExecRequest, ExecStreamReply, ExitEvent, ExitRecord, ProcessSpec, Reply, Response, SignalRequest, StartReply,
};
use crisp_core::sys::{self, ExitStatus, EPOLLIN};

use crate::base64;
use crate::hooks;
use crate::log;
use crate::server::Server;
use crate::streams::{self, Attached, Input, STREAM_PAUSE_BYTES};

/// Epoll tokens at and above this belong to container and exec descriptors.
pub const FD_TOKEN_BASE: u64 = 1 << 40;
/// Exec output kept per stream; the rest is read and dropped.
const EXEC_OUTPUT_CAP: usize = 16 << 20;
/// How long an exec's output may stay open after its process exited (background children
/// holding the pipes) before the reply goes out without the rest.
pub(crate) const EXEC_DRAIN_MS: u64 = 1_000;
/// Bytes read from one descriptor per wakeup, so one chatty container cannot starve the loop.
const READ_BUDGET: usize = 1 << 20;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Forked; setting itself up.
    Creating,
    /// Set up, waiting at the start gate.
    Created,
    /// Gate opened; waiting for execve to succeed or fail.
    Starting,
    Running,
    Exited,
}

/// A pending reply: (connection token, request id).
pub(crate) type Waiter = (u64, u64);

pub(crate) struct Output {
    pub(crate) fd: OwnedFd,
    pub(crate) token: u64,
    stream: Stream,
    splitter: LineSplitter,
}

/// The container's CRI log file; reopened on request when kubelet rotates it.
struct LogFile {
    path: PathBuf,
    file: Option<File>,
}

impl LogFile {
    /// Opens (creating) the log for appending. The log directory is kubelet's and may be mounted
    /// into a pod, so whatever sits at the path is not trusted: a symlink there is not followed
    /// (root would append container output to any host file), and anything but a regular file
    /// is refused (opened without blocking, so a FIFO cannot stall the monitor).
    fn open(path: &Path) -> io::Result<File> {
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o640)
            .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_NOCTTY)
            .open(path)?;
        // /dev/null stands for "no log" (kubelet gave no path); any other node is refused, since
        // one planted in the log directory could be a host disk.
        if !file.metadata()?.is_file() && path != Path::new("/dev/null") {
            return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a regular file"));
        }
        Ok(file)
    }

    /// How a failure to open the log is reported: a symlink or special file planted at the
    /// path is the caller's to fix, anything else is ours.
    fn open_error_code(e: &io::Error) -> ErrorCode {
        if e.raw_os_error() == Some(libc::ELOOP) || e.kind() == io::ErrorKind::InvalidInput {
            ErrorCode::FailedPrecondition
        } else {
            ErrorCode::Internal
        }
    }

    fn write(&mut self, records: &[u8]) {
        if records.is_empty() {
            return;
        }
        if let Some(f) = self.file.as_mut() {
            if let Err(e) = f.write_all(records) {
                log!(Warn, "writing container log {}: {}", self.path.display(), e);
            }
        }
    }
}

pub struct Container {
    pub(crate) id: String,
    bundle: PathBuf,
    /// Needed by exec while the container runs.
    spec: Option<Spec>,
    /// Its set-up process's until that forked the container's process (see `setup_pid`).
    pid: libc::pid_t,
    /// The process that assembles the container (outside its PID namespace) until it reports the
    /// container's process.
    setup_pid: Option<libc::pid_t>,
    pub(crate) phase: Phase,
    /// Kept until the process exec'd, to explain set-up failures.
    plan: Option<ContainerPlan>,
    status: Option<(OwnedFd, u64)>,
    status_buf: Vec<u8>,
    gate: Option<OwnedFd>,
    /// Write end of the gate the child waits at before pivot_root while createContainer hooks run.
    hooks_gate: Option<OwnedFd>,
    waiter: Option<Waiter>,
    /// The create was answered when the process was forked (early reply): the daemon counts the
    /// container as created while it still sets itself up.
    acknowledged: bool,
    /// A `start` that arrived while the process was still setting itself up; it goes ahead once
    /// the process is ready (its reply goes to `waiter`).
    start_requested: bool,
    log: LogFile,
    pub(crate) outputs: Vec<Output>,
    pub(crate) tty: bool,
    /// Created with stdin: attached clients may write to it.
    pub(crate) stdin: bool,
    /// Close stdin once the first attached client that had stdin is done with it.
    pub(crate) stdin_once: bool,
    /// The write end of the stdin pipe, or a duplicate of the terminal's master; None without
    /// stdin, and once closed.
    pub(crate) input: Option<Input>,
    pub(crate) attached: Vec<Attached>,
    /// The attached connection whose stdin counts for stdinOnce.
    pub(crate) stdin_owner: Option<u64>,
    cgroup: Option<CgroupPaths>,
    /// Its cgroups and namespaces opened for exec, from the first exec until it exits.
    exec_target: Option<plan::ExecTarget>,
    oom_baseline: Option<u64>,
    started_at_ms: Option<u64>,
    start_error: Option<String>,
    exit: Option<ExitRecord>,
}

pub(crate) struct ExecSession {
    pub(crate) container_id: String,
    exec_id: String,
    pub(crate) pid: libc::pid_t,
    /// Where the reply to the request goes (for a stream exec: its `ok` or set-up error).
    waiter: Waiter,
    status: Option<(OwnedFd, u64)>,
    status_buf: Vec<u8>,
    /// Kept until the process exec'd, to explain set-up failures.
    plan: Option<plan::ExecPlan>,
    pub(crate) outputs: Vec<ExecOutput>,
    deadline_ms: Option<u64>,
    timed_out: bool,
    pub(crate) exited: Option<ExitStatus>,
    pub(crate) drain_deadline_ms: Option<u64>,
    failed: Option<(ErrorCode, String)>,
    pub(crate) sink: ExecSink,
}

pub(crate) struct ExecOutput {
    pub(crate) fd: OwnedFd,
    pub(crate) token: u64,
    pub(crate) stream: Stream,
    /// In the epoll set; a stream exec's output is left out while its client catches up.
    pub(crate) registered: bool,
}

/// Where an exec's output goes.
pub(crate) enum ExecSink {
    /// ExecSync: collected for the reply.
    Capture { stdout: Vec<u8>, stderr: Vec<u8>, truncated: bool },
    /// Interactive: forwarded as frames on the session's connection.
    Stream(streams::ExecStream),
}

/// How an exec's standard descriptors are wired.
pub(crate) struct ExecIo {
    pub(crate) tty: bool,
    pub(crate) stdin: bool,
    pub(crate) stdout: bool,
    pub(crate) stderr: bool,
    pub(crate) stream: bool,
}

#[derive(Clone, Debug)]
pub enum FdRole {
    ContainerStatus(String),
    ContainerOutput(String),
    ContainerInput(String),
    ExecStatus(u64),
    ExecOutput(u64),
    ExecInput(u64),
}

#[derive(Clone, Debug)]
pub enum PidRole {
    Container(String),
    /// A container's set-up process, until it reported the container's process.
    Setup(String),
    Exec(u64),
    /// A child whose result nobody waits for any more (a failed create).
    Discard,
}

/// The container-related state the server carries.
#[derive(Default)]
pub struct Containers {
    pub(crate) containers: HashMap<String, Container>,
    pub(crate) execs: HashMap<u64, ExecSession>,
    pub(crate) fd_roles: HashMap<u64, FdRole>,
    pid_roles: HashMap<libc::pid_t, PidRole>,
    /// Set-up failures of early-answered creates nobody has been told of yet: the next `start`
    /// of that container gets the failure as its answer.
    failed_creates: HashMap<String, (ErrorCode, String)>,
    next_token: u64,
    next_exec: u64,
    /// Signals the monitor ignores, which exec'd processes reset. Asked once: the monitor sets
    /// its dispositions before it serves anything.
    ignored_signals: Vec<libc::c_int>,
}

/// How many unclaimed set-up failures are kept (a daemon removes such containers promptly).
const MAX_FAILED_CREATES: usize = 64;

impl Containers {
    pub fn new() -> Self {
        Containers { next_token: FD_TOKEN_BASE, ignored_signals: plan::ignored_signals(), ..Default::default() }
    }

    pub fn list(&self) -> Vec<ContainerInfo> {
        let mut out: Vec<ContainerInfo> = self
            .containers
            .values()
            .filter(|c| c.phase != Phase::Creating || c.acknowledged)
            .map(|c| ContainerInfo {
                container_id: c.id.clone(),
                pid: c.pid,
                state: match c.phase {
                    Phase::Creating | Phase::Created | Phase::Starting => ContainerState::Created,
                    Phase::Running => ContainerState::Running,
                    Phase::Exited => ContainerState::Exited,
                },
                exit_code: c.exit.as_ref().map(|e| e.exit_code),
            })
            .collect();
        out.sort_by(|a, b| a.container_id.cmp(&b.container_id));
        out
    }

    /// The earliest exec timeout or drain deadline, if any.
    pub fn next_deadline_ms(&self) -> Option<u64> {
        self.execs
            .values()
            .flat_map(|e| {
                let held_back = matches!(&e.sink, ExecSink::Stream(s) if s.paused);
                [
                    if e.exited.is_none() && !e.timed_out { e.deadline_ms } else { None },
                    if held_back { None } else { e.drain_deadline_ms },
                ]
            })
            .flatten()
            .min()
    }

    pub fn is_fd_token(token: u64) -> bool {
        token >= FD_TOKEN_BASE
    }

    pub(crate) fn token(&mut self, role: FdRole) -> u64 {
        let t = self.next_token;
        self.next_token += 1;
        self.fd_roles.insert(t, role);
        t
    }
}

pub(crate) fn err(id: u64, code: ErrorCode, message: impl Into<String>) -> Option<Response> {
    Some(Response::err(id, code, message))
}

fn failure_code(kind: FailureKind) -> ErrorCode {
    match kind {
        FailureKind::Spec => ErrorCode::InvalidArgument,
        FailureKind::Runtime => ErrorCode::Internal,
    }
}

fn open_dev_null() -> io::Result<OwnedFd> {
    let fd = sys::cvt(unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) })?;
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The cgroup's OOM kill counter: v1 memory.oom_control, v2 memory.events.
fn oom_kills(cgroup: Option<&CgroupPaths>) -> Option<u64> {
    let cg = cgroup?;
    let file = if cg.version == 2 {
        cg.paths.values().next()?.join("memory.events")
    } else {
        cg.paths.get("memory")?.join("memory.oom_control")
    };
    let text = fs::read_to_string(file).ok()?;
    text.lines().find_map(|l| l.strip_prefix("oom_kill ")).and_then(|v| v.trim().parse().ok())
}

/// Writes `value` as JSON to `path` atomically: temp file, fsync, rename, fsync directory.
fn write_json_atomic<T: serde::Serialize>(path: &Path, value: &T) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    let tmp = dir.join(format!(".{}.tmp", path.file_name().and_then(|n| n.to_str()).unwrap_or("file")));
    let bytes = serde_json::to_vec(value).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
    {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()
}

/// Reads what is available from a non-blocking descriptor into `buf`, up to `budget` bytes.
/// Returns (bytes read, reached EOF). EIO (a pty whose slave side is gone) counts as EOF.
fn read_available(fd: RawFd, buf: &mut Vec<u8>, budget: usize) -> (usize, bool) {
    let mut chunk = [0u8; 65536];
    let mut total = 0;
    while total < budget {
        let n = unsafe { libc::read(fd, chunk.as_mut_ptr().cast(), chunk.len()) };
        if n > 0 {
            buf.extend_from_slice(&chunk[..n as usize]);
            total += n as usize;
            continue;
        }
        if n == 0 {
            return (total, true);
        }
        match sys::errno(&io::Error::last_os_error()) {
            libc::EINTR => continue,
            libc::EAGAIN => return (total, false),
            _ => return (total, true),
        }
    }
    (total, false)
}

fn take_records(buf: &mut Vec<u8>) -> Vec<Record> {
    let mut out = Vec::new();
    while buf.len() >= RECORD_SIZE {
        let mut raw = [0u8; RECORD_SIZE];
        raw.copy_from_slice(&buf[..RECORD_SIZE]);
        buf.drain(..RECORD_SIZE);
        out.push(Record::from_bytes(&raw));
    }
    out
}

/// poststart and poststop hooks: run in the monitor's namespaces; a failure is logged.
fn run_logged_hooks(kind: &str, list: &[Hook], status: &str, id: &str, pid: libc::pid_t, bundle: &Path, spec: &Spec) {
    if list.is_empty() {
        return;
    }
    let state = hooks::state_json(id, status, pid, bundle, &spec.annotations);
    for hook in list {
        if let Err(e) = hooks::run(kind, hook, &state, None, bundle) {
            log!(Warn, "container {}: {}", id, e);
        }
    }
}

fn status_text(status: ExitStatus) -> String {
    match status {
        ExitStatus::Exited(c) => format!("exit status {}", c),
        ExitStatus::Signaled { signal, .. } => format!("killed by signal {}", signal),
    }
}

impl Server {
    // ---- requests -------------------------------------------------------------------------

    pub(crate) fn create_container(&mut self, token: u64, id: u64, req: CreateRequest) -> Option<Response> {
        if self.shutting_down() {
            return err(id, ErrorCode::FailedPrecondition, "the pod is shutting down");
        }
        if req.container_id.is_empty() || req.container_id.contains('/') {
            return err(id, ErrorCode::InvalidArgument, format!("invalid container id {:?}", req.container_id));
        }
        match self.ctrs.containers.get(&req.container_id).map(|c| c.phase) {
            Some(Phase::Exited) => self.forget_container(&req.container_id),
            Some(_) => return err(id, ErrorCode::AlreadyExists, format!("container {} already exists", req.container_id)),
            None => {}
        }
        let bundle = PathBuf::from(&req.bundle_dir);
        if !bundle.is_absolute() {
            return err(id, ErrorCode::InvalidArgument, format!("bundle directory {:?} is not absolute", req.bundle_dir));
        }
        let spec = match Spec::load(&bundle) {
            Ok(s) => s,
            Err(e) => return err(id, ErrorCode::InvalidArgument, e),
        };
        let plan = match plan::container_plan(&spec, &bundle) {
            Ok(p) => p,
            Err(e) => return err(id, ErrorCode::InvalidArgument, format!("container {}: {}", req.container_id, e)),
        };
        for w in &plan.process.warnings {
            log!(Warn, "container {}: {}", req.container_id, w);
        }
        // Before the process exists: nothing in the container may open a device the rules do
        // not allow, from its first instruction on.
        if let (Some(cgroup), Some(resources)) = (&spec.crisp_cgroup, &spec.linux.resources) {
            if let Err(e) = cgroup.apply_device_rules(&resources.devices) {
                return err(id, ErrorCode::Internal, format!("container {}: device rules: {}", req.container_id, e));
            }
        }
        let log_file = match LogFile::open(Path::new(&req.log_path)) {
            Ok(f) => f,
            Err(e) => return err(id, LogFile::open_error_code(&e), format!("open log file {}: {}", req.log_path, e)),
        };
        let tty = req.tty || spec.process.terminal;
        self.ctrs.failed_creates.remove(&req.container_id);
        match self.spawn_container(&req, spec, plan, tty, log_file, (token, id)) {
            Ok(()) if req.early_reply => {
                let c = self.ctrs.containers.get_mut(&req.container_id)?;
                c.waiter = None;
                c.acknowledged = true;
                Some(Response::ok(id, Reply::Create(CreateReply { pid: c.pid })))
            }
            Ok(()) => None,
            Err(e) => err(id, ErrorCode::Internal, format!("container {}: {}", req.container_id, e)),
        }
    }

    fn spawn_container(&mut self, req: &CreateRequest, spec: Spec, plan: ContainerPlan, tty: bool, log_file: File, waiter: Waiter) -> io::Result<()> {
        let started = sys::monotonic_ms();
        // Descriptors the child gets (closed here after the fork) and the ones we keep.
        let mut child_ends: Vec<OwnedFd> = Vec::new();
        let mut outputs: Vec<(OwnedFd, Stream)> = Vec::new();
        let stdin_keep: Option<OwnedFd>;
        let (stdin, stdout, stderr);
        if tty {
            let (master, slave) = pty::open_pair()?;
            stdin = slave.as_raw_fd();
            stdout = stdin;
            stderr = stdin;
            child_ends.push(slave);
            // A separate descriptor for input, so it can wait for room on its own.
            stdin_keep = if req.stdin { Some(master.try_clone()?) } else { None };
            outputs.push((master, Stream::Stdout));
        } else {
            let (out_r, out_w) = sys::pipe_cloexec()?;
            let (err_r, err_w) = sys::pipe_cloexec()?;
            stdout = out_w.as_raw_fd();
            stderr = err_w.as_raw_fd();
            child_ends.push(out_w);
            child_ends.push(err_w);
            for fd in [&out_r, &err_r] {
                sys::set_nonblocking(fd.as_raw_fd())?;
            }
            outputs.push((out_r, Stream::Stdout));
            outputs.push((err_r, Stream::Stderr));
            if req.stdin {
                let (in_r, in_w) = sys::pipe_cloexec()?;
                // Only the monitor's end: the container reads its stdin blocking.
                sys::set_nonblocking(in_w.as_raw_fd())?;
                stdin = in_r.as_raw_fd();
                child_ends.push(in_r);
                stdin_keep = Some(in_w);
            } else {
                let null = open_dev_null()?;
                stdin = null.as_raw_fd();
                child_ends.push(null);
                stdin_keep = None;
            }
        }
        let (status_r, status_w) = sys::pipe_cloexec()?;
        let (gate_r, gate_w) = sys::pipe_cloexec()?;
        sys::set_nonblocking(status_r.as_raw_fd())?;
        let before_pivot = !(spec.hooks.prestart.is_empty() && spec.hooks.create_runtime.is_empty() && spec.hooks.create_container.is_empty());
        let hooks = if before_pivot { Some(sys::pipe_cloexec()?) } else { None };
        let hooks_gate_r = hooks.as_ref().map_or(-1, |(r, _)| r.as_raw_fd());
        let status = status_w.as_raw_fd();
        let io = ChildIo { stdin, stdout, stderr, tty, status, gate: gate_r.as_raw_fd(), hooks_gate: hooks_gate_r, forked: status };
        let pid = launch::spawn_container(&plan, &io)?;
        drop(child_ends);
        drop(status_w);
        drop(gate_r);
        let hooks_gate = hooks.map(|(_, w)| w);

        let id = req.container_id.clone();
        let status_token = self.ctrs.token(FdRole::ContainerStatus(id.clone()));
        self.epoll.add(status_r.as_raw_fd(), EPOLLIN, status_token)?;
        let mut outs = Vec::new();
        for (fd, stream) in outputs {
            let token = self.ctrs.token(FdRole::ContainerOutput(id.clone()));
            self.epoll.add(fd.as_raw_fd(), EPOLLIN, token)?;
            outs.push(Output { fd, token, stream, splitter: LineSplitter::new(crilog::MAX_LINE) });
        }
        let cgroup = spec.crisp_cgroup.clone();
        let oom_baseline = oom_kills(cgroup.as_ref());
        let input = stdin_keep.map(|fd| {
            let token = self.ctrs.token(FdRole::ContainerInput(id.clone()));
            Input::new(fd, token)
        });
        self.ctrs.pid_roles.insert(pid, PidRole::Setup(id.clone()));
        self.ctrs.containers.insert(
            id.clone(),
            Container {
                id: id.clone(),
                bundle: PathBuf::from(&req.bundle_dir),
                spec: Some(spec),
                pid,
                setup_pid: Some(pid),
                phase: Phase::Creating,
                plan: Some(plan),
                status: Some((status_r, status_token)),
                status_buf: Vec::new(),
                gate: Some(gate_w),
                hooks_gate,
                waiter: Some(waiter),
                acknowledged: false,
                start_requested: false,
                log: LogFile { path: PathBuf::from(&req.log_path), file: Some(log_file) },
                outputs: outs,
                tty,
                stdin: req.stdin,
                stdin_once: req.stdin_once,
                input,
                attached: Vec::new(),
                stdin_owner: None,
                cgroup,
                oom_baseline,
                started_at_ms: None,
                exec_target: None,
                start_error: None,
                exit: None,
            },
        );
        log!(Debug, "container {} forked as pid {} in {} ms", id, pid, sys::monotonic_ms() - started);
        Ok(())
    }

    pub(crate) fn start_container(&mut self, token: u64, id: u64, req: ContainerRef) -> Option<Response> {
        // The set-up of an early-answered create failed before anyone asked to start it.
        if let Some((code, message)) = self.ctrs.failed_creates.remove(&req.container_id) {
            return err(id, code, message);
        }
        let Some(c) = self.ctrs.containers.get_mut(&req.container_id) else {
            return err(id, ErrorCode::NotFound, format!("container {} not found", req.container_id));
        };
        match c.phase {
            Phase::Created => {}
            Phase::Creating if c.acknowledged && !c.start_requested => {
                // Goes ahead once the process is ready (or fails with its set-up error).
                c.start_requested = true;
                c.waiter = Some((token, id));
                return None;
            }
            Phase::Creating | Phase::Starting => {
                return err(id, ErrorCode::FailedPrecondition, format!("container {} is still being set up", c.id))
            }
            Phase::Running => return err(id, ErrorCode::FailedPrecondition, format!("container {} is already running", c.id)),
            Phase::Exited => return err(id, ErrorCode::FailedPrecondition, format!("container {} has exited", c.id)),
        }
        Self::open_gate(c, (token, id), &self.ctrs.ignored_signals)
    }

    /// Lets a set-up process exec; the answer to `waiter` follows once it has (or failed to).
    fn open_gate(c: &mut Container, waiter: Waiter, ignored_signals: &[libc::c_int]) -> Option<Response> {
        let id = waiter.1;
        if let Some(spec) = c.spec.as_ref().filter(|s| !s.hooks.start_container.is_empty()) {
            // Entered like an exec: the container's namespaces (its root, after pivot_root), cgroup,
            // identity, capabilities and seccomp filter, as if its process ran the hook.
            let state = hooks::state_json(&c.id, "created", c.pid, &c.bundle, &spec.annotations);
            for hook in &spec.hooks.start_container {
                let prepared = match &c.exec_target {
                    Some(target) => Ok(target),
                    None => plan::exec_target(spec, c.pid).map(|t| &*c.exec_target.insert(t)),
                };
                let run = prepared.and_then(|target| hooks::plan_in_container(spec, target, hook, ignored_signals)).map_err(|e| format!("startContainer hook {}: {e}", hook.path));
                if let Err(message) = run.and_then(|plan| hooks::run_in_container("startContainer", hook, &state, &plan, &c.bundle)) {
                    log!(Warn, "container {}: {}", c.id, message);
                    // The process never runs: it is killed and its exit recorded with this reason.
                    c.start_error = Some(message.clone());
                    c.gate = None;
                    let _ = sys::kill(c.pid, libc::SIGKILL);
                    return err(id, ErrorCode::Internal, message);
                }
            }
        }
        let Some(gate) = c.gate.take() else {
            return err(id, ErrorCode::Internal, format!("container {} lost its start gate", c.id));
        };
        if let Err(e) = sys::write_all_fd(gate.as_raw_fd(), b"s") {
            return err(id, ErrorCode::Internal, format!("start container {}: {}", c.id, e));
        }
        c.phase = Phase::Starting;
        c.waiter = Some(waiter);
        None
    }

    pub(crate) fn signal_container(&mut self, id: u64, req: SignalRequest) -> Option<Response> {
        let Some(c) = self.ctrs.containers.get(&req.container_id) else {
            return err(id, ErrorCode::NotFound, format!("container {} not found", req.container_id));
        };
        if !(1..=64).contains(&req.signal) {
            return err(id, ErrorCode::InvalidArgument, format!("invalid signal {}", req.signal));
        }
        let target = match &req.exec_id {
            None => {
                if c.phase == Phase::Exited {
                    return Some(Response::ok(id, Reply::Empty(Default::default())));
                }
                c.pid
            }
            Some(exec_id) => {
                let found = self.ctrs.execs.values().find(|e| e.container_id == req.container_id && &e.exec_id == exec_id);
                match found {
                    Some(e) if e.exited.is_none() => -e.pid,
                    Some(_) => return Some(Response::ok(id, Reply::Empty(Default::default()))),
                    None => return err(id, ErrorCode::NotFound, format!("exec {} not found in container {}", exec_id, req.container_id)),
                }
            }
        };
        match sys::kill(target, req.signal) {
            Ok(()) => Some(Response::ok(id, Reply::Empty(Default::default()))),
            Err(e) if sys::errno(&e) == libc::ESRCH => Some(Response::ok(id, Reply::Empty(Default::default()))),
            Err(e) => err(id, ErrorCode::Internal, format!("signal {} to container {}: {}", req.signal, req.container_id, e)),
        }
    }

    pub(crate) fn reopen_log(&mut self, id: u64, req: ContainerRef) -> Option<Response> {
        let Some(c) = self.ctrs.containers.get_mut(&req.container_id) else {
            return err(id, ErrorCode::NotFound, format!("container {} not found", req.container_id));
        };
        if c.phase == Phase::Exited && c.outputs.is_empty() {
            // Its output is complete; kubelet's rotated file already has all of it.
            return Some(Response::ok(id, Reply::Empty(Default::default())));
        }
        match LogFile::open(&c.log.path) {
            Ok(f) => {
                c.log.file = Some(f);
                Some(Response::ok(id, Reply::Empty(Default::default())))
            }
            Err(e) => err(id, LogFile::open_error_code(&e), format!("reopen log file {}: {}", c.log.path.display(), e)),
        }
    }

    pub(crate) fn exec_in_container(&mut self, token: u64, id: u64, req: ExecRequest) -> Option<Response> {
        let plan = match self.exec_plan(&req.container_id, &req.process) {
            Ok(p) => p,
            Err((code, message)) => return err(id, code, message),
        };
        let io = ExecIo { tty: req.tty, stdin: false, stdout: true, stderr: true, stream: false };
        match self.spawn_exec(&req.container_id, &req.exec_id, req.timeout_ms, plan, (token, id), io) {
            Ok(_) => None,
            Err(e) => err(id, ErrorCode::Internal, format!("exec in container {}: {}", req.container_id, e)),
        }
    }

    /// The plan for a process exec'd into a running container.
    pub(crate) fn exec_plan(&mut self, container_id: &str, p: &ProcessSpec) -> Result<plan::ExecPlan, (ErrorCode, String)> {
        if self.shutting_down() {
            return Err((ErrorCode::FailedPrecondition, "the pod is shutting down".into()));
        }
        let Some(c) = self.ctrs.containers.get_mut(container_id) else {
            return Err((ErrorCode::NotFound, format!("container {} not found", container_id)));
        };
        let (Phase::Running, Some(spec)) = (c.phase, c.spec.as_ref()) else {
            return Err((ErrorCode::FailedPrecondition, format!("container {} is not running", container_id)));
        };
        let overrides = ProcessOverrides {
            args: p.args.clone(),
            env: Some(p.env.clone()),
            cwd: p.cwd.clone(),
            uid: p.uid,
            gid: p.gid,
            additional_gids: (p.uid.is_some() || p.gid.is_some() || !p.additional_gids.is_empty()).then(|| p.additional_gids.clone()),
        };
        if overrides.args.is_empty() {
            return Err((ErrorCode::InvalidArgument, "exec needs a command".into()));
        }
        let failed = |e: String| (ErrorCode::InvalidArgument, format!("exec in container {}: {}", container_id, e));
        if c.exec_target.is_none() {
            // The container is our unreaped child, so its PID cannot have been reused.
            c.exec_target = Some(plan::exec_target(spec, c.pid).map_err(failed)?);
        }
        let target = c.exec_target.as_ref().expect("set above");
        plan::exec_plan(spec, target, &overrides, &self.ctrs.ignored_signals).map_err(failed)
    }

    /// Forks the exec'd process; returns the session's key. A stream exec's output is watched
    /// only once its reply went out (the process exec'd), so no frame precedes the reply.
    pub(crate) fn spawn_exec(
        &mut self,
        container_id: &str,
        exec_id: &str,
        timeout_ms: u64,
        plan: plan::ExecPlan,
        waiter: Waiter,
        wiring: ExecIo,
    ) -> io::Result<u64> {
        let mut child_ends: Vec<OwnedFd> = Vec::new();
        let mut outputs: Vec<(OwnedFd, Stream)> = Vec::new();
        let mut input: Option<OwnedFd> = None;
        let (stdin, stdout, stderr);
        if wiring.tty {
            let (master, slave) = pty::open_pair_in(plan.root.as_ref().map(|r| r.as_raw_fd()))?;
            stdin = slave.as_raw_fd();
            stdout = stdin;
            stderr = stdin;
            child_ends.push(slave);
            if wiring.stream && wiring.stdin {
                input = Some(master.try_clone()?);
            }
            outputs.push((master, Stream::Stdout));
        } else {
            let null = open_dev_null()?;
            let null_fd = null.as_raw_fd();
            child_ends.push(null);
            let mut output = |wanted: bool, stream: Stream| -> io::Result<RawFd> {
                if !wanted {
                    return Ok(null_fd);
                }
                let (r, w) = sys::pipe_cloexec()?;
                sys::set_nonblocking(r.as_raw_fd())?;
                let fd = w.as_raw_fd();
                child_ends.push(w);
                outputs.push((r, stream));
                Ok(fd)
            };
            stdout = output(wiring.stdout, Stream::Stdout)?;
            stderr = output(wiring.stderr, Stream::Stderr)?;
            if wiring.stream && wiring.stdin {
                let (r, w) = sys::pipe_cloexec()?;
                sys::set_nonblocking(w.as_raw_fd())?;
                stdin = r.as_raw_fd();
                child_ends.push(r);
                input = Some(w);
            } else {
                // ExecSync has no input: stdin reads EOF.
                stdin = null_fd;
            }
        }
        let (status_r, status_w) = sys::pipe_cloexec()?;
        sys::set_nonblocking(status_r.as_raw_fd())?;
        let io = ChildIo { stdin, stdout, stderr, tty: wiring.tty, status: status_w.as_raw_fd(), gate: -1, hooks_gate: -1, forked: -1 };
        let pid = launch::spawn_exec(&plan, &io)?;
        drop(child_ends);
        drop(status_w);

        let key = self.ctrs.next_exec;
        self.ctrs.next_exec += 1;
        let status_token = self.ctrs.token(FdRole::ExecStatus(key));
        self.epoll.add(status_r.as_raw_fd(), EPOLLIN, status_token)?;
        let mut outs = Vec::new();
        for (fd, stream) in outputs {
            let token = self.ctrs.token(FdRole::ExecOutput(key));
            let registered = !wiring.stream;
            if registered {
                self.epoll.add(fd.as_raw_fd(), EPOLLIN, token)?;
            }
            outs.push(ExecOutput { fd, token, stream, registered });
        }
        let sink = if wiring.stream {
            let input = input.map(|fd| Input::new(fd, self.ctrs.token(FdRole::ExecInput(key))));
            ExecSink::Stream(streams::ExecStream::new(waiter.0, wiring.tty, wiring.stdout, wiring.stderr, input))
        } else {
            ExecSink::Capture { stdout: Vec::new(), stderr: Vec::new(), truncated: false }
        };
        self.ctrs.pid_roles.insert(pid, PidRole::Exec(key));
        self.ctrs.execs.insert(
            key,
            ExecSession {
                container_id: container_id.to_owned(),
                exec_id: exec_id.to_owned(),
                pid,
                waiter,
                status: Some((status_r, status_token)),
                status_buf: Vec::new(),
                plan: Some(plan),
                outputs: outs,
                deadline_ms: (timeout_ms > 0).then(|| sys::monotonic_ms() + timeout_ms),
                timed_out: false,
                exited: None,
                drain_deadline_ms: None,
                failed: None,
                sink,
            },
        );
        log!(Debug, "exec {} in container {} started as pid {}", exec_id, container_id, pid);
        Ok(key)
    }

    // ---- events ---------------------------------------------------------------------------

    pub(crate) fn on_container_fd(&mut self, token: u64) {
        match self.ctrs.fd_roles.get(&token).cloned() {
            Some(FdRole::ContainerStatus(id)) => self.drain_container_status(&id, None),
            Some(FdRole::ContainerOutput(id)) => self.drain_container_output(&id, Some(token)),
            Some(FdRole::ExecStatus(key)) => {
                self.drain_exec_status(key);
                self.maybe_finish_exec(key);
            }
            Some(FdRole::ExecOutput(key)) => {
                self.drain_exec_output(key, Some(token));
                self.maybe_finish_exec(key);
            }
            Some(FdRole::ExecInput(key)) => self.exec_input_writable(key),
            Some(FdRole::ContainerInput(id)) => self.container_input_writable(&id),
            None => {}
        }
    }

    /// Handles a reaped child that belongs to a container or exec; false if it is not ours.
    pub(crate) fn on_child_exit(&mut self, pid: libc::pid_t, status: ExitStatus) -> bool {
        if !self.ctrs.pid_roles.contains_key(&pid) {
            // A container's process may exit before its set-up process's report of it was read.
            let setting_up: Vec<String> = self.ctrs.containers.values().filter(|c| c.setup_pid.is_some()).map(|c| c.id.clone()).collect();
            for id in setting_up {
                self.drain_container_status(&id, None);
            }
        }
        match self.ctrs.pid_roles.remove(&pid) {
            Some(PidRole::Container(id)) => {
                self.container_exited(&id, status);
                true
            }
            Some(PidRole::Setup(id)) => {
                // Its report of the container's process, if it made one, is in the status pipe.
                self.drain_container_status(&id, Some(status));
                if self.ctrs.containers.get(&id).is_some_and(|c| c.setup_pid == Some(pid)) {
                    self.container_exited(&id, status);
                }
                true
            }
            Some(PidRole::Exec(key)) => {
                if let Some(e) = self.ctrs.execs.get_mut(&key) {
                    e.exited = Some(status);
                    e.drain_deadline_ms = Some(sys::monotonic_ms() + EXEC_DRAIN_MS);
                }
                self.drain_exec_status(key);
                self.drain_exec_output(key, None);
                self.maybe_finish_exec(key);
                true
            }
            Some(PidRole::Discard) => true,
            None => false,
        }
    }

    /// Exec timeouts and output drain deadlines.
    pub(crate) fn on_container_timers(&mut self) {
        let now = sys::monotonic_ms();
        let keys: Vec<u64> = self.ctrs.execs.keys().copied().collect();
        for key in keys {
            let Some(e) = self.ctrs.execs.get_mut(&key) else { continue };
            if e.exited.is_none() && !e.timed_out && e.deadline_ms.is_some_and(|d| now >= d) {
                log!(Info, "exec {} in container {} timed out; killing it", e.exec_id, e.container_id);
                e.timed_out = true;
                // The exec runs in its own session: its process group is everything it started.
                let _ = sys::kill(-e.pid, libc::SIGKILL);
                let _ = sys::kill(e.pid, libc::SIGKILL);
            }
            // Output held back for a slow client is not abandoned: its deadline starts over when
            // the client catches up.
            let held_back = matches!(&e.sink, ExecSink::Stream(s) if s.paused);
            if !held_back && e.drain_deadline_ms.is_some_and(|d| now >= d) {
                self.close_exec_outputs(key);
                self.maybe_finish_exec(key);
            }
        }
    }

    fn unregister(&mut self, fd: &OwnedFd, token: u64) {
        let _ = self.epoll.delete(fd.as_raw_fd());
        self.ctrs.fd_roles.remove(&token);
    }

    fn drain_container_status(&mut self, id: &str, exited: Option<ExitStatus>) {
        let (records, eof) = {
            let Some(c) = self.ctrs.containers.get_mut(id) else { return };
            let Some(fd) = c.status.as_ref().map(|(f, _)| f.as_raw_fd()) else { return };
            let (_, eof) = read_available(fd, &mut c.status_buf, READ_BUDGET);
            (take_records(&mut c.status_buf), eof)
        };
        for rec in records {
            match rec.kind {
                KIND_FORKED => self.container_forked(id, rec.index as libc::pid_t),
                KIND_READY => self.container_ready(id),
                KIND_HOOKS => {
                    if let Err(message) = self.run_create_hooks(id) {
                        self.container_hooks_failed(id, message);
                        self.close_container_status(id);
                        return;
                    }
                }
                KIND_ERROR => {
                    self.container_setup_failed(id, &rec);
                    self.close_container_status(id);
                    return;
                }
                _ => log!(Warn, "container {}: unexpected status record {:?}", id, rec),
            }
        }
        if !eof {
            return;
        }
        // EOF: the child exec'd (the pipe is close-on-exec) or died.
        self.close_container_status(id);
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        c.plan = None;
        match c.phase {
            Phase::Creating => {
                let why = exited.map_or_else(|| "it exited".to_owned(), status_text);
                let message = format!("container {} died during set-up ({})", id, why);
                if c.acknowledged {
                    self.fail_acknowledged_create(id, ErrorCode::Internal, message);
                } else {
                    self.abandon_create(id, ErrorCode::Internal, message);
                }
            }
            Phase::Starting if c.start_error.is_none() => {
                let now = sys::now_unix_ms();
                c.phase = Phase::Running;
                c.started_at_ms = Some(now);
                let pid = c.pid;
                let waiter = c.waiter.take();
                log!(Info, "container {} started (pid {})", id, pid);
                if let Some(w) = waiter {
                    self.reply(w, Response::ok(w.1, Reply::Start(StartReply { pid, started_at_ms: now })));
                }
                if let Some(c) = self.ctrs.containers.get(id) {
                    if let Some(spec) = c.spec.as_ref() {
                        run_logged_hooks("poststart", &spec.hooks.poststart, "running", &c.id, c.pid, &c.bundle, spec);
                    }
                }
            }
            _ => {}
        }
    }

    /// The set-up process forked the container's process (and exits): from now on the container
    /// is that process.
    fn container_forked(&mut self, id: &str, pid: libc::pid_t) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        if let Some(setup) = c.setup_pid.take() {
            if self.ctrs.pid_roles.contains_key(&setup) {
                self.ctrs.pid_roles.insert(setup, PidRole::Discard);
            }
        }
        c.pid = pid;
        self.ctrs.pid_roles.insert(pid, PidRole::Container(id.to_owned()));
        log!(Debug, "container {} set up; its process is pid {}", id, pid);
    }

    fn container_ready(&mut self, id: &str) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        if c.phase != Phase::Creating {
            return;
        }
        c.phase = Phase::Created;
        let pid = c.pid;
        let waiter = c.waiter.take();
        log!(Info, "container {} created (pid {})", id, pid);
        if c.start_requested {
            // An early-answered create whose start arrived during the set-up.
            let Some(w) = waiter else { return };
            if let Some(failed) = Self::open_gate(c, w, &self.ctrs.ignored_signals) {
                self.reply(w, failed);
            }
            return;
        }
        if let Some(w) = waiter {
            self.reply(w, Response::ok(w.1, Reply::Create(CreateReply { pid })));
        }
    }

    /// Runs the container's prestart and createRuntime hooks (in the monitor's namespaces), then
    /// its createContainer hooks (in the container's), then lets its set-up go on. Runs them to
    /// completion here: only this pod's containers wait meanwhile, and a hook's time is bounded.
    fn run_create_hooks(&mut self, id: &str) -> Result<(), String> {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return Ok(()) };
        let Some(spec) = c.spec.as_ref() else { return Ok(()) };
        let state = hooks::state_json(id, "creating", c.pid, &c.bundle, &spec.annotations);
        for hook in &spec.hooks.prestart {
            hooks::run("prestart", hook, &state, None, &c.bundle)?;
        }
        for hook in &spec.hooks.create_runtime {
            hooks::run("createRuntime", hook, &state, None, &c.bundle)?;
        }
        for hook in &spec.hooks.create_container {
            hooks::run("createContainer", hook, &state, Some(c.pid), &c.bundle)?;
        }
        if let Some(gate) = c.hooks_gate.take() {
            sys::write_all_fd(gate.as_raw_fd(), b"h").map_err(|e| format!("resume set-up after hooks: {e}"))?;
        }
        Ok(())
    }

    /// A hook before pivot_root failed: the process is killed and the failure reported as a
    /// set-up failure.
    fn container_hooks_failed(&mut self, id: &str, message: String) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        log!(Warn, "container {}: {}", id, message);
        c.hooks_gate = None;
        let _ = sys::kill(c.pid, libc::SIGKILL);
        if c.acknowledged {
            self.fail_acknowledged_create(id, ErrorCode::Internal, message);
        } else {
            self.abandon_create(id, ErrorCode::Internal, message);
        }
    }

    fn close_container_status(&mut self, id: &str) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        if let Some((fd, token)) = c.status.take() {
            let _ = self.epoll.delete(fd.as_raw_fd());
            self.ctrs.fd_roles.remove(&token);
        }
    }

    fn container_setup_failed(&mut self, id: &str, rec: &Record) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        let (kind, message) = match &c.plan {
            Some(p) => launch::describe_failure(&p.process, Some(&p.rootfs), rec),
            None => (FailureKind::Runtime, format!("set-up step {} failed: errno {}", rec.stage, rec.errno)),
        };
        log!(Warn, "container {}: {}", id, message);
        match c.phase {
            Phase::Creating if c.acknowledged => self.fail_acknowledged_create(id, failure_code(kind), message),
            Phase::Creating => self.abandon_create(id, failure_code(kind), message),
            Phase::Starting => {
                // The process exits on its own; its exit is recorded with this reason.
                c.start_error = Some(message.clone());
                let waiter = c.waiter.take();
                if let Some(w) = waiter {
                    self.reply(w, Response::err(w.1, failure_code(kind), message));
                }
            }
            _ => {}
        }
    }

    /// The set-up of an early-answered create failed. The daemon counts the container as
    /// created, so it stays known: its exit is recorded with the failure as start error (the
    /// process exits on its own, or already did), and the failure is the answer to its start,
    /// now if one is waiting, else whenever it comes.
    fn fail_acknowledged_create(&mut self, id: &str, code: ErrorCode, message: String) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        c.start_error = Some(message.clone());
        if let Some(w) = c.waiter.take() {
            self.reply(w, Response::err(w.1, code, message));
            return;
        }
        if self.ctrs.failed_creates.len() >= MAX_FAILED_CREATES {
            self.ctrs.failed_creates.clear();
        }
        self.ctrs.failed_creates.insert(id.to_owned(), (code, message));
    }

    /// A create that failed: reply, make sure the child is gone, forget the container.
    fn abandon_create(&mut self, id: &str, code: ErrorCode, message: String) {
        let Some(mut c) = self.ctrs.containers.remove(id) else { return };
        if let Some(w) = c.waiter.take() {
            self.reply(w, Response::err(w.1, code, message));
        }
        if self.ctrs.pid_roles.contains_key(&c.pid) {
            let _ = sys::kill(c.pid, libc::SIGKILL);
            self.ctrs.pid_roles.insert(c.pid, PidRole::Discard);
        }
        self.release_container_fds(&mut c);
    }

    fn release_container_fds(&mut self, c: &mut Container) {
        if let Some((fd, token)) = c.status.take() {
            self.unregister(&fd, token);
        }
        for out in std::mem::take(&mut c.outputs) {
            self.unregister(&out.fd, out.token);
        }
        if let Some(input) = c.input.take() {
            input.close(&self.epoll, &mut self.ctrs.fd_roles);
        }
        c.gate = None;
    }

    fn forget_container(&mut self, id: &str) {
        if let Some(mut c) = self.ctrs.containers.remove(id) {
            self.release_container_fds(&mut c);
        }
    }

    pub(crate) fn drain_container_output(&mut self, id: &str, only: Option<u64>) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        let mut records = Vec::new();
        let mut closed = Vec::new();
        let mut forward: Vec<(Stream, Vec<u8>)> = Vec::new();
        let timestamp = crilog::now_timestamp();
        for (i, out) in c.outputs.iter_mut().enumerate() {
            if only.is_some_and(|t| t != out.token) {
                continue;
            }
            let mut data = Vec::new();
            let (_, eof) = read_available(out.fd.as_raw_fd(), &mut data, READ_BUDGET);
            let stream = out.stream;
            let mut emit = |content: &[u8], partial: bool| crilog::append_record(&mut records, &timestamp, stream, partial, content);
            out.splitter.push(&data, &mut emit);
            if eof {
                out.splitter.finish(&mut emit);
                closed.push(i);
            }
            if !data.is_empty() && !c.attached.is_empty() {
                forward.push((stream, data));
            }
        }
        // The log first: an attached client never holds it back.
        c.log.write(&records);
        for i in closed.into_iter().rev() {
            let out = c.outputs.remove(i);
            let _ = self.epoll.delete(out.fd.as_raw_fd());
            self.ctrs.fd_roles.remove(&out.token);
        }
        if c.phase == Phase::Exited && c.outputs.is_empty() {
            // Nothing can write to the log any more.
            c.log.file = None;
        }
        for (stream, data) in forward {
            self.forward_to_attached(id, stream, &data);
        }
    }

    fn container_exited(&mut self, id: &str, status: ExitStatus) {
        // The status pipe and the output already written are settled first, so a failed start
        // is reported as such and the log is complete before the exit is.
        self.drain_container_status(id, Some(status));
        if !self.ctrs.containers.contains_key(id) {
            return;
        }
        self.drain_container_output(id, None);
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        let oom = match (c.oom_baseline, oom_kills(c.cgroup.as_ref())) {
            (Some(before), Some(now)) => now > before,
            (None, Some(now)) => now > 0,
            _ => false,
        };
        let finished = sys::now_unix_ms();
        let record = match &c.start_error {
            Some(e) => ExitRecord { exit_code: 128, signal: None, oom_killed: false, started_at_ms: None, finished_at_ms: finished, start_error: Some(e.clone()) },
            None => ExitRecord {
                exit_code: status.code(),
                signal: match status {
                    ExitStatus::Signaled { signal, .. } => Some(signal),
                    ExitStatus::Exited(_) => None,
                },
                oom_killed: oom,
                started_at_ms: c.started_at_ms,
                finished_at_ms: finished,
                start_error: None,
            },
        };
        if let Err(e) = write_json_atomic(&c.bundle.join(monitor_proto::EXIT_FILE), &record) {
            log!(Error, "container {}: recording exit: {}", id, e);
        }
        log!(Info, "container {} (pid {}) exited: {}{}", id, c.pid, status_text(status), if oom { ", OOM-killed" } else { "" });
        let pid = c.pid;
        c.phase = Phase::Exited;
        c.gate = None;
        c.plan = None;
        // Its namespaces must not outlive it here: the mount namespace holds the root filesystem.
        c.exec_target = None;
        let spec = c.spec.take();
        let bundle = c.bundle.clone();
        let input = c.input.take();
        if c.outputs.is_empty() {
            c.log.file = None;
        }
        c.exit = Some(record.clone());
        // A start that was still waiting (the process died between gate and exec).
        if let Some(w) = c.waiter.take() {
            self.reply(w, Response::err(w.1, ErrorCode::Internal, format!("container {} exited before starting ({})", id, status_text(status))));
        }
        if oom {
            self.publish(&Event::Oom(ContainerRef { container_id: id.to_owned() }));
        }
        self.publish(&Event::ContainerExit(ExitEvent {
            container_id: id.to_owned(),
            exec_id: None,
            pid,
            exit_code: record.exit_code,
            signal: record.signal,
            exited_at_ms: finished,
            oom_killed: oom,
        }));
        if let Some(input) = input {
            input.close(&self.epoll, &mut self.ctrs.fd_roles);
        }
        self.end_attach_sessions(id, record.exit_code);
        // After the exit is recorded and announced: the daemon need not wait for these.
        if let Some(spec) = spec {
            run_logged_hooks("poststop", &spec.hooks.poststop, "stopped", id, pid, &bundle, &spec);
        }
    }

    fn drain_exec_status(&mut self, key: u64) {
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let Some((fd, _)) = e.status.as_ref().map(|(f, t)| (f.as_raw_fd(), *t)) else { return };
        let (_, eof) = read_available(fd, &mut e.status_buf, READ_BUDGET);
        for rec in take_records(&mut e.status_buf) {
            if rec.kind == KIND_ERROR && e.failed.is_none() {
                let (kind, message) = match &e.plan {
                    Some(p) => launch::describe_failure(&p.process, None, &rec),
                    None => (FailureKind::Runtime, format!("set-up step {} failed: errno {}", rec.stage, rec.errno)),
                };
                e.failed = Some((failure_code(kind), message));
            }
        }
        if eof || e.failed.is_some() {
            if let Some((fd, token)) = e.status.take() {
                let _ = self.epoll.delete(fd.as_raw_fd());
                self.ctrs.fd_roles.remove(&token);
            }
            e.plan = None;
            // EOF without an error: the program was exec'd, so a stream session begins.
            let begins = e.failed.is_none() && matches!(&e.sink, ExecSink::Stream(st) if !st.established && st.conn.is_some());
            if begins {
                self.establish_exec_stream(key);
            }
        }
    }

    pub(crate) fn drain_exec_output(&mut self, key: u64, only: Option<u64>) {
        let Some(e) = self.ctrs.execs.get(&key) else { return };
        // A stream exec reads no more than its connection has room for.
        let conn = match &e.sink {
            ExecSink::Stream(st) if st.established => st.conn,
            _ => None,
        };
        let mut room = match conn {
            Some(conn) => STREAM_PAUSE_BYTES.saturating_sub(self.conn_backlog(conn).unwrap_or(0)),
            None => usize::MAX,
        };
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let mut closed = Vec::new();
        let mut frames: Vec<(u8, Vec<u8>)> = Vec::new();
        for (i, out) in e.outputs.iter().enumerate() {
            if only.is_some_and(|t| t != out.token) || (conn.is_some() && !out.registered) {
                continue;
            }
            let budget = room.min(READ_BUDGET);
            if budget == 0 {
                break;
            }
            let mut data = Vec::new();
            let (n, eof) = read_available(out.fd.as_raw_fd(), &mut data, budget);
            room = room.saturating_sub(n);
            match &mut e.sink {
                ExecSink::Capture { stdout, stderr, truncated } => {
                    let sink = if out.stream == Stream::Stdout { stdout } else { stderr };
                    let cap = EXEC_OUTPUT_CAP.saturating_sub(sink.len());
                    if data.len() > cap {
                        *truncated = true;
                    }
                    sink.extend_from_slice(&data[..data.len().min(cap)]);
                }
                ExecSink::Stream(st) => {
                    // Output nobody asked for (a terminal's, without stdout) is read and dropped.
                    if !data.is_empty() && st.forwards(out.stream) {
                        frames.push((if out.stream == Stream::Stdout { frame::STDOUT } else { frame::STDERR }, data));
                    }
                }
            }
            if eof {
                closed.push(i);
            }
        }
        for i in closed.into_iter().rev() {
            let out = e.outputs.remove(i);
            if out.registered {
                let _ = self.epoll.delete(out.fd.as_raw_fd());
            }
            self.ctrs.fd_roles.remove(&out.token);
        }
        if let Some(conn) = conn {
            for (kind, data) in frames {
                self.send_frame(conn, kind, &data);
            }
            if self.conn_backlog(conn).is_some_and(|b| b >= STREAM_PAUSE_BYTES) {
                self.pause_exec_output(key);
            }
        }
    }

    pub(crate) fn close_exec_outputs(&mut self, key: u64) {
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        for out in std::mem::take(&mut e.outputs) {
            if out.registered {
                let _ = self.epoll.delete(out.fd.as_raw_fd());
            }
            self.ctrs.fd_roles.remove(&out.token);
        }
        e.drain_deadline_ms = None;
    }

    /// Replies once the process is reaped and its output and status pipes are done.
    pub(crate) fn maybe_finish_exec(&mut self, key: u64) {
        let Some(e) = self.ctrs.execs.get(&key) else { return };
        let Some(status) = e.exited else { return };
        if e.status.is_some() || !e.outputs.is_empty() {
            return;
        }
        let Some(mut e) = self.ctrs.execs.remove(&key) else { return };
        log!(Debug, "exec {} in container {} finished: {}", e.exec_id, e.container_id, status_text(status));
        let failure = e
            .failed
            .take()
            .map(|(code, message)| Response::err(e.waiter.1, code, format!("exec in container {}: {}", e.container_id, message)));
        match e.sink {
            ExecSink::Capture { stdout, stderr, truncated } => {
                let response = failure.unwrap_or_else(|| {
                    Response::ok(
                        e.waiter.1,
                        Reply::Exec(ExecReply {
                            exit_code: status.code(),
                            stdout: base64::encode(&stdout),
                            stderr: base64::encode(&stderr),
                            timed_out: e.timed_out,
                            truncated,
                        }),
                    )
                });
                self.reply(e.waiter, response);
            }
            ExecSink::Stream(st) => self.finish_exec_stream(e.waiter, st, status, failure),
        }
    }

    /// The stream exec's program runs: reply, and start forwarding its output.
    fn establish_exec_stream(&mut self, key: u64) {
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let ExecSink::Stream(st) = &mut e.sink else { return };
        st.established = true;
        let (waiter, pid) = (e.waiter, e.pid);
        for out in e.outputs.iter_mut() {
            match self.epoll.add(out.fd.as_raw_fd(), EPOLLIN, out.token) {
                Ok(()) => out.registered = true,
                Err(err) => log!(Warn, "exec {}: watching its output: {}", e.exec_id, err),
            }
        }
        self.reply(waiter, Response::ok(waiter.1, Reply::ExecStream(ExecStreamReply { pid })));
        // Frames the client sent ahead of the reply.
        self.process_frames(waiter.0);
    }

    pub(crate) fn reply(&mut self, waiter: Waiter, response: Response) {
        self.send(waiter.0, &response);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_records_are_taken_whole() {
        let a = Record { kind: KIND_READY, ..Default::default() };
        let b = Record { kind: KIND_ERROR, stage: 3, index: 1, errno: 2 };
        let mut buf = Vec::new();
        buf.extend_from_slice(&a.to_bytes());
        buf.extend_from_slice(&b.to_bytes()[..10]);
        assert_eq!(take_records(&mut buf), vec![a]);
        assert_eq!(buf.len(), 10);
        buf.extend_from_slice(&b.to_bytes()[10..]);
        assert_eq!(take_records(&mut buf), vec![b]);
        assert!(buf.is_empty());
    }

    #[test]
    fn exit_records_are_written_atomically() {
        let dir = std::env::temp_dir().join(format!("crisp-monitor-exit-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join(monitor_proto::EXIT_FILE);
        let rec = ExitRecord { exit_code: 137, signal: Some(9), oom_killed: true, started_at_ms: Some(1), finished_at_ms: 2, start_error: None };
        write_json_atomic(&path, &rec).unwrap();
        let back: ExitRecord = serde_json::from_slice(&fs::read(&path).unwrap()).unwrap();
        assert_eq!(back, rec);
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 1, "no temp file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn oom_counters_are_read_from_the_right_file() {
        let dir = std::env::temp_dir().join(format!("crisp-monitor-oom-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join("memory.oom_control"), "oom_kill_disable 0\nunder_oom 0\noom_kill 3\n").unwrap();
        fs::write(dir.join("memory.events"), "low 0\nhigh 0\nmax 4\noom 2\noom_kill 5\n").unwrap();
        let mut v1 = CgroupPaths { version: 1, paths: Default::default() };
        v1.paths.insert("memory".into(), dir.clone());
        assert_eq!(oom_kills(Some(&v1)), Some(3));
        let mut v2 = CgroupPaths { version: 2, paths: Default::default() };
        v2.paths.insert("unified".into(), dir.clone());
        assert_eq!(oom_kills(Some(&v2)), Some(5));
        assert_eq!(oom_kills(None), None);
        fs::remove_dir_all(&dir).unwrap();
    }
}
