//! JSON encodings of cgroup values for API layers that pass them on as text (the Node addon).

use serde_json::{json, Value};

use super::{CgroupPaths, CgroupSystem, Error, Resources, Result, Stats};

/// `{"version":1|2,"controllers":["cpu",...]}`.
pub fn driver_info(system: &CgroupSystem) -> String {
    json!({ "version": system.version().number(), "controllers": system.controllers() }).to_string()
}

/// Parses resources; unknown fields are rejected so a misspelt limit is not silently dropped.
pub fn parse_resources(text: &str) -> Result<Resources> {
    serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("invalid resources JSON: {}", e)))
}

/// `{"path":"/kubepods/…","version":1|2,"paths":{"<controller>":"/sys/fs/cgroup/…"}}`: the
/// created cgroup's path plus, in `version`/`paths`, what a monitor config needs to join it.
pub fn created(path: &str, paths: &CgroupPaths) -> String {
    json!({ "path": path, "version": paths.version, "paths": paths.paths }).to_string()
}

/// Stats with every number as a decimal string: CPU nanoseconds outgrow the integers a JSON
/// reader using doubles (JavaScript) represents exactly. Fractions (pressure averages) are
/// strings too, for one rule on the reading side.
pub fn stats_exact(stats: &Stats) -> String {
    let mut value = serde_json::to_value(stats).unwrap_or(Value::Null);
    integers_to_strings(&mut value);
    value.to_string()
}

/// A JSON array of cgroup paths.
pub fn parse_paths(text: &str) -> Result<Vec<String>> {
    serde_json::from_str(text).map_err(|e| Error::InvalidArgument(format!("invalid cgroup path list: {}", e)))
}

/// Stats of several cgroups, in order: each element is what [`stats_exact`] gives, or
/// `{"error":{"code":"<code>","message":"…"}}` for a cgroup that could not be read.
pub fn stats_batch(results: &[std::result::Result<Stats, (String, String)>]) -> String {
    let items: Vec<Value> = results
        .iter()
        .map(|r| match r {
            Ok(stats) => {
                let mut value = serde_json::to_value(stats).unwrap_or(Value::Null);
                integers_to_strings(&mut value);
                value
            }
            Err((code, message)) => json!({ "error": { "code": code, "message": message } }),
        })
        .collect();
    Value::Array(items).to_string()
}

/// `[pid, ...]`.
pub fn pids(pids: &[libc::pid_t]) -> String {
    json!(pids).to_string()
}

fn integers_to_strings(value: &mut Value) {
    match value {
        Value::Number(n) => *value = Value::String(n.to_string()),
        Value::Array(items) => items.iter_mut().for_each(integers_to_strings),
        Value::Object(map) => map.values_mut().for_each(integers_to_strings),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cgroup::stats::{CpuStats, PidsStats};
    use std::collections::BTreeMap;
    use std::path::PathBuf;

    #[test]
    fn stats_counters_become_exact_strings() {
        let stats = Stats {
            cpu: Some(CpuStats { usage_nanos: u64::MAX, user_nanos: None, ..Default::default() }),
            memory: None,
            pids: Some(PidsStats { current: 3, limit: None }),
            pressure: None,
        };
        let v: Value = serde_json::from_str(&stats_exact(&stats)).unwrap();
        assert_eq!(v["cpu"]["usageNanos"], "18446744073709551615");
        assert_eq!(v["cpu"]["userNanos"], Value::Null);
        assert_eq!(v["cpu"]["nrPeriods"], "0");
        assert_eq!(v["pids"], json!({"current": "3", "limit": null}));
        assert_eq!(v["memory"], Value::Null);
    }

    #[test]
    fn batch_keeps_order_and_reports_errors_in_place() {
        use crate::cgroup::stats::{Pressure, PressureLine, PressureStats};
        let line = PressureLine { avg10: 0.22, avg60: 4.68, avg300: 100.0, total_micros: 657_134_968 };
        let with_pressure = Stats {
            pressure: Some(PressureStats { cpu: Some(Pressure { some: Some(line), full: None }), memory: None, io: None }),
            ..Default::default()
        };
        let text = stats_batch(&[Ok(with_pressure), Err(("EACCES".into(), "read memory.stat: denied".into())), Ok(Stats::default())]);
        let v: Value = serde_json::from_str(&text).unwrap();
        let some = &v[0]["pressure"]["cpu"]["some"];
        assert_eq!(some["avg10"], "0.22");
        assert_eq!(some["avg300"], "100.0");
        assert_eq!(some["totalMicros"], "657134968");
        assert_eq!(v[0]["pressure"]["cpu"]["full"], Value::Null);
        assert_eq!(v[1], json!({"error": {"code": "EACCES", "message": "read memory.stat: denied"}}));
        assert_eq!(v[2]["cpu"], Value::Null);
        assert_eq!(stats_batch(&[]), "[]");
        assert_eq!(parse_paths(r#"["/a","/b/c"]"#).unwrap(), vec!["/a", "/b/c"]);
        assert!(matches!(parse_paths(r#"["/a",1]"#), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn created_carries_the_monitor_join_paths() {
        let mut paths = BTreeMap::new();
        paths.insert("memory".to_string(), PathBuf::from("/sys/fs/cgroup/memory/a/b"));
        let text = created("/a/b", &CgroupPaths { version: 1, paths });
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v, json!({"path": "/a/b", "version": 1, "paths": {"memory": "/sys/fs/cgroup/memory/a/b"}}));
        // The same document minus "path" is a valid monitor config `cgroup` value.
        let back: CgroupPaths = serde_json::from_value(json!({"version": v["version"], "paths": v["paths"]})).unwrap();
        assert_eq!(back.version, 1);
    }

    #[test]
    fn resources_parse_errors_are_invalid_argument() {
        assert!(matches!(parse_resources("{\"pidsLimit\": \"x\"}"), Err(Error::InvalidArgument(_))));
        assert_eq!(parse_resources("{\"pidsLimit\": 5}").unwrap().pids_limit, Some(5));
        assert_eq!(pids(&[1, 2]), "[1,2]");
    }

    #[test]
    fn driver_info_shape() {
        let system = CgroupSystem::V2 { mountpoint: PathBuf::from("/sys/fs/cgroup"), controllers: vec!["cpu".into(), "memory".into()] };
        assert_eq!(driver_info(&system), r#"{"controllers":["cpu","memory"],"version":2}"#);
    }
}
