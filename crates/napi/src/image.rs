//! Image exports: layer unpacking and the core's version.

use std::path::{Path, PathBuf};

use crisp_core::layer_lookup::{entry, locate, Entry, Located};
use crisp_core::unpack::{unpack_layer_file, UnpackOptions, UnpackStats};

use crate::js::{self, Args, Env, IntoJs, JsError, Value};

pub fn register(env: Env, exports: Value) -> Result<(), JsError> {
    js::register(env, exports, "coreVersion", core_version)?;
    js::register(env, exports, "unpackLayer", unpack_layer)?;
    js::register(env, exports, "locateImageFile", locate_image_file)?;
    js::register(env, exports, "imageEntry", image_entry)?;
    Ok(())
}

/// `coreVersion(): string`
fn core_version(env: Env, _args: &Args) -> Result<Value, JsError> {
    env.string(crisp_core::identity::version())
}

/// `unpackLayer(path, mediaType, dest, options?): Promise<UnpackResult>`
///
/// The unpack runs on libuv's threadpool. `mediaType` is validated but the stream's magic bytes
/// decide the decoder (the result's `compression` says which one was used). `options.sync`
/// (default true) flushes the destination filesystem before the promise resolves.
fn unpack_layer(env: Env, args: &Args) -> Result<Value, JsError> {
    let path = args.path(0, "path")?;
    args.one_of(1, "mediaType", &["gzip", "zstd", "none", "auto"])?;
    let dest = args.path(2, "dest")?;
    let sync = match args.optional_object(3, "options")? {
        Some(options) => args.optional_bool_property(options, "sync", "options")?.unwrap_or(true),
        None => true,
    };
    js::promise(env, "crisp.unpackLayer", move || {
        let options = UnpackOptions { sync, ..UnpackOptions::default() };
        unpack_layer_file(Path::new(&path), Path::new(&dest), &options)
            .map(Unpacked)
            .map_err(|err| JsError::new(err.code(), err.message().to_string()))
    })
}

struct Unpacked(UnpackStats);

impl IntoJs for Unpacked {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        let stats = self.0;
        let result = env.object()?;
        result.set_number("entries", stats.entries as f64)?;
        result.set_number("tarBytes", stats.tar_bytes as f64)?;
        result.set_number("bytesWritten", stats.bytes_written as f64)?;
        result.set_number("xattrsSkipped", stats.xattrs_skipped as f64)?;
        result.set_string("diffId", &stats.diff_id)?;
        result.set_string("compression", stats.compression.as_str())?;
        Ok(result.raw())
    }
}

fn lower_dirs_arg(args: &Args, index: usize) -> Result<Vec<PathBuf>, JsError> {
    let text = args.string(index, "lowerDirs")?;
    let dirs: Vec<String> = serde_json::from_str(&text)
        .map_err(|e| JsError::invalid_arg_value(format!("The \"lowerDirs\" argument must be a JSON array of paths: {e}")))?;
    Ok(dirs.into_iter().map(PathBuf::from).collect())
}

fn image_path_arg(args: &Args, index: usize) -> Result<String, JsError> {
    let path = args.string(index, "path")?;
    if !path.starts_with('/') {
        return Err(JsError::invalid_arg_value(format!("The \"path\" argument must be absolute. Received {path:?}")));
    }
    Ok(path)
}

fn lookup_error(path: &str, e: std::io::Error) -> JsError {
    let code = e.raw_os_error().map_or("EINVAL", crisp_core::unpack::errno_name);
    JsError::new(code, format!("looking up {path} in the image layers: {e}"))
}

/// `imageEntry(lowerDirs: string (JSON array, topmost first), path: string): Promise<string>` —
/// what the merged view of the layers has at `path`, as JSON: `{"kind":"file","path":...}`,
/// `{"kind":"dir","layers":[...]}` (the layer directories that show through, topmost first),
/// `{"kind":"other"}` or `{"kind":"missing"}`. Off the event loop.
fn image_entry(env: Env, args: &Args) -> Result<Value, JsError> {
    let dirs = lower_dirs_arg(args, 0)?;
    let path = image_path_arg(args, 1)?;
    js::promise(env, "crisp.imageEntry", move || {
        let found = entry(&dirs, &path).map_err(|e| lookup_error(&path, e))?;
        let text = |p: &Path| p.to_string_lossy().into_owned();
        let json = match found {
            Entry::File(p) => serde_json::json!({ "kind": "file", "path": text(&p) }),
            Entry::Dir(layers) => serde_json::json!({ "kind": "dir", "layers": layers.iter().map(|p| text(p)).collect::<Vec<_>>() }),
            Entry::Other => serde_json::json!({ "kind": "other" }),
            Entry::Missing => serde_json::json!({ "kind": "missing" }),
        };
        Ok(JsonText(json.to_string()))
    })
}

struct JsonText(String);

impl IntoJs for JsonText {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        env.string(&self.0)
    }
}

/// `locateImageFile(lowerDirs: string (JSON array, topmost first), path: string):
/// Promise<{path: string, size: number} | undefined>` — where the merged view of the layers has a
/// regular file at `path` (whiteouts, opaque directories and links respected), off the event loop.
fn locate_image_file(env: Env, args: &Args) -> Result<Value, JsError> {
    let dirs = lower_dirs_arg(args, 0)?;
    let path = image_path_arg(args, 1)?;
    js::promise(env, "crisp.locateImageFile", move || locate(&dirs, &path).map(Location).map_err(|e| lookup_error(&path, e)))
}

struct Location(Located);

impl IntoJs for Location {
    fn into_js(self, env: Env) -> Result<Value, JsError> {
        match self.0 {
            Located::File { path, size } => {
                let out = env.object()?;
                out.set_string("path", &path.to_string_lossy())?;
                out.set_number("size", size as f64)?;
                Ok(out.raw())
            }
            Located::NotAFile => env.undefined(),
        }
    }
}
