//! Image exports: layer unpacking and the core's version.

use std::path::Path;

use crisp_core::unpack::{unpack_layer_file, UnpackOptions, UnpackStats};

use crate::js::{self, Args, Env, IntoJs, JsError, Value};

pub fn register(env: Env, exports: Value) -> Result<(), JsError> {
    js::register(env, exports, "coreVersion", core_version)?;
    js::register(env, exports, "unpackLayer", unpack_layer)?;
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
