//! Network exports: connections opened inside a pod's network namespace for port-forwarding.
//!
//! Error codes: `ECONNREFUSED` (nothing listens on the port), `ETIMEDOUT`, `ENOENT` (no such
//! namespace file), `EINVAL` (the file is not a network namespace), another errno name for other
//! failed system calls, `EIO` otherwise.

use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use crisp_core::netns_connect::{connect_localhost_in_netns, error_code};

use crate::js::{self, Args, Env, IntoJs, JsError, Value};

/// The largest timeout accepted, the same bound as `setTimeout`'s.
const MAX_TIMEOUT_MS: f64 = 2_147_483_647.0;

pub fn register(env: Env, exports: Value) -> Result<(), JsError> {
    js::register(env, exports, "netnsConnect", netns_connect)?;
    Ok(())
}

/// A connected socket whose ownership passes to JS as a plain descriptor number.
struct SocketFd(OwnedFd);

impl IntoJs for SocketFd {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        let value = env.number(f64::from(self.0.as_raw_fd()))?;
        // Released only once the number exists; on any earlier error the descriptor is closed.
        let _ = self.0.into_raw_fd();
        Ok(value)
    }
}

/// `netnsConnect(nsPath: string, port: number, timeoutMs: number): Promise<number>` — connects
/// to `127.0.0.1:port`, falling back to `[::1]:port`, inside the network namespace pinned at
/// `nsPath` ("" for the daemon's own namespace), and resolves with the connected socket's
/// descriptor (close-on-exec, blocking). The caller owns it.
fn netns_connect(env: Env, args: &Args) -> Result<Value, JsError> {
    let ns_path = args.string(0, "nsPath")?;
    if ns_path.contains('\0') {
        return Err(JsError::invalid_arg_value(format!(
            "The \"nsPath\" argument must be a path without NUL bytes. Received {ns_path:?}"
        )));
    }
    let port = args.number(1, "port")?;
    if port.fract() != 0.0 || !(1.0..=65535.0).contains(&port) {
        return Err(JsError::invalid_arg_value(format!(
            "The \"port\" argument must be an integer from 1 to 65535. Received {port}"
        )));
    }
    let timeout_ms = args.number(2, "timeoutMs")?;
    if timeout_ms.is_nan() || timeout_ms < 1.0 || timeout_ms > MAX_TIMEOUT_MS {
        return Err(JsError::invalid_arg_value(format!(
            "The \"timeoutMs\" argument must be a number of milliseconds from 1 to {MAX_TIMEOUT_MS}. Received {timeout_ms}"
        )));
    }
    let port = port as u16;
    let timeout = Duration::from_secs_f64(timeout_ms / 1000.0);
    let place = match ns_path.as_str() {
        "" => "the host network namespace".to_string(),
        path => format!("network namespace {path}"),
    };
    js::promise(env, "crisp.netnsConnect", move || {
        let ns = (!ns_path.is_empty()).then(|| Path::new(&ns_path));
        connect_localhost_in_netns(ns, port, timeout)
            .map(SocketFd)
            .map_err(|e| JsError::new(error_code(&e), format!("connect to localhost:{port} in {place}: {e}")))
    })
}
