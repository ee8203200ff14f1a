//! cgroup v1: one directory per mounted hierarchy.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fsutil;
use super::stats::{self, Stats, V1MemoryFiles};
use super::{validate_common, CgroupManager, CgroupPaths, Error, Resources, Result, V1Hierarchy, Version};

pub struct V1Manager {
    path: String,
    /// Controller (or `name=<x>`) -> (hierarchy mountpoint, this cgroup's directory in it).
    dirs: BTreeMap<String, (PathBuf, PathBuf)>,
}

impl V1Manager {
    pub fn new(hierarchies: &[V1Hierarchy], path: String) -> Self {
        let mut dirs = BTreeMap::new();
        for h in hierarchies {
            // A hierarchy mounted at a sub-cgroup (inside a cgroup namespace, or a bind mount)
            // exposes paths relative to that cgroup.
            let rel = if h.root != "/" && (path == h.root || path.starts_with(&format!("{}/", h.root))) {
                &path[h.root.len()..]
            } else {
                path.as_str()
            };
            let dir = h.mountpoint.join(rel.trim_start_matches('/'));
            for c in &h.controllers {
                dirs.insert(c.clone(), (h.mountpoint.clone(), dir.clone()));
            }
        }
        V1Manager { path, dirs }
    }

    fn dir(&self, controller: &str) -> Option<&Path> {
        self.dirs.get(controller).map(|(_, d)| d.as_path())
    }

    fn require(&self, controller: &str) -> Result<&Path> {
        self.dir(controller)
            .ok_or_else(|| Error::Unsupported(format!("cgroup v1 controller {} is not mounted", controller)))
    }

    fn unique(&self) -> Vec<(&Path, &Path)> {
        let mut v: Vec<(&Path, &Path)> = self.dirs.values().map(|(m, d)| (m.as_path(), d.as_path())).collect();
        v.sort();
        v.dedup();
        v
    }

    /// The hierarchy used to list processes: pids if mounted, otherwise any.
    fn procs_dir(&self) -> Option<&Path> {
        ["pids", "memory", "cpu", "cpuacct", "freezer"]
            .iter()
            .find_map(|c| self.dir(c))
            .or_else(|| self.dirs.values().next().map(|(_, d)| d.as_path()))
    }

    fn apply_cpu(&self, r: &Resources) -> Result<()> {
        let shares = r.cpu_shares.filter(|&s| s != 0);
        let period = r.cpu_period.filter(|&p| p != 0);
        let quota = r.cpu_quota.filter(|&q| q != 0);
        if shares.is_none() && period.is_none() && quota.is_none() {
            return Ok(());
        }
        let dir = self.require("cpu")?;
        if let Some(shares) = shares {
            fsutil::write(&dir.join("cpu.shares"), &shares.to_string())?;
        }
        let period_file = dir.join("cpu.cfs_period_us");
        let quota_file = dir.join("cpu.cfs_quota_us");
        match (period, quota) {
            (Some(p), Some(q)) => {
                // The kernel validates each write against the other value; if the new period is
                // incompatible with the old quota, set the quota first.
                if fsutil::write(&period_file, &p.to_string()).is_err() {
                    fsutil::write(&quota_file, &q.to_string())?;
                    fsutil::write(&period_file, &p.to_string())?;
                } else {
                    fsutil::write(&quota_file, &q.to_string())?;
                }
            }
            (Some(p), None) => fsutil::write(&period_file, &p.to_string())?,
            (None, Some(q)) => fsutil::write(&quota_file, &q.to_string())?,
            (None, None) => {}
        }
        Ok(())
    }

    fn apply_cpuset(&self, r: &Resources) -> Result<()> {
        for (value, file) in [(&r.cpuset_cpus, "cpuset.cpus"), (&r.cpuset_mems, "cpuset.mems")] {
            if let Some(v) = value.as_deref().filter(|v| !v.is_empty()) {
                fsutil::write(&self.require("cpuset")?.join(file), v)?;
            }
        }
        Ok(())
    }

    fn apply_memory(&self, r: &Resources) -> Result<()> {
        let memory = r.memory_limit.unwrap_or(0);
        let mut swap = r.memory_swap_limit.unwrap_or(0);
        if memory == 0 && swap == 0 {
            return Ok(());
        }
        let dir = self.require("memory")?;
        let limit_file = dir.join("memory.limit_in_bytes");
        let memsw_file = dir.join("memory.memsw.limit_in_bytes");
        let has_memsw = memsw_file.exists();
        // Lifting the memory limit lifts the combined limit too, unless one was given.
        if memory == -1 && swap == 0 && has_memsw {
            swap = -1;
        }
        if swap != 0 && !has_memsw {
            if swap == -1 {
                swap = 0; // no swap accounting: nothing to lift
            } else {
                return Err(Error::Unsupported("swap accounting (memory.memsw) is not enabled".into()));
            }
        }
        match (memory != 0, swap != 0) {
            (true, true) => {
                // memory.limit must stay <= memsw.limit after every single write.
                let current = stats::parse_u64(&fsutil::read(&limit_file)?).unwrap_or(u64::MAX);
                if swap == -1 || current < swap as u64 {
                    fsutil::write(&memsw_file, &swap.to_string())?;
                    fsutil::write(&limit_file, &memory.to_string())?;
                } else {
                    fsutil::write(&limit_file, &memory.to_string())?;
                    fsutil::write(&memsw_file, &swap.to_string())?;
                }
            }
            (true, false) => fsutil::write(&limit_file, &memory.to_string())?,
            (false, true) => fsutil::write(&memsw_file, &swap.to_string())?,
            (false, false) => {}
        }
        Ok(())
    }

    fn apply_hugetlb(&self, r: &Resources) -> Result<()> {
        for l in &r.hugepage_limits {
            match self.dir("hugetlb") {
                Some(dir) => fsutil::write(&dir.join(format!("hugetlb.{}.limit_in_bytes", l.page_size)), &l.limit.to_string())?,
                // Without the controller nothing can be limited; only an actual limit is an error.
                None if l.limit == 0 => {}
                None => return Err(Error::Unsupported("cgroup v1 controller hugetlb is not mounted".into())),
            }
        }
        Ok(())
    }

    fn apply_pids(&self, r: &Resources) -> Result<()> {
        match r.pids_limit {
            None | Some(0) => Ok(()),
            Some(l) => {
                let v = if l < 0 { "max".to_owned() } else { l.to_string() };
                fsutil::write(&self.require("pids")?.join("pids.max"), &v)
            }
        }
    }

    fn ensure_cpuset_inherited(&self, mountpoint: &Path, dir: &Path) -> Result<()> {
        // A new v1 cpuset starts with empty cpus/mems and refuses tasks until they are set;
        // each missing level inherits its parent's values.
        let rel = dir.strip_prefix(mountpoint).unwrap_or(Path::new(""));
        let mut parent = mountpoint.to_path_buf();
        for component in rel.components() {
            let current = parent.join(component);
            fsutil::create_dir(&current)?;
            for file in ["cpuset.cpus", "cpuset.mems"] {
                let own = fsutil::read(&current.join(file))?;
                if own.trim().is_empty() {
                    let inherited = fsutil::read(&parent.join(file))?;
                    fsutil::write(&current.join(file), inherited.trim())?;
                }
            }
            parent = current;
        }
        Ok(())
    }

    fn freezer_state(dir: &Path) -> Option<String> {
        fsutil::read_optional(&dir.join("freezer.state")).ok().flatten().map(|s| s.trim().to_owned())
    }
}

impl CgroupManager for V1Manager {
    fn version(&self) -> Version {
        Version::V1
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn paths(&self) -> CgroupPaths {
        CgroupPaths { version: 1, paths: self.dirs.iter().map(|(c, (_, d))| (c.clone(), d.clone())).collect() }
    }

    fn create(&self) -> Result<()> {
        let cpuset = self.dirs.get("cpuset").map(|(_, d)| d.clone());
        for (mountpoint, dir) in self.unique() {
            if cpuset.as_deref() == Some(dir) {
                self.ensure_cpuset_inherited(mountpoint, dir)?;
            } else {
                std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("mkdir {}", dir.display()), e))?;
            }
        }
        Ok(())
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        validate_common(r)?;
        if !r.unified.is_empty() {
            return Err(Error::InvalidArgument("unified cgroup settings need cgroup v2".into()));
        }
        self.apply_cpuset(r)?;
        self.apply_cpu(r)?;
        self.apply_memory(r)?;
        self.apply_hugetlb(r)?;
        self.apply_pids(r)
    }

    fn pids(&self, recursive: bool) -> Result<Vec<libc::pid_t>> {
        let mut out = Vec::new();
        if let Some(dir) = self.procs_dir() {
            fsutil::procs(dir, recursive, &mut out)?;
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn kill_all(&self) -> Result<()> {
        let Some(dir) = self.procs_dir() else { return Ok(()) };
        // Freezing first stops forking processes from escaping the kill.
        let freezer = self.dir("freezer").filter(|d| d.exists());
        if let Some(f) = freezer {
            fsutil::write(&f.join("freezer.state"), "FROZEN")?;
            for _ in 0..100 {
                if Self::freezer_state(f).as_deref() != Some("FREEZING") {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        let killed = fsutil::kill_procs(dir);
        if let Some(f) = freezer {
            fsutil::write(&f.join("freezer.state"), "THAWED")?;
        }
        killed
    }

    fn remove(&self) -> Result<()> {
        let deadline = std::time::Instant::now() + fsutil::REMOVE_RETRY;
        let mut first_err = None;
        for (_, dir) in self.unique() {
            if let Err(e) = fsutil::remove_tree(dir, deadline) {
                first_err.get_or_insert(e);
            }
        }
        first_err.map_or(Ok(()), Err)
    }

    fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        if let Some(dir) = self.dir("cpuacct") {
            if let Some(usage) = fsutil::read_optional(&dir.join("cpuacct.usage"))? {
                let acct = fsutil::read_optional(&dir.join("cpuacct.stat"))?;
                let throttle = match self.dir("cpu") {
                    Some(cpu) => fsutil::read_optional(&cpu.join("cpu.stat"))?,
                    None => None,
                };
                let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
                s.cpu = stats::v1_cpu(&usage, acct.as_deref(), throttle.as_deref(), if ticks > 0 { ticks as u64 } else { 100 });
            }
        }
        if let Some(dir) = self.dir("memory") {
            if let Some(usage) = fsutil::read_optional(&dir.join("memory.usage_in_bytes"))? {
                let stat = fsutil::read(&dir.join("memory.stat"))?;
                let limit = fsutil::read_optional(&dir.join("memory.limit_in_bytes"))?;
                let max_usage = fsutil::read_optional(&dir.join("memory.max_usage_in_bytes"))?;
                let memsw = fsutil::read_optional(&dir.join("memory.memsw.usage_in_bytes"))?;
                let memsw_limit = fsutil::read_optional(&dir.join("memory.memsw.limit_in_bytes"))?;
                let oom = fsutil::read_optional(&dir.join("memory.oom_control"))?;
                s.memory = stats::v1_memory(&V1MemoryFiles {
                    usage_in_bytes: &usage,
                    limit_in_bytes: limit.as_deref(),
                    stat: &stat,
                    max_usage_in_bytes: max_usage.as_deref(),
                    memsw_usage_in_bytes: memsw.as_deref(),
                    memsw_limit_in_bytes: memsw_limit.as_deref(),
                    oom_control: oom.as_deref(),
                });
            }
        }
        if let Some(dir) = self.dir("pids") {
            if let Some(current) = fsutil::read_optional(&dir.join("pids.current"))? {
                let max = fsutil::read_optional(&dir.join("pids.max"))?;
                s.pids = stats::pids(&current, max.as_deref());
            }
        }
        Ok(s)
    }
}
