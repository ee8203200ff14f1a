//! crisp's Node addon. Each area lives in its own module exposing
//! `pub fn register(env, exports) -> Result<(), JsError>`, listed in `AREAS`.

#![deny(unsafe_op_in_unsafe_fn)]

mod cgroup;
mod image;
mod js;
mod net;
mod ns;
mod proc;
mod sys;

const AREAS: &[js::RegisterArea] = &[image::register, cgroup::register, ns::register, net::register, proc::register];

/// Module entry point node looks up when it loads the addon.
///
/// # Safety
/// Only node calls this, with a live env and the module's exports object.
#[no_mangle]
pub unsafe extern "C" fn napi_register_module_v1(env: sys::napi_env, exports: sys::napi_value) -> sys::napi_value {
    // SAFETY: forwarded unchanged from node.
    unsafe { js::init_module(env, exports, AREAS) }
}

/// The Node-API version the addon is written against; node uses it to pick behaviours.
#[no_mangle]
pub extern "C" fn node_api_module_get_api_version_v1() -> i32 {
    8
}
