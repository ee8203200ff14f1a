//! crisp-monitor: holds one pod's namespaces and parents its processes.
//!
//! Usage: `crisp-monitor <bundle-dir>`, with `<bundle-dir>/monitor.json` describing the pod and
//! descriptor 3 open for the readiness line. See `crisp_core::monitor_proto` for the contract.
//! The monitor outlives the daemon that started it; the daemon finds it again through
//! `<bundle-dir>/monitor.sock`.

mod base64;
mod containers;
mod hooks;
mod init;
mod log;
mod server;
mod setup;
mod streams;

use std::os::fd::RawFd;
use std::path::PathBuf;

use crisp_core::monitor_proto::{self, Ready};
use crisp_core::sys::{self, SigSet, SignalFd};

fn main() {
    std::process::exit(run());
}

fn run() -> i32 {
    let mut args = std::env::args_os().skip(1);
    let (Some(bundle), None) = (args.next(), args.next()) else {
        eprintln!("usage: crisp-monitor <bundle-dir>");
        return 2;
    };
    // Only stdio and the readiness descriptor are given; anything else a careless parent leaked
    // (a daemon's socket, another pod's files) must not live on in the pod's processes.
    if let Err(e) = sys::close_fds_from(monitor_proto::READY_FD + 1) {
        eprintln!("crisp-monitor: closing inherited descriptors: {e}");
        return 1;
    }
    let ready_fd = ReadyPipe::inherited();
    let bundle = match std::fs::canonicalize(PathBuf::from(bundle)) {
        Ok(b) => b,
        Err(e) => {
            return ready_fd.fail("config", &format!("bundle directory: {}", e));
        }
    };

    // Signals the event loop consumes are blocked from the start so none is lost while setting
    // up; SIGPIPE is ignored so a vanished client is an EPIPE, not death.
    let signals = match SigSet::of(server::HANDLED_SIGNALS).block().and_then(|_| {
        sys::ignore_signal(libc::SIGPIPE)?;
        SignalFd::new(&SigSet::of(server::HANDLED_SIGNALS))
    }) {
        Ok(s) => s,
        Err(e) => return ready_fd.fail("session", &format!("signal setup: {}", e)),
    };

    let config = match setup::load_config(&bundle) {
        Ok(c) => c,
        Err(e) => return ready_fd.fail(e.stage, &e.message),
    };
    log::set_level(config.log_level);
    log!(Info, "starting monitor for sandbox {} in {}", config.sandbox_id, bundle.display());

    let mut sandbox = match setup::run(&bundle, config) {
        Ok(s) => s,
        Err(e) => return ready_fd.fail(e.stage, &e.message),
    };
    let (listener, socket_path) = match server::bind_control_socket(&bundle) {
        Ok(l) => l,
        Err(e) => {
            setup::undo(&mut sandbox);
            return ready_fd.fail("socket", &e.to_string());
        }
    };

    let ready = Ready {
        ok: true,
        pid: Some(std::process::id() as i32),
        init_pid: sandbox.init.as_ref().map(|i| i.pid),
        namespaces: sandbox.pinned.iter().map(|(k, v)| (k.clone(), v.to_string_lossy().into_owned())).collect(),
        ..Default::default()
    };
    let server = match server::Server::new(sandbox, listener, socket_path, signals) {
        Ok(s) => s,
        Err(e) => return ready_fd.fail("socket", &e.to_string()),
    };
    log!(Info, "sandbox ready (pid {}, init {:?})", std::process::id(), ready.init_pid);
    ready_fd.report(&ready);
    server.run()
}

/// The readiness descriptor inherited from the daemon, if any (absent when run by hand).
struct ReadyPipe(Option<RawFd>);

impl ReadyPipe {
    fn inherited() -> Self {
        let fd = monitor_proto::READY_FD;
        let open = unsafe { libc::fcntl(fd, libc::F_GETFD) } != -1;
        if open {
            // Nothing the monitor starts may hold the daemon's end open.
            let _ = sys::set_cloexec(fd, true);
        }
        ReadyPipe(open.then_some(fd))
    }

    /// Writes the readiness line and closes the descriptor.
    fn report(self, ready: &Ready) {
        let Some(fd) = self.0 else { return };
        let mut line = serde_json::to_vec(ready).unwrap_or_else(|_| b"{\"ok\":false}".to_vec());
        line.push(b'\n');
        if let Err(e) = sys::write_all_fd(fd, &line) {
            log!(Warn, "could not report readiness: {}", e);
        }
        unsafe { libc::close(fd) };
    }

    fn fail(self, stage: &str, message: &str) -> i32 {
        log!(Error, "setup failed at {}: {}", stage, message);
        self.report(&Ready { ok: false, error: Some(message.to_owned()), stage: Some(stage.to_owned()), ..Default::default() });
        1
    }
}
