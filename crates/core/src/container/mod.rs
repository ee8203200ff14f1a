//! Launching containers natively: the OCI runtime-spec subset crisp honours ([`spec`]), its
//! translation into a fork-safe launch plan ([`plan`]), the code running between fork and
//! execve ([`child`]), and the pieces around it (capabilities, mount options, the seccomp
//! compiler, CRI log records, ptys).
//!
//! The monitor calls [`plan::container_plan`] (everything that allocates happens there), then
//! [`launch::spawn_container`] with the descriptors the child should use; the child reports
//! through a close-on-exec status pipe and waits on a gate pipe before execve.

pub mod caps;
pub mod child;
pub mod crilog;
pub mod launch;
pub mod lsm;
pub mod mounts;
pub mod plan;
pub mod pty;
pub mod seccomp;
pub mod spec;
mod syscalls;

#[cfg(test)]
mod live_tests;
