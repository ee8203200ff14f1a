//! Stream sessions: interactive execs and clients attached to a container's main process, each
//! on a connection of its own that carries frames (`crisp_core::monitor_proto::frame`) once the
//! session is up.
//!
//! Nothing is buffered without bound. An exec's output is read only while its connection has
//! fewer than [`STREAM_PAUSE_BYTES`] queued; stdin frames are taken from a connection only while
//! the process's stdin has room. A container's output goes to its CRI log first and to attached
//! clients second: a client that does not keep up misses output rather than slowing the log.

use std::collections::HashMap;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};

use crisp_core::container::crilog::Stream;
use crisp_core::container::pty;
use crisp_core::monitor_proto::{
    frame, AttachRequest, Empty, ErrorCode, ExecStreamRequest, Reply, Response, StreamExit,
};
use crisp_core::sys::{self, Epoll, ExitStatus, EPOLLOUT};

use crate::containers::{err, ExecIo, ExecSink, FdRole, Phase, Waiter, EXEC_DRAIN_MS};
use crate::log;
use crate::server::Server;

/// A stream connection stops being read while this much of its input awaits processing: a
/// whole frame always fits.
pub const STREAM_INBUF_LIMIT: usize = frame::HEADER_LEN + frame::MAX_PAYLOAD + (64 << 10);
/// An exec's output is left unread while its connection has this much queued...
pub const STREAM_PAUSE_BYTES: usize = 1 << 20;
/// ...until it is down to this.
pub const STREAM_RESUME_BYTES: usize = 256 << 10;
/// Stdin bytes held for a process before the connections feeding it are held back.
const INPUT_PAUSE_BYTES: usize = 1 << 20;
/// Output queued for an attached client beyond which further output is dropped for it.
const ATTACH_BACKLOG_LIMIT: usize = 1 << 20;

/// What a stream connection is attached to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Session {
    /// An interactive exec, by its key.
    Exec(u64),
    /// A container's main process, by container id.
    Attach(String),
}

/// A client attached to a container.
pub struct Attached {
    pub conn: u64,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    /// Output bytes it missed for not keeping up.
    dropped: u64,
}

/// The stream side of an interactive exec.
pub struct ExecStream {
    /// The session's connection; None once the client left.
    pub conn: Option<u64>,
    /// The reply went out: frames flow.
    pub established: bool,
    pub tty: bool,
    stdout: bool,
    stderr: bool,
    /// The process's stdin: a pipe, or a duplicate of the terminal's master.
    pub input: Option<Input>,
    /// Output is left unread until the connection drains.
    pub paused: bool,
}

impl ExecStream {
    pub fn new(conn: u64, tty: bool, stdout: bool, stderr: bool, input: Option<Input>) -> Self {
        ExecStream { conn: Some(conn), established: false, tty, stdout, stderr, input, paused: false }
    }

    /// Whether output of `stream` goes to the client.
    pub fn forwards(&self, stream: Stream) -> bool {
        match stream {
            Stream::Stdout => self.stdout,
            Stream::Stderr => self.stderr,
        }
    }
}

pub enum Flushed {
    /// Everything pending was written.
    Done,
    /// The rest waits for room (the descriptor is watched for it).
    Waiting,
    /// The reader is gone; pending bytes were dropped.
    Broken,
}

/// Bytes on their way to a process's stdin, written as it takes them.
pub struct Input {
    fd: OwnedFd,
    token: u64,
    pending: Vec<u8>,
    watching: bool,
    /// EOF was asked for: close once what is pending is written.
    closing: bool,
    /// Connections whose frames wait for room here.
    blocked: Vec<u64>,
}

impl Input {
    /// `fd` must be non-blocking; `token` must be registered for its role.
    pub fn new(fd: OwnedFd, token: u64) -> Self {
        Input { fd, token, pending: Vec::new(), watching: false, closing: false, blocked: Vec::new() }
    }

    fn full(&self) -> bool {
        self.pending.len() >= INPUT_PAUSE_BYTES
    }

    fn block(&mut self, conn: u64) {
        if !self.blocked.contains(&conn) {
            self.blocked.push(conn);
        }
    }

    fn flush(&mut self, epoll: &Epoll) -> Flushed {
        let mut written = 0;
        let outcome = loop {
            if written == self.pending.len() {
                break Flushed::Done;
            }
            let rest = &self.pending[written..];
            let n = unsafe { libc::write(self.fd.as_raw_fd(), rest.as_ptr().cast(), rest.len()) };
            if n >= 0 {
                written += n as usize;
                continue;
            }
            match sys::errno(&io::Error::last_os_error()) {
                libc::EINTR => continue,
                libc::EAGAIN => break Flushed::Waiting,
                _ => break Flushed::Broken,
            }
        };
        self.pending.drain(..written);
        if let Flushed::Broken = outcome {
            self.pending.clear();
        }
        let watch = matches!(outcome, Flushed::Waiting);
        if watch != self.watching {
            let result = if watch { epoll.add(self.fd.as_raw_fd(), EPOLLOUT, self.token) } else { epoll.delete(self.fd.as_raw_fd()) };
            match result {
                Ok(()) => self.watching = watch,
                Err(e) => log!(Warn, "watching a stdin descriptor: {}", e),
            }
        }
        outcome
    }

    /// Closes the descriptor (EOF for a pipe's reader); returns the connections that were
    /// waiting for room, to be resumed.
    pub fn close(self, epoll: &Epoll, fd_roles: &mut HashMap<u64, FdRole>) -> Vec<u64> {
        if self.watching {
            // A terminal's master is still open elsewhere, so closing this duplicate would not
            // take it out of the epoll set.
            let _ = epoll.delete(self.fd.as_raw_fd());
        }
        fd_roles.remove(&self.token);
        self.blocked
    }
}

/// Kills an exec'd process and everything it started: its process group, and its session
/// (a shell with job control puts jobs in groups of their own).
fn kill_session(pid: libc::pid_t) {
    let _ = sys::kill(-pid, libc::SIGKILL);
    let _ = sys::kill(pid, libc::SIGKILL);
    let Ok(dir) = std::fs::read_dir("/proc") else { return };
    for entry in dir.flatten() {
        let Some(other) = entry.file_name().to_str().and_then(|n| n.parse::<libc::pid_t>().ok()) else { continue };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", other)) else { continue };
        if session_of(&stat) == Some(pid) {
            let _ = sys::kill(other, libc::SIGKILL);
        }
    }
}

/// The session id field of a /proc/<pid>/stat line (the command may contain anything, so
/// fields are counted from the last ')').
fn session_of(stat: &str) -> Option<libc::pid_t> {
    let rest = &stat[stat.rfind(')')? + 1..];
    rest.split_whitespace().nth(3)?.parse().ok()
}

impl Server {
    // ---- requests -------------------------------------------------------------------------

    pub(crate) fn exec_stream(&mut self, token: u64, id: u64, req: ExecStreamRequest) -> Option<Response> {
        let plan = match self.exec_plan(&req.container_id, &req.process) {
            Ok(p) => p,
            Err((code, message)) => return err(id, code, message),
        };
        let wiring = ExecIo { tty: req.tty, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, stream: true };
        match self.spawn_exec(&req.container_id, &req.exec_id, 0, plan, (token, id), wiring) {
            Ok(key) => {
                self.bind_session(token, Session::Exec(key));
                None
            }
            Err(e) => err(id, ErrorCode::Internal, format!("exec in container {}: {}", req.container_id, e)),
        }
    }

    pub(crate) fn attach(&mut self, token: u64, id: u64, req: AttachRequest) -> Option<Response> {
        if self.shutting_down() {
            return err(id, ErrorCode::FailedPrecondition, "the pod is shutting down");
        }
        let Some(c) = self.ctrs.containers.get_mut(&req.container_id) else {
            return err(id, ErrorCode::NotFound, format!("container {} not found", req.container_id));
        };
        if c.phase != Phase::Running {
            return err(id, ErrorCode::FailedPrecondition, format!("container {} is not running", c.id));
        }
        if req.stdin {
            if !c.stdin {
                return err(id, ErrorCode::FailedPrecondition, format!("container {} was not created with stdin", c.id));
            }
            if c.input.is_none() {
                return err(id, ErrorCode::FailedPrecondition, format!("stdin of container {} is closed", c.id));
            }
            if c.stdin_once && c.stdin_owner.is_none() {
                c.stdin_owner = Some(token);
            }
        }
        c.attached.push(Attached { conn: token, stdin: req.stdin, stdout: req.stdout, stderr: req.stderr, dropped: 0 });
        log!(Debug, "connection {} attached to container {}", token, c.id);
        self.bind_session(token, Session::Attach(req.container_id));
        Some(Response::ok(id, Reply::Empty(Empty {})))
    }

    // ---- frames from the client -----------------------------------------------------------

    /// Handles the frames a stream connection has sent, as far as the session can take them.
    pub(crate) fn process_frames(&mut self, token: u64) {
        while let Some(session) = self.conn_session(token).cloned() {
            // Hold frames back while the exec has not started or stdin has no room.
            let input = match &session {
                Session::Exec(key) => match self.ctrs.execs.get_mut(key).map(|e| &mut e.sink) {
                    Some(ExecSink::Stream(st)) if st.established => st.input.as_mut(),
                    _ => break,
                },
                Session::Attach(id) => self.ctrs.containers.get_mut(id).and_then(|c| c.input.as_mut()),
            };
            if let Some(input) = input.filter(|i| i.full()) {
                input.block(token);
                break;
            }
            let Some((kind, payload)) = self.next_frame(token) else { break };
            match (&session, kind) {
                (Session::Exec(key), frame::STDIN) => self.exec_stdin(*key, &payload),
                (Session::Exec(key), frame::RESIZE) => self.exec_resize(*key, &payload),
                (Session::Attach(id), frame::STDIN) => self.attach_stdin(token, id, &payload),
                (Session::Attach(id), frame::RESIZE) => self.attach_resize(id, &payload),
                (_, kind) => log!(Debug, "stream connection {}: ignoring frame of kind {}", token, kind),
            }
        }
        self.refresh_conn(token);
    }

    fn exec_stdin(&mut self, key: u64, data: &[u8]) {
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let ExecSink::Stream(st) = &mut e.sink else { return };
        let Some(input) = st.input.as_mut() else { return }; // no stdin, or closed: dropped
        if data.is_empty() {
            if st.tty {
                // A terminal cannot be half-closed: hang it up.
                self.hang_up_exec(key);
                return;
            }
            input.closing = true;
        } else {
            input.pending.extend_from_slice(data);
        }
        self.flush_exec_input(key);
    }

    fn exec_resize(&mut self, key: u64, payload: &[u8]) {
        let Some(e) = self.ctrs.execs.get(&key) else { return };
        let ExecSink::Stream(st) = &e.sink else { return };
        if !st.tty {
            return;
        }
        if let (Some((width, height)), Some(out)) = (frame::decode_resize(payload), e.outputs.first()) {
            if let Err(err) = pty::set_size(&out.fd, height, width) {
                log!(Debug, "resizing the terminal of exec {}: {}", key, err);
            }
        }
    }

    fn attach_stdin(&mut self, token: u64, id: &str, data: &[u8]) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        if !c.attached.iter().any(|a| a.conn == token && a.stdin) {
            return;
        }
        let Some(input) = c.input.as_mut() else { return };
        if data.is_empty() {
            // Without stdinOnce stdin stays open for the next client.
            if c.stdin_once && c.stdin_owner == Some(token) {
                self.close_container_stdin(id);
            }
            return;
        }
        input.pending.extend_from_slice(data);
        self.flush_container_input(id);
    }

    fn attach_resize(&mut self, id: &str, payload: &[u8]) {
        let Some(c) = self.ctrs.containers.get(id) else { return };
        if !c.tty {
            return;
        }
        if let (Some((width, height)), Some(out)) = (frame::decode_resize(payload), c.outputs.first()) {
            if let Err(err) = pty::set_size(&out.fd, height, width) {
                log!(Debug, "resizing the terminal of container {}: {}", id, err);
            }
        }
    }

    // ---- stdin ----------------------------------------------------------------------------

    pub(crate) fn exec_input_writable(&mut self, key: u64) {
        self.flush_exec_input(key);
    }

    pub(crate) fn container_input_writable(&mut self, id: &str) {
        self.flush_container_input(id);
    }

    fn flush_exec_input(&mut self, key: u64) {
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let ExecSink::Stream(st) = &mut e.sink else { return };
        let Some(input) = st.input.as_mut() else { return };
        let resumed = match input.flush(&self.epoll) {
            Flushed::Waiting => return,
            Flushed::Done if !input.closing => std::mem::take(&mut input.blocked),
            // EOF delivered, or nobody reads any more.
            _ => st.input.take().map(|i| i.close(&self.epoll, &mut self.ctrs.fd_roles)).unwrap_or_default(),
        };
        for conn in resumed {
            self.process_frames(conn);
        }
    }

    fn flush_container_input(&mut self, id: &str) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        let Some(input) = c.input.as_mut() else { return };
        let resumed = match input.flush(&self.epoll) {
            Flushed::Waiting => return,
            Flushed::Done if !input.closing => std::mem::take(&mut input.blocked),
            _ => c.input.take().map(|i| i.close(&self.epoll, &mut self.ctrs.fd_roles)).unwrap_or_default(),
        };
        for conn in resumed {
            self.process_frames(conn);
        }
    }

    /// stdinOnce: the container's stdin ends (EOF once what is pending is written); a terminal
    /// is hung up instead, as it cannot be half-closed.
    fn close_container_stdin(&mut self, id: &str) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        c.stdin_owner = None;
        if c.tty {
            log!(Info, "container {}: stdin closed after the first attach; hanging up its terminal", id);
            self.drain_container_output(id, None);
            let Some(c) = self.ctrs.containers.get_mut(id) else { return };
            let outputs = std::mem::take(&mut c.outputs);
            let input = c.input.take();
            for out in outputs {
                let _ = self.epoll.delete(out.fd.as_raw_fd());
                self.ctrs.fd_roles.remove(&out.token);
            }
            let resumed = input.map(|i| i.close(&self.epoll, &mut self.ctrs.fd_roles)).unwrap_or_default();
            for conn in resumed {
                self.process_frames(conn);
            }
            return;
        }
        log!(Info, "container {}: stdin closed after the first attach", id);
        if let Some(input) = c.input.as_mut() {
            input.closing = true;
        }
        self.flush_container_input(id);
    }

    /// EOF on a terminal's input: forward what output is there, then close the master, which
    /// hangs up the terminal (SIGHUP to the process).
    fn hang_up_exec(&mut self, key: u64) {
        self.drain_exec_output(key, None);
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let ExecSink::Stream(st) = &mut e.sink else { return };
        let input = st.input.take();
        if let Some(input) = input {
            input.close(&self.epoll, &mut self.ctrs.fd_roles);
        }
        self.close_exec_outputs(key);
        self.maybe_finish_exec(key);
    }

    // ---- output ---------------------------------------------------------------------------

    /// Stops reading an exec's output until its connection drains.
    pub(crate) fn pause_exec_output(&mut self, key: u64) {
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let ExecSink::Stream(st) = &mut e.sink else { return };
        if st.paused {
            return;
        }
        st.paused = true;
        for out in e.outputs.iter_mut().filter(|o| o.registered) {
            let _ = self.epoll.delete(out.fd.as_raw_fd());
            out.registered = false;
        }
    }

    pub(crate) fn resume_exec_output(&mut self, key: u64) {
        let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
        let ExecSink::Stream(st) = &mut e.sink else { return };
        if !st.paused {
            return;
        }
        st.paused = false;
        for out in e.outputs.iter_mut() {
            match self.epoll.add(out.fd.as_raw_fd(), libc::EPOLLIN as u32, out.token) {
                Ok(()) => out.registered = true,
                Err(err) => log!(Warn, "exec {}: watching its output again: {}", key, err),
            }
        }
        if e.exited.is_some() {
            // The grace for output after exit counts from when it can be read again.
            e.drain_deadline_ms = Some(sys::monotonic_ms() + EXEC_DRAIN_MS);
        }
    }

    /// Sends container output to the attached clients that asked for that stream.
    pub(crate) fn forward_to_attached(&mut self, id: &str, stream: Stream, data: &[u8]) {
        let kind = if stream == Stream::Stdout { frame::STDOUT } else { frame::STDERR };
        let Some(c) = self.ctrs.containers.get(id) else { return };
        let targets: Vec<u64> = c
            .attached
            .iter()
            .filter(|a| match stream {
                Stream::Stdout => a.stdout,
                Stream::Stderr => a.stderr,
            })
            .map(|a| a.conn)
            .collect();
        for conn in targets {
            let Some(backlog) = self.conn_backlog(conn) else { continue };
            if backlog + data.len() > ATTACH_BACKLOG_LIMIT {
                let Some(a) = self.ctrs.containers.get_mut(id).and_then(|c| c.attached.iter_mut().find(|a| a.conn == conn)) else { continue };
                if a.dropped == 0 {
                    log!(Info, "container {}: attached client on connection {} is not keeping up; dropping output for it", id, conn);
                }
                a.dropped += data.len() as u64;
                continue;
            }
            self.send_frame(conn, kind, data);
        }
    }

    // ---- ends -----------------------------------------------------------------------------

    /// The container exited: its attached clients get the exit status and are let go.
    pub(crate) fn end_attach_sessions(&mut self, id: &str, exit_code: i32) {
        let Some(c) = self.ctrs.containers.get_mut(id) else { return };
        let attached = std::mem::take(&mut c.attached);
        c.stdin_owner = None;
        let payload = serde_json::to_vec(&StreamExit { exit_code }).unwrap_or_default();
        for a in attached {
            if a.dropped > 0 {
                log!(Info, "container {}: attached client on connection {} missed {} bytes of output", id, a.conn, a.dropped);
            }
            self.send_frame(a.conn, frame::EXIT, &payload);
            self.close_conn_after_flush(a.conn);
        }
    }

    /// A stream exec is over (reaped, output drained): the client gets the exit status, or the
    /// set-up error if the program never ran.
    pub(crate) fn finish_exec_stream(&mut self, waiter: Waiter, mut st: ExecStream, status: ExitStatus, failure: Option<Response>) {
        if let Some(input) = st.input.take() {
            input.close(&self.epoll, &mut self.ctrs.fd_roles);
        }
        let Some(conn) = st.conn else { return };
        match failure {
            Some(response) => self.reply(waiter, response),
            None if !st.established => {
                let message = format!("the process exited before it could run its program ({})", status.code());
                self.reply(waiter, Response::err(waiter.1, ErrorCode::Internal, message));
            }
            None => {
                let payload = serde_json::to_vec(&StreamExit { exit_code: status.code() }).unwrap_or_default();
                self.send_frame(conn, frame::EXIT, &payload);
            }
        }
        self.close_conn_after_flush(conn);
    }

    /// The client of a stream connection left: an exec is killed and its descriptors closed at
    /// once; an attached client is detached.
    pub(crate) fn stream_client_left(&mut self, token: u64, session: Session) {
        match session {
            Session::Exec(key) => {
                let Some(e) = self.ctrs.execs.get_mut(&key) else { return };
                let ExecSink::Stream(st) = &mut e.sink else { return };
                st.conn = None;
                let input = st.input.take();
                if e.exited.is_none() {
                    log!(Debug, "client of exec {} in container {} left; killing pid {}", key, e.container_id, e.pid);
                    kill_session(e.pid);
                }
                if let Some(input) = input {
                    input.close(&self.epoll, &mut self.ctrs.fd_roles);
                }
                self.close_exec_outputs(key);
                self.maybe_finish_exec(key);
            }
            Session::Attach(id) => {
                let Some(c) = self.ctrs.containers.get_mut(&id) else { return };
                c.attached.retain(|a| a.conn != token);
                log!(Debug, "connection {} detached from container {}", token, id);
                if c.stdin_once && c.stdin_owner == Some(token) {
                    self.close_container_stdin(&id);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_read_past_the_command_name() {
        assert_eq!(session_of("123 (sleep) S 1 123 77 0 -1"), Some(77));
        assert_eq!(session_of("123 (a) b) c) S 1 123 88 0 -1"), Some(88));
        assert_eq!(session_of("garbage"), None);
    }

    #[test]
    fn input_writes_what_fits_and_watches_for_room() {
        let epoll = Epoll::new().unwrap();
        let (r, w) = sys::pipe_cloexec().unwrap();
        sys::set_nonblocking(w.as_raw_fd()).unwrap();
        let mut roles = HashMap::new();
        roles.insert(7, FdRole::ExecInput(1));
        let mut input = Input::new(w, 7);
        input.pending.extend_from_slice(b"hello");
        assert!(matches!(input.flush(&epoll), Flushed::Done));
        let mut buf = [0u8; 16];
        assert_eq!(unsafe { libc::read(r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) }, 5);

        // More than a pipe holds: the rest waits, and the descriptor is watched for room.
        input.pending = vec![b'x'; 1 << 20];
        assert!(matches!(input.flush(&epoll), Flushed::Waiting));
        assert!(input.watching);
        assert!(!input.pending.is_empty() && input.pending.len() < 1 << 20);
        let mut events = Vec::new();
        epoll.wait(&mut events, 4, 0).unwrap();
        assert!(events.is_empty(), "no room yet");
        let mut sink = vec![0u8; 1 << 20];
        unsafe { libc::read(r.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) };
        epoll.wait(&mut events, 4, 1000).unwrap();
        assert_eq!(events.first().map(|e| e.token), Some(7));

        // The reader left: pending bytes are dropped.
        drop(r);
        assert!(matches!(input.flush(&epoll), Flushed::Broken));
        assert!(input.pending.is_empty() && !input.watching);
        input.block(3);
        input.block(3);
        assert_eq!(input.close(&epoll, &mut roles), vec![3]);
        assert!(roles.is_empty());
    }
}
