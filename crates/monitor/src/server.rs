//! The monitor's event loop: one thread, one epoll set, a signalfd for SIGCHLD/SIGTERM/SIGINT,
//! the control socket's listener and its connections.

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use crisp_core::monitor_proto::{
    self, ErrorCode, Event, MonitorState, Reply, Request, RequestEnvelope, Response, StatusReply, PROTOCOL_VERSION,
};
use crisp_core::sys::{self, Epoll, EpollEvent, SignalFd, EPOLLERR, EPOLLHUP, EPOLLIN, EPOLLOUT, EPOLLRDHUP};

use crate::containers::Containers;
use crate::log;
use crate::setup::Sandbox;
use crate::streams::{Session, STREAM_INBUF_LIMIT, STREAM_RESUME_BYTES};

/// Grace period for children when the monitor itself is asked to stop with SIGTERM/SIGINT.
const SIGNAL_SHUTDOWN_GRACE_MS: u64 = 10_000;
/// How long a released pod init may take to exit before it is killed.
const INIT_EXIT_TIMEOUT_MS: u64 = 5_000;
/// How long pending replies may take to drain to clients when exiting.
const FINAL_FLUSH_TIMEOUT_MS: i32 = 1_000;

const TOKEN_SIGNALS: u64 = 0;
const TOKEN_LISTENER: u64 = 1;
const FIRST_CONN_TOKEN: u64 = 16;

/// The signals the monitor consumes through its signalfd; they must stay blocked.
pub const HANDLED_SIGNALS: &[libc::c_int] = &[libc::SIGCHLD, libc::SIGTERM, libc::SIGINT, libc::SIGHUP];

struct Conn {
    stream: UnixStream,
    inbuf: Vec<u8>,
    outbuf: Vec<u8>,
    subscribed: bool,
    /// The peer finished sending; close once replies are flushed.
    read_closed: bool,
    want_write: bool,
    /// The epoll events the connection is registered for; 0 when not registered.
    interest: u32,
    /// Request lines read so far: a stream request must be the first.
    requests: u64,
    /// The first request asked for a stream session; if it is refused, the connection closes.
    stream_requested: bool,
    /// The stream session the connection carries; its input is then frames, not lines.
    session: Option<Session>,
}

impl Conn {
    /// A stream connection stops reading while its unprocessed frames fill the input buffer
    /// (the process's stdin is not keeping up).
    fn wants_read(&self) -> bool {
        !self.read_closed && (self.session.is_none() || self.inbuf.len() < STREAM_INBUF_LIMIT)
    }
}

struct ShutdownState {
    kill_deadline_ms: u64,
    killed: bool,
    init_released_at_ms: Option<u64>,
    /// (connection token, request id) of shutdown requests awaiting the final reply.
    waiters: Vec<(u64, u64)>,
}

pub struct Server {
    sandbox: Sandbox,
    socket_path: PathBuf,
    started_at_ms: u64,
    pub(crate) epoll: Epoll,
    signals: SignalFd,
    listener: UnixListener,
    conns: HashMap<u64, Conn>,
    next_token: u64,
    shutdown: Option<ShutdownState>,
    pub(crate) ctrs: Containers,
    /// Connections to look at once the current events are handled: ones found closed deep
    /// inside other work, whose stream sessions are ended from the top of the loop.
    unsettled: Vec<u64>,
}

/// Binds the control socket with mode 0600. A socket file left by a dead monitor is replaced;
/// one that still answers belongs to a live monitor and is an error.
pub fn bind_control_socket(bundle: &Path) -> io::Result<(UnixListener, PathBuf)> {
    let path = bundle.join(monitor_proto::SOCKET_FILE);
    match connect(bundle, &path) {
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("a monitor is already serving {}", path.display()),
            ))
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(_) => std::fs::remove_file(&path).or_else(|e| if e.kind() == io::ErrorKind::NotFound { Ok(()) } else { Err(e) })?,
    }
    // umask makes the socket 0600 from the moment it exists.
    let old_mask = unsafe { libc::umask(0o177) };
    let bound = with_short_path(bundle, &path, |p| UnixListener::bind(p));
    unsafe { libc::umask(old_mask) };
    let listener = bound?;
    listener.set_nonblocking(true)?;
    Ok((listener, path))
}

fn connect(bundle: &Path, path: &Path) -> io::Result<UnixStream> {
    with_short_path(bundle, path, |p| UnixStream::connect(p))
}

/// sun_path holds 107 bytes; deeper bundles are reached relative to the bundle directory
/// (the monitor is single-threaded, so changing directory briefly is safe).
fn with_short_path<T>(bundle: &Path, path: &Path, f: impl FnOnce(&Path) -> io::Result<T>) -> io::Result<T> {
    if path.as_os_str().len() < 108 {
        return f(path);
    }
    let cwd = std::env::current_dir()?;
    std::env::set_current_dir(bundle)?;
    let result = f(Path::new(path.file_name().unwrap_or_default()));
    std::env::set_current_dir(cwd)?;
    result
}

impl Server {
    pub fn new(sandbox: Sandbox, listener: UnixListener, socket_path: PathBuf, signals: SignalFd) -> io::Result<Self> {
        let epoll = Epoll::new()?;
        epoll.add(signals.as_raw_fd(), EPOLLIN, TOKEN_SIGNALS)?;
        epoll.add(listener.as_raw_fd(), EPOLLIN, TOKEN_LISTENER)?;
        Ok(Server {
            sandbox,
            socket_path,
            started_at_ms: sys::now_unix_ms(),
            epoll,
            signals,
            listener,
            conns: HashMap::new(),
            next_token: FIRST_CONN_TOKEN,
            shutdown: None,
            ctrs: Containers::new(),
            unsettled: Vec::new(),
        })
    }

    /// Serves until shutdown completes; returns the process exit code.
    pub fn run(mut self) -> i32 {
        let mut events: Vec<EpollEvent> = Vec::with_capacity(32);
        loop {
            let timeout = self.poll_timeout_ms();
            if let Err(e) = self.epoll.wait(&mut events, 32, timeout) {
                log!(Error, "epoll_wait: {}", e);
                return 1;
            }
            for ev in events.clone() {
                match ev.token {
                    TOKEN_SIGNALS => self.on_signals(),
                    TOKEN_LISTENER => self.on_accept(),
                    token if Containers::is_fd_token(token) => self.on_container_fd(token),
                    token => self.on_conn(token, ev.events),
                }
            }
            self.on_container_timers();
            while !self.unsettled.is_empty() {
                for token in std::mem::take(&mut self.unsettled) {
                    self.maybe_close(token);
                }
            }
            if self.shutdown.is_some() && self.advance_shutdown() {
                self.finish();
                return 0;
            }
        }
    }

    fn poll_timeout_ms(&self) -> i32 {
        let now = sys::monotonic_ms();
        let shutdown = self.shutdown.as_ref().map(|s| match s.init_released_at_ms {
            Some(at) => at + INIT_EXIT_TIMEOUT_MS,
            None if !s.killed => s.kill_deadline_ms,
            // Waiting for SIGKILLed children: wake periodically in case a SIGCHLD was coalesced.
            None => now + 100,
        });
        match [shutdown, self.ctrs.next_deadline_ms()].into_iter().flatten().min() {
            Some(deadline) => deadline.saturating_sub(now).min(i32::MAX as u64) as i32,
            None => -1,
        }
    }

    pub(crate) fn shutting_down(&self) -> bool {
        self.shutdown.is_some()
    }

    fn on_signals(&mut self) {
        loop {
            match self.signals.read() {
                Ok(Some(libc::SIGCHLD)) => self.reap(),
                Ok(Some(sig @ (libc::SIGTERM | libc::SIGINT))) => {
                    log!(Info, "received signal {}, shutting down", sig);
                    self.begin_shutdown(SIGNAL_SHUTDOWN_GRACE_MS, None);
                }
                Ok(Some(sig)) => log!(Debug, "ignoring signal {}", sig),
                Ok(None) => break,
                Err(e) => {
                    log!(Error, "signalfd read: {}", e);
                    break;
                }
            }
        }
    }

    /// Reaps every terminated child: the pod init, and anything orphaned onto the monitor.
    fn reap(&mut self) {
        loop {
            match sys::reap_any() {
                Ok(Some((pid, status))) => {
                    if self.sandbox.init.as_ref().map(|i| i.pid) == Some(pid) {
                        let expected = self.sandbox.init.as_ref().is_some_and(|i| i.released());
                        if expected {
                            log!(Info, "pod init {} exited ({:?})", pid, status);
                        } else {
                            // The pod's PID namespace is gone with it; nothing can run there.
                            log!(Error, "pod init {} died unexpectedly ({:?})", pid, status);
                        }
                        self.sandbox.init = None;
                    } else if !self.on_child_exit(pid, status) {
                        log!(Debug, "reaped {} ({:?})", pid, status);
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    log!(Error, "waitpid: {}", e);
                    break;
                }
            }
        }
    }

    fn on_accept(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((stream, _)) => {
                    if let Err(e) = stream.set_nonblocking(true) {
                        log!(Warn, "control connection: {}", e);
                        continue;
                    }
                    let token = self.next_token;
                    self.next_token += 1;
                    if let Err(e) = self.epoll.add(stream.as_raw_fd(), EPOLLIN | EPOLLRDHUP, token) {
                        log!(Warn, "control connection: {}", e);
                        continue;
                    }
                    log!(Debug, "control connection {} opened", token);
                    self.conns.insert(
                        token,
                        Conn {
                            stream,
                            inbuf: Vec::new(),
                            outbuf: Vec::new(),
                            subscribed: false,
                            read_closed: false,
                            want_write: false,
                            interest: EPOLLIN | EPOLLRDHUP,
                            requests: 0,
                            stream_requested: false,
                            session: None,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    log!(Warn, "accept: {}", e);
                    break;
                }
            }
        }
    }

    fn on_conn(&mut self, token: u64, events: u32) {
        let hangup = events & (EPOLLHUP | EPOLLERR | EPOLLRDHUP) != 0;
        if hangup || events & EPOLLIN != 0 {
            self.read_conn(token, hangup);
        }
        if events & EPOLLOUT != 0 {
            self.flush_conn(token);
        }
        self.maybe_close(token);
    }

    /// Reads what the peer sent and handles it: request lines, or frames once the connection
    /// carries a stream session. After a hangup everything left is read, paused or not, to
    /// reach the EOF.
    fn read_conn(&mut self, token: u64, hangup: bool) {
        {
            let Some(conn) = self.conns.get_mut(&token) else { return };
            let mut buf = [0u8; 8192];
            while hangup || conn.wants_read() {
                match conn.stream.read(&mut buf) {
                    Ok(0) => {
                        conn.read_closed = true;
                        break;
                    }
                    Ok(n) => {
                        conn.inbuf.extend_from_slice(&buf[..n]);
                        if conn.session.is_none() && conn.inbuf.len() > monitor_proto::MAX_LINE_BYTES {
                            break; // judged below, once complete lines are taken out
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(_) => {
                        conn.read_closed = true;
                        conn.outbuf.clear();
                        break;
                    }
                }
            }
        }
        // One line at a time: a stream request switches the rest of the input to frames.
        loop {
            let line = {
                let Some(conn) = self.conns.get_mut(&token) else { return };
                if conn.session.is_some() {
                    break;
                }
                match conn.inbuf.iter().position(|&b| b == b'\n') {
                    Some(pos) => conn.inbuf.drain(..=pos).collect::<Vec<u8>>(),
                    None => {
                        if conn.inbuf.len() > monitor_proto::MAX_LINE_BYTES {
                            log!(Warn, "control connection {} sent an oversized request; closing", token);
                            conn.inbuf.clear();
                            conn.read_closed = true;
                        }
                        break;
                    }
                }
            };
            let line = trim_line(&line);
            if line.is_empty() {
                continue;
            }
            if let Some(conn) = self.conns.get_mut(&token) {
                conn.requests += 1;
            }
            if let Some(response) = self.handle_line(token, line) {
                let failed_stream = !response.ok && self.conns.get(&token).is_some_and(|c| c.stream_requested && c.session.is_none());
                self.send(token, &response);
                if failed_stream {
                    // The peer expects frames after this reply; there will be none.
                    self.close_conn_after_flush(token);
                    return;
                }
            }
        }
        if self.conns.get(&token).is_some_and(|c| c.session.is_some()) {
            self.process_frames(token);
        }
        self.refresh_conn(token);
    }

    /// Parses and executes one request; None when the reply is deferred (shutdown).
    fn handle_line(&mut self, token: u64, line: &[u8]) -> Option<Response> {
        let value: serde_json::Value = match serde_json::from_slice(line) {
            Ok(v) => v,
            Err(e) => return Some(Response::err(0, ErrorCode::InvalidArgument, format!("malformed request: {}", e))),
        };
        let Some(id) = value.get("id").and_then(serde_json::Value::as_u64) else {
            return Some(Response::err(0, ErrorCode::InvalidArgument, "request has no numeric id"));
        };
        let request = match serde_json::from_value::<RequestEnvelope>(value) {
            Ok(env) => env.request,
            Err(e) => return Some(Response::err(id, ErrorCode::InvalidArgument, format!("invalid request: {}", e))),
        };
        log!(Debug, "request {} {} on connection {}", id, request.name(), token);
        if request.is_stream() {
            let conn = self.conns.get_mut(&token)?;
            conn.stream_requested = true;
            if conn.requests != 1 || conn.subscribed {
                return Some(Response::err(id, ErrorCode::InvalidArgument, format!("{} must be the first request on its own connection", request.name())));
            }
        }
        match request {
            Request::Status => Some(Response::ok(id, Reply::Status(self.status()))),
            Request::Subscribe => {
                if let Some(conn) = self.conns.get_mut(&token) {
                    conn.subscribed = true;
                }
                Some(Response::ok(id, Reply::Empty(Default::default())))
            }
            Request::Shutdown(req) => {
                self.begin_shutdown(req.grace_ms, Some((token, id)));
                None
            }
            Request::Create(req) => self.create_container(token, id, req),
            Request::Start(req) => self.start_container(token, id, req),
            Request::Signal(req) => self.signal_container(id, req),
            Request::Exec(req) => self.exec_in_container(token, id, req),
            Request::ExecStream(req) => self.exec_stream(token, id, req),
            Request::Attach(req) => self.attach(token, id, req),
            Request::ReopenLog(req) => self.reopen_log(id, req),
        }
    }

    fn status(&self) -> StatusReply {
        StatusReply {
            protocol_version: PROTOCOL_VERSION,
            version: env!("CARGO_PKG_VERSION").to_owned(),
            sandbox_id: self.sandbox.config.sandbox_id.clone(),
            pid: std::process::id() as i32,
            init_pid: self.sandbox.init.as_ref().map(|i| i.pid),
            started_at_ms: self.started_at_ms,
            state: if self.shutdown.is_some() { MonitorState::ShuttingDown } else { MonitorState::Running },
            containers: self.ctrs.list(),
        }
    }

    pub(crate) fn send<T: serde::Serialize>(&mut self, token: u64, message: &T) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        match serde_json::to_vec(message) {
            Ok(mut bytes) => {
                bytes.push(b'\n');
                conn.outbuf.extend_from_slice(&bytes);
            }
            Err(e) => {
                log!(Error, "serialize reply: {}", e);
                return;
            }
        }
        self.flush_conn(token);
    }

    /// Appends one frame to a stream connection's output and writes what it can.
    pub(crate) fn send_frame(&mut self, token: u64, kind: u8, payload: &[u8]) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.read_closed && conn.session.is_none() {
            return; // closing: nothing more goes out after the exit frame
        }
        monitor_proto::frame::encode(&mut conn.outbuf, kind, payload);
        self.flush_conn(token);
    }

    /// Bytes queued for the peer of a connection; None once it is gone.
    pub(crate) fn conn_backlog(&self, token: u64) -> Option<usize> {
        self.conns.get(&token).map(|c| c.outbuf.len())
    }

    pub(crate) fn bind_session(&mut self, token: u64, session: Session) {
        if let Some(conn) = self.conns.get_mut(&token) {
            conn.session = Some(session);
        }
    }

    pub(crate) fn conn_session(&self, token: u64) -> Option<&Session> {
        self.conns.get(&token).and_then(|c| c.session.as_ref())
    }

    /// Takes the next complete frame a stream connection sent: (kind, payload). A malformed
    /// frame ends the session as if the client had left.
    pub(crate) fn next_frame(&mut self, token: u64) -> Option<(u8, Vec<u8>)> {
        let conn = self.conns.get_mut(&token)?;
        if conn.read_closed {
            return None;
        }
        match monitor_proto::frame::decode(&conn.inbuf) {
            Ok(Some((kind, range, used))) => {
                let payload = conn.inbuf[range].to_vec();
                conn.inbuf.drain(..used);
                Some((kind, payload))
            }
            Ok(None) => None,
            Err(e) => {
                log!(Warn, "stream connection {}: {}; closing", token, e);
                conn.read_closed = true;
                conn.inbuf.clear();
                None
            }
        }
    }

    /// Ends a connection's stream session from the monitor's side: what is queued is still
    /// delivered, then the connection closes.
    pub(crate) fn close_conn_after_flush(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        conn.session = None;
        conn.read_closed = true;
        conn.inbuf.clear();
        self.flush_conn(token);
        self.maybe_close(token);
    }

    /// Re-registers a connection for what it waits on now; one that is done is closed from
    /// the top of the loop.
    pub(crate) fn refresh_conn(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        Self::update_interest(&self.epoll, token, conn);
        if conn.read_closed {
            self.unsettled.push(token);
        }
    }

    pub(crate) fn publish(&mut self, event: &Event) {
        let tokens: Vec<u64> = self.conns.iter().filter(|(_, c)| c.subscribed).map(|(t, _)| *t).collect();
        for token in tokens {
            self.send(token, event);
        }
    }

    fn flush_conn(&mut self, token: u64) {
        let Some(conn) = self.conns.get_mut(&token) else { return };
        while !conn.outbuf.is_empty() {
            match conn.stream.write(&conn.outbuf) {
                Ok(0) => break,
                Ok(n) => {
                    conn.outbuf.drain(..n);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => {
                    // The peer is gone; nothing more can be delivered.
                    conn.outbuf.clear();
                    conn.read_closed = true;
                    self.unsettled.push(token);
                }
            }
        }
        conn.want_write = !conn.outbuf.is_empty();
        Self::update_interest(&self.epoll, token, conn);
        // An exec whose output was held back while this connection's queue was full goes on.
        let drained_exec = match conn.session {
            Some(Session::Exec(key)) if conn.outbuf.len() <= STREAM_RESUME_BYTES => Some(key),
            _ => None,
        };
        if let Some(key) = drained_exec {
            self.resume_exec_output(key);
        }
    }

    /// Re-registers a connection for what it currently waits on: requests (until the peer
    /// stops sending) and buffer space (while replies are pending).
    fn update_interest(epoll: &Epoll, token: u64, conn: &mut Conn) {
        // A paused stream connection still watches for its peer leaving.
        let read = match (conn.read_closed, conn.wants_read()) {
            (true, _) => 0,
            (false, true) => EPOLLIN | EPOLLRDHUP,
            (false, false) => EPOLLRDHUP,
        };
        let events = read | if conn.want_write { EPOLLOUT } else { 0 };
        if events == conn.interest {
            return;
        }
        let fd = conn.stream.as_raw_fd();
        let result = match (conn.interest, events) {
            (0, _) => epoll.add(fd, events, token),
            // With nothing to wait for, leave the set entirely: a hung-up peer would otherwise
            // keep reporting EPOLLHUP.
            (_, 0) => epoll.delete(fd),
            _ => epoll.modify(fd, events, token),
        };
        match result {
            Ok(()) => conn.interest = events,
            Err(e) => log!(Warn, "epoll update for connection {}: {}", token, e),
        }
    }

    pub(crate) fn maybe_close(&mut self, token: u64) {
        let waiting = self.shutdown.as_ref().is_some_and(|s| s.waiters.iter().any(|(t, _)| *t == token));
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if !conn.read_closed {
            return;
        }
        if let Some(session) = conn.session.take() {
            // The client left (or broke the framing): nothing more can reach it.
            conn.outbuf.clear();
            conn.want_write = false;
            self.stream_client_left(token, session);
        }
        let Some(conn) = self.conns.get_mut(&token) else { return };
        if conn.outbuf.is_empty() && !waiting {
            if let Some(conn) = self.conns.remove(&token) {
                if conn.interest != 0 {
                    let _ = self.epoll.delete(conn.stream.as_raw_fd());
                }
                log!(Debug, "control connection {} closed", token);
            }
        } else {
            // Half-closed peer still owed replies: keep it until they are written.
            Self::update_interest(&self.epoll, token, conn);
        }
    }

    fn begin_shutdown(&mut self, grace_ms: u64, waiter: Option<(u64, u64)>) {
        let deadline = sys::monotonic_ms() + grace_ms;
        match &mut self.shutdown {
            Some(s) => {
                // A second request can only shorten the grace period.
                s.kill_deadline_ms = s.kill_deadline_ms.min(deadline);
                s.waiters.extend(waiter);
            }
            None => {
                log!(Info, "shutting down (grace {} ms)", grace_ms);
                self.shutdown = Some(ShutdownState {
                    kill_deadline_ms: deadline,
                    killed: false,
                    init_released_at_ms: None,
                    waiters: waiter.into_iter().collect(),
                });
                for pid in self.children_except_init() {
                    let _ = sys::kill(pid, libc::SIGTERM);
                }
            }
        }
    }

    /// Moves shutdown forward; true once nothing the monitor parents is left.
    fn advance_shutdown(&mut self) -> bool {
        self.reap();
        let now = sys::monotonic_ms();
        let children = self.children_except_init();
        let init_pid = self.sandbox.init.as_ref().map(|i| i.pid);
        let Some(s) = self.shutdown.as_mut() else { return false };
        if !children.is_empty() {
            if !s.killed && now >= s.kill_deadline_ms {
                log!(Warn, "grace period over; killing {} remaining process(es)", children.len());
                for &pid in &children {
                    let _ = sys::kill(pid, libc::SIGKILL);
                }
                s.killed = true;
            }
            return false;
        }
        let Some(init_pid) = init_pid else { return true };
        match s.init_released_at_ms {
            None => {
                // With the containers gone, the pod init can go; its exit kills any stragglers
                // left in the PID namespace.
                if let Some(init) = self.sandbox.init.as_mut() {
                    init.release();
                }
                s.init_released_at_ms = Some(now);
            }
            Some(at) if now >= at + INIT_EXIT_TIMEOUT_MS => {
                log!(Warn, "pod init {} did not exit; killing it", init_pid);
                let _ = sys::kill(init_pid, libc::SIGKILL);
                s.init_released_at_ms = Some(now);
            }
            Some(_) => {}
        }
        false
    }

    /// Direct children of the monitor other than the pod init: containers and orphans adopted
    /// as subreaper.
    fn children_except_init(&self) -> Vec<libc::pid_t> {
        let init = self.sandbox.init.as_ref().map(|i| i.pid);
        let me = std::process::id();
        let path = format!("/proc/{}/task/{}/children", me, me);
        std::fs::read_to_string(path)
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|p| p.parse().ok())
            .filter(|p| Some(*p) != init)
            .collect()
    }

    /// Replies to shutdown requests, tells subscribers, flushes and removes the socket.
    fn finish(&mut self) {
        log!(Info, "shutdown complete");
        let waiters = self.shutdown.as_mut().map(|s| std::mem::take(&mut s.waiters)).unwrap_or_default();
        for (token, id) in waiters {
            self.send(token, &Response::ok(id, Reply::Empty(Default::default())));
        }
        self.publish(&Event::Shutdown);
        let _ = std::fs::remove_file(&self.socket_path);
        let deadline = sys::monotonic_ms() + FINAL_FLUSH_TIMEOUT_MS as u64;
        for conn in self.conns.values_mut() {
            while !conn.outbuf.is_empty() && sys::monotonic_ms() < deadline {
                match conn.stream.write(&conn.outbuf) {
                    Ok(0) => break,
                    Ok(n) => {
                        conn.outbuf.drain(..n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        let mut pfd = libc::pollfd { fd: conn.stream.as_raw_fd(), events: libc::POLLOUT, revents: 0 };
                        unsafe { libc::poll(&mut pfd, 1, 50) };
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut l = line;
    while let [rest @ .., b'\n' | b'\r' | b' ' | b'\t'] = l {
        l = rest;
    }
    l
}
