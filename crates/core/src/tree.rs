//! Removing a directory tree in one call. Node's recursive rm walks the tree from JavaScript
//! with a trip to the threadpool per entry; a container's writable layer and bundle go on every
//! RemoveContainer, so they are removed here in one worker task instead.

use std::fs;
use std::io;
use std::path::Path;

/// Removes `path` and everything under it; a missing path is fine. Symlinks inside are removed,
/// never followed (the tree may hold what a container wrote).
pub fn remove_tree(path: &Path) -> io::Result<()> {
    let meta = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let result = if meta.is_dir() { fs::remove_dir_all(path) } else { fs::remove_file(path) };
    match result {
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    #[test]
    fn removes_a_tree_without_following_links_out_of_it() {
        let base = std::env::temp_dir().join(format!("crisp-tree-{}", std::process::id()));
        let _ = fs::remove_dir_all(&base);
        let outside = base.join("outside");
        let tree = base.join("tree");
        fs::create_dir_all(&outside).unwrap();
        fs::write(outside.join("keep"), b"x").unwrap();
        fs::create_dir_all(tree.join("a/b")).unwrap();
        fs::write(tree.join("a/b/f"), b"x").unwrap();
        symlink(&outside, tree.join("a/link-to-outside")).unwrap();
        symlink("/", tree.join("root-link")).unwrap();
        remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(outside.join("keep").exists(), "a symlink in the tree is removed, not followed");
        remove_tree(&tree).unwrap();
        // A file or a dangling link is removed as itself.
        symlink(base.join("nowhere"), base.join("dangling")).unwrap();
        remove_tree(&base.join("dangling")).unwrap();
        assert!(fs::symlink_metadata(base.join("dangling")).is_err());
        fs::remove_dir_all(&base).unwrap();
    }
}
