//! systemd cgroup naming: slices nest by their dash-separated prefixes, so
//! `kubepods-burstable-pod1.slice` lives at
//! `/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice`.

use super::{Error, Result};

const SLICE_SUFFIX: &str = ".slice";

/// Whether `s` is a slice unit name (as opposed to a cgroupfs path).
pub fn is_slice_name(s: &str) -> bool {
    s.ends_with(SLICE_SUFFIX) && !s.contains('/')
}

/// Expands a slice name into its cgroup path. `-.slice` is the root slice.
pub fn expand_slice(slice: &str) -> Result<String> {
    let invalid = || Error::InvalidArgument(format!("invalid systemd slice name {:?}", slice));
    let stem = slice.strip_suffix(SLICE_SUFFIX).ok_or_else(invalid)?;
    if stem.contains('/') {
        return Err(invalid());
    }
    if stem == "-" {
        return Ok("/".to_owned());
    }
    let mut path = String::new();
    let mut prefix = String::new();
    for component in stem.split('-') {
        // Leading, trailing or doubled dashes leave an empty component.
        if component.is_empty() {
            return Err(invalid());
        }
        if !prefix.is_empty() {
            prefix.push('-');
        }
        prefix.push_str(component);
        path.push('/');
        path.push_str(&prefix);
        path.push_str(SLICE_SUFFIX);
    }
    Ok(path)
}

/// The path of a transient scope `<prefix>-<name>.scope` inside `slice` (the systemd driver's
/// `slice:prefix:name` cgroup form). An empty prefix gives `<name>.scope`.
pub fn scope_path(slice: &str, prefix: &str, name: &str) -> Result<String> {
    if name.is_empty() || name.contains('/') || prefix.contains('/') {
        return Err(Error::InvalidArgument(format!("invalid systemd scope name {:?}/{:?}", prefix, name)));
    }
    let base = expand_slice(slice)?;
    let unit = if prefix.is_empty() { format!("{}.scope", name) } else { format!("{}-{}.scope", prefix, name) };
    Ok(if base == "/" { format!("/{}", unit) } else { format!("{}/{}", base, unit) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_slices_expand_to_nested_paths() {
        assert_eq!(expand_slice("kubepods.slice").unwrap(), "/kubepods.slice");
        assert_eq!(expand_slice("kubepods-besteffort.slice").unwrap(), "/kubepods.slice/kubepods-besteffort.slice");
        assert_eq!(
            expand_slice("kubepods-burstable-pod6f2a8c9e_1b2c_4d5e_8f90_123456789abc.slice").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod6f2a8c9e_1b2c_4d5e_8f90_123456789abc.slice"
        );
        assert_eq!(expand_slice("-.slice").unwrap(), "/");
    }

    #[test]
    fn malformed_slices_are_rejected() {
        for bad in ["kubepods", "-kubepods.slice", "kubepods-.slice", "kube--pods.slice", "a/b.slice", ".slice"] {
            assert!(expand_slice(bad).is_err(), "{} should be rejected", bad);
        }
    }

    #[test]
    fn slice_name_detection() {
        assert!(is_slice_name("kubepods-burstable.slice"));
        assert!(!is_slice_name("/kubepods/burstable"));
        assert!(!is_slice_name("/kubepods.slice/kubepods-burstable.slice"));
    }

    #[test]
    fn scopes_nest_under_their_slice() {
        assert_eq!(
            scope_path("kubepods-besteffort-pod1.slice", "crisp", "abc").unwrap(),
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/crisp-abc.scope"
        );
        assert_eq!(scope_path("-.slice", "", "x").unwrap(), "/x.scope");
        assert!(scope_path("system.slice", "crisp", "a/b").is_err());
    }
}
