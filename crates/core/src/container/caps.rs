//! Linux capability names and sets.

/// Capability names by number (linux/capability.h).
pub const NAMES: &[&str] = &[
    "CAP_CHOWN",
    "CAP_DAC_OVERRIDE",
    "CAP_DAC_READ_SEARCH",
    "CAP_FOWNER",
    "CAP_FSETID",
    "CAP_KILL",
    "CAP_SETGID",
    "CAP_SETUID",
    "CAP_SETPCAP",
    "CAP_LINUX_IMMUTABLE",
    "CAP_NET_BIND_SERVICE",
    "CAP_NET_BROADCAST",
    "CAP_NET_ADMIN",
    "CAP_NET_RAW",
    "CAP_IPC_LOCK",
    "CAP_IPC_OWNER",
    "CAP_SYS_MODULE",
    "CAP_SYS_RAWIO",
    "CAP_SYS_CHROOT",
    "CAP_SYS_PTRACE",
    "CAP_SYS_PACCT",
    "CAP_SYS_ADMIN",
    "CAP_SYS_BOOT",
    "CAP_SYS_NICE",
    "CAP_SYS_RESOURCE",
    "CAP_SYS_TIME",
    "CAP_SYS_TTY_CONFIG",
    "CAP_MKNOD",
    "CAP_LEASE",
    "CAP_AUDIT_WRITE",
    "CAP_AUDIT_CONTROL",
    "CAP_SETFCAP",
    "CAP_MAC_OVERRIDE",
    "CAP_MAC_ADMIN",
    "CAP_SYSLOG",
    "CAP_WAKE_ALARM",
    "CAP_BLOCK_SUSPEND",
    "CAP_AUDIT_READ",
    "CAP_PERFMON",
    "CAP_BPF",
    "CAP_CHECKPOINT_RESTORE",
];

pub const CAP_SYS_ADMIN: u32 = 21;

/// The number of a capability name; the "CAP_" prefix is optional and case is ignored.
pub fn number(name: &str) -> Option<u32> {
    let upper = name.to_ascii_uppercase();
    let full = if upper.starts_with("CAP_") { upper } else { format!("CAP_{}", upper) };
    NAMES.iter().position(|n| *n == full).map(|i| i as u32)
}

pub fn name(number: u32) -> Option<&'static str> {
    NAMES.get(number as usize).copied()
}

/// The highest capability the running kernel knows (/proc/sys/kernel/cap_last_cap).
pub fn last_cap() -> u32 {
    // The kernel's value never changes while it runs; every launch and exec asks.
    static LAST: std::sync::OnceLock<u32> = std::sync::OnceLock::new();
    *LAST.get_or_init(|| {
        std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(NAMES.len() as u32 - 1)
    })
}

/// A set of capabilities as a bit mask.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapSet(pub u64);

impl CapSet {
    pub fn contains(self, cap: u32) -> bool {
        cap < 64 && self.0 & (1 << cap) != 0
    }

    pub fn insert(&mut self, cap: u32) {
        if cap < 64 {
            self.0 |= 1 << cap;
        }
    }

    pub fn intersect(self, other: CapSet) -> CapSet {
        CapSet(self.0 & other.0)
    }

    pub fn iter(self) -> impl Iterator<Item = u32> {
        (0..64).filter(move |c| self.contains(*c))
    }

    /// Parses a list of names. Names this build does not know, or the kernel does not support
    /// (above `last_cap`), are returned separately: like runc, they are ignored with a warning.
    pub fn from_names(names: &[String], last_cap: u32) -> (CapSet, Vec<String>) {
        let mut set = CapSet::default();
        let mut unknown = Vec::new();
        for n in names {
            match number(n) {
                Some(c) if c <= last_cap => set.insert(c),
                _ => unknown.push(n.clone()),
            }
        }
        (set, unknown)
    }

    /// Every capability up to `last_cap`.
    pub fn all(last_cap: u32) -> CapSet {
        if last_cap >= 63 {
            CapSet(u64::MAX)
        } else {
            CapSet((1u64 << (last_cap + 1)) - 1)
        }
    }
}

#[repr(C)]
pub struct CapUserHeader {
    pub version: u32,
    pub pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
pub struct CapUserData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

pub const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The calling thread's (effective, permitted, inheritable) sets.
pub fn current() -> std::io::Result<(CapSet, CapSet, CapSet)> {
    let mut header = CapUserHeader { version: LINUX_CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [CapUserData::default(); 2];
    crate::sys::cvt(unsafe { libc::syscall(libc::SYS_capget, &mut header, data.as_mut_ptr()) })?;
    let join = |lo: u32, hi: u32| CapSet(lo as u64 | (hi as u64) << 32);
    Ok((
        join(data[0].effective, data[1].effective),
        join(data[0].permitted, data[1].permitted),
        join(data[0].inheritable, data[1].inheritable),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers_agree_with_the_kernel_abi() {
        assert_eq!(number("CAP_CHOWN"), Some(0));
        assert_eq!(number("CAP_NET_BIND_SERVICE"), Some(10));
        assert_eq!(number("CAP_SYS_ADMIN"), Some(CAP_SYS_ADMIN));
        assert_eq!(number("CAP_SYS_RESOURCE"), Some(24));
        assert_eq!(number("CAP_AUDIT_WRITE"), Some(29));
        assert_eq!(number("CAP_SETFCAP"), Some(31));
        assert_eq!(number("CAP_BPF"), Some(39));
        assert_eq!(number("CAP_CHECKPOINT_RESTORE"), Some(40));
        assert_eq!(number("net_raw"), Some(13));
        assert_eq!(number("CAP_NOPE"), None);
        assert_eq!(name(27), Some("CAP_MKNOD"));
        for (i, n) in NAMES.iter().enumerate() {
            assert_eq!(number(n), Some(i as u32));
        }
    }

    #[test]
    fn sets_parse_and_filter_unsupported_names() {
        let names: Vec<String> = ["CAP_CHOWN", "CAP_KILL", "CAP_BPF", "CAP_BOGUS"].iter().map(|s| s.to_string()).collect();
        let (set, unknown) = CapSet::from_names(&names, 38);
        assert_eq!(set, CapSet(1 | 1 << 5));
        assert_eq!(unknown, vec!["CAP_BPF".to_string(), "CAP_BOGUS".to_string()]);
        assert_eq!(CapSet::all(40).0, 0x1ff_ffff_ffff);
        assert_eq!(CapSet::all(63).0, u64::MAX);
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 5]);
    }

    #[test]
    fn the_kernel_reports_our_own_sets() {
        let last = last_cap();
        assert!(last >= 36, "cap_last_cap {}", last);
        let (eff, prm, _) = current().unwrap();
        // The effective set is always a subset of the permitted one.
        assert_eq!(eff.intersect(prm), eff);
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        let line = status.lines().find(|l| l.starts_with("CapPrm:")).unwrap();
        let mask = u64::from_str_radix(line.split_whitespace().nth(1).unwrap(), 16).unwrap();
        assert_eq!(prm.0, mask);
    }
}
