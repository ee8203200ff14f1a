//! The subset of the OCI runtime-spec `config.json` the launcher honours, plus crisp's two
//! top-level extensions (`crispRootfs`, `crispCgroup`).
//!
//! Unknown fields are ignored (the format is shared with other runtimes and grows), but fields
//! whose meaning the launcher cannot honour safely (user namespaces, id-mapped mounts, seccomp
//! notification listeners) are rejected by [`Spec::validate`] rather than silently dropped.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_derive::{Deserialize, Serialize};

use crate::cgroup::CgroupPaths;

pub const CONFIG_FILE: &str = "config.json";

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    #[serde(default)]
    pub oci_version: String,
    pub process: Process,
    #[serde(default)]
    pub root: Option<Root>,
    #[serde(default)]
    pub mounts: Vec<Mount>,
    #[serde(default)]
    pub linux: Linux,
    #[serde(default)]
    pub crisp_rootfs: Option<CrispRootfs>,
    #[serde(default)]
    pub crisp_cgroup: Option<CgroupPaths>,
    #[serde(default)]
    pub hooks: Hooks,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
}

/// OCI lifecycle hooks (CDI device specs bring them; CRI itself never does).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Hooks {
    #[serde(default)]
    pub create_container: Vec<Hook>,
    #[serde(default)]
    pub prestart: Vec<Hook>,
    #[serde(default)]
    pub create_runtime: Vec<Hook>,
    #[serde(default)]
    pub start_container: Vec<Hook>,
    #[serde(default)]
    pub poststart: Vec<Hook>,
    #[serde(default)]
    pub poststop: Vec<Hook>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hook {
    pub path: String,
    #[serde(default)]
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    /// Seconds; absent means the runtime's own bound.
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Process {
    #[serde(default)]
    pub terminal: bool,
    #[serde(default)]
    pub user: User,
    pub args: Vec<String>,
    #[serde(default)]
    pub env: Vec<String>,
    #[serde(default = "default_cwd")]
    pub cwd: String,
    #[serde(default)]
    pub capabilities: Option<Capabilities>,
    #[serde(default)]
    pub rlimits: Vec<Rlimit>,
    #[serde(default)]
    pub no_new_privileges: bool,
    #[serde(default)]
    pub oom_score_adj: Option<i32>,
    /// AppArmor profile the process execs into; the launcher refuses it on a host without AppArmor.
    #[serde(default)]
    pub apparmor_profile: Option<String>,
    /// SELinux process label; refused on a host without SELinux.
    #[serde(default)]
    pub selinux_label: Option<String>,
}

fn default_cwd() -> String {
    "/".to_owned()
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct User {
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
    #[serde(default)]
    pub umask: Option<u32>,
    #[serde(default)]
    pub additional_gids: Vec<u32>,
}

/// Capability sets by name ("CAP_CHOWN"). An absent set is empty.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Capabilities {
    #[serde(default)]
    pub bounding: Vec<String>,
    #[serde(default)]
    pub effective: Vec<String>,
    #[serde(default)]
    pub inheritable: Vec<String>,
    #[serde(default)]
    pub permitted: Vec<String>,
    #[serde(default)]
    pub ambient: Vec<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Rlimit {
    #[serde(rename = "type")]
    pub kind: String,
    pub hard: u64,
    pub soft: u64,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Root {
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub readonly: bool,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub destination: String,
    #[serde(default, rename = "type")]
    pub kind: Option<String>,
    #[serde(default)]
    pub source: Option<String>,
    #[serde(default)]
    pub options: Vec<String>,
    #[serde(default)]
    pub uid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    pub gid_mappings: Vec<serde_json::Value>,
}

impl Mount {
    /// Mapped through the container's user namespace (OCI `idmap`/`ridmap`, or mappings given).
    pub fn is_idmapped(&self) -> bool {
        !self.uid_mappings.is_empty() || !self.gid_mappings.is_empty() || self.options.iter().any(|o| o == "idmap" || o == "ridmap")
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Linux {
    #[serde(default)]
    pub namespaces: Vec<Namespace>,
    #[serde(default)]
    pub uid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    pub gid_mappings: Vec<serde_json::Value>,
    #[serde(default)]
    pub devices: Vec<Device>,
    #[serde(default)]
    pub masked_paths: Vec<String>,
    #[serde(default)]
    pub readonly_paths: Vec<String>,
    #[serde(default)]
    pub rootfs_propagation: Option<String>,
    #[serde(default)]
    pub seccomp: Option<Seccomp>,
    /// Pod-level sysctls are applied by the monitor; container-level ones are not supported.
    #[serde(default)]
    pub sysctl: BTreeMap<String, String>,
    /// Only the device rules are read here: the daemon creates the cgroup with the rest.
    #[serde(default)]
    pub resources: Option<LinuxResources>,
    /// SELinux label of the container's own filesystems (tmpfs, devpts, mqueue).
    #[serde(default)]
    pub mount_label: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LinuxResources {
    #[serde(default)]
    pub devices: Vec<crate::cgroup::devices::DeviceRule>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Namespace {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub major: i64,
    #[serde(default)]
    pub minor: i64,
    #[serde(default)]
    pub file_mode: Option<u32>,
    #[serde(default)]
    pub uid: Option<u32>,
    #[serde(default)]
    pub gid: Option<u32>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Seccomp {
    pub default_action: String,
    #[serde(default)]
    pub default_errno_ret: Option<u32>,
    #[serde(default)]
    pub architectures: Vec<String>,
    #[serde(default)]
    pub flags: Vec<String>,
    #[serde(default)]
    pub listener_path: Option<String>,
    #[serde(default)]
    pub syscalls: Vec<SeccompSyscall>,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompSyscall {
    pub names: Vec<String>,
    pub action: String,
    #[serde(default)]
    pub errno_ret: Option<u32>,
    #[serde(default)]
    pub args: Vec<SeccompArg>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SeccompArg {
    pub index: u32,
    pub value: u64,
    #[serde(default)]
    pub value_two: u64,
    pub op: String,
}

/// The container's root filesystem: an overlay assembled inside the container's mount namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CrispRootfs {
    /// Topmost first, as overlayfs' lowerdir option lists them.
    pub lower_dirs: Vec<PathBuf>,
    pub upper_dir: PathBuf,
    pub work_dir: PathBuf,
}

/// Namespace kinds a spec may name.
pub const NAMESPACE_KINDS: &[&str] = &["mount", "pid", "network", "ipc", "uts", "cgroup", "user", "time"];

impl Spec {
    /// Reads and validates `<bundle>/config.json`.
    pub fn load(bundle: &Path) -> Result<Spec, String> {
        let path = bundle.join(CONFIG_FILE);
        let raw = std::fs::read(&path).map_err(|e| format!("read {}: {}", path.display(), e))?;
        Spec::parse(&raw).map_err(|e| format!("{}: {}", path.display(), e))
    }

    pub fn parse(raw: &[u8]) -> Result<Spec, String> {
        let spec: Spec = serde_json::from_slice(raw).map_err(|e| format!("invalid runtime spec: {}", e))?;
        spec.validate()?;
        Ok(spec)
    }

    /// Rejects what the launcher cannot honour.
    pub fn validate(&self) -> Result<(), String> {
        let h = &self.hooks;
        for hook in h.prestart.iter().chain(&h.create_runtime).chain(&h.create_container).chain(&h.start_container).chain(&h.poststart).chain(&h.poststop) {
            if !hook.path.starts_with('/') {
                return Err(format!("hook path {:?} is not absolute", hook.path));
            }
            if hook.timeout == Some(0) {
                return Err(format!("hook {} has a zero timeout", hook.path));
            }
        }
        if self.process.args.is_empty() || self.process.args[0].is_empty() {
            return Err("process.args must name the program to run".into());
        }
        if !self.process.cwd.starts_with('/') {
            return Err(format!("process.cwd {:?} is not absolute", self.process.cwd));
        }
        if let Some(adj) = self.process.oom_score_adj {
            if !(-1000..=1000).contains(&adj) {
                return Err(format!("process.oomScoreAdj {} is outside -1000..=1000", adj));
            }
        }
        for s in self.process.args.iter().chain(&self.process.env).chain([&self.process.cwd]) {
            if s.contains('\0') {
                return Err(format!("process field {:?} contains a NUL byte", s));
            }
        }
        for e in &self.process.env {
            if !e.contains('=') {
                return Err(format!("environment entry {:?} has no '='", e));
            }
        }
        let mut seen = Vec::new();
        for ns in &self.linux.namespaces {
            if !NAMESPACE_KINDS.contains(&ns.kind.as_str()) {
                return Err(format!("unknown namespace type {:?}", ns.kind));
            }
            if seen.contains(&ns.kind.as_str()) {
                return Err(format!("namespace {:?} is listed twice", ns.kind));
            }
            seen.push(ns.kind.as_str());
            match ns.kind.as_str() {
                // The pod's, joined once the root filesystem is assembled.
                "user" if ns.path.is_none() => return Err("a new user namespace per container is not supported (only the pod's)".into()),
                "time" => return Err("time namespaces are not supported".into()),
                "mount" if ns.path.is_some() => {
                    return Err("joining an existing mount namespace is not supported".into())
                }
                _ => {}
            }
        }
        let userns = self.namespace_path("user").is_some();
        if !userns && (!self.linux.uid_mappings.is_empty() || !self.linux.gid_mappings.is_empty()) {
            return Err("uid/gid mappings need a user namespace".into());
        }
        let rootfs = self.crisp_rootfs.as_ref().ok_or("crispRootfs is missing")?;
        if rootfs.lower_dirs.is_empty() {
            return Err("crispRootfs.lowerDirs is empty".into());
        }
        for dir in rootfs.lower_dirs.iter().chain([&rootfs.upper_dir, &rootfs.work_dir]) {
            let s = dir.to_string_lossy();
            if !dir.is_absolute() || s.contains(':') || s.contains(',') || s.contains('\0') {
                return Err(format!("crispRootfs path {:?} must be absolute and contain no ':' ',' or NUL", s));
            }
        }
        for m in &self.mounts {
            if !m.destination.starts_with('/') {
                return Err(format!("mount destination {:?} is not absolute", m.destination));
            }
            // Id-mapped mounts use the container's user namespace for their mapping.
            if !userns && m.is_idmapped() {
                return Err(format!("id-mapped mount {:?} needs a user namespace", m.destination));
            }
        }
        for d in &self.linux.devices {
            if !d.path.starts_with("/dev/") {
                return Err(format!("device path {:?} is not under /dev", d.path));
            }
            if !matches!(d.kind.as_str(), "c" | "u" | "b" | "p") {
                return Err(format!("device {:?} has unknown type {:?}", d.path, d.kind));
            }
        }
        if let Some(p) = &self.linux.rootfs_propagation {
            crate::container::mounts::propagation_flag(p)
                .ok_or_else(|| format!("unknown rootfsPropagation {:?}", p))?;
        }
        if let Some(seccomp) = &self.linux.seccomp {
            if seccomp.listener_path.as_deref().is_some_and(|p| !p.is_empty()) {
                return Err("seccomp listenerPath (user notification) is not supported".into());
            }
        }
        Ok(())
    }

    /// Whether `kind` gets a new namespace (listed without a path).
    pub fn new_namespace(&self, kind: &str) -> bool {
        self.linux.namespaces.iter().any(|n| n.kind == kind && n.path.as_deref().is_none_or(str::is_empty))
    }

    /// The namespace file to join for `kind`, if listed with a path.
    pub fn namespace_path(&self, kind: &str) -> Option<&str> {
        self.linux.namespaces.iter().find(|n| n.kind == kind).and_then(|n| n.path.as_deref()).filter(|p| !p.is_empty())
    }

    pub fn readonly_root(&self) -> bool {
        self.root.as_ref().is_some_and(|r| r.readonly)
    }

    /// The value of `name` in the process environment (last one wins, like a shell's export).
    pub fn env_value<'a>(env: &'a [String], name: &str) -> Option<&'a str> {
        env.iter()
            .rev()
            .find_map(|e| e.strip_prefix(name).and_then(|rest| rest.strip_prefix('=')))
    }
}

#[cfg(test)]
mod tests {

    #[test]
    fn the_pods_user_namespace_allows_mappings_and_id_mapped_mounts() {
        let v = serde_json::json!({
            "process": {"args": ["true"], "cwd": "/"},
            "crispRootfs": {"lowerDirs": ["/l"], "upperDir": "/u", "workDir": "/w"},
            "linux": {"namespaces": [{"type": "user", "path": "/state/ns/user"}], "uidMappings": [{"containerID": 0, "hostID": 200000, "size": 65536}]},
            "mounts": [{"destination": "/data", "type": "bind", "source": "/srv", "options": ["rbind", "idmap"]}]
        });
        let spec: Spec = serde_json::from_value(v).unwrap();
        assert_eq!(spec.validate(), Ok(()));
        assert!(spec.mounts[0].is_idmapped());
    }

    #[test]
    fn hooks_need_absolute_paths_and_positive_timeouts() {
        let with_hooks = |hooks: serde_json::Value| {
            let v = serde_json::json!({
                "process": {"args": ["true"], "cwd": "/"},
                "crispRootfs": {"lowerDirs": ["/l"], "upperDir": "/u", "workDir": "/w"},
                "hooks": hooks
            });
            serde_json::from_value::<Spec>(v).unwrap().validate()
        };
        let ok = with_hooks(serde_json::json!({"createContainer": [{"path": "/usr/bin/hook", "args": ["hook"], "timeout": 5}]}));
        assert!(ok.is_ok(), "{ok:?}");
        assert!(with_hooks(serde_json::json!({"createContainer": [{"path": "hook"}]})).unwrap_err().contains("not absolute"));
        assert!(with_hooks(serde_json::json!({"createContainer": [{"path": "/h", "timeout": 0}]})).unwrap_err().contains("zero timeout"));
        assert!(with_hooks(serde_json::json!({"poststart": [{"path": "/h"}], "poststop": [{"path": "/h", "timeout": 1}]})).is_ok());
        assert!(with_hooks(serde_json::json!({"startContainer": [{"path": "h"}]})).unwrap_err().contains("not absolute"));
    }
    use super::*;
    use serde_json::json;

    pub(crate) fn minimal() -> serde_json::Value {
        json!({
            "ociVersion": "1.1.0",
            "process": {"args": ["/bin/sh"], "env": ["PATH=/bin"], "cwd": "/"},
            "root": {"path": "rootfs", "readonly": true},
            "crispRootfs": {"lowerDirs": ["/l1", "/l2"], "upperDir": "/u", "workDir": "/w"},
        })
    }

    fn parse(v: serde_json::Value) -> Result<Spec, String> {
        Spec::parse(&serde_json::to_vec(&v).unwrap())
    }

    #[test]
    fn parses_a_full_spec() {
        let spec = parse(json!({
            "ociVersion": "1.1.0",
            "process": {
                "terminal": true,
                "user": {"uid": 1000, "gid": 100, "additionalGids": [5, 6], "umask": 18},
                "args": ["sh", "-c", "echo hi"],
                "env": ["PATH=/usr/bin:/bin", "HOME=/root"],
                "cwd": "/work",
                "capabilities": {"bounding": ["CAP_CHOWN"], "effective": ["CAP_CHOWN"], "permitted": ["CAP_CHOWN"]},
                "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 512}],
                "noNewPrivileges": true,
                "oomScoreAdj": 500,
                "apparmorProfile": "k8s-nginx",
                "selinuxLabel": "system_u:system_r:container_t:s0:c1,c2"
            },
            "root": {"path": "rootfs"},
            "hostname": "ignored",
            "mounts": [
                {"destination": "/proc", "type": "proc", "source": "proc", "options": ["nosuid", "noexec", "nodev"]},
                {"destination": "/data", "type": "bind", "source": "/var/data", "options": ["rbind", "ro"]}
            ],
            "linux": {
                "namespaces": [{"type": "mount"}, {"type": "network", "path": "/run/netns/x"}, {"type": "pid"}],
                "devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229, "fileMode": 438}],
                "maskedPaths": ["/proc/kcore"],
                "readonlyPaths": ["/proc/sys"],
                "rootfsPropagation": "rslave",
                "resources": {"memory": {"limit": 1}},
                "seccomp": {
                    "defaultAction": "SCMP_ACT_ERRNO",
                    "defaultErrnoRet": 1,
                    "architectures": ["SCMP_ARCH_X86_64"],
                    "syscalls": [{"names": ["read"], "action": "SCMP_ACT_ALLOW",
                                  "args": [{"index": 0, "value": 3, "op": "SCMP_CMP_EQ"}]}]
                }
            },
            "annotations": {"a": "b"},
            "crispRootfs": {"lowerDirs": ["/l1"], "upperDir": "/u", "workDir": "/w"},
            "crispCgroup": {"version": 1, "paths": {"memory": "/sys/fs/cgroup/memory/x"}}
        }))
        .unwrap();
        assert!(spec.process.terminal);
        assert_eq!(spec.process.user.additional_gids, vec![5, 6]);
        assert_eq!(spec.process.user.umask, Some(18));
        assert_eq!(spec.process.apparmor_profile.as_deref(), Some("k8s-nginx"));
        assert_eq!(spec.process.selinux_label.as_deref(), Some("system_u:system_r:container_t:s0:c1,c2"));
        assert_eq!(spec.process.rlimits[0].kind, "RLIMIT_NOFILE");
        assert!(spec.new_namespace("mount") && spec.new_namespace("pid"));
        assert!(!spec.new_namespace("network") && !spec.new_namespace("ipc"));
        assert_eq!(spec.namespace_path("network"), Some("/run/netns/x"));
        assert_eq!(spec.linux.devices[0].file_mode, Some(0o666));
        assert_eq!(spec.linux.seccomp.as_ref().unwrap().syscalls[0].args[0].value, 3);
        assert_eq!(spec.crisp_cgroup.as_ref().unwrap().version, 1);
        assert!(!spec.readonly_root());
        assert_eq!(Spec::env_value(&spec.process.env, "PATH"), Some("/usr/bin:/bin"));
        assert_eq!(Spec::env_value(&spec.process.env, "PAT"), None);
    }

    #[test]
    fn rejects_what_cannot_be_honoured() {
        type Edit = Box<dyn Fn(&mut serde_json::Value)>;
        let cases: Vec<(&str, Edit)> = vec![
            ("a new user namespace", Box::new(|v| v["linux"] = json!({"namespaces": [{"type": "user"}]}))),
            ("mount namespace", Box::new(|v| v["linux"] = json!({"namespaces": [{"type": "mount", "path": "/x"}]}))),
            ("unknown namespace", Box::new(|v| v["linux"] = json!({"namespaces": [{"type": "bogus"}]}))),
            ("listed twice", Box::new(|v| v["linux"] = json!({"namespaces": [{"type": "pid"}, {"type": "pid"}]}))),
            ("mappings", Box::new(|v| v["linux"] = json!({"uidMappings": [{"containerID": 0, "hostID": 1, "size": 1}]}))),
            ("program", Box::new(|v| v["process"]["args"] = json!([]))),
            ("not absolute", Box::new(|v| v["process"]["cwd"] = json!("rel"))),
            ("crispRootfs is missing", Box::new(|v| { v.as_object_mut().unwrap().remove("crispRootfs"); })),
            ("lowerDirs is empty", Box::new(|v| v["crispRootfs"]["lowerDirs"] = json!([]))),
            ("must be absolute", Box::new(|v| v["crispRootfs"]["upperDir"] = json!("/a:b"))),
            ("not absolute", Box::new(|v| v["mounts"] = json!([{"destination": "proc", "type": "proc"}]))),
            ("id-mapped", Box::new(|v| v["mounts"] = json!([{"destination": "/x", "type": "bind", "options": ["idmap"]}]))),
            ("not under /dev", Box::new(|v| v["linux"] = json!({"devices": [{"path": "/etc/x", "type": "c"}]}))),
            ("rootfsPropagation", Box::new(|v| v["linux"] = json!({"rootfsPropagation": "sideways"}))),
            ("listenerPath", Box::new(|v| v["linux"] = json!({"seccomp": {"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/s"}}))),
            ("no '='", Box::new(|v| v["process"]["env"] = json!(["PATH"]))),
            ("oomScoreAdj", Box::new(|v| v["process"]["oomScoreAdj"] = json!(-1001))),
        ];
        for (needle, mutate) in cases {
            let mut v = minimal();
            mutate(&mut v);
            let err = parse(v).unwrap_err();
            assert!(err.contains(needle), "expected {:?} in {:?}", needle, err);
        }
        parse(minimal()).unwrap();
        assert!(Spec::parse(b"{").unwrap_err().contains("invalid runtime spec"));
    }
}
