//! Unpacks one image layer (a possibly compressed tar stream) into a directory in overlayfs
//! layer format, in a single streaming pass: the layer is never held in memory.
//!
//! Contract: `dest` must be a fresh, empty directory private to the caller (typically a temp
//! directory next to its final location). On success the caller renames it into place; on
//! failure its content is unspecified and the caller deletes it. Nothing outside `dest` is ever
//! created, modified or read through a path taken from the archive.
//!
//! Archive semantics follow docker/containerd: names are made relative to `dest`, `..` may not
//! climb out of it (EPATHESCAPE). Stricter than docker: a member whose path goes through a
//! symlink that leaves the layer (absolute, or relative climbing out) is refused as an escape
//! (EPATHESCAPE) rather than reinterpreted inside `dest`; relative in-layer symlinks are followed.
//! Later members replace earlier ones (only directory over directory merges), OCI
//! whiteouts become overlayfs whiteouts (0/0 character devices) and opaque markers become the
//! `trusted.overlay.opaque=y` xattr. Symlinks are resolved within this layer only: a path that
//! goes through a symlink defined by a lower layer cannot be followed here.

mod apply;
mod decompress;
mod error;
mod path;
mod sys;
mod tar;
#[cfg(test)]
mod testutil;
#[cfg(test)]
mod tests;

/// Marks a directory whose lower-layer content overlayfs hides: the unpacker sets it for
/// `.wh..wh..opq` markers and for whiteouts of directories.
pub const OPAQUE_XATTR: &std::ffi::CStr = c"trusted.overlay.opaque";

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::os::fd::AsFd;
use std::path::Path;

pub use decompress::Compression;
pub use error::{errno_name, Error, ErrorKind, Result};

#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Apply the archive's uid/gid. Needs CAP_CHOWN; defaults to whether we run as root.
    pub preserve_ownership: bool,
    /// `syncfs` the destination's filesystem before returning, so a layer the caller commits
    /// by renaming survives a crash.
    pub sync: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        UnpackOptions { preserve_ownership: sys::geteuid() == 0, sync: false }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnpackStats {
    /// Compression found from the stream's magic bytes.
    pub compression: Compression,
    /// Archive members (extended headers and long-name blocks are part of their member).
    pub entries: u64,
    /// Length of the uncompressed tar stream, trailing padding included.
    pub tar_bytes: u64,
    /// `sha256:<hex>` of the uncompressed stream: the layer's diffID.
    pub diff_id: String,
    /// Regular file content written.
    pub bytes_written: u64,
    /// Extended attributes not applied (unsupported by the filesystem, refused `security.*`
    /// names, or reserved `trusted.overlay.*` names).
    pub xattrs_skipped: u64,
}

/// Unpacks the layer file at `src` into `dest`; see the module documentation for the contract.
pub fn unpack_layer_file(src: &Path, dest: &Path, options: &UnpackOptions) -> Result<UnpackStats> {
    let file = File::open(src).map_err(|e| Error::io(format!("open layer {}", src.display()), e))?;
    unpack_layer(file, dest, options)
}

/// Unpacks the layer stream `src` (gzip, zstd or plain tar, detected from its magic bytes)
/// into `dest`; see the module documentation for the contract.
pub fn unpack_layer(src: impl Read, dest: &Path, options: &UnpackOptions) -> Result<UnpackStats> {
    let root = sys::open_root(dest).map_err(|e| Error::io(format!("open destination {}", dest.display()), e))?;
    let (compression, decoded) = decompress::decoder(src)?;
    let mut digest = decompress::DigestReader::new(decoded);
    let mut applier = apply::Applier::new(root, options.preserve_ownership);

    let mut archive = tar::TarReader::new(BufReader::with_capacity(256 << 10, &mut digest));
    let mut entries: u64 = 0;
    while let Some(header) = archive.next_entry()? {
        entries += 1;
        applier
            .apply(&header, &mut archive)
            .map_err(|e| e.context(format!("layer entry {}", path::show(&header.name))))?;
    }
    applier.finish()?;
    // The diffID covers the whole stream, including the padding after the end-of-archive marker.
    io::copy(&mut archive.into_inner(), &mut io::sink()).map_err(|e| Error::io("read layer", e))?;

    if options.sync {
        sys::syncfs(applier.root().as_fd()).map_err(|e| Error::io(format!("sync {}", dest.display()), e))?;
    }
    Ok(UnpackStats {
        compression,
        entries,
        tar_bytes: digest.byte_count(),
        diff_id: digest.digest(),
        bytes_written: applier.bytes_written,
        xattrs_skipped: applier.xattrs_skipped,
    })
}
