//! Cgroup exports. Structured values cross the boundary as JSON strings: resources in, paths,
//! pids and stats out. Counters in stats are decimal strings (convert with `BigInt`), because
//! CPU time in nanoseconds outgrows a double's exact integers.
//!
//! Paths are cgroup paths relative to the hierarchy root as returned by `cgroupResolvePath` /
//! `cgroupCreate` (`/kubepods/burstable/pod<uid>/<name>`).
//!
//! Error codes: `EINVAL` (bad path or resources), `EUNSUPPORTED` (the host lacks the controller
//! or feature a limit needs), an errno name (`EBUSY` when removing a cgroup that still has
//! processes, `EACCES`, ...) for a failed filesystem operation, `EIO` otherwise.

use std::sync::OnceLock;

use crisp_core::cgroup::{self, json, CgroupManager, CgroupSystem, Resources};
use crisp_core::unpack::errno_name;

use crate::js::{self, Args, Env, IntoJs, JsError, Value};

pub fn register(env: Env, exports: Value) -> Result<(), JsError> {
    js::register(env, exports, "cgroupDriverInfo", driver_info)?;
    js::register(env, exports, "cgroupResolvePath", resolve_path)?;
    js::register(env, exports, "cgroupCreate", create)?;
    js::register(env, exports, "cgroupLayout", layout)?;
    js::register(env, exports, "cgroupUpdate", update)?;
    js::register(env, exports, "cgroupRemove", remove)?;
    js::register(env, exports, "cgroupStats", stats)?;
    js::register(env, exports, "cgroupStatsBatch", stats_batch)?;
    js::register(env, exports, "cgroupPids", pids)?;
    Ok(())
}

/// Cgroup mounts do not change under a running daemon; detect once (successfully).
fn system() -> Result<&'static CgroupSystem, JsError> {
    static SYSTEM: OnceLock<CgroupSystem> = OnceLock::new();
    if let Some(s) = SYSTEM.get() {
        return Ok(s);
    }
    let detected = CgroupSystem::detect().map_err(to_js)?;
    Ok(SYSTEM.get_or_init(|| detected))
}

fn to_js(err: cgroup::Error) -> JsError {
    let code = match &err {
        cgroup::Error::InvalidArgument(_) => "EINVAL",
        cgroup::Error::Unsupported(_) => "EUNSUPPORTED",
        cgroup::Error::Io { source, .. } => source.raw_os_error().map_or("EIO", errno_name),
    };
    JsError::new(code, err.to_string())
}

fn manager(path: &str) -> Result<Box<dyn CgroupManager>, JsError> {
    system()?.manager(path).map_err(to_js)
}

fn resources_arg(args: &Args, index: usize) -> Result<Resources, JsError> {
    let text = args.string(index, "resources")?;
    json::parse_resources(&text).map_err(|e| JsError::invalid_arg_value(format!("The \"resources\" argument: {e}")))
}

/// A JSON document handed to JS as a string.
struct JsonText(String);

impl IntoJs for JsonText {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        env.string(&self.0)
    }
}

struct Done;

impl IntoJs for Done {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        env.undefined()
    }
}

/// `cgroupDriverInfo(): string` — JSON `{"version":1|2,"controllers":["cpu",...]}`.
fn driver_info(env: Env, _args: &Args) -> Result<Value, JsError> {
    env.string(&json::driver_info(system()?))
}

/// `cgroupResolvePath(parent: string, name: string): string` — the cgroupfs path of `name`
/// under `parent`, which may be a path or a systemd slice name; `name` may be "".
fn resolve_path(env: Env, args: &Args) -> Result<Value, JsError> {
    let parent = args.string(0, "parent")?;
    let name = args.string(1, "name")?;
    let path = cgroup::resolve_path(&parent, &name).map_err(to_js)?;
    env.string(&path)
}

/// `cgroupCreate(parent: string, name: string, resources: string): Promise<string>` — creates
/// the cgroup (idempotent), applies `resources` (JSON), and resolves with JSON
/// `{"path": "/…", "version": 1|2, "paths": {"<controller>": "/sys/fs/cgroup/…"}}`; `version`
/// and `paths` together are the `cgroup` field of a monitor config. A cgroup this call created
/// is removed again if applying the resources fails.
fn create(env: Env, args: &Args) -> Result<Value, JsError> {
    let parent = args.string(0, "parent")?;
    let name = args.string(1, "name")?;
    let resources = resources_arg(args, 2)?;
    let path = cgroup::resolve_path(&parent, &name).map_err(to_js)?;
    let mgr = manager(&path)?;
    js::promise(env, "crisp.cgroupCreate", move || {
        let paths = mgr.paths();
        let existed = paths.unique_dirs().iter().all(|d| d.is_dir());
        mgr.create().map_err(to_js)?;
        if let Err(e) = mgr.apply(&resources) {
            if !existed {
                let _ = mgr.remove();
            }
            return Err(to_js(e));
        }
        Ok(JsonText(json::created(mgr.path(), &paths)))
    })
}

/// `cgroupLayout(parent: string, name: string): string` — what `cgroupCreate` resolves with, without
/// touching the filesystem: the directories are a function of the path and the host's mounts.
fn layout(env: Env, args: &Args) -> Result<Value, JsError> {
    let parent = args.string(0, "parent")?;
    let name = args.string(1, "name")?;
    let path = cgroup::resolve_path(&parent, &name).map_err(to_js)?;
    let mgr = manager(&path)?;
    env.string(&json::created(mgr.path(), &mgr.paths()))
}

/// `cgroupUpdate(path: string, resources: string): Promise<void>` — applies `resources` (JSON)
/// to an existing cgroup.
fn update(env: Env, args: &Args) -> Result<Value, JsError> {
    let path = args.string(0, "path")?;
    let resources = resources_arg(args, 1)?;
    let mgr = manager(&path)?;
    js::promise(env, "crisp.cgroupUpdate", move || {
        if !mgr.paths().unique_dirs().iter().any(|d| d.is_dir()) {
            return Err(JsError::new("ENOENT", format!("cgroup {} does not exist", mgr.path())));
        }
        mgr.apply(&resources).map_err(to_js).map(|()| Done)
    })
}

/// `cgroupRemove(path: string, options?: {kill?: boolean}): Promise<void>` — removes the cgroup
/// and its descendants; with `kill`, SIGKILLs their processes first. Idempotent. Rejects with
/// `EBUSY` if processes remain after a short retry.
fn remove(env: Env, args: &Args) -> Result<Value, JsError> {
    let path = args.string(0, "path")?;
    let kill = match args.optional_object(1, "options")? {
        Some(options) => args.optional_bool_property(options, "kill", "options")?.unwrap_or(false),
        None => false,
    };
    let mgr = manager(&path)?;
    js::promise(env, "crisp.cgroupRemove", move || {
        if kill {
            mgr.kill_all().map_err(to_js)?;
        }
        mgr.remove().map_err(to_js).map(|()| Done)
    })
}

/// `cgroupStats(path: string): Promise<string>` — JSON of the raw counters:
/// `{"cpu": {"usageNanos": "…", "userNanos": "…"|null, "systemNanos": …, "nrPeriods": "…",
/// "nrThrottled": "…", "throttledNanos": "…"} | null, "memory": {"usageBytes", "workingSetBytes",
/// "rssBytes", "cacheBytes", "pageFaults", "majorPageFaults", "limitBytes" (null = unlimited),
/// "swapUsageBytes", "maxUsageBytes", "oomKills"} | null, "pids": {"current", "limit"} | null}`,
/// every number a decimal string.
fn stats(env: Env, args: &Args) -> Result<Value, JsError> {
    let path = args.string(0, "path")?;
    let mgr = manager(&path)?;
    js::promise(env, "crisp.cgroupStats", move || {
        mgr.stats().map(|s| JsonText(json::stats_exact(&s))).map_err(to_js)
    })
}

/// `cgroupStatsBatch(paths: string): Promise<string>` — `paths` is a JSON array of cgroup paths;
/// resolves with a JSON array of the same length and order whose elements are what `cgroupStats`
/// resolves with, or `{"error": {"code", "message"}}` for a cgroup that could not be read (a
/// missing cgroup is not an error: its sections are null). One threadpool task reads them all,
/// so a node's worth of containers costs one queue slot rather than one per cgroup.
fn stats_batch(env: Env, args: &Args) -> Result<Value, JsError> {
    let text = args.string(0, "paths")?;
    let paths = json::parse_paths(&text).map_err(|e| JsError::invalid_arg_value(format!("The \"paths\" argument: {e}")))?;
    let system = system()?;
    js::promise(env, "crisp.cgroupStatsBatch", move || {
        let results: Vec<Result<cgroup::Stats, (String, String)>> = paths
            .iter()
            .map(|path| {
                system.manager(path).and_then(|mgr| mgr.stats()).map_err(|e| {
                    let err = to_js(e);
                    (err.code.to_string(), err.message)
                })
            })
            .collect();
        Ok(JsonText(json::stats_batch(&results)))
    })
}

/// `cgroupPids(path: string, options?: {recursive?: boolean}): Promise<string>` — JSON array of
/// the pids in the cgroup (and its descendants when `recursive`), ascending. A missing cgroup
/// has none.
fn pids(env: Env, args: &Args) -> Result<Value, JsError> {
    let path = args.string(0, "path")?;
    let recursive = match args.optional_object(1, "options")? {
        Some(options) => args.optional_bool_property(options, "recursive", "options")?.unwrap_or(false),
        None => false,
    };
    let mgr = manager(&path)?;
    js::promise(env, "crisp.cgroupPids", move || mgr.pids(recursive).map(|p| JsonText(json::pids(&p))).map_err(to_js))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes() {
        assert_eq!(to_js(cgroup::Error::InvalidArgument("x".into())).code, "EINVAL");
        assert_eq!(to_js(cgroup::Error::Unsupported("x".into())).code, "EUNSUPPORTED");
        let missing = std::fs::remove_dir("/nonexistent-crisp-test-dir").unwrap_err();
        assert_eq!(to_js(cgroup::Error::Io { context: "rmdir".into(), source: missing }).code, "ENOENT");
        let other = cgroup::Error::Io { context: "read".into(), source: std::io::Error::other("x") };
        assert_eq!(to_js(other).code, "EIO");
    }
}
