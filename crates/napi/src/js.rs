//! Safe layer over the raw Node-API declarations: values, errors, argument extraction,
//! function registration and promises settled from libuv's threadpool.
//!
//! Rules every export gets for free: a Rust error becomes a JS exception (sync) or a rejected
//! promise (async) whose `code` property is the error's code, and a panic never unwinds into
//! node; it is caught and reported the same way with code `EPANIC`.

// Helpers for every export area; a given area uses only some of them.
#![allow(dead_code)]

use std::any::Any;
use std::borrow::Cow;
use std::ffi::{c_char, c_void, CStr, CString};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::ptr::null_mut;

use crate::sys;

pub type Value = sys::napi_value;

/// An error destined for JS: an `Error` (or `TypeError`) with `code` and `message`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JsError {
    pub code: Cow<'static, str>,
    pub message: String,
    pub is_type_error: bool,
}

impl JsError {
    pub fn new(code: impl Into<Cow<'static, str>>, message: impl Into<String>) -> JsError {
        JsError { code: code.into(), message: message.into(), is_type_error: false }
    }

    /// Wrong argument type, as Node reports it for its own APIs.
    pub fn invalid_arg_type(message: impl Into<String>) -> JsError {
        JsError { code: Cow::Borrowed("ERR_INVALID_ARG_TYPE"), message: message.into(), is_type_error: true }
    }

    /// Right type, unacceptable value.
    pub fn invalid_arg_value(message: impl Into<String>) -> JsError {
        JsError { code: Cow::Borrowed("ERR_INVALID_ARG_VALUE"), message: message.into(), is_type_error: true }
    }

    fn from_panic(payload: Box<dyn Any + Send>) -> JsError {
        let detail = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".to_string());
        JsError::new("EPANIC", format!("internal error in the native addon: {detail}"))
    }
}

/// A Node-API environment, valid for the duration of the callback that received it.
#[derive(Clone, Copy)]
pub struct Env {
    raw: sys::napi_env,
}

impl Env {
    /// # Safety
    /// `raw` must be the env node passed to the currently running callback.
    pub unsafe fn from_raw(raw: sys::napi_env) -> Env {
        Env { raw }
    }

    /// Turns a failed status into an error, with node's description of what went wrong.
    fn check(self, status: sys::napi_status, what: &str) -> Result<(), JsError> {
        if status == sys::NAPI_OK {
            return Ok(());
        }
        let mut info: *const sys::napi_extended_error_info = std::ptr::null();
        // SAFETY: env is live; info receives a pointer owned by node, valid until the next call.
        let detail = unsafe {
            if sys::napi_get_last_error_info(self.raw, &mut info) == sys::NAPI_OK
                && !info.is_null()
                && !(*info).error_message.is_null()
            {
                CStr::from_ptr((*info).error_message).to_string_lossy().into_owned()
            } else {
                format!("status {status}")
            }
        };
        Err(JsError::new("ENAPI", format!("{what}: {detail}")))
    }

    pub fn undefined(self) -> Result<Value, JsError> {
        let mut value = null_mut();
        // SAFETY: env is live and `value` is a valid out pointer.
        self.check(unsafe { sys::napi_get_undefined(self.raw, &mut value) }, "get undefined")?;
        Ok(value)
    }

    pub fn string(self, s: &str) -> Result<Value, JsError> {
        let mut value = null_mut();
        // SAFETY: pointer and length describe `s`, which outlives the call.
        let status = unsafe { sys::napi_create_string_utf8(self.raw, s.as_ptr().cast::<c_char>(), s.len(), &mut value) };
        self.check(status, "create string")?;
        Ok(value)
    }

    /// A JS number. Integers above 2^53 lose precision; byte counts never get there.
    pub fn number(self, n: f64) -> Result<Value, JsError> {
        let mut value = null_mut();
        // SAFETY: env is live and `value` is a valid out pointer.
        self.check(unsafe { sys::napi_create_double(self.raw, n, &mut value) }, "create number")?;
        Ok(value)
    }

    pub fn boolean(self, b: bool) -> Result<Value, JsError> {
        let mut value = null_mut();
        // SAFETY: env is live and `value` is a valid out pointer.
        self.check(unsafe { sys::napi_get_boolean(self.raw, b, &mut value) }, "create boolean")?;
        Ok(value)
    }

    pub fn object(self) -> Result<Object, JsError> {
        let mut value = null_mut();
        // SAFETY: env is live and `value` is a valid out pointer.
        self.check(unsafe { sys::napi_create_object(self.raw, &mut value) }, "create object")?;
        Ok(Object { env: self, raw: value })
    }

    /// An `Error` (or `TypeError`) object carrying `code`.
    pub fn error(self, err: &JsError) -> Result<Value, JsError> {
        let code = self.string(&err.code)?;
        let message = self.string(&err.message)?;
        let mut value = null_mut();
        // SAFETY: env is live; code and message are string values created above.
        let status = unsafe {
            if err.is_type_error {
                sys::napi_create_type_error(self.raw, code, message, &mut value)
            } else {
                sys::napi_create_error(self.raw, code, message, &mut value)
            }
        };
        self.check(status, "create error")?;
        Ok(value)
    }

    /// Throws `err` unless an exception is already pending (which then wins).
    fn throw(self, err: &JsError) {
        let mut pending = false;
        // SAFETY: env is live; `pending` is a valid out pointer.
        if unsafe { sys::napi_is_exception_pending(self.raw, &mut pending) } == sys::NAPI_OK && pending {
            return;
        }
        match self.error(err) {
            // SAFETY: env is live and `value` is an error object created in this scope.
            Ok(value) => unsafe {
                sys::napi_throw(self.raw, value);
            },
            Err(_) => {
                // Creating the error object failed; fall back to the plain C-string variant.
                let code = CString::new(err.code.as_bytes()).unwrap_or_default();
                let message = CString::new(err.message.replace('\0', " ")).unwrap_or_default();
                // SAFETY: env is live; both strings are NUL-terminated and outlive the call.
                unsafe {
                    sys::napi_throw_error(self.raw, code.as_ptr(), message.as_ptr());
                }
            }
        }
    }

    fn type_name(self, value: Value) -> &'static str {
        let mut kind = sys::NAPI_UNDEFINED;
        // SAFETY: env is live; `value` came from node in this scope.
        if unsafe { sys::napi_typeof(self.raw, value, &mut kind) } != sys::NAPI_OK {
            return "unknown";
        }
        match kind {
            sys::NAPI_UNDEFINED => "undefined",
            sys::NAPI_NULL => "null",
            sys::NAPI_BOOLEAN => "boolean",
            sys::NAPI_NUMBER => "number",
            sys::NAPI_STRING => "string",
            sys::NAPI_SYMBOL => "symbol",
            sys::NAPI_OBJECT => "object",
            sys::NAPI_FUNCTION => "function",
            sys::NAPI_EXTERNAL => "external",
            sys::NAPI_BIGINT => "bigint",
            _ => "unknown",
        }
    }
}

/// A JS object being built or read.
#[derive(Clone, Copy)]
pub struct Object {
    env: Env,
    raw: Value,
}

impl Object {
    pub fn raw(self) -> Value {
        self.raw
    }

    pub fn set(self, name: &str, value: Value) -> Result<(), JsError> {
        let name_c = property_name(name)?;
        // SAFETY: env is live; object and value were created in this scope; name is NUL-terminated.
        let status = unsafe { sys::napi_set_named_property(self.env.raw, self.raw, name_c.as_ptr(), value) };
        self.env.check(status, &format!("set property {name}"))
    }

    pub fn set_string(self, name: &str, value: &str) -> Result<(), JsError> {
        self.set(name, self.env.string(value)?)
    }

    pub fn set_number(self, name: &str, value: f64) -> Result<(), JsError> {
        self.set(name, self.env.number(value)?)
    }

    pub fn get(self, name: &str) -> Result<Value, JsError> {
        let name_c = property_name(name)?;
        let mut value = null_mut();
        // SAFETY: env is live; object was obtained in this scope; name is NUL-terminated.
        let status = unsafe { sys::napi_get_named_property(self.env.raw, self.raw, name_c.as_ptr(), &mut value) };
        self.env.check(status, &format!("get property {name}"))?;
        Ok(value)
    }
}

fn property_name(name: &str) -> Result<CString, JsError> {
    CString::new(name).map_err(|_| JsError::new("ENAPI", format!("property name {name:?} contains a NUL byte")))
}

const MAX_ARGS: usize = 8;

/// The arguments of a call, with typed accessors that throw Node-style TypeErrors.
pub struct Args {
    env: Env,
    argv: [Value; MAX_ARGS],
    argc: usize,
}

impl Args {
    /// The raw argument; `undefined` past the end.
    fn get(&self, index: usize) -> Result<Value, JsError> {
        match self.argv.get(index) {
            Some(value) if index < self.argc => Ok(*value),
            _ => self.env.undefined(),
        }
    }

    fn received(&self, value: Value) -> String {
        match self.env.type_name(value) {
            kind @ ("undefined" | "null") => format!("Received {kind}"),
            kind => format!("Received type {kind}"),
        }
    }

    fn is(&self, value: Value, kind: &str) -> bool {
        self.env.type_name(value) == kind
    }

    pub fn string(&self, index: usize, name: &str) -> Result<String, JsError> {
        let value = self.get(index)?;
        if !self.is(value, "string") {
            return Err(JsError::invalid_arg_type(format!(
                "The \"{name}\" argument must be of type string. {}",
                self.received(value)
            )));
        }
        let env = self.env;
        let mut len = 0usize;
        // SAFETY: a NULL buffer asks only for the length in bytes, excluding the terminator.
        let status = unsafe { sys::napi_get_value_string_utf8(env.raw, value, null_mut(), 0, &mut len) };
        env.check(status, &format!("read argument {name}"))?;
        let mut buf = vec![0u8; len + 1];
        let mut written = 0usize;
        // SAFETY: `buf` has room for `len` bytes plus the NUL node always writes.
        let status = unsafe {
            sys::napi_get_value_string_utf8(env.raw, value, buf.as_mut_ptr().cast::<c_char>(), buf.len(), &mut written)
        };
        env.check(status, &format!("read argument {name}"))?;
        buf.truncate(written);
        // Node hands out valid UTF-8 (lone surrogates become U+FFFD).
        Ok(String::from_utf8(buf).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
    }

    /// A string usable as a filesystem path (no NUL bytes).
    pub fn path(&self, index: usize, name: &str) -> Result<String, JsError> {
        let path = self.string(index, name)?;
        if path.is_empty() || path.contains('\0') {
            return Err(JsError::invalid_arg_value(format!(
                "The \"{name}\" argument must be a non-empty path without NUL bytes. Received {path:?}"
            )));
        }
        Ok(path)
    }

    /// A string that must be one of `allowed`.
    pub fn one_of(&self, index: usize, name: &str, allowed: &[&str]) -> Result<String, JsError> {
        let value = self.string(index, name)?;
        if !allowed.contains(&value.as_str()) {
            let list = allowed.iter().map(|a| format!("'{a}'")).collect::<Vec<_>>().join(", ");
            return Err(JsError::invalid_arg_value(format!(
                "The \"{name}\" argument must be one of {list}. Received '{value}'"
            )));
        }
        Ok(value)
    }

    pub fn number(&self, index: usize, name: &str) -> Result<f64, JsError> {
        let value = self.get(index)?;
        let mut n = 0f64;
        // SAFETY: env is live; `n` is a valid out pointer.
        let status = unsafe { sys::napi_get_value_double(self.env.raw, value, &mut n) };
        if status == sys::NAPI_NUMBER_EXPECTED {
            return Err(JsError::invalid_arg_type(format!(
                "The \"{name}\" argument must be of type number. {}",
                self.received(value)
            )));
        }
        self.env.check(status, &format!("read argument {name}"))?;
        Ok(n)
    }

    pub fn boolean(&self, index: usize, name: &str) -> Result<bool, JsError> {
        self.bool_value(self.get(index)?, &format!("\"{name}\" argument"))
    }

    /// `value` as a boolean; `what` names it in the TypeError (`"x" argument`, `"o.p" property`).
    fn bool_value(&self, value: Value, what: &str) -> Result<bool, JsError> {
        let mut b = false;
        // SAFETY: env is live; `b` is a valid out pointer.
        let status = unsafe { sys::napi_get_value_bool(self.env.raw, value, &mut b) };
        if status == sys::NAPI_BOOLEAN_EXPECTED {
            return Err(JsError::invalid_arg_type(format!("The {what} must be of type boolean. {}", self.received(value))));
        }
        self.env.check(status, &format!("read {what}"))?;
        Ok(b)
    }

    /// An optional object argument (`undefined` or absent gives `None`).
    pub fn optional_object(&self, index: usize, name: &str) -> Result<Option<Object>, JsError> {
        let value = self.get(index)?;
        if self.is(value, "undefined") {
            return Ok(None);
        }
        if !self.is(value, "object") {
            return Err(JsError::invalid_arg_type(format!(
                "The \"{name}\" argument must be of type object. {}",
                self.received(value)
            )));
        }
        Ok(Some(Object { env: self.env, raw: value }))
    }

    /// An optional boolean property of an options object.
    pub fn optional_bool_property(&self, object: Object, property: &str, option: &str) -> Result<Option<bool>, JsError> {
        let value = object.get(property)?;
        if self.is(value, "undefined") {
            return Ok(None);
        }
        self.bool_value(value, &format!("\"{option}.{property}\" property")).map(Some)
    }
}

/// A synchronous export: gets the call's arguments, returns a value or an error to throw.
pub type Callback = fn(Env, &Args) -> Result<Value, JsError>;

/// Adds `callback` to `exports` as function `name`.
pub fn register(env: Env, exports: Value, name: &str, callback: Callback) -> Result<(), JsError> {
    let name_c = property_name(name)?;
    let mut function = null_mut();
    // SAFETY: env is live; the callback pointer travels as the function's data and is turned back
    // into a `Callback` by `trampoline`, its only reader.
    let status = unsafe {
        sys::napi_create_function(
            env.raw,
            name_c.as_ptr(),
            sys::NAPI_AUTO_LENGTH,
            Some(trampoline),
            callback as *mut c_void,
            &mut function,
        )
    };
    env.check(status, &format!("create function {name}"))?;
    Object { env, raw: exports }.set(name, function)
}

unsafe extern "C" fn trampoline(raw_env: sys::napi_env, info: sys::napi_callback_info) -> Value {
    // SAFETY: node passes the env of this very call.
    let env = unsafe { Env::from_raw(raw_env) };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut args = Args { env, argv: [null_mut(); MAX_ARGS], argc: MAX_ARGS };
        let mut data: *mut c_void = null_mut();
        // SAFETY: argv has room for `argc` values; the other out pointers are valid.
        let status = unsafe {
            sys::napi_get_cb_info(raw_env, info, &mut args.argc, args.argv.as_mut_ptr(), null_mut(), &mut data)
        };
        env.check(status, "read call arguments")?;
        // SAFETY: `register` stored a `Callback` as this function's data.
        let callback = unsafe { std::mem::transmute::<*mut c_void, Callback>(data) };
        callback(env, &args)
    }));
    let err = match outcome {
        Ok(Ok(value)) => return value,
        Ok(Err(err)) => err,
        Err(panic) => JsError::from_panic(panic),
    };
    env.throw(&err);
    null_mut()
}

/// Result types of async work, converted on the JS thread once the work is done.
pub trait IntoJs {
    fn into_js(self, env: Env) -> Result<Value, JsError>;
}

struct AsyncTask<T, F> {
    work: Option<F>,
    outcome: Option<Result<T, JsError>>,
    deferred: sys::napi_deferred,
    handle: sys::napi_async_work,
}

/// Runs `work` on libuv's threadpool and returns a promise settled with its result. `name`
/// labels the work in async_hooks and diagnostics.
pub fn promise<T, F>(env: Env, name: &str, work: F) -> Result<Value, JsError>
where
    F: FnOnce() -> Result<T, JsError> + Send + 'static,
    T: IntoJs + Send + 'static,
{
    let resource_name = env.string(name)?;
    let mut deferred = null_mut();
    let mut promise = null_mut();
    // SAFETY: env is live; both out pointers are valid.
    env.check(unsafe { sys::napi_create_promise(env.raw, &mut deferred, &mut promise) }, "create promise")?;

    let task = Box::into_raw(Box::new(AsyncTask::<T, F> { work: Some(work), outcome: None, deferred, handle: null_mut() }));
    // SAFETY: `task` is a live allocation whose ownership passes to `complete_task`, which node
    // calls exactly once after `execute_task` ran (or the work was cancelled).
    let status = unsafe {
        sys::napi_create_async_work(
            env.raw,
            null_mut(),
            resource_name,
            Some(execute_task::<T, F>),
            Some(complete_task::<T, F>),
            task.cast::<c_void>(),
            &mut (*task).handle,
        )
    };
    if let Err(err) = env.check(status, "create async work") {
        // SAFETY: node did not take the task; we still own it.
        drop(unsafe { Box::from_raw(task) });
        reject(env, deferred, &err);
        return Ok(promise);
    }
    // SAFETY: env is live and the handle was just created.
    let status = unsafe { sys::napi_queue_async_work(env.raw, (*task).handle) };
    if let Err(err) = env.check(status, "queue async work") {
        // SAFETY: the work was never queued, so its callbacks will not run; we still own the task.
        let task = unsafe { Box::from_raw(task) };
        // SAFETY: the handle is valid and not queued.
        unsafe { sys::napi_delete_async_work(env.raw, task.handle) };
        reject(env, deferred, &err);
    }
    Ok(promise)
}

/// Threadpool side: runs the work and stores its outcome. Must not touch JS.
unsafe extern "C" fn execute_task<T, F>(_env: sys::napi_env, data: *mut c_void)
where
    F: FnOnce() -> Result<T, JsError> + Send + 'static,
    T: IntoJs + Send + 'static,
{
    // SAFETY: `data` is the task from `promise`; until `complete_task` runs, only this thread uses it.
    let task = unsafe { &mut *data.cast::<AsyncTask<T, F>>() };
    let outcome = catch_unwind(AssertUnwindSafe(|| match task.work.take() {
        Some(work) => work(),
        None => Err(JsError::new("EPANIC", "async work executed twice")),
    }));
    task.outcome = Some(outcome.unwrap_or_else(|panic| Err(JsError::from_panic(panic))));
}

/// JS thread side: frees the work and settles the promise.
unsafe extern "C" fn complete_task<T, F>(raw_env: sys::napi_env, status: sys::napi_status, data: *mut c_void)
where
    F: FnOnce() -> Result<T, JsError> + Send + 'static,
    T: IntoJs + Send + 'static,
{
    // SAFETY: node passes the env of this callback and hands the task back exactly once.
    let (env, mut task) = unsafe { (Env::from_raw(raw_env), Box::from_raw(data.cast::<AsyncTask<T, F>>())) };
    // SAFETY: the work has finished; deleting its handle inside the complete callback is allowed.
    unsafe { sys::napi_delete_async_work(raw_env, task.handle) };
    let deferred = task.deferred;

    let settlement = catch_unwind(AssertUnwindSafe(|| {
        let outcome = match status {
            sys::NAPI_OK => task
                .outcome
                .take()
                .unwrap_or_else(|| Err(JsError::new("EPANIC", "async work completed without an outcome"))),
            sys::NAPI_CANCELLED => Err(JsError::new("ECANCELED", "the operation was cancelled")),
            other => Err(JsError::new("ENAPI", format!("async work failed with Node-API status {other}"))),
        };
        outcome.and_then(|value| value.into_js(env))
    }));
    let (resolve, value) = match settlement {
        Ok(Ok(value)) => (true, Ok(value)),
        Ok(Err(err)) => (false, env.error(&err)),
        Err(panic) => (false, env.error(&JsError::from_panic(panic))),
    };
    // Settling consumes the deferred even when it fails, so it is attempted exactly once. If not
    // even an error object can be made, an exception is pending and node reports that instead.
    if let Ok(value) = value {
        // SAFETY: env is live; the deferred has not been settled yet.
        unsafe {
            if resolve {
                sys::napi_resolve_deferred(env.raw, deferred, value);
            } else {
                sys::napi_reject_deferred(env.raw, deferred, value);
            }
        }
    }
}

/// Rejects a deferred that was never handed to node's settle functions.
fn reject(env: Env, deferred: sys::napi_deferred, err: &JsError) {
    if let Ok(error) = env.error(err) {
        // SAFETY: env is live and the deferred is unsettled.
        unsafe { sys::napi_reject_deferred(env.raw, deferred, error) };
    }
}

/// An export area's `register(env, exports)`.
pub type RegisterArea = fn(Env, Value) -> Result<(), JsError>;

/// Body of `napi_register_module_v1`: runs each area's `register` on `exports`.
///
/// # Safety
/// `raw_env` and `exports` must be the arguments node passed to the module initialiser.
pub unsafe fn init_module(
    raw_env: sys::napi_env,
    exports: Value,
    areas: &[RegisterArea],
) -> Value {
    // SAFETY: forwarded from node's call of the initialiser.
    let env = unsafe { Env::from_raw(raw_env) };
    let outcome = catch_unwind(AssertUnwindSafe(|| areas.iter().try_for_each(|register| register(env, exports))));
    let err = match outcome {
        Ok(Ok(())) => return exports,
        Ok(Err(err)) => err,
        Err(panic) => JsError::from_panic(panic),
    };
    env.throw(&err);
    null_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn panic_payloads_become_epanic_errors() {
        let from_str = catch_unwind(|| panic!("static message")).unwrap_err();
        let err = JsError::from_panic(from_str);
        assert_eq!(err.code, "EPANIC");
        assert!(err.message.ends_with("static message"), "{}", err.message);

        let value = 7;
        let from_string = catch_unwind(|| panic!("formatted {value}")).unwrap_err();
        assert!(JsError::from_panic(from_string).message.ends_with("formatted 7"));
    }

    #[test]
    fn argument_errors_are_type_errors_with_node_codes() {
        let err = JsError::invalid_arg_type("bad");
        assert!(err.is_type_error);
        assert_eq!(err.code, "ERR_INVALID_ARG_TYPE");
        let err = JsError::invalid_arg_value("bad");
        assert!(err.is_type_error);
        assert_eq!(err.code, "ERR_INVALID_ARG_VALUE");
        assert!(!JsError::new("EPATHESCAPE", "x").is_type_error);
    }
}
