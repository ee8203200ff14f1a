//! The contract between the daemon and a pod's monitor process (`crisp-monitor`).
//!
//! * Configuration: `<bundle>/monitor.json`, a [`MonitorConfig`], written by the daemon before it
//!   starts `crisp-monitor <bundle>`.
//! * Readiness: one JSON line, a [`Ready`], written to the inherited descriptor 3, which is then
//!   closed.
//! * Control: `<bundle>/monitor.sock`, a stream socket carrying newline-delimited JSON. Clients
//!   send [`RequestEnvelope`]s (`{"id":1,"op":"status"}`); the monitor answers each with a
//!   [`Response`] carrying the same id, in any order, and pushes [`Event`]s (objects with an
//!   `"event"` key and no `"id"`) to connections that sent `subscribe`.
//! * Streams: `exec_stream` and `attach` turn the connection that sent them into a stream
//!   session (see [`frame`]). They must be the first request on a connection of their own.
//!
//! Field names are camelCase (they are read by TypeScript); operation and event names are
//! snake_case.

use std::collections::BTreeMap;

use serde_derive::{Deserialize, Serialize};

use crate::cgroup::CgroupPaths;

/// Bumped on incompatible changes; reported by `status` so a restarted daemon can tell whether
/// it can drive a monitor started by an older build.
pub const PROTOCOL_VERSION: u32 = 1;

pub const CONFIG_FILE: &str = "monitor.json";
pub const SOCKET_FILE: &str = "monitor.sock";
/// A container's exit record, `<container bundle>/exit.json` (an [`ExitRecord`]).
pub const EXIT_FILE: &str = "exit.json";
/// Directory under the bundle holding the pinned namespace files (`net`, `ipc`, `uts`, `pid`).
pub const NS_DIR: &str = "ns";
/// The descriptor the readiness line is written to.
pub const READY_FD: i32 = 3;
/// Longest accepted request line; longer ones close the connection.
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// Whether a namespace is the pod's own or the node's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NamespaceMode {
    Pod,
    Node,
}

/// The PID namespace may additionally be private to each container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PidNamespaceMode {
    Pod,
    Node,
    Container,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Namespaces {
    pub network: NamespaceMode,
    pub ipc: NamespaceMode,
    pub uts: NamespaceMode,
    pub pid: PidNamespaceMode,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LogLevel {
    Error,
    Warn,
    #[default]
    Info,
    Debug,
}

/// `<bundle>/monitor.json`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MonitorConfig {
    pub sandbox_id: String,
    /// Set in the pod's UTS namespace; ignored (must be absent or empty) when uts is "node".
    #[serde(default)]
    pub hostname: Option<String>,
    pub namespaces: Namespaces,
    /// The cgroup the monitor (and so, by inheritance, the pod's init) joins first.
    #[serde(default)]
    pub cgroup: Option<CgroupPaths>,
    /// Namespaced sysctls applied inside the pod's namespaces ("net.ipv4.ip_forward": "1").
    #[serde(default)]
    pub sysctls: BTreeMap<String, String>,
    /// Applied to the monitor and inherited by what it starts; raised to the current value when
    /// lowering is not permitted.
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    #[serde(default)]
    pub log_level: LogLevel,
    /// A user namespace for the pod (kubelet's hostUsers: false): the pod's network, IPC and UTS
    /// namespaces are then created inside it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub userns: Option<UsernsConfig>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UsernsConfig {
    pub uid_mappings: Vec<IdMapping>,
    pub gid_mappings: Vec<IdMapping>,
}

/// One line of /proc/<pid>/uid_map or gid_map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IdMapping {
    pub container_id: u32,
    pub host_id: u32,
    pub size: u32,
}

impl UsernsConfig {
    /// The uid_map or gid_map file content.
    pub fn map_text(mappings: &[IdMapping]) -> String {
        mappings.iter().map(|m| format!("{} {} {}\n", m.container_id, m.host_id, m.size)).collect()
    }
}

impl MonitorConfig {
    /// Checks the config for contradictions before anything is changed on the host.
    pub fn validate(&self) -> Result<(), String> {
        if self.sandbox_id.is_empty() {
            return Err("sandboxId is empty".into());
        }
        if let Some(h) = self.hostname.as_deref().filter(|h| !h.is_empty()) {
            if self.namespaces.uts != NamespaceMode::Pod {
                return Err("hostname needs a pod UTS namespace".into());
            }
            if h.len() > 64 {
                return Err(format!("hostname {:?} is longer than 64 bytes", h));
            }
        }
        if let Some(adj) = self.oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return Err(format!("oomScoreAdj {} is outside -1000..=1000", adj));
            }
        }
        for key in self.sysctls.keys() {
            check_sysctl(key, &self.namespaces)?;
        }
        if let Some(u) = &self.userns {
            let ns = &self.namespaces;
            if ns.network != NamespaceMode::Pod || ns.ipc != NamespaceMode::Pod || ns.uts != NamespaceMode::Pod || ns.pid == PidNamespaceMode::Node {
                return Err("a pod user namespace needs the pod's own network, IPC, UTS and PID namespaces".into());
            }
            for (what, list) in [("uid", &u.uid_mappings), ("gid", &u.gid_mappings)] {
                if list.is_empty() || list.len() > 340 {
                    return Err(format!("{what} mappings: between 1 and 340 are needed, got {}", list.len()));
                }
                if list.iter().any(|m| m.size == 0) {
                    return Err(format!("{what} mappings: a mapping of size 0"));
                }
            }
        }
        Ok(())
    }
}

/// The /proc/sys path of a sysctl key. Like sysctl(8), '.' separates components unless the key
/// uses '/' first, in which case '/' separates and dots are literal (interface names like
/// "eth0.100").
pub fn sysctl_path(key: &str) -> Result<String, String> {
    let slash_first = match (key.find('/'), key.find('.')) {
        (Some(s), Some(d)) => s < d,
        (Some(_), None) => true,
        _ => false,
    };
    let rel: String = if slash_first {
        key.to_owned()
    } else {
        key.chars().map(|c| match c { '.' => '/', '/' => '.', c => c }).collect()
    };
    if rel.split('/').any(|c| c.is_empty() || c == "." || c == "..") || rel.contains('\0') {
        return Err(format!("invalid sysctl key {:?}", key));
    }
    Ok(format!("/proc/sys/{}", rel))
}

/// Only namespaced sysctls may be set, and only when the pod owns that namespace: the monitor
/// shares the node's mount namespace, so anything else would change the node.
pub fn check_sysctl(key: &str, ns: &Namespaces) -> Result<(), String> {
    let path = sysctl_path(key)?;
    let rel = &path["/proc/sys/".len()..];
    let ipc = matches!(rel, "kernel/sem" | "kernel/shmall" | "kernel/shmmax" | "kernel/shmmni" | "kernel/shm_rmid_forced"
        | "kernel/msgmax" | "kernel/msgmnb" | "kernel/msgmni")
        || rel.starts_with("fs/mqueue/");
    let uts = matches!(rel, "kernel/hostname" | "kernel/domainname");
    let net = rel.starts_with("net/");
    let (needs, owned) = if ipc {
        ("ipc", ns.ipc == NamespaceMode::Pod)
    } else if uts {
        ("uts", ns.uts == NamespaceMode::Pod)
    } else if net {
        ("network", ns.network == NamespaceMode::Pod)
    } else {
        return Err(format!("sysctl {:?} is not namespaced", key));
    };
    if !owned {
        return Err(format!("sysctl {:?} needs a pod {} namespace", key, needs));
    }
    Ok(())
}

/// The readiness line on descriptor 3.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Ready {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<i32>,
    /// PID (in the node's PID namespace) of the pod's init when pid is "pod".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<i32>,
    /// Pinned namespace files by kind ("net", "ipc", "uts", "pid").
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Which setup step failed (see the monitor's stage names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
}

/// A request line: `{"id": <n>, "op": "<name>", ...op fields}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestEnvelope {
    pub id: u64,
    #[serde(flatten)]
    pub request: Request,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Answered with [`Reply::Status`].
    Status,
    /// Start pushing events to this connection.
    Subscribe,
    /// Stop everything the monitor runs (SIGTERM, then SIGKILL once `graceMs` has passed),
    /// let the pod's init exit, reply, and exit.
    Shutdown(ShutdownRequest),
    Create(CreateRequest),
    Start(ContainerRef),
    Signal(SignalRequest),
    Exec(ExecRequest),
    /// Runs a process in the container wired to this connection (see [`frame`]).
    ExecStream(ExecStreamRequest),
    /// Connects this connection to the container's main process (see [`frame`]).
    Attach(AttachRequest),
    ReopenLog(ContainerRef),
}

impl Request {
    /// Whether the request turns its connection into a stream session.
    pub fn is_stream(&self) -> bool {
        matches!(self, Request::ExecStream(_) | Request::Attach(_))
    }

    pub fn name(&self) -> &'static str {
        match self {
            Request::Status => "status",
            Request::Subscribe => "subscribe",
            Request::Shutdown(_) => "shutdown",
            Request::Create(_) => "create",
            Request::Start(_) => "start",
            Request::Signal(_) => "signal",
            Request::Exec(_) => "exec",
            Request::ExecStream(_) => "exec_stream",
            Request::Attach(_) => "attach",
            Request::ReopenLog(_) => "reopen_log",
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ShutdownRequest {
    pub grace_ms: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerRef {
    pub container_id: String,
}

/// Create a container from the prepared bundle (rootfs and process spec) at `bundleDir`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateRequest {
    pub container_id: String,
    pub bundle_dir: String,
    /// CRI-format log file the container's output is written to.
    pub log_path: String,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    /// Answer as soon as the process is forked instead of once it is set up: the set-up (mounts
    /// and the rest) then overlaps with the daemon's reply and the StartContainer that follows,
    /// and a set-up failure is the answer to `start`, as with runc-based runtimes, whose
    /// CreateContainer creates no process at all.
    #[serde(default)]
    pub early_reply: bool,
    /// Launch through this OCI runtime (`runtime create` with the bundle) instead of crisp's own
    /// launcher; the monitor still parents the container and writes its log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime: Option<OciRuntime>,
}

/// An OCI runtime binary and how to call it (a RuntimeClass handler of `type = "oci"`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OciRuntime {
    pub path: String,
    /// Global options placed before the subcommand (`--systemd-cgroup`, `--platform=…`).
    #[serde(default)]
    pub args: Vec<String>,
    /// The runtime's state directory (`--root`); its own default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SignalRequest {
    pub container_id: String,
    /// Signal an exec'd process instead of the container's main process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    pub signal: i32,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProcessSpec {
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default)]
    pub cwd: Option<String>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecRequest {
    pub container_id: String,
    pub exec_id: String,
    pub process: ProcessSpec,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub stdin: bool,
    /// Kill the process after this long; 0 waits indefinitely.
    #[serde(default)]
    pub timeout_ms: u64,
}

/// An interactive exec. Once the process has exec'd its program the monitor answers with an
/// [`ExecStreamReply`] and the connection carries [`frame`]s: the process's output, then its
/// exit. Set-up failures are answered with an error, and the connection is closed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecStreamRequest {
    pub container_id: String,
    pub exec_id: String,
    pub process: ProcessSpec,
    /// Give the process a terminal (stdin, stdout and stderr); its output is all stdout.
    #[serde(default)]
    pub tty: bool,
    /// Forward stdin frames; without it the process reads EOF (or, with a terminal, nothing).
    #[serde(default)]
    pub stdin: bool,
    /// Forward the stream; a stream nobody asked for goes to /dev/null (without a terminal).
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
}

/// Attaches to a running container's main process: its output is sent as frames (besides
/// going to the CRI log) and stdin frames reach its stdin. Answered with an empty result; an
/// exit frame follows when the container exits. Asking for stdin when the container was not
/// created with stdin (or stdinOnce already closed it) is a failed precondition.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachRequest {
    pub container_id: String,
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdout: bool,
    #[serde(default)]
    pub stderr: bool,
}

/// A response line: `{"id":1,"ok":true,"result":{...}}` or
/// `{"id":1,"ok":false,"error":{"code":"invalid_argument","message":"..."}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<Reply>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    pub fn ok(id: u64, result: Reply) -> Self {
        Response { id, ok: true, result: Some(result), error: None }
    }

    pub fn err(id: u64, code: ErrorCode, message: impl Into<String>) -> Self {
        Response { id, ok: false, result: None, error: Some(ErrorBody { code, message: message.into() }) }
    }
}

/// Operation results; which variant comes back is determined by the request's op.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Reply {
    Status(StatusReply),
    Exec(ExecReply),
    ExecStream(ExecStreamReply),
    Start(StartReply),
    Create(CreateReply),
    Empty(Empty),
}

/// `create`: the container process is set up and waits to be started.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CreateReply {
    /// In the node's PID namespace.
    pub pid: i32,
}

/// `start`: the container process has exec'd its program.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StartReply {
    pub pid: i32,
    pub started_at_ms: u64,
}

/// `exec`: the exec'd process has exited (or was killed at the timeout).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecReply {
    /// The exit status, or 128 + signal number.
    pub exit_code: i32,
    /// Base64.
    pub stdout: String,
    /// Base64.
    pub stderr: String,
    pub timed_out: bool,
    /// Output beyond the per-stream cap was dropped.
    pub truncated: bool,
}

/// `exec_stream`: the process has exec'd its program; frames follow.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecStreamReply {
    /// In the node's PID namespace.
    pub pid: i32,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ContainerState {
    /// Set up and waiting for `start`.
    Created,
    Running,
    Exited,
}

/// A container as `status` lists it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerInfo {
    pub container_id: String,
    pub pid: i32,
    pub state: ContainerState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// `<container bundle>/exit.json`, written atomically when the container's process is reaped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitRecord {
    /// The exit status, or 128 + signal number (128 when the program could not be started).
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub oom_killed: bool,
    /// None when the process never got to exec its program.
    pub started_at_ms: Option<u64>,
    pub finished_at_ms: u64,
    /// Why the program could not be started (`start` failed with this message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_error: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    pub protocol_version: u32,
    /// The monitor binary's version.
    pub version: String,
    pub sandbox_id: String,
    pub pid: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_pid: Option<i32>,
    pub started_at_ms: u64,
    pub state: MonitorState,
    /// Containers the monitor knows of, exited ones included.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerInfo>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitorState {
    Running,
    ShuttingDown,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidArgument,
    NotFound,
    AlreadyExists,
    FailedPrecondition,
    Unimplemented,
    Internal,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    pub message: String,
}

/// Pushed to subscribed connections: `{"event":"container_exit",...}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    ContainerExit(ExitEvent),
    Oom(ContainerRef),
    /// The monitor is about to exit; no more events follow.
    Shutdown,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExitEvent {
    pub container_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exec_id: Option<String>,
    pub pid: i32,
    pub exit_code: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<i32>,
    pub exited_at_ms: u64,
    #[serde(default, skip_serializing_if = "is_false")]
    pub oom_killed: bool,
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The binary framing of a stream session, used in both directions once the monitor has
/// answered `exec_stream` or `attach`: `[kind: u8][length: u32 big-endian][payload]`.
///
/// * [`STDIN`](frame::STDIN) (daemon → monitor): bytes for the process's stdin; an empty payload
///   closes it (EOF; with a terminal, stdin cannot be half-closed, so the terminal is hung up, as
///   containerd does). For attach, only a `stdinOnce` container's stdin is closed, and only by
///   the first session that had stdin.
/// * [`STDOUT`](frame::STDOUT), [`STDERR`](frame::STDERR) (monitor → daemon): output.
/// * [`RESIZE`](frame::RESIZE) (daemon → monitor): the terminal size, `[width: u16][height: u16]`
///   big-endian (columns, rows); ignored without a terminal.
/// * [`EXIT`](frame::EXIT) (monitor → daemon): `{"exitCode":n}` (128 + signal when killed), after
///   the last output frame; the monitor then closes the connection. For attach it is the
///   container's exit.
///
/// Closing the connection ends the session: an exec'd process is killed (its session and process
/// group), an attach detaches. Each side stops reading while the other's data backs up, so
/// neither buffers more than about [`MAX_PAYLOAD`](frame::MAX_PAYLOAD) twice over.
pub mod frame {
    pub const STDIN: u8 = 0;
    pub const STDOUT: u8 = 1;
    pub const STDERR: u8 = 2;
    pub const RESIZE: u8 = 3;
    pub const EXIT: u8 = 4;

    pub const HEADER_LEN: usize = 5;
    /// The largest payload either side sends or accepts.
    pub const MAX_PAYLOAD: usize = 1 << 20;

    /// Appends one frame to `out`; payloads longer than [`MAX_PAYLOAD`] are split.
    pub fn encode(out: &mut Vec<u8>, kind: u8, payload: &[u8]) {
        let mut chunks = payload.chunks(MAX_PAYLOAD);
        let first = chunks.next().unwrap_or(&[]);
        for chunk in std::iter::once(first).chain(chunks) {
            out.push(kind);
            out.extend_from_slice(&(chunk.len() as u32).to_be_bytes());
            out.extend_from_slice(chunk);
        }
    }

    /// The first complete frame in `buf`: (kind, payload range, bytes consumed). `Ok(None)` while
    /// incomplete; an error for a payload over [`MAX_PAYLOAD`].
    pub fn decode(buf: &[u8]) -> Result<Option<(u8, std::ops::Range<usize>, usize)>, String> {
        if buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]) as usize;
        if len > MAX_PAYLOAD {
            return Err(format!("frame of {} bytes exceeds the {}-byte limit", len, MAX_PAYLOAD));
        }
        if buf.len() < HEADER_LEN + len {
            return Ok(None);
        }
        Ok(Some((buf[0], HEADER_LEN..HEADER_LEN + len, HEADER_LEN + len)))
    }

    /// A resize payload: (width, height).
    pub fn decode_resize(payload: &[u8]) -> Option<(u16, u16)> {
        match payload {
            [w0, w1, h0, h1] => Some((u16::from_be_bytes([*w0, *w1]), u16::from_be_bytes([*h0, *h1]))),
            _ => None,
        }
    }
}

/// The payload of an exit frame.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StreamExit {
    pub exit_code: i32,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod_ns() -> Namespaces {
        Namespaces {
            network: NamespaceMode::Pod,
            ipc: NamespaceMode::Pod,
            uts: NamespaceMode::Pod,
            pid: PidNamespaceMode::Pod,
        }
    }

    #[test]
    fn config_parses_the_documented_shape() {
        let cfg: MonitorConfig = serde_json::from_value(json!({
            "sandboxId": "abc",
            "hostname": "web-0",
            "namespaces": {"network": "pod", "ipc": "pod", "uts": "pod", "pid": "container"},
            "cgroup": {"version": 1, "paths": {"memory": "/sys/fs/cgroup/memory/kubepods/pod1"}},
            "sysctls": {"net.ipv4.ip_unprivileged_port_start": "0"},
            "oomScoreAdj": -998,
            "logLevel": "debug"
        }))
        .unwrap();
        assert_eq!(cfg.namespaces.pid, PidNamespaceMode::Container);
        assert_eq!(cfg.cgroup.as_ref().unwrap().version, 1);
        assert_eq!(cfg.oom_score_adj, Some(-998));
        assert_eq!(cfg.log_level, LogLevel::Debug);
        cfg.validate().unwrap();

        let minimal: MonitorConfig = serde_json::from_value(json!({
            "sandboxId": "abc",
            "namespaces": {"network": "node", "ipc": "node", "uts": "node", "pid": "node"}
        }))
        .unwrap();
        assert_eq!(minimal.log_level, LogLevel::Info);
        assert!(minimal.cgroup.is_none() && minimal.sysctls.is_empty());
        minimal.validate().unwrap();

        let typo = serde_json::from_value::<MonitorConfig>(json!({
            "sandboxId": "abc", "hostName": "x",
            "namespaces": {"network": "node", "ipc": "node", "uts": "node", "pid": "node"}
        }));
        assert!(typo.is_err());
    }

    #[test]
    fn config_validation_catches_contradictions() {
        let base = MonitorConfig {
            sandbox_id: "abc".into(),
            hostname: None,
            namespaces: pod_ns(),
            cgroup: None,
            sysctls: BTreeMap::new(),
            oom_score_adj: None,
            log_level: LogLevel::Info,
            userns: None,
        };
        let mut c = base.clone();
        c.namespaces.uts = NamespaceMode::Node;
        c.hostname = Some("x".into());
        assert!(c.validate().is_err());
        let mut c = base.clone();
        c.oom_score_adj = Some(1001);
        assert!(c.validate().is_err());
        let map = IdMapping { container_id: 0, host_id: 200000, size: 65536 };
        let mut c = base.clone();
        c.userns = Some(UsernsConfig { uid_mappings: vec![map], gid_mappings: vec![map] });
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(UsernsConfig::map_text(&[map, IdMapping { container_id: 65536, host_id: 1, size: 1 }]), "0 200000 65536\n65536 1 1\n");
        c.namespaces.network = NamespaceMode::Node;
        assert!(c.validate().unwrap_err().contains("own network"));
        let mut c = base.clone();
        c.userns = Some(UsernsConfig { uid_mappings: vec![], gid_mappings: vec![map] });
        assert!(c.validate().unwrap_err().contains("uid mappings"));
        c.userns = Some(UsernsConfig { uid_mappings: vec![IdMapping { size: 0, ..map }], gid_mappings: vec![map] });
        assert!(c.validate().unwrap_err().contains("size 0"));
        let mut c = base.clone();
        c.sysctls.insert("vm.swappiness".into(), "0".into());
        assert!(c.validate().unwrap_err().contains("not namespaced"));
        let mut c = base;
        c.namespaces.network = NamespaceMode::Node;
        c.sysctls.insert("net.ipv4.ip_forward".into(), "1".into());
        assert!(c.validate().unwrap_err().contains("network"));
    }

    #[test]
    fn sysctl_keys_map_to_proc_paths() {
        assert_eq!(sysctl_path("net.ipv4.ip_forward").unwrap(), "/proc/sys/net/ipv4/ip_forward");
        assert_eq!(sysctl_path("net/ipv4/conf/eth0.100/forwarding").unwrap(), "/proc/sys/net/ipv4/conf/eth0.100/forwarding");
        assert_eq!(sysctl_path("net.ipv4.conf.eth0/100.forwarding").unwrap(), "/proc/sys/net/ipv4/conf/eth0.100/forwarding");
        assert!(sysctl_path("net..ipv4").is_err());
        assert!(sysctl_path("net/../../etc").is_err());
        assert!(sysctl_path("").is_err());
    }

    #[test]
    fn only_owned_namespaced_sysctls_pass() {
        let ns = pod_ns();
        for ok in ["kernel.shmmax", "kernel.msgmnb", "kernel.sem", "fs.mqueue.msg_max", "net.core.somaxconn", "kernel.domainname"] {
            check_sysctl(ok, &ns).unwrap();
        }
        for bad in ["kernel.pid_max", "vm.overcommit_memory", "fs.file-max", "kernel.shm_next_id_x"] {
            assert!(check_sysctl(bad, &ns).is_err(), "{}", bad);
        }
        let mut ns = pod_ns();
        ns.ipc = NamespaceMode::Node;
        assert!(check_sysctl("kernel.shmmax", &ns).is_err());
    }

    #[test]
    fn requests_are_flat_objects_tagged_by_op() {
        let r: RequestEnvelope = serde_json::from_str(r#"{"id":7,"op":"status"}"#).unwrap();
        assert_eq!(r, RequestEnvelope { id: 7, request: Request::Status });
        let r: RequestEnvelope = serde_json::from_str(r#"{"id":8,"op":"shutdown","graceMs":2500}"#).unwrap();
        assert_eq!(r.request, Request::Shutdown(ShutdownRequest { grace_ms: 2500 }));
        let r: RequestEnvelope = serde_json::from_str(r#"{"id":9,"op":"shutdown"}"#).unwrap();
        assert_eq!(r.request, Request::Shutdown(ShutdownRequest { grace_ms: 0 }));
        let r: RequestEnvelope = serde_json::from_str(r#"{"id":10,"op":"reopen_log","containerId":"c1"}"#).unwrap();
        assert_eq!(r.request.name(), "reopen_log");
        let round = serde_json::to_value(RequestEnvelope {
            id: 11,
            request: Request::Signal(SignalRequest { container_id: "c".into(), exec_id: None, signal: 15 }),
        })
        .unwrap();
        assert_eq!(round, json!({"id": 11, "op": "signal", "containerId": "c", "signal": 15}));
        assert!(serde_json::from_str::<RequestEnvelope>(r#"{"id":1,"op":"frobnicate"}"#).is_err());
    }

    #[test]
    fn responses_and_events_serialize_as_documented() {
        let status = Response::ok(
            1,
            Reply::Status(StatusReply {
                protocol_version: PROTOCOL_VERSION,
                version: "0.1.0".into(),
                sandbox_id: "abc".into(),
                pid: 10,
                init_pid: Some(11),
                started_at_ms: 1_700_000_000_000,
                state: MonitorState::Running,
                containers: vec![],
            }),
        );
        assert_eq!(
            serde_json::to_value(&status).unwrap(),
            json!({"id":1,"ok":true,"result":{"protocolVersion":1,"version":"0.1.0","sandboxId":"abc","pid":10,
                   "initPid":11,"startedAtMs":1_700_000_000_000u64,"state":"running"}})
        );
        assert_eq!(serde_json::to_string(&Response::ok(2, Reply::Empty(Empty {}))).unwrap(), r#"{"id":2,"ok":true,"result":{}}"#);
        assert_eq!(
            serde_json::to_value(Response::err(3, ErrorCode::Unimplemented, "no")).unwrap(),
            json!({"id":3,"ok":false,"error":{"code":"unimplemented","message":"no"}})
        );
        assert_eq!(serde_json::to_string(&Event::Shutdown).unwrap(), r#"{"event":"shutdown"}"#);
        let exit = Event::ContainerExit(ExitEvent {
            container_id: "c".into(),
            exec_id: None,
            pid: 5,
            exit_code: 137,
            signal: Some(9),
            exited_at_ms: 1,
            oom_killed: false,
        });
        assert_eq!(
            serde_json::to_value(&exit).unwrap(),
            json!({"event":"container_exit","containerId":"c","pid":5,"exitCode":137,"signal":9,"exitedAtMs":1})
        );
        let oom = Event::ContainerExit(ExitEvent {
            container_id: "c".into(),
            exec_id: None,
            pid: 5,
            exit_code: 137,
            signal: Some(9),
            exited_at_ms: 1,
            oom_killed: true,
        });
        assert_eq!(serde_json::to_value(&oom).unwrap()["oomKilled"], json!(true));
    }

    #[test]
    fn container_ops_serialize_as_documented() {
        let r: RequestEnvelope = serde_json::from_str(
            r#"{"id":1,"op":"create","containerId":"c1","bundleDir":"/b","logPath":"/l","tty":true}"#,
        )
        .unwrap();
        assert_eq!(
            r.request,
            Request::Create(CreateRequest {
                container_id: "c1".into(),
                bundle_dir: "/b".into(),
                log_path: "/l".into(),
                tty: true,
                stdin: false,
                stdin_once: false,
                early_reply: false,
                runtime: None,
            })
        );
        let r: RequestEnvelope = serde_json::from_str(
            r#"{"id":2,"op":"exec","containerId":"c1","execId":"e1","process":{"args":["ls"],"env":["A=1"],"uid":0},"timeoutMs":500}"#,
        )
        .unwrap();
        let Request::Exec(exec) = r.request else { panic!("not an exec") };
        assert_eq!(exec.process.args, vec!["ls"]);
        assert_eq!((exec.process.uid, exec.process.gid, exec.timeout_ms), (Some(0), None, 500));

        let cases = [
            (Reply::Create(CreateReply { pid: 42 }), json!({"pid": 42})),
            (Reply::Start(StartReply { pid: 42, started_at_ms: 7 }), json!({"pid": 42, "startedAtMs": 7})),
            (
                Reply::Exec(ExecReply { exit_code: 3, stdout: "aGk=".into(), stderr: "".into(), timed_out: false, truncated: true }),
                json!({"exitCode": 3, "stdout": "aGk=", "stderr": "", "timedOut": false, "truncated": true}),
            ),
        ];
        for (reply, want) in cases {
            assert_eq!(serde_json::to_value(Response::ok(1, reply)).unwrap()["result"], want);
        }
        let status = StatusReply {
            protocol_version: PROTOCOL_VERSION,
            version: "0.1.0".into(),
            sandbox_id: "abc".into(),
            pid: 10,
            init_pid: None,
            started_at_ms: 1,
            state: MonitorState::Running,
            containers: vec![
                ContainerInfo { container_id: "a".into(), pid: 11, state: ContainerState::Running, exit_code: None },
                ContainerInfo { container_id: "b".into(), pid: 12, state: ContainerState::Exited, exit_code: Some(0) },
            ],
        };
        assert_eq!(
            serde_json::to_value(&status).unwrap()["containers"],
            json!([{"containerId": "a", "pid": 11, "state": "running"}, {"containerId": "b", "pid": 12, "state": "exited", "exitCode": 0}])
        );
        let exit = ExitRecord { exit_code: 128, signal: None, oom_killed: false, started_at_ms: None, finished_at_ms: 5, start_error: Some("exec: boom".into()) };
        assert_eq!(
            serde_json::to_value(&exit).unwrap(),
            json!({"exitCode": 128, "signal": null, "oomKilled": false, "startedAtMs": null, "finishedAtMs": 5, "startError": "exec: boom"})
        );
    }

    #[test]
    fn ready_line_shapes() {
        let ok = Ready { ok: true, pid: Some(1), init_pid: Some(2), ..Default::default() };
        assert_eq!(serde_json::to_string(&ok).unwrap(), r#"{"ok":true,"pid":1,"initPid":2}"#);
        let failed = Ready { ok: false, error: Some("boom".into()), stage: Some("unshare".into()), ..Default::default() };
        assert_eq!(serde_json::to_string(&failed).unwrap(), r#"{"ok":false,"error":"boom","stage":"unshare"}"#);
    }

    #[test]
    fn stream_requests_and_frames() {
        let r: RequestEnvelope = serde_json::from_str(
            r#"{"id":1,"op":"exec_stream","containerId":"c","execId":"e","process":{"args":["sh"]},"tty":true,"stdin":true,"stdout":true}"#,
        )
        .unwrap();
        assert!(r.request.is_stream());
        let Request::ExecStream(e) = r.request else { panic!("not exec_stream") };
        assert_eq!((e.tty, e.stdin, e.stdout, e.stderr), (true, true, true, false));
        let r: RequestEnvelope = serde_json::from_str(r#"{"id":2,"op":"attach","containerId":"c","stdin":true}"#).unwrap();
        assert_eq!(r.request, Request::Attach(AttachRequest { container_id: "c".into(), stdin: true, stdout: false, stderr: false }));
        assert!(!Request::Status.is_stream());
        assert_eq!(serde_json::to_value(Response::ok(1, Reply::ExecStream(ExecStreamReply { pid: 9 }))).unwrap()["result"], json!({"pid": 9}));
        assert_eq!(serde_json::to_string(&StreamExit { exit_code: 3 }).unwrap(), r#"{"exitCode":3}"#);

        let mut buf = Vec::new();
        frame::encode(&mut buf, frame::STDOUT, b"hi");
        frame::encode(&mut buf, frame::STDIN, b"");
        assert_eq!(buf, [1, 0, 0, 0, 2, b'h', b'i', 0, 0, 0, 0, 0]);
        assert_eq!(frame::decode(&buf[..6]), Ok(None));
        let (kind, range, used) = frame::decode(&buf).unwrap().unwrap();
        assert_eq!((kind, &buf[range], used), (frame::STDOUT, &b"hi"[..], 7));
        assert_eq!(frame::decode(&buf[7..]), Ok(Some((frame::STDIN, 5..5, 5))));
        assert!(frame::decode(&[0, 0x7f, 0, 0, 0]).is_err());

        let big = vec![7u8; frame::MAX_PAYLOAD + 3];
        let mut out = Vec::new();
        frame::encode(&mut out, frame::STDERR, &big);
        assert_eq!(out.len(), big.len() + 2 * frame::HEADER_LEN);
        let (_, first, used) = frame::decode(&out).unwrap().unwrap();
        assert_eq!(first.len(), frame::MAX_PAYLOAD);
        assert_eq!(frame::decode(&out[used..]).unwrap().unwrap().1.len(), 3);

        assert_eq!(frame::decode_resize(&[0, 120, 0, 40]), Some((120, 40)));
        assert_eq!(frame::decode_resize(&[0, 120, 0]), None);
    }
}
