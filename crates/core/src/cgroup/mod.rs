//! Cgroup management for pods and containers, for both cgroup v1 (one hierarchy per controller
//! or group of co-mounted controllers) and cgroup v2 (a single unified hierarchy).
//!
//! Callers name cgroups by their path relative to the hierarchy root, as kubelet's cgroupfs
//! driver does (`/kubepods/burstable/pod<uid>`); systemd slice names are expanded to that form by
//! [`resolve_path`]. [`CgroupSystem::detect`] inspects the host once and hands out a
//! [`CgroupManager`] for a path.

pub mod devices;
mod fsutil;
pub mod json;
pub mod stats;
pub mod systemd;
mod v1;
mod v2;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

use serde_derive::{Deserialize, Serialize};

pub use stats::Stats;
pub use v1::V1Manager;
pub use v2::V2Manager;

/// Where the unified hierarchy (v2) or the per-controller mounts (v1) live.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A cgroup operation failure, classified so API layers can map it to a status code.
#[derive(Debug)]
pub enum Error {
    /// The request itself is malformed (bad path, contradictory limits).
    InvalidArgument(String),
    /// The request needs a controller or feature this host does not offer.
    Unsupported(String),
    /// A filesystem operation on the cgroup tree failed.
    Io { context: String, source: io::Error },
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io { context: context.into(), source }
    }

    /// The errno behind an I/O failure, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::InvalidArgument(m) | Error::Unsupported(m) => f.write_str(m),
            Error::Io { context, source } => write!(f, "{}: {}", context, source),
        }
    }
}

impl std::error::Error for Error {}

/// The cgroup version in use on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Version {
    V1,
    V2,
}

impl Version {
    pub fn number(self) -> u8 {
        match self {
            Version::V1 => 1,
            Version::V2 => 2,
        }
    }
}

/// The directories a process must be written into to join a cgroup: one per v1 hierarchy
/// (keyed by controller name, `name=<x>` for named hierarchies; co-mounted controllers share a
/// directory), or the single v2 directory keyed by [`CgroupPaths::UNIFIED_KEY`].
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CgroupPaths {
    pub version: u8,
    pub paths: BTreeMap<String, PathBuf>,
}

impl CgroupPaths {
    pub const UNIFIED_KEY: &'static str = "unified";

    /// The distinct directories, each once (co-mounted v1 controllers share one).
    pub fn unique_dirs(&self) -> Vec<&Path> {
        let mut dirs: Vec<&Path> = self.paths.values().map(PathBuf::as_path).collect();
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Restricts the devices the cgroup's processes may use to `rules` (OCI order: a leading
    /// deny-all, then what is allowed): the v1 devices controller, or a BPF filter on v2.
    pub fn apply_device_rules(&self, rules: &[devices::DeviceRule]) -> Result<()> {
        if rules.is_empty() {
            return Ok(());
        }
        if self.version == 2 {
            let dir = self.paths.get(Self::UNIFIED_KEY).ok_or_else(|| Error::Unsupported("no v2 cgroup directory to attach a device filter to".into()))?;
            return devices::apply_v2(dir, rules);
        }
        let dir = self.paths.get("devices").ok_or_else(|| Error::Unsupported("the v1 devices controller is not mounted".into()))?;
        devices::apply_v1(dir, rules)
    }

    /// Moves process `pid` (0 = the caller) into every directory.
    pub fn join(&self, pid: libc::pid_t) -> Result<()> {
        for dir in self.unique_dirs() {
            fsutil::write(&dir.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }
}

/// One hugetlb limit: page size as the kernel names it in file names ("2MB", "1GB").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HugepageLimit {
    pub page_size: String,
    pub limit: u64,
}

/// Resource limits, with CRI semantics: an absent or zero value leaves the setting unchanged;
/// -1 (where allowed) removes the limit.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default, deny_unknown_fields)]
pub struct Resources {
    /// v1 cpu.shares; converted to cpu.weight on v2 unless `cpu_weight` is given.
    pub cpu_shares: Option<u64>,
    /// v2 cpu.weight (1..=10000); ignored on v1.
    pub cpu_weight: Option<u64>,
    /// CFS quota in microseconds per period; -1 removes the limit.
    pub cpu_quota: Option<i64>,
    /// CFS period in microseconds.
    pub cpu_period: Option<u64>,
    pub cpuset_cpus: Option<String>,
    pub cpuset_mems: Option<String>,
    /// Memory limit in bytes; -1 removes the limit.
    pub memory_limit: Option<i64>,
    /// Memory plus swap limit in bytes (v1 memsw semantics; v2 gets the difference as
    /// memory.swap.max); -1 removes the limit.
    pub memory_swap_limit: Option<i64>,
    pub hugepage_limits: Vec<HugepageLimit>,
    /// pids.max; -1 removes the limit.
    pub pids_limit: Option<i64>,
    /// Raw v2 interface files ("memory.high" -> "1G"); rejected on v1.
    pub unified: BTreeMap<String, String>,
}

/// What a cgroup manager can do with one cgroup (youki's model, reduced to what crisp uses).
pub trait CgroupManager: Send + Sync {
    fn version(&self) -> Version;

    /// The cgroup's path relative to the hierarchy root.
    fn path(&self) -> &str;

    /// The directories to join, for handing to another process.
    fn paths(&self) -> CgroupPaths;

    /// Creates the cgroup (and missing ancestors) in every hierarchy. Idempotent.
    fn create(&self) -> Result<()>;

    /// Applies resource limits to an existing cgroup.
    fn apply(&self, resources: &Resources) -> Result<()>;

    /// Moves a process (all its threads) into the cgroup.
    fn add_process(&self, pid: libc::pid_t) -> Result<()> {
        self.paths().join(pid)
    }

    /// The processes in the cgroup, including those in descendant cgroups when `recursive`.
    fn pids(&self, recursive: bool) -> Result<Vec<libc::pid_t>>;

    /// Sends SIGKILL to every process in the cgroup and its descendants.
    fn kill_all(&self) -> Result<()>;

    /// Removes the cgroup and its descendants from every hierarchy. Idempotent. Processes still
    /// inside make removal fail with EBUSY after a short retry; kill them first.
    fn remove(&self) -> Result<()>;

    /// Raw usage counters.
    fn stats(&self) -> Result<Stats>;
}

/// The mounted cgroup hierarchies of this host.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CgroupSystem {
    V1 { hierarchies: Vec<V1Hierarchy> },
    V2 { mountpoint: PathBuf, controllers: Vec<String> },
}

/// One mounted v1 hierarchy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct V1Hierarchy {
    pub mountpoint: PathBuf,
    /// The cgroup that is mounted at `mountpoint` ("/" outside of cgroup namespaces).
    pub root: String,
    /// Attached controllers; a named hierarchy appears as `name=<x>`.
    pub controllers: Vec<String>,
}

impl CgroupSystem {
    /// Inspects the host. The unified layout is used only when /sys/fs/cgroup itself is cgroup2;
    /// a hybrid host (v1 hierarchies plus a controller-less cgroup2 mount) is treated as v1.
    pub fn detect() -> Result<Self> {
        let root = Path::new(CGROUP_ROOT);
        let magic = crate::sys::fs_magic(root).map_err(|e| Error::io(format!("statfs {}", CGROUP_ROOT), e))?;
        if magic == crate::sys::CGROUP2_MAGIC {
            let controllers = fsutil::read(&root.join("cgroup.controllers"))?
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            return Ok(CgroupSystem::V2 { mountpoint: root.to_path_buf(), controllers });
        }
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
        let known = std::fs::read_to_string("/proc/cgroups").map_err(|e| Error::io("read /proc/cgroups", e))?;
        let hierarchies = parse_v1_mountinfo(&mountinfo, &parse_proc_cgroups(&known));
        if hierarchies.is_empty() {
            return Err(Error::Unsupported("no cgroup hierarchy is mounted".into()));
        }
        Ok(CgroupSystem::V1 { hierarchies })
    }

    pub fn version(&self) -> Version {
        match self {
            CgroupSystem::V1 { .. } => Version::V1,
            CgroupSystem::V2 { .. } => Version::V2,
        }
    }

    /// The available controllers (v1: of every mounted hierarchy, named ones as `name=<x>`;
    /// v2: those listed in the root's cgroup.controllers), sorted.
    pub fn controllers(&self) -> Vec<String> {
        let mut all: Vec<String> = match self {
            CgroupSystem::V1 { hierarchies } => hierarchies.iter().flat_map(|h| h.controllers.clone()).collect(),
            CgroupSystem::V2 { controllers, .. } => controllers.clone(),
        };
        all.sort();
        all.dedup();
        all
    }

    /// A manager for the cgroup at `path` (relative to the hierarchy root; see [`clean_path`]).
    pub fn manager(&self, path: &str) -> Result<Box<dyn CgroupManager>> {
        let path = clean_path(path)?;
        if path == "/" {
            return Err(Error::InvalidArgument("refusing to manage the root cgroup".into()));
        }
        Ok(match self {
            CgroupSystem::V1 { hierarchies } => Box::new(V1Manager::new(hierarchies, path)),
            CgroupSystem::V2 { mountpoint, .. } => Box::new(V2Manager::new(mountpoint, path)),
        })
    }
}

/// Controller names the kernel knows (first column of /proc/cgroups).
pub fn parse_proc_cgroups(contents: &str) -> Vec<String> {
    contents
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect()
}

/// The v1 hierarchies in a /proc/self/mountinfo dump. Each hierarchy is reported once (the
/// first mount of it wins), with its controllers taken from the super options.
pub fn parse_v1_mountinfo(mountinfo: &str, known_controllers: &[String]) -> Vec<V1Hierarchy> {
    let mut out: Vec<V1Hierarchy> = Vec::new();
    for line in mountinfo.lines() {
        // id parent major:minor root mountpoint options [optional...] - fstype source superopts
        let Some((pre, post)) = line.split_once(" - ") else { continue };
        let mut post = post.split(' ');
        if post.next() != Some("cgroup") {
            continue;
        }
        let super_opts = post.nth(1).unwrap_or("");
        let mut fields = pre.split(' ');
        let (Some(root), Some(mountpoint)) = (fields.nth(3), fields.next()) else { continue };
        let controllers: Vec<String> = super_opts
            .split(',')
            .filter(|o| o.starts_with("name=") || known_controllers.iter().any(|k| k == o))
            .map(str::to_owned)
            .collect();
        if controllers.is_empty() || out.iter().any(|h| h.controllers == controllers) {
            continue;
        }
        out.push(V1Hierarchy {
            mountpoint: PathBuf::from(unescape_mountinfo(mountpoint)),
            root: unescape_mountinfo(root),
            controllers,
        });
    }
    out
}

/// mountinfo escapes space, tab, newline and backslash as octal `\ooo`.
fn unescape_mountinfo(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() && bytes[i + 1..i + 4].iter().all(|b| (b'0'..=b'7').contains(b)) {
            let v = (bytes[i + 1] - b'0') * 64 + (bytes[i + 2] - b'0') * 8 + (bytes[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Normalises a cgroup path: leading "/" added, duplicate and trailing slashes and "."
/// dropped. ".." and NUL are rejected, so a path can never escape the hierarchy.
pub fn clean_path(path: &str) -> Result<String> {
    if path.contains('\0') {
        return Err(Error::InvalidArgument(format!("cgroup path {:?} contains NUL", path)));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => return Err(Error::InvalidArgument(format!("cgroup path {:?} contains \"..\"", path))),
            p => parts.push(p),
        }
    }
    Ok(format!("/{}", parts.join("/")))
}

/// Resolves a cgroup parent as kubelet passes it plus a child name into a cgroupfs path.
/// A parent that is a systemd slice name (`kubepods-burstable-pod<uid>.slice`) is expanded to its
/// path (`/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod<uid>.slice`); anything
/// else is taken as a path. An empty `name` designates the parent itself.
pub fn resolve_path(parent: &str, name: &str) -> Result<String> {
    let base = if systemd::is_slice_name(parent) { systemd::expand_slice(parent)? } else { clean_path(parent)? };
    if name.is_empty() {
        return Ok(base);
    }
    if name.contains('/') || name == "." || name == ".." {
        return Err(Error::InvalidArgument(format!("cgroup name {:?} must be a single path component", name)));
    }
    clean_path(&format!("{}/{}", base, name))
}

/// Checks that hold for both versions: value ranges and names that end up in file paths.
pub(crate) fn validate_common(r: &Resources) -> Result<()> {
    let invalid = |m: String| Err(Error::InvalidArgument(m));
    for (name, v) in [
        ("cpuQuota", r.cpu_quota),
        ("memoryLimit", r.memory_limit),
        ("memorySwapLimit", r.memory_swap_limit),
        ("pidsLimit", r.pids_limit),
    ] {
        if let Some(v) = v {
            if v < -1 {
                return invalid(format!("{} must be -1, 0 or positive, got {}", name, v));
            }
        }
    }
    if let Some(w) = r.cpu_weight {
        if w != 0 && !(1..=10_000).contains(&w) {
            return invalid(format!("cpuWeight must be within 1..=10000, got {}", w));
        }
    }
    if let (Some(m), Some(s)) = (r.memory_limit, r.memory_swap_limit) {
        if m > 0 && s > 0 && s < m {
            return invalid(format!("memorySwapLimit {} is below memoryLimit {}", s, m));
        }
    }
    for l in &r.hugepage_limits {
        if !is_page_size(&l.page_size) {
            return invalid(format!("invalid hugepage size {:?}", l.page_size));
        }
    }
    Ok(())
}

/// Hugepage sizes as the kernel spells them in hugetlb file names: digits then KB, MB or GB.
fn is_page_size(s: &str) -> bool {
    let Some(num) = s.strip_suffix("KB").or_else(|| s.strip_suffix("MB")).or_else(|| s.strip_suffix("GB")) else {
        return false;
    };
    !num.is_empty() && num.bytes().all(|b| b.is_ascii_digit())
}

/// Linear map of cpu.shares [2, 262144] onto cpu.weight [1, 10000], as runc and crun do for
/// cgroup v2; 0 means unset.
pub fn cpu_shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    let shares = shares.clamp(2, 262_144);
    1 + ((shares - 2) * 9_999) / 262_142
}

#[cfg(test)]
mod live_tests;

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID_MOUNTINFO: &str = "\
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw,discard
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    const COMOUNTED_MOUNTINFO: &str = "\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,release_agent=/lib/systemd/systemd-cgroups-agent,name=systemd
29 25 0:26 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:13 - cgroup cgroup rw,cpu,cpuacct
30 25 0:27 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,net_cls,net_prio
31 25 0:28 /kubepods /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
44 26 0:28 / /mnt/again rw,relatime - cgroup cgroup rw,memory
";

    fn known() -> Vec<String> {
        parse_proc_cgroups(
            "#subsys_name\thierarchy\tnum_cgroups\tenabled\ncpuset\t3\t1\t1\ncpu\t1\t1\t1\ncpuacct\t2\t1\t1\n\
             memory\t4\t35\t1\nnet_cls\t0\t1\t1\nnet_prio\t0\t1\t1\npids\t8\t1\t1\nhugetlb\t0\t1\t1\n",
        )
    }

    #[test]
    fn proc_cgroups_lists_controller_names() {
        assert_eq!(known(), ["cpuset", "cpu", "cpuacct", "memory", "net_cls", "net_prio", "pids", "hugetlb"]);
    }

    #[test]
    fn hybrid_host_hierarchies_exclude_cgroup2() {
        let h = parse_v1_mountinfo(HYBRID_MOUNTINFO, &known());
        let names: Vec<_> = h.iter().map(|h| h.controllers.join(",")).collect();
        assert_eq!(names, ["cpu", "cpuacct", "cpuset", "memory", "pids", "name=systemd"]);
        assert_eq!(h[0].mountpoint, PathBuf::from("/sys/fs/cgroup/cpu"));
        assert_eq!(h[0].root, "/");
    }

    #[test]
    fn comounted_and_named_hierarchies() {
        let h = parse_v1_mountinfo(COMOUNTED_MOUNTINFO, &known());
        assert_eq!(h.len(), 4, "the second memory mount is the same hierarchy");
        assert_eq!(h[0].controllers, ["name=systemd"]);
        assert_eq!(h[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(h[1].mountpoint, PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(h[2].controllers, ["net_cls", "net_prio"]);
        assert_eq!(h[3].root, "/kubepods");
    }

    #[test]
    fn mountinfo_octal_escapes() {
        assert_eq!(unescape_mountinfo("/a\\040b"), "/a b");
        assert_eq!(unescape_mountinfo("/plain"), "/plain");
        assert_eq!(unescape_mountinfo("/trail\\04"), "/trail\\04");
    }

    #[test]
    fn clean_path_normalises_and_rejects_escapes() {
        assert_eq!(clean_path("kubepods//burstable/./pod1/").unwrap(), "/kubepods/burstable/pod1");
        assert_eq!(clean_path("/").unwrap(), "/");
        assert!(clean_path("/kubepods/../etc").is_err());
        assert!(clean_path("/a\0b").is_err());
    }

    #[test]
    fn resolve_path_handles_both_drivers() {
        assert_eq!(resolve_path("/kubepods/burstable/pod1", "abc").unwrap(), "/kubepods/burstable/pod1/abc");
        assert_eq!(
            resolve_path("kubepods-burstable-pod1.slice", "crisp-abc.scope").unwrap(),
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1.slice/crisp-abc.scope"
        );
        assert_eq!(resolve_path("/kubepods", "").unwrap(), "/kubepods");
        assert!(resolve_path("/kubepods", "a/b").is_err());
        assert!(resolve_path("/kubepods", "..").is_err());
    }

    #[test]
    fn shares_to_weight_matches_the_runc_mapping() {
        assert_eq!(cpu_shares_to_weight(0), 0);
        assert_eq!(cpu_shares_to_weight(2), 1);
        assert_eq!(cpu_shares_to_weight(1), 1, "clamped to the minimum");
        assert_eq!(cpu_shares_to_weight(1024), 39);
        assert_eq!(cpu_shares_to_weight(262_144), 10_000);
        assert_eq!(cpu_shares_to_weight(1 << 30), 10_000, "clamped to the maximum");
    }

    #[test]
    fn resources_json_uses_camel_case_and_defaults() {
        let r: Resources = serde_json::from_str(
            r#"{"cpuShares":512,"cpuQuota":-1,"memoryLimit":1048576,"hugepageLimits":[{"pageSize":"2MB","limit":0}],
                "unified":{"memory.high":"max"}}"#,
        )
        .unwrap();
        assert_eq!(r.cpu_shares, Some(512));
        assert_eq!(r.cpu_quota, Some(-1));
        assert_eq!(r.memory_limit, Some(1 << 20));
        assert_eq!(r.hugepage_limits, vec![HugepageLimit { page_size: "2MB".into(), limit: 0 }]);
        assert_eq!(r.unified.get("memory.high").map(String::as_str), Some("max"));
        assert_eq!(r.pids_limit, None);
        assert!(serde_json::from_str::<Resources>(r#"{"cpuShare":1}"#).is_err(), "typos are rejected");
    }

    #[test]
    fn validation_rejects_bad_values() {
        let ok = Resources { memory_limit: Some(100), memory_swap_limit: Some(200), ..Default::default() };
        assert!(validate_common(&ok).is_ok());
        let swap_below = Resources { memory_limit: Some(200), memory_swap_limit: Some(100), ..Default::default() };
        assert!(validate_common(&swap_below).is_err());
        assert!(validate_common(&Resources { cpu_quota: Some(-2), ..Default::default() }).is_err());
        assert!(validate_common(&Resources { cpu_weight: Some(10_001), ..Default::default() }).is_err());
        for (size, good) in [("2MB", true), ("1GB", true), ("64KB", true), ("2M", false), ("MB", false), ("../x", false)] {
            let r = Resources { hugepage_limits: vec![HugepageLimit { page_size: size.into(), limit: 1 }], ..Default::default() };
            assert_eq!(validate_common(&r).is_ok(), good, "{}", size);
        }
    }

    #[test]
    fn cgroup_paths_dedupe_comounted_dirs() {
        let mut paths = BTreeMap::new();
        paths.insert("cpu".to_string(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x"));
        paths.insert("cpuacct".to_string(), PathBuf::from("/sys/fs/cgroup/cpu,cpuacct/x"));
        paths.insert("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory/x"));
        let p = CgroupPaths { version: 1, paths };
        assert_eq!(p.unique_dirs().len(), 2);
        let json = serde_json::to_string(&p).unwrap();
        assert!(json.starts_with(r#"{"version":1,"paths":{"cpu":"#));
        assert_eq!(serde_json::from_str::<CgroupPaths>(&json).unwrap(), p);
    }
}
