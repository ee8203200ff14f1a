//! Usage counters of a cgroup and the pure parsers that build them from interface files.

use std::collections::BTreeMap;

use serde_derive::Serialize;

/// Raw counters of one cgroup. A section is absent when its controller is not available.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    pub cpu: Option<CpuStats>,
    pub memory: Option<MemoryStats>,
    pub pids: Option<PidsStats>,
    /// Pressure stall information; only v2 keeps it per cgroup.
    pub pressure: Option<PressureStats>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CpuStats {
    /// Total CPU time consumed, in nanoseconds.
    pub usage_nanos: u64,
    pub user_nanos: Option<u64>,
    pub system_nanos: Option<u64>,
    pub nr_periods: u64,
    pub nr_throttled: u64,
    pub throttled_nanos: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct MemoryStats {
    /// Charged memory, page cache included.
    pub usage_bytes: u64,
    /// Usage minus inactive file pages: what kubelet evicts and OOM-ranks on.
    pub working_set_bytes: u64,
    /// Anonymous memory (v1 total_rss, v2 anon).
    pub rss_bytes: u64,
    /// Page cache (v1 total_cache, v2 file).
    pub cache_bytes: u64,
    pub page_faults: u64,
    pub major_page_faults: u64,
    /// None when unlimited.
    pub limit_bytes: Option<u64>,
    pub swap_usage_bytes: Option<u64>,
    /// Swap the cgroup may use; None when unlimited or unknown.
    pub swap_limit_bytes: Option<u64>,
    /// v1 only: the high-water mark of usage.
    pub max_usage_bytes: Option<u64>,
    /// OOM kills inside the cgroup, when the kernel reports them.
    pub oom_kills: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PidsStats {
    pub current: u64,
    /// None when unlimited.
    pub limit: Option<u64>,
}

/// The v2 `cpu.pressure`, `memory.pressure` and `io.pressure` files of one cgroup.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PressureStats {
    pub cpu: Option<Pressure>,
    pub memory: Option<Pressure>,
    pub io: Option<Pressure>,
}

/// One pressure file: `some` (at least one task stalled) and `full` (all non-idle tasks
/// stalled; absent from cpu.pressure before Linux 5.13).
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Pressure {
    pub some: Option<PressureLine>,
    pub full: Option<PressureLine>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PressureLine {
    /// Share of wall time stalled over the last 10 s, 60 s and 300 s, in percent.
    pub avg10: f64,
    pub avg60: f64,
    pub avg300: f64,
    /// Cumulative stall time in microseconds, the kernel's unit.
    pub total_micros: u64,
}

/// v1 reports "no limit" as the largest page-aligned counter (0x7FFFFFFFFFFFF000 with 4 KiB
/// pages); anything this large is unlimited in practice.
const V1_UNLIMITED_THRESHOLD: u64 = 1 << 62;

/// Parses "key value" lines (cpu.stat, memory.stat, memory.events...). Malformed lines are
/// skipped: kernels add keys over time and some values are not integers.
pub fn parse_flat_keyed(contents: &str) -> BTreeMap<String, u64> {
    contents
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            let key = it.next()?;
            let value = it.next()?.parse().ok()?;
            Some((key.to_owned(), value))
        })
        .collect()
}

/// A single integer file ("4096\n").
pub fn parse_u64(contents: &str) -> Option<u64> {
    contents.trim().parse().ok()
}

/// A v2 limit file: "max" is unlimited (None), otherwise an integer.
pub fn parse_v2_limit(contents: &str) -> Option<Option<u64>> {
    match contents.trim() {
        "max" => Some(None),
        v => v.parse().ok().map(Some),
    }
}

/// A v1 limit file, where huge values mean unlimited.
pub fn parse_v1_limit(contents: &str) -> Option<Option<u64>> {
    parse_u64(contents).map(|v| if v >= V1_UNLIMITED_THRESHOLD { None } else { Some(v) })
}

fn get(map: &BTreeMap<String, u64>, key: &str) -> u64 {
    map.get(key).copied().unwrap_or(0)
}

/// v1: cpuacct.usage (ns), cpuacct.stat (user/system in clock ticks), cpu.stat (throttling).
pub fn v1_cpu(usage: &str, cpuacct_stat: Option<&str>, cpu_stat: Option<&str>, clock_ticks_per_sec: u64) -> Option<CpuStats> {
    let usage_nanos = parse_u64(usage)?;
    let ticks = cpuacct_stat.map(parse_flat_keyed);
    let to_nanos = |t: u64| t.saturating_mul(1_000_000_000 / clock_ticks_per_sec.max(1));
    let throttle = cpu_stat.map(parse_flat_keyed).unwrap_or_default();
    Some(CpuStats {
        usage_nanos,
        user_nanos: ticks.as_ref().and_then(|t| t.get("user")).map(|&t| to_nanos(t)),
        system_nanos: ticks.as_ref().and_then(|t| t.get("system")).map(|&t| to_nanos(t)),
        nr_periods: get(&throttle, "nr_periods"),
        nr_throttled: get(&throttle, "nr_throttled"),
        throttled_nanos: get(&throttle, "throttled_time"),
    })
}

/// v2: cpu.stat (all times in microseconds).
pub fn v2_cpu(cpu_stat: &str) -> Option<CpuStats> {
    let s = parse_flat_keyed(cpu_stat);
    let usage = *s.get("usage_usec")?;
    Some(CpuStats {
        usage_nanos: usage.saturating_mul(1000),
        user_nanos: s.get("user_usec").map(|v| v.saturating_mul(1000)),
        system_nanos: s.get("system_usec").map(|v| v.saturating_mul(1000)),
        nr_periods: get(&s, "nr_periods"),
        nr_throttled: get(&s, "nr_throttled"),
        throttled_nanos: get(&s, "throttled_usec").saturating_mul(1000),
    })
}

/// The raw contents of the v1 memory controller files used for stats.
pub struct V1MemoryFiles<'a> {
    pub usage_in_bytes: &'a str,
    pub limit_in_bytes: Option<&'a str>,
    pub stat: &'a str,
    pub max_usage_in_bytes: Option<&'a str>,
    pub memsw_usage_in_bytes: Option<&'a str>,
    pub memsw_limit_in_bytes: Option<&'a str>,
    pub oom_control: Option<&'a str>,
}

/// v1 memory: hierarchical (total_*) counters, so a pod cgroup includes its containers.
pub fn v1_memory(files: &V1MemoryFiles<'_>) -> Option<MemoryStats> {
    let usage = parse_u64(files.usage_in_bytes)?;
    let stat = parse_flat_keyed(files.stat);
    let inactive_file = get(&stat, "total_inactive_file");
    let limit = files.limit_in_bytes.and_then(parse_v1_limit).flatten();
    // memsw limits memory + swap together: the swap allowance is what exceeds the memory limit.
    let memsw_limit = files.memsw_limit_in_bytes.and_then(parse_v1_limit).flatten();
    Some(MemoryStats {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(inactive_file),
        rss_bytes: get(&stat, "total_rss"),
        cache_bytes: get(&stat, "total_cache"),
        page_faults: get(&stat, "total_pgfault"),
        major_page_faults: get(&stat, "total_pgmajfault"),
        limit_bytes: limit,
        // memsw counts memory + swap; the swap share is the difference.
        swap_usage_bytes: files.memsw_usage_in_bytes.and_then(parse_u64).map(|sw| sw.saturating_sub(usage)),
        swap_limit_bytes: match (memsw_limit, limit) {
            (Some(sw), Some(mem)) => Some(sw.saturating_sub(mem)),
            _ => None,
        },
        max_usage_bytes: files.max_usage_in_bytes.and_then(parse_u64),
        oom_kills: files.oom_control.and_then(|c| parse_flat_keyed(c).get("oom_kill").copied()),
    })
}

/// The raw contents of the v2 memory controller files used for stats.
pub struct V2MemoryFiles<'a> {
    pub current: &'a str,
    pub max: Option<&'a str>,
    pub stat: &'a str,
    pub swap_current: Option<&'a str>,
    pub swap_max: Option<&'a str>,
    pub events: Option<&'a str>,
}

pub fn v2_memory(files: &V2MemoryFiles<'_>) -> Option<MemoryStats> {
    let usage = parse_u64(files.current)?;
    let stat = parse_flat_keyed(files.stat);
    Some(MemoryStats {
        usage_bytes: usage,
        working_set_bytes: usage.saturating_sub(get(&stat, "inactive_file")),
        rss_bytes: get(&stat, "anon"),
        cache_bytes: get(&stat, "file"),
        page_faults: get(&stat, "pgfault"),
        major_page_faults: get(&stat, "pgmajfault"),
        limit_bytes: files.max.and_then(parse_v2_limit).flatten(),
        swap_usage_bytes: files.swap_current.and_then(parse_u64),
        swap_limit_bytes: files.swap_max.and_then(parse_v2_limit).flatten(),
        max_usage_bytes: None,
        oom_kills: files.events.and_then(|c| parse_flat_keyed(c).get("oom_kill").copied()),
    })
}

/// pids.current and pids.max (same format on v1 and v2).
pub fn pids(current: &str, max: Option<&str>) -> Option<PidsStats> {
    Some(PidsStats { current: parse_u64(current)?, limit: max.and_then(parse_v2_limit).flatten() })
}

/// A v2 pressure file:
///
/// ```text
/// some avg10=0.22 avg60=4.68 avg300=18.83 total=657134968
/// full avg10=0.00 avg60=0.00 avg300=0.00 total=0
/// ```
///
/// Unknown lines and keys are skipped (the kernel may add some); a line missing one of the four
/// values is dropped. None when neither line is usable.
pub fn parse_pressure(contents: &str) -> Option<Pressure> {
    let mut out = Pressure::default();
    for line in contents.lines() {
        let mut fields = line.split_whitespace();
        let slot = match fields.next() {
            Some("some") => &mut out.some,
            Some("full") => &mut out.full,
            _ => continue,
        };
        let (mut avg10, mut avg60, mut avg300, mut total) = (None, None, None, None);
        for field in fields {
            let Some((key, value)) = field.split_once('=') else { continue };
            match key {
                "avg10" => avg10 = parse_percent(value),
                "avg60" => avg60 = parse_percent(value),
                "avg300" => avg300 = parse_percent(value),
                "total" => total = value.parse().ok(),
                _ => {}
            }
        }
        if let (Some(avg10), Some(avg60), Some(avg300), Some(total_micros)) = (avg10, avg60, avg300, total) {
            *slot = Some(PressureLine { avg10, avg60, avg300, total_micros });
        }
    }
    (out.some.is_some() || out.full.is_some()).then_some(out)
}

fn parse_percent(value: &str) -> Option<f64> {
    value.parse::<f64>().ok().filter(|v| v.is_finite() && *v >= 0.0)
}

/// The three pressure files of a v2 cgroup (None where a file is absent or unreadable).
pub fn pressure(cpu: Option<&str>, memory: Option<&str>, io: Option<&str>) -> Option<PressureStats> {
    let stats = PressureStats {
        cpu: cpu.and_then(parse_pressure),
        memory: memory.and_then(parse_pressure),
        io: io.and_then(parse_pressure),
    };
    (stats.cpu.is_some() || stats.memory.is_some() || stats.io.is_some()).then_some(stats)
}

#[cfg(test)]
mod tests {
    use super::*;

    // Captured from a v1 host (memory.stat trimmed to the relevant keys plus neighbours).
    const V1_MEMORY_STAT: &str = "\
cache 9457664
rss 8294400
rss_huge 0
shmem 9084928
mapped_file 7499776
pgfault 62506
pgmajfault 0
inactive_file 4096
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 141258752
total_rss 15982592
total_pgfault 5011931
total_pgmajfault 1731
total_inactive_anon 7454720
total_active_anon 1589248
total_inactive_file 50925568
total_active_file 81248256
";

    const V1_OOM_CONTROL: &str = "oom_kill_disable 0\nunder_oom 0\noom_kill 2\n";

    // Format of cgroup v2 files as documented in Documentation/admin-guide/cgroup-v2.rst.
    const V2_CPU_STAT: &str = "\
usage_usec 126822583
user_usec 89192923
system_usec 37629659
nice_usec 0
core_sched.force_idle_usec 0
nr_periods 40
nr_throttled 3
throttled_usec 51234
nr_bursts 0
burst_usec 0
";

    const V2_MEMORY_STAT: &str = "\
anon 10625024
file 42864640
kernel 2310144
kernel_stack 98304
shmem 0
inactive_anon 10571776
active_anon 53248
inactive_file 30142464
active_file 12722176
pgfault 48213
pgmajfault 12
workingset_refault_anon 0
";

    const V2_MEMORY_EVENTS: &str = "low 0\nhigh 0\nmax 5\noom 1\noom_kill 1\noom_group_kill 0\n";

    #[test]
    fn flat_keyed_skips_malformed_lines() {
        let m = parse_flat_keyed("a 1\nbroken\nb x\nc 3 extra\n\n");
        assert_eq!(m.len(), 2);
        assert_eq!(m["a"], 1);
        assert_eq!(m["c"], 3);
    }

    #[test]
    fn limits_v1_and_v2() {
        assert_eq!(parse_v2_limit("max\n"), Some(None));
        assert_eq!(parse_v2_limit("1048576\n"), Some(Some(1 << 20)));
        assert_eq!(parse_v2_limit("garbage"), None);
        assert_eq!(parse_v1_limit("9223372036854771712\n"), Some(None));
        assert_eq!(parse_v1_limit("268435456\n"), Some(Some(256 << 20)));
    }

    #[test]
    fn v1_cpu_from_cpuacct_and_cpu_stat() {
        let s = v1_cpu(
            "157069152655\n",
            Some("user 11534\nsystem 4172\n"),
            Some("nr_periods 10\nnr_throttled 2\nthrottled_time 3000\nnr_bursts 0\nburst_time 0\n"),
            100,
        )
        .unwrap();
        assert_eq!(s.usage_nanos, 157_069_152_655);
        assert_eq!(s.user_nanos, Some(115_340_000_000));
        assert_eq!(s.system_nanos, Some(41_720_000_000));
        assert_eq!((s.nr_periods, s.nr_throttled, s.throttled_nanos), (10, 2, 3000));
        assert_eq!(v1_cpu("", None, None, 100), None);
        let bare = v1_cpu("5", None, None, 100).unwrap();
        assert_eq!((bare.usage_nanos, bare.user_nanos), (5, None));
    }

    #[test]
    fn v2_cpu_from_cpu_stat() {
        let s = v2_cpu(V2_CPU_STAT).unwrap();
        assert_eq!(s.usage_nanos, 126_822_583_000);
        assert_eq!(s.user_nanos, Some(89_192_923_000));
        assert_eq!(s.system_nanos, Some(37_629_659_000));
        assert_eq!((s.nr_periods, s.nr_throttled, s.throttled_nanos), (40, 3, 51_234_000));
        assert_eq!(v2_cpu("nr_periods 1\n"), None);
    }

    #[test]
    fn v1_memory_uses_hierarchical_totals() {
        let m = v1_memory(&V1MemoryFiles {
            usage_in_bytes: "160000000\n",
            limit_in_bytes: Some("9223372036854771712\n"),
            stat: V1_MEMORY_STAT,
            max_usage_in_bytes: Some("170000000\n"),
            memsw_usage_in_bytes: Some("160004096\n"),
            memsw_limit_in_bytes: Some("9223372036854771712\n"),
            oom_control: Some(V1_OOM_CONTROL),
        })
        .unwrap();
        assert_eq!(m.usage_bytes, 160_000_000);
        assert_eq!(m.working_set_bytes, 160_000_000 - 50_925_568);
        assert_eq!(m.rss_bytes, 15_982_592);
        assert_eq!(m.cache_bytes, 141_258_752);
        assert_eq!((m.page_faults, m.major_page_faults), (5_011_931, 1731));
        assert_eq!(m.limit_bytes, None);
        assert_eq!(m.swap_usage_bytes, Some(4096));
        assert_eq!(m.swap_limit_bytes, None, "no memory limit: no swap allowance to report");
        assert_eq!(m.max_usage_bytes, Some(170_000_000));
        assert_eq!(m.oom_kills, Some(2));
    }

    #[test]
    fn working_set_never_underflows() {
        let m = v1_memory(&V1MemoryFiles {
            usage_in_bytes: "1000",
            limit_in_bytes: Some("4096"),
            stat: "total_inactive_file 5000\n",
            max_usage_in_bytes: None,
            memsw_usage_in_bytes: None,
            memsw_limit_in_bytes: Some("12288\n"),
            oom_control: None,
        })
        .unwrap();
        assert_eq!(m.working_set_bytes, 0);
        assert_eq!(m.swap_limit_bytes, Some(8192), "memsw 12 KiB over a 4 KiB memory limit");
        assert_eq!(m.limit_bytes, Some(4096));
        assert_eq!(m.oom_kills, None);
    }

    #[test]
    fn v2_memory_from_current_and_stat() {
        let m = v2_memory(&V2MemoryFiles {
            current: "55000000\n",
            max: Some("268435456\n"),
            stat: V2_MEMORY_STAT,
            swap_current: Some("0\n"),
            swap_max: Some("1073741824\n"),
            events: Some(V2_MEMORY_EVENTS),
        })
        .unwrap();
        assert_eq!(m.usage_bytes, 55_000_000);
        assert_eq!(m.working_set_bytes, 55_000_000 - 30_142_464);
        assert_eq!(m.rss_bytes, 10_625_024);
        assert_eq!(m.cache_bytes, 42_864_640);
        assert_eq!((m.page_faults, m.major_page_faults), (48_213, 12));
        assert_eq!(m.limit_bytes, Some(256 << 20));
        assert_eq!(m.swap_usage_bytes, Some(0));
        assert_eq!(m.swap_limit_bytes, Some(1 << 30));
        assert_eq!(m.oom_kills, Some(1));
        let unlimited = v2_memory(&V2MemoryFiles {
            current: "1",
            max: Some("max\n"),
            stat: "",
            swap_current: None,
            swap_max: Some("max\n"),
            events: None,
        })
        .unwrap();
        assert_eq!(unlimited.limit_bytes, None);
        assert_eq!(unlimited.swap_limit_bytes, None);
    }

    // Captured from a v2 cgroup on Linux 6.x: cpu.pressure carries a `full` line since 5.13.
    const V2_CPU_PRESSURE: &str = "\
some avg10=0.22 avg60=4.68 avg300=18.83 total=657134968
full avg10=0.00 avg60=0.00 avg300=0.00 total=0
";
    const V2_MEMORY_PRESSURE: &str = "\
some avg10=12.50 avg60=3.01 avg300=0.75 total=9021344
full avg10=10.05 avg60=2.40 avg300=0.60 total=7710093
";
    // cpu.pressure before 5.13: `some` only.
    const V2_CPU_PRESSURE_OLD: &str = "some avg10=100.00 avg60=99.97 avg300=88.10 total=18446744073709551615\n";

    #[test]
    fn pressure_files_parse_some_and_full() {
        let cpu = parse_pressure(V2_CPU_PRESSURE).unwrap();
        assert_eq!(cpu.some, Some(PressureLine { avg10: 0.22, avg60: 4.68, avg300: 18.83, total_micros: 657_134_968 }));
        assert_eq!(cpu.full, Some(PressureLine { avg10: 0.0, avg60: 0.0, avg300: 0.0, total_micros: 0 }));
        let memory = parse_pressure(V2_MEMORY_PRESSURE).unwrap();
        assert_eq!(memory.some.as_ref().unwrap().avg10, 12.5);
        assert_eq!(memory.full.as_ref().unwrap().total_micros, 7_710_093);
        let old = parse_pressure(V2_CPU_PRESSURE_OLD).unwrap();
        assert_eq!(old.some.as_ref().unwrap().total_micros, u64::MAX);
        assert_eq!(old.some.as_ref().unwrap().avg10, 100.0);
        assert_eq!(old.full, None);
    }

    #[test]
    fn pressure_skips_unknown_and_incomplete_lines() {
        let p = parse_pressure("some avg10=1.00 avg60=2.00 avg300=3.00 total=4 extra=5\nfull avg10=1.00 total=9\nnew avg10=0.00\n").unwrap();
        assert_eq!(p.some.unwrap().total_micros, 4);
        assert_eq!(p.full, None, "a line missing averages is dropped");
        assert_eq!(parse_pressure(""), None);
        assert_eq!(parse_pressure("some avg10=x avg60=0.00 avg300=0.00 total=1\n"), None);
        assert_eq!(parse_pressure("some avg10=-1.00 avg60=0.00 avg300=0.00 total=1\n"), None);
    }

    #[test]
    fn pressure_of_a_cgroup_needs_one_readable_file() {
        assert_eq!(pressure(None, None, None), None);
        assert_eq!(pressure(Some("garbage"), None, None), None);
        let p = pressure(Some(V2_CPU_PRESSURE), None, Some(V2_MEMORY_PRESSURE)).unwrap();
        assert!(p.cpu.is_some() && p.memory.is_none() && p.io.is_some());
    }

    #[test]
    fn pids_current_and_max() {
        assert_eq!(pids("3\n", Some("max\n")), Some(PidsStats { current: 3, limit: None }));
        assert_eq!(pids("3\n", Some("100\n")), Some(PidsStats { current: 3, limit: Some(100) }));
        assert_eq!(pids("", None), None);
    }

    #[test]
    fn stats_serialize_in_camel_case() {
        let s = Stats { pids: Some(PidsStats { current: 1, limit: None }), ..Default::default() };
        assert_eq!(serde_json::to_string(&s).unwrap(), r#"{"cpu":null,"memory":null,"pids":{"current":1,"limit":null},"pressure":null}"#);
    }
}
