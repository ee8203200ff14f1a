//! cgroup v2: one directory in the unified hierarchy.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::fsutil;
use super::stats::{self, Stats, V2MemoryFiles};
use super::{cpu_shares_to_weight, validate_common, CgroupManager, CgroupPaths, Error, Resources, Result, Version};

pub struct V2Manager {
    mountpoint: PathBuf,
    path: String,
    dir: PathBuf,
}

/// Controllers delegated down to every cgroup crisp creates, when the parent offers them.
const DELEGATED_CONTROLLERS: &[&str] = &["cpu", "cpuset", "io", "memory", "hugetlb", "pids", "rdma", "misc"];

impl V2Manager {
    pub fn new(mountpoint: &Path, path: String) -> Self {
        let dir = mountpoint.join(path.trim_start_matches('/'));
        V2Manager { mountpoint: mountpoint.to_path_buf(), path, dir }
    }

    /// Enables in `parent`'s subtree_control every delegated controller it has, so children
    /// get the interface files. A controller that cannot be enabled (e.g. the parent has
    /// processes of its own) is skipped; limits that need it then fail on apply with a clear
    /// missing-file error.
    fn delegate_controllers(parent: &Path) -> Result<()> {
        let available = fsutil::read(&parent.join("cgroup.controllers"))?;
        let enabled = fsutil::read(&parent.join("cgroup.subtree_control"))?;
        let enabled: Vec<&str> = enabled.split_whitespace().collect();
        for c in available.split_whitespace() {
            if DELEGATED_CONTROLLERS.contains(&c) && !enabled.contains(&c) {
                let _ = fsutil::write(&parent.join("cgroup.subtree_control"), &format!("+{}", c));
            }
        }
        Ok(())
    }

    fn file(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// Writes an interface file whose absence means its controller is not enabled here.
    fn write_controller_file(&self, name: &str, value: &str) -> Result<()> {
        let path = self.file(name);
        if !path.exists() {
            let controller = name.split('.').next().unwrap_or(name);
            return Err(Error::Unsupported(format!(
                "cgroup v2 controller {} is not enabled for {} ({} missing)",
                controller,
                self.path,
                name
            )));
        }
        fsutil::write(&path, value)
    }

    fn apply_cpu(&self, r: &Resources) -> Result<()> {
        let weight = r.cpu_weight.filter(|&w| w != 0).or_else(|| r.cpu_shares.map(cpu_shares_to_weight).filter(|&w| w != 0));
        if let Some(w) = weight {
            self.write_controller_file("cpu.weight", &w.to_string())?;
        }
        let period = r.cpu_period.filter(|&p| p != 0);
        let quota = r.cpu_quota.filter(|&q| q != 0);
        let quota_str = |q: i64| if q < 0 { "max".to_owned() } else { q.to_string() };
        let value = match (quota, period) {
            (Some(q), Some(p)) => format!("{} {}", quota_str(q), p),
            (Some(q), None) => quota_str(q),
            (None, Some(p)) => {
                // Only the period changes: keep the current quota.
                let current = fsutil::read(&self.file("cpu.max"))?;
                let q = current.split_whitespace().next().unwrap_or("max").to_owned();
                format!("{} {}", q, p)
            }
            (None, None) => return Ok(()),
        };
        self.write_controller_file("cpu.max", &value)
    }

    fn apply_memory(&self, r: &Resources) -> Result<()> {
        let memory = r.memory_limit.unwrap_or(0);
        let swap = memory_swap_to_v2(memory, r.memory_swap_limit.unwrap_or(0))?;
        let limit = |v: i64| if v < 0 { "max".to_owned() } else { v.to_string() };
        if memory != 0 {
            self.write_controller_file("memory.max", &limit(memory))?;
        }
        if let Some(swap) = swap {
            // Without swap accounting there is no swap limit to lift.
            if swap == -1 && !self.file("memory.swap.max").exists() {
                return Ok(());
            }
            self.write_controller_file("memory.swap.max", &limit(swap))?;
        }
        Ok(())
    }

    fn apply_hugetlb(&self, r: &Resources) -> Result<()> {
        for l in &r.hugepage_limits {
            let name = format!("hugetlb.{}.max", l.page_size);
            if l.limit == 0 && !self.file(&name).exists() {
                continue;
            }
            self.write_controller_file(&name, &l.limit.to_string())?;
        }
        Ok(())
    }

    fn apply_unified(&self, r: &Resources) -> Result<()> {
        for (key, value) in &r.unified {
            let valid = key.contains('.')
                && !key.starts_with('.')
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-')
                && !key.contains("..");
            if !valid {
                return Err(Error::InvalidArgument(format!("invalid unified cgroup key {:?}", key)));
            }
            if key.starts_with("cgroup.") && key != "cgroup.max.depth" && key != "cgroup.max.descendants" {
                return Err(Error::InvalidArgument(format!("unified cgroup key {:?} is not a resource setting", key)));
            }
            self.write_controller_file(key, value)?;
        }
        Ok(())
    }

    fn freeze(&self, frozen: bool) -> Result<()> {
        let file = self.file("cgroup.freeze");
        if !file.exists() {
            return Ok(());
        }
        fsutil::write(&file, if frozen { "1" } else { "0" })?;
        if frozen {
            for _ in 0..100 {
                let events = fsutil::read_optional(&self.file("cgroup.events"))?.unwrap_or_default();
                if stats::parse_flat_keyed(&events).get("frozen") == Some(&1) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        Ok(())
    }
}

/// Converts a v1-style memory+swap limit into memory.swap.max (swap alone), following runc's
/// rules. None leaves swap unchanged; Some(-1) is "max".
pub fn memory_swap_to_v2(memory: i64, memory_swap: i64) -> Result<Option<i64>> {
    match (memory, memory_swap) {
        (-1, 0) => Ok(Some(-1)),
        (_, 0) => Ok(None),
        (_, -1) => Ok(Some(-1)),
        (0, _) => Err(Error::InvalidArgument("a swap limit needs a memory limit".into())),
        (m, _) if m < 0 => Err(Error::InvalidArgument(format!("invalid memory limit {}", m))),
        (m, s) if s < m => Err(Error::InvalidArgument(format!("memory+swap limit {} is below the memory limit {}", s, m))),
        (m, s) => Ok(Some(s - m)),
    }
}

impl CgroupManager for V2Manager {
    fn version(&self) -> Version {
        Version::V2
    }

    fn path(&self) -> &str {
        &self.path
    }

    fn paths(&self) -> CgroupPaths {
        let mut paths = std::collections::BTreeMap::new();
        paths.insert(CgroupPaths::UNIFIED_KEY.to_owned(), self.dir.clone());
        CgroupPaths { version: 2, paths }
    }

    fn create(&self) -> Result<()> {
        let rel = self.dir.strip_prefix(&self.mountpoint).unwrap_or(Path::new(""));
        let mut parent = self.mountpoint.clone();
        for component in rel.components() {
            Self::delegate_controllers(&parent)?;
            let current = parent.join(component);
            fsutil::create_dir(&current)?;
            parent = current;
        }
        Ok(())
    }

    fn apply(&self, r: &Resources) -> Result<()> {
        validate_common(r)?;
        if let Some(cpus) = r.cpuset_cpus.as_deref().filter(|v| !v.is_empty()) {
            self.write_controller_file("cpuset.cpus", cpus)?;
        }
        if let Some(mems) = r.cpuset_mems.as_deref().filter(|v| !v.is_empty()) {
            self.write_controller_file("cpuset.mems", mems)?;
        }
        self.apply_cpu(r)?;
        self.apply_memory(r)?;
        self.apply_hugetlb(r)?;
        match r.pids_limit {
            None | Some(0) => {}
            Some(l) => self.write_controller_file("pids.max", &if l < 0 { "max".to_owned() } else { l.to_string() })?,
        }
        // Raw settings last so they can override the translated ones.
        self.apply_unified(r)
    }

    fn pids(&self, recursive: bool) -> Result<Vec<libc::pid_t>> {
        let mut out = Vec::new();
        fsutil::procs(&self.dir, recursive, &mut out)?;
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    fn kill_all(&self) -> Result<()> {
        if !self.dir.exists() {
            return Ok(());
        }
        let kill_file = self.file("cgroup.kill");
        if kill_file.exists() {
            return fsutil::write(&kill_file, "1");
        }
        self.freeze(true)?;
        let killed = fsutil::kill_procs(&self.dir);
        self.freeze(false)?;
        killed
    }

    fn remove(&self) -> Result<()> {
        fsutil::remove_tree(&self.dir, std::time::Instant::now() + fsutil::REMOVE_RETRY)
    }

    fn stats(&self) -> Result<Stats> {
        let mut s = Stats::default();
        if let Some(cpu) = fsutil::read_optional(&self.file("cpu.stat"))? {
            s.cpu = stats::v2_cpu(&cpu);
        }
        if let Some(current) = fsutil::read_optional(&self.file("memory.current"))? {
            let stat = fsutil::read(&self.file("memory.stat"))?;
            let max = fsutil::read_optional(&self.file("memory.max"))?;
            let swap = fsutil::read_optional(&self.file("memory.swap.current"))?;
            let swap_max = fsutil::read_optional(&self.file("memory.swap.max"))?;
            let events = fsutil::read_optional(&self.file("memory.events"))?;
            s.memory = stats::v2_memory(&V2MemoryFiles {
                current: &current,
                max: max.as_deref(),
                stat: &stat,
                swap_current: swap.as_deref(),
                swap_max: swap_max.as_deref(),
                events: events.as_deref(),
            });
        }
        if let Some(current) = fsutil::read_optional(&self.file("pids.current"))? {
            let max = fsutil::read_optional(&self.file("pids.max"))?;
            s.pids = stats::pids(&current, max.as_deref());
        }
        // Pressure files fail to read (EOPNOTSUPP) when the kernel runs with psi=0; that only
        // means there is no pressure to report.
        let pressure_file = |name: &str| fsutil::read_optional(&self.file(name)).ok().flatten();
        s.pressure = stats::pressure(
            pressure_file("cpu.pressure").as_deref(),
            pressure_file("memory.pressure").as_deref(),
            pressure_file("io.pressure").as_deref(),
        );
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swap_conversion_follows_runc() {
        assert_eq!(memory_swap_to_v2(0, 0).unwrap(), None);
        assert_eq!(memory_swap_to_v2(-1, 0).unwrap(), Some(-1));
        assert_eq!(memory_swap_to_v2(100, 0).unwrap(), None);
        assert_eq!(memory_swap_to_v2(100, -1).unwrap(), Some(-1));
        assert_eq!(memory_swap_to_v2(100, 100).unwrap(), Some(0));
        assert_eq!(memory_swap_to_v2(100, 250).unwrap(), Some(150));
        assert!(memory_swap_to_v2(0, 100).is_err());
        assert!(memory_swap_to_v2(200, 100).is_err());
        assert!(memory_swap_to_v2(-5, 100).is_err());
    }
}
