//! Mount option strings (as in fstab and the OCI spec) to mount(2) flags and data.

use libc::c_ulong;

/// Parsed `options` of one mount.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for mount(2), propagation excluded.
    pub flags: c_ulong,
    /// Propagation changes applied after the mount, in order (MS_PRIVATE | MS_REC, ...).
    pub propagation: Vec<c_ulong>,
    /// Filesystem-specific options ("mode=755,size=65536k").
    pub data: String,
    /// `rro` (OCI runtime-spec 1.2): the mount and every mount below it read-only, by
    /// mount_setattr(2) after the mount is made.
    pub recursive_readonly: bool,
}

impl MountOptions {
    pub fn is_bind(&self) -> bool {
        self.flags & libc::MS_BIND != 0
    }

    /// Flags that a bind mount only gets by remounting it.
    pub fn remount_flags(&self) -> c_ulong {
        self.flags & !(libc::MS_BIND | libc::MS_REC | libc::MS_REMOUNT)
    }
}

/// (name, set?, flag): options that set or clear a mount flag.
const FLAG_OPTIONS: &[(&str, bool, c_ulong)] = &[
    ("async", false, libc::MS_SYNCHRONOUS),
    ("atime", false, libc::MS_NOATIME),
    ("bind", true, libc::MS_BIND),
    ("defaults", true, 0),
    ("dev", false, libc::MS_NODEV),
    ("diratime", false, libc::MS_NODIRATIME),
    ("dirsync", true, libc::MS_DIRSYNC),
    ("exec", false, libc::MS_NOEXEC),
    ("iversion", true, libc::MS_I_VERSION),
    ("lazytime", true, libc::MS_LAZYTIME),
    ("loud", false, libc::MS_SILENT),
    ("mand", true, libc::MS_MANDLOCK),
    ("noatime", true, libc::MS_NOATIME),
    ("nodev", true, libc::MS_NODEV),
    ("nodiratime", true, libc::MS_NODIRATIME),
    ("noexec", true, libc::MS_NOEXEC),
    ("noiversion", false, libc::MS_I_VERSION),
    ("nolazytime", false, libc::MS_LAZYTIME),
    ("nomand", false, libc::MS_MANDLOCK),
    ("norelatime", false, libc::MS_RELATIME),
    ("nostrictatime", false, libc::MS_STRICTATIME),
    ("nosuid", true, libc::MS_NOSUID),
    ("rbind", true, libc::MS_BIND | libc::MS_REC),
    ("relatime", true, libc::MS_RELATIME),
    ("remount", true, libc::MS_REMOUNT),
    ("ro", true, libc::MS_RDONLY),
    ("rw", false, libc::MS_RDONLY),
    ("silent", true, libc::MS_SILENT),
    ("strictatime", true, libc::MS_STRICTATIME),
    ("suid", false, libc::MS_NOSUID),
    ("sync", true, libc::MS_SYNCHRONOUS),
];

/// The mount(2) flags of a propagation option name ("rslave" → MS_SLAVE | MS_REC).
pub fn propagation_flag(name: &str) -> Option<c_ulong> {
    Some(match name {
        "private" => libc::MS_PRIVATE,
        "rprivate" => libc::MS_PRIVATE | libc::MS_REC,
        "shared" => libc::MS_SHARED,
        "rshared" => libc::MS_SHARED | libc::MS_REC,
        "slave" => libc::MS_SLAVE,
        "rslave" => libc::MS_SLAVE | libc::MS_REC,
        "unbindable" => libc::MS_UNBINDABLE,
        "runbindable" => libc::MS_UNBINDABLE | libc::MS_REC,
        _ => return None,
    })
}

pub fn parse_options(options: &[String]) -> MountOptions {
    let mut out = MountOptions::default();
    let mut data: Vec<&str> = Vec::new();
    for opt in options {
        if let Some((_, set, flag)) = FLAG_OPTIONS.iter().find(|(n, _, _)| n == opt) {
            if *set {
                out.flags |= flag;
            } else {
                out.flags &= !flag;
            }
        } else if let Some(p) = propagation_flag(opt) {
            out.propagation.push(p);
        } else if opt == "idmap" || opt == "ridmap" {
            // Carried by the mount itself (the container's user namespace), not a filesystem option.
        } else if opt == "rro" {
            out.recursive_readonly = true;
            out.flags |= libc::MS_RDONLY;
        } else {
            data.push(opt);
        }
    }
    out.data = data.join(",");
    out
}

/// The MS_* flags equivalent to a statfs f_flags value, for remounts that must keep them.
pub fn flags_from_statfs(f_flags: u64) -> c_ulong {
    const ST_RELATIME: u64 = 4096;
    let same = libc::MS_RDONLY
        | libc::MS_NOSUID
        | libc::MS_NODEV
        | libc::MS_NOEXEC
        | libc::MS_SYNCHRONOUS
        | libc::MS_MANDLOCK
        | libc::MS_NOATIME
        | libc::MS_NODIRATIME;
    let mut flags = f_flags as c_ulong & same;
    if f_flags & ST_RELATIME != 0 {
        flags |= libc::MS_RELATIME;
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn flags_propagation_and_data_are_separated() {
        let o = parse_options(&opts(&["nosuid", "strictatime", "mode=755", "size=65536k"]));
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_STRICTATIME);
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(o.propagation.is_empty() && !o.is_bind());

        let o = parse_options(&opts(&["rbind", "ro", "rslave", "nosuid"]));
        assert!(o.is_bind());
        assert_eq!(o.flags, libc::MS_BIND | libc::MS_REC | libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(o.remount_flags(), libc::MS_RDONLY | libc::MS_NOSUID);
        assert_eq!(o.propagation, vec![libc::MS_SLAVE | libc::MS_REC]);
        assert_eq!(o.data, "");

        let o = parse_options(&opts(&["rbind", "rprivate", "ro", "rro"]));
        assert!(o.recursive_readonly && o.is_bind());
        assert_eq!(o.remount_flags(), libc::MS_RDONLY);
        assert_eq!(o.data, "", "rro is not passed to the filesystem");
        assert!(!parse_options(&opts(&["rbind", "ro"])).recursive_readonly);

        let o = parse_options(&opts(&["newinstance", "ptmxmode=0666", "mode=0620", "gid=5", "nosuid", "noexec"]));
        assert_eq!(o.flags, libc::MS_NOSUID | libc::MS_NOEXEC);
        assert_eq!(o.data, "newinstance,ptmxmode=0666,mode=0620,gid=5");
    }

    #[test]
    fn later_options_override_earlier_ones() {
        assert_eq!(parse_options(&opts(&["ro", "rw"])).flags, 0);
        assert_eq!(parse_options(&opts(&["nosuid", "suid", "nodev"])).flags, libc::MS_NODEV);
        assert_eq!(parse_options(&opts(&["bind", "private", "rshared"])).propagation, vec![libc::MS_PRIVATE, libc::MS_SHARED | libc::MS_REC]);
    }

    #[test]
    fn statfs_flags_map_to_mount_flags() {
        // ST_RDONLY | ST_NOSUID | ST_NODEV | ST_NOEXEC | ST_RELATIME
        assert_eq!(flags_from_statfs(1 | 2 | 4 | 8 | 4096), libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME);
        assert_eq!(flags_from_statfs(32), 0); // ST_WRITE has no mount flag
    }
}
