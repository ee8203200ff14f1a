//! Errors of the layer unpacker. Each carries a stable string code that crosses the Node boundary
//! unchanged, so callers can branch on it without parsing messages.

use std::fmt;
use std::io;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// An entry name or hardlink target would resolve outside the destination.
    PathEscape,
    /// The stream is not a well-formed (compressed) tar archive.
    Format,
    /// Well-formed, but uses a tar feature this unpacker deliberately does not implement.
    Unsupported,
    /// A system call failed; the value is the errno.
    Os(i32),
    /// An I/O error without an errno (for example a failure inside a decoder).
    Io,
}

#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    message: String,
}

impl Error {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Error {
        Error { kind, message: message.into() }
    }

    pub fn path_escape(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::PathEscape, message)
    }

    pub fn format(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Format, message)
    }

    pub fn unsupported(message: impl Into<String>) -> Error {
        Error::new(ErrorKind::Unsupported, message)
    }

    /// Wraps an I/O error with what was being done when it happened. Decoder and truncation
    /// errors (no errno, InvalidData/UnexpectedEof) mean the layer itself is corrupt.
    pub fn io(context: impl fmt::Display, err: io::Error) -> Error {
        let kind = match err.raw_os_error() {
            Some(errno) => ErrorKind::Os(errno),
            None => match err.kind() {
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput | io::ErrorKind::UnexpectedEof => {
                    ErrorKind::Format
                }
                _ => ErrorKind::Io,
            },
        };
        Error { kind, message: format!("{context}: {err}") }
    }

    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    pub fn message(&self) -> &str {
        &self.message
    }

    /// Stable code for the JS side: `EPATHESCAPE`, `EFORMAT`, `EUNSUPPORTED`, an errno name such
    /// as `ENOENT`, or `EIO` for errno-less I/O failures.
    pub fn code(&self) -> &'static str {
        match self.kind {
            ErrorKind::PathEscape => "EPATHESCAPE",
            ErrorKind::Format => "EFORMAT",
            ErrorKind::Unsupported => "EUNSUPPORTED",
            ErrorKind::Os(errno) => errno_name(errno),
            ErrorKind::Io => "EIO",
        }
    }

    /// Prefixes the message with more context, keeping the kind.
    pub fn context(self, context: impl fmt::Display) -> Error {
        Error { kind: self.kind, message: format!("{context}: {}", self.message) }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

/// Symbolic name of an errno, as Node reports it in `err.code` for its own fs errors.
pub fn errno_name(errno: i32) -> &'static str {
    match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EIO => "EIO",
        libc::ENXIO => "ENXIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::EXDEV => "EXDEV",
        libc::ENODEV => "ENODEV",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ETXTBSY => "ETXTBSY",
        libc::EFBIG => "EFBIG",
        libc::ENOSPC => "ENOSPC",
        libc::EROFS => "EROFS",
        libc::EMLINK => "EMLINK",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ENOSYS => "ENOSYS",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ELOOP => "ELOOP",
        libc::ENODATA => "ENODATA",
        libc::EOPNOTSUPP => "ENOTSUP",
        libc::EDQUOT => "EDQUOT",
        libc::ESTALE => "ESTALE",
        libc::ECANCELED => "ECANCELED",
        _ => "EUNKNOWN",
    }
}

pub type Result<T> = std::result::Result<T, Error>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_keep_their_errno_name() {
        let err = Error::io("open layer", io::Error::from_raw_os_error(libc::ENOENT));
        assert_eq!(err.code(), "ENOENT");
        assert!(err.message().starts_with("open layer: "));
    }

    #[test]
    fn decoder_errors_are_format_errors() {
        let err = Error::io("read layer", io::Error::new(io::ErrorKind::InvalidData, "corrupt deflate stream"));
        assert_eq!(err.code(), "EFORMAT");
        let err = Error::io("read layer", io::Error::from(io::ErrorKind::UnexpectedEof));
        assert_eq!(err.code(), "EFORMAT");
    }

    #[test]
    fn context_keeps_the_kind() {
        let err = Error::path_escape("escapes the layer root").context("layer entry \"../x\"");
        assert_eq!(err.code(), "EPATHESCAPE");
        assert_eq!(err.message(), "layer entry \"../x\": escapes the layer root");
    }
}
