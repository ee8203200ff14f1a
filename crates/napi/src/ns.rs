//! Namespace pin exports: the daemon releases a sandbox's pinned namespaces (bind mounts made by
//! its monitor under `<bundle>/ns/`) when the sandbox is stopped or removed.
//!
//! Error codes: an errno name (`EBUSY`, `EPERM`, ...) for a failed unmount or unlink, `EIO`
//! otherwise.

use std::path::Path;

use crisp_core::ns;
use crisp_core::unpack::errno_name;

use crate::js::{self, Args, Env, IntoJs, JsError, Value};

pub fn register(env: Env, exports: Value) -> Result<(), JsError> {
    js::register(env, exports, "nsUnpinDir", unpin_dir)?;
    Ok(())
}

struct Done;

impl IntoJs for Done {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        env.undefined()
    }
}

/// `nsUnpinDir(dir: string): Promise<void>` — detaches every pinned namespace file in `dir`,
/// deletes the files and then `dir`. Idempotent: a missing `dir` resolves.
fn unpin_dir(env: Env, args: &Args) -> Result<Value, JsError> {
    let dir = args.path(0, "dir")?;
    js::promise(env, "crisp.nsUnpinDir", move || {
        ns::unpin_dir(Path::new(&dir)).map(|()| Done).map_err(|e| {
            JsError::new(e.raw_os_error().map_or("EIO", errno_name), format!("unpin namespaces in {dir}: {e}"))
        })
    })
}
