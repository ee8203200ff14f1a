//! Lexical normalisation of archive member names.
//!
//! Names are made relative to the layer root (a leading `/` is dropped, as docker does), `.` and
//! empty components vanish and `..` is folded into its parent. A `..` that would climb above the
//! root is an escape attempt and fails the unpack. Symlinks are not considered here: they are
//! resolved by the kernel, confined to the root, when the path is used.

use std::ffi::CString;

use super::error::{Error, Result};

/// A cleaned member name: zero or more components, none empty, `.`, `..` or containing `/`.
/// Zero components means the layer root itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RelPath {
    components: Vec<Vec<u8>>,
}

impl RelPath {
    pub fn parse(name: &[u8]) -> Result<RelPath> {
        if name.contains(&0) {
            return Err(Error::format("name contains a NUL byte"));
        }
        let mut components: Vec<Vec<u8>> = Vec::new();
        for component in name.split(|&b| b == b'/') {
            match component {
                b"" | b"." => {}
                b".." => {
                    if components.pop().is_none() {
                        return Err(Error::path_escape("escapes the layer root"));
                    }
                }
                _ => components.push(component.to_vec()),
            }
        }
        Ok(RelPath { components })
    }

    pub fn components(&self) -> &[Vec<u8>] {
        &self.components
    }

    /// The containing directory and the last component; `None` for the root.
    pub fn split_last(&self) -> Option<(RelPath, &[u8])> {
        let (last, parent) = self.components.split_last()?;
        Some((RelPath { components: parent.to_vec() }, last.as_slice()))
    }

    /// The first `n` components.
    pub fn prefix(&self, n: usize) -> RelPath {
        RelPath { components: self.components[..n].to_vec() }
    }

    /// The path as a relative C string; the root is `.`.
    pub fn to_cstring(&self) -> CString {
        if self.components.is_empty() {
            return CString::new(".").expect("no NUL");
        }
        CString::new(self.components.join(&b'/')).expect("components were checked for NUL bytes")
    }

    pub fn display(&self) -> String {
        if self.components.is_empty() {
            return "/".to_string();
        }
        String::from_utf8_lossy(&self.components.join(&b'/')).into_owned()
    }
}

/// Quoted, lossily decoded byte string for error messages.
pub fn show(name: &[u8]) -> String {
    format!("{:?}", String::from_utf8_lossy(name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(name: &str) -> Result<String> {
        RelPath::parse(name.as_bytes()).map(|p| p.display())
    }

    #[test]
    fn plain_names_are_unchanged() {
        assert_eq!(clean("usr/bin/env").unwrap(), "usr/bin/env");
        assert_eq!(clean("etc/").unwrap(), "etc");
    }

    #[test]
    fn absolute_names_become_relative() {
        assert_eq!(clean("/etc/passwd").unwrap(), "etc/passwd");
        assert_eq!(clean("//etc//x").unwrap(), "etc/x");
    }

    #[test]
    fn dots_are_folded() {
        assert_eq!(clean("./a/./b/../c").unwrap(), "a/c");
        assert_eq!(clean("a/..").unwrap(), "/");
        assert!(RelPath::parse(b"./").unwrap().split_last().is_none());
    }

    #[test]
    fn climbing_above_the_root_is_an_escape() {
        for name in ["..", "../x", "a/../../x", "/../etc/passwd", "./../x"] {
            let err = clean(name).unwrap_err();
            assert_eq!(err.code(), "EPATHESCAPE", "{name}");
        }
    }

    #[test]
    fn nul_bytes_are_rejected() {
        assert_eq!(RelPath::parse(b"a\0b").unwrap_err().code(), "EFORMAT");
    }

    #[test]
    fn split_last_gives_parent_and_base() {
        let path = RelPath::parse(b"a/b/c").unwrap();
        let (parent, base) = path.split_last().unwrap();
        assert_eq!(parent.display(), "a/b");
        assert_eq!(base, b"c");
        assert_eq!(parent.to_cstring().as_bytes(), b"a/b");
        assert_eq!(RelPath::parse(b"/").unwrap().to_cstring().as_bytes(), b".");
        assert!(RelPath::parse(b"/").unwrap().split_last().is_none());
    }
}
