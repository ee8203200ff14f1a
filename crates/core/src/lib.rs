//! Plain-Rust core of crisp: everything here is callable and testable without Node.

#![deny(unsafe_op_in_unsafe_fn)]

pub mod identity;
pub mod unpack;
pub mod cgroup;
pub mod monitor_proto;
pub mod ns;
pub mod sys;
pub mod container;
pub mod netns_connect;
pub mod spawn;
pub mod du;
pub mod atomic_file;
pub mod tree;
pub mod layer_lookup;
pub mod lock_file;
pub mod rootfs_diff;
pub mod oci_runtime;
