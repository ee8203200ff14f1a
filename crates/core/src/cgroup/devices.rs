//! Device access rules of a container's cgroup: which device nodes its processes may open or
//! create. Without them a container with CAP_MKNOD could create a node for a host disk and read
//! it. On v1 they are lines written to the devices controller; on v2 a cgroup-device BPF program
//! attached to the container's cgroup decides.

use std::path::Path;

use serde_derive::{Deserialize, Serialize};

use super::{Error, Result};

/// One OCI `linux.resources.devices` entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRule {
    pub allow: bool,
    /// "a" (all), "c" or "b"; absent means all.
    #[serde(rename = "type", default)]
    pub kind: Option<String>,
    /// Absent (or negative) means any.
    #[serde(default)]
    pub major: Option<i64>,
    #[serde(default)]
    pub minor: Option<i64>,
    /// Any of r, w, m; absent means all three.
    #[serde(default)]
    pub access: Option<String>,
}

impl DeviceRule {
    fn kind_char(&self) -> Result<char> {
        match self.kind.as_deref().unwrap_or("a") {
            "a" => Ok('a'),
            "c" => Ok('c'),
            "b" => Ok('b'),
            other => Err(Error::InvalidArgument(format!("device rule type {other:?} is not a, c or b"))),
        }
    }

    fn access(&self) -> Result<&str> {
        let a = self.access.as_deref().filter(|a| !a.is_empty()).unwrap_or("rwm");
        if a.len() > 3 || a.chars().any(|c| !"rwm".contains(c)) {
            return Err(Error::InvalidArgument(format!("device rule access {a:?} is not made of r, w and m")));
        }
        Ok(a)
    }

    fn number(n: Option<i64>) -> String {
        n.filter(|&n| n >= 0).map_or("*".to_string(), |n| n.to_string())
    }

    /// The line the v1 devices controller takes: "a", or "c 1:3 rwm".
    pub fn v1_line(&self) -> Result<String> {
        let kind = self.kind_char()?;
        let access = self.access()?;
        if kind == 'a' {
            // "a" means every device with every access; a partial "a" rule cannot be expressed.
            return Ok("a".to_string());
        }
        Ok(format!("{} {}:{} {}", kind, Self::number(self.major), Self::number(self.minor), access))
    }
}

/// Applies `rules` in order to a v1 devices cgroup directory: allows to devices.allow, denies to
/// devices.deny (a leading deny-all clears what the cgroup inherited).
pub fn apply_v1(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    use std::io::Write;
    // Each write(2) is one rule; the two files stay open across rules (a dozen opens of cgroup
    // files would cost more than the writes).
    let open = |name: &str| -> Result<(std::path::PathBuf, std::fs::File)> {
        let path = dir.join(name);
        let file = std::fs::OpenOptions::new().write(true).open(&path).map_err(|e| Error::io(format!("open {}", path.display()), e))?;
        Ok((path, file))
    };
    let (mut allow, mut deny) = (None, None);
    for rule in rules {
        let line = rule.v1_line()?;
        let slot = if rule.allow { &mut allow } else { &mut deny };
        if slot.is_none() {
            *slot = Some(open(if rule.allow { "devices.allow" } else { "devices.deny" })?);
        }
        let (path, file) = slot.as_mut().expect("opened above");
        file.write_all(line.as_bytes()).map_err(|e| Error::io(format!("write {:?} to {}", line, path.display()), e))?;
    }
    Ok(())
}

// ---- cgroup v2: a BPF_PROG_TYPE_CGROUP_DEVICE program -------------------------------------

const BPF_PROG_LOAD: libc::c_int = 5;
const BPF_PROG_ATTACH: libc::c_int = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

/// One eBPF instruction (struct bpf_insn).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(C)]
pub struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

const fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> Insn {
    Insn { code, regs: (src << 4) | dst, off, imm }
}

// Opcodes used below.
const LDX_W: u8 = 0x61; // BPF_LDX | BPF_MEM | BPF_W
const ALU32_AND_K: u8 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const ALU32_RSH_K: u8 = 0x74; // BPF_ALU | BPF_RSH | BPF_K
const ALU32_MOV_X: u8 = 0xbc; // BPF_ALU | BPF_MOV | BPF_X
const ALU64_MOV_K: u8 = 0xb7; // BPF_ALU64 | BPF_MOV | BPF_K
const JMP_JNE_K: u8 = 0x55; // BPF_JMP | BPF_JNE | BPF_K
const EXIT: u8 = 0x95;

/// bpf_cgroup_dev_ctx: access_type (type in the low 16 bits, access in the high 16), major, minor.
const DEV_TYPE_BLOCK: i32 = 1;
const DEV_TYPE_CHAR: i32 = 2;
const ACC_MKNOD: i32 = 1;
const ACC_READ: i32 = 2;
const ACC_WRITE: i32 = 4;

/// The device filter for `rules`, evaluated like the v1 controller: the last matching rule wins,
/// no match denies. The program checks the rules from last to first and returns at the first
/// match.
pub fn bpf_program(rules: &[DeviceRule]) -> Result<Vec<Insn>> {
    // r2 = type, r3 = access, r4 = major, r5 = minor.
    let mut prog = vec![
        insn(LDX_W, 2, 1, 0, 0),
        insn(ALU32_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_W, 3, 1, 0, 0),
        insn(ALU32_RSH_K, 3, 0, 0, 16),
        insn(LDX_W, 4, 1, 4, 0),
        insn(LDX_W, 5, 1, 8, 0),
    ];
    for rule in rules.iter().rev() {
        let kind = rule.kind_char()?;
        let access = rule.access()?;
        let mut mask = 0;
        for c in access.chars() {
            mask |= match c {
                'm' => ACC_MKNOD,
                'r' => ACC_READ,
                _ => ACC_WRITE,
            };
        }
        // Checks that skip this rule's "return" when they fail; offsets fixed up below.
        let mut checks: Vec<Insn> = Vec::new();
        match kind {
            'c' => checks.push(insn(JMP_JNE_K, 2, 0, 0, DEV_TYPE_CHAR)),
            'b' => checks.push(insn(JMP_JNE_K, 2, 0, 0, DEV_TYPE_BLOCK)),
            _ => {}
        }
        if mask != ACC_MKNOD | ACC_READ | ACC_WRITE {
            // The requested access must be within the rule's: (access & ~mask) == 0.
            checks.push(insn(ALU32_MOV_X, 1, 3, 0, 0));
            checks.push(insn(ALU32_AND_K, 1, 0, 0, !mask));
            checks.push(insn(JMP_JNE_K, 1, 0, 0, 0));
        }
        if kind != 'a' {
            if let Some(major) = rule.major.filter(|&m| m >= 0) {
                checks.push(insn(JMP_JNE_K, 4, 0, 0, major as i32));
            }
            if let Some(minor) = rule.minor.filter(|&m| m >= 0) {
                checks.push(insn(JMP_JNE_K, 5, 0, 0, minor as i32));
            }
        }
        let n = checks.len();
        for (i, c) in checks.iter_mut().enumerate() {
            if c.code == JMP_JNE_K {
                // Jump over the remaining checks and the two-instruction return.
                c.off = (n - i - 1 + 2) as i16;
            }
        }
        prog.extend(checks);
        prog.push(insn(ALU64_MOV_K, 0, 0, 0, rule.allow as i32));
        prog.push(insn(EXIT, 0, 0, 0, 0));
        if n == 0 {
            // Matches everything: earlier rules are never reached (the verifier rejects
            // unreachable instructions).
            return Ok(prog);
        }
    }
    // Nothing matched: deny.
    prog.push(insn(ALU64_MOV_K, 0, 0, 0, 0));
    prog.push(insn(EXIT, 0, 0, 0, 0));
    Ok(prog)
}

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
}

/// Loads the filter for `rules` and attaches it to the v2 cgroup directory `dir`. The program
/// stays attached as long as the cgroup exists.
pub fn apply_v2(dir: &Path, rules: &[DeviceRule]) -> Result<()> {
    let prog = bpf_program(rules)?;
    let license = c"Apache";
    let mut log = vec![0u8; 4096];
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: prog.len() as u32,
        insns: prog.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 1,
        log_size: log.len() as u32,
        log_buf: log.as_mut_ptr() as u64,
        ..Default::default()
    };
    // SAFETY: attr points at live buffers of the sizes it states.
    let prog_fd = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>()) };
    if prog_fd < 0 {
        let err = std::io::Error::last_os_error();
        let verifier = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
        return Err(Error::io(format!("load the device filter for {} ({})", dir.display(), verifier.trim()), err));
    }
    // SAFETY: the kernel just returned this descriptor; nothing else owns it.
    let prog_fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(prog_fd as i32) };
    let cgroup = std::fs::File::open(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))?;
    let attach = ProgAttachAttr {
        target_fd: std::os::fd::AsRawFd::as_raw_fd(&cgroup) as u32,
        attach_bpf_fd: std::os::fd::AsRawFd::as_raw_fd(&prog_fd) as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
    };
    // SAFETY: attach is a valid attribute block for BPF_PROG_ATTACH.
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_PROG_ATTACH, &attach as *const ProgAttachAttr, std::mem::size_of::<ProgAttachAttr>()) };
    if rc < 0 {
        return Err(Error::io(format!("attach the device filter to {}", dir.display()), std::io::Error::last_os_error()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(allow: bool, kind: &str, major: Option<i64>, minor: Option<i64>, access: &str) -> DeviceRule {
        DeviceRule { allow, kind: Some(kind.into()), major, minor, access: Some(access.into()) }
    }

    #[test]
    fn v1_lines_name_type_numbers_and_access() {
        assert_eq!(rule(false, "a", None, None, "rwm").v1_line().unwrap(), "a");
        assert_eq!(rule(true, "c", Some(1), Some(3), "rwm").v1_line().unwrap(), "c 1:3 rwm");
        assert_eq!(rule(true, "c", Some(136), None, "rw").v1_line().unwrap(), "c 136:* rw");
        assert_eq!(rule(true, "b", None, Some(-1), "m").v1_line().unwrap(), "b *:* m");
        assert!(rule(true, "x", None, None, "r").v1_line().is_err());
        assert!(rule(true, "c", None, None, "rwx").v1_line().is_err());
        let bare = DeviceRule { allow: false, kind: None, major: None, minor: None, access: None };
        assert_eq!(bare.v1_line().unwrap(), "a");
    }

    #[test]
    fn rules_apply_in_order_to_the_v1_files() {
        let dir = std::env::temp_dir().join(format!("crisp-devices-v1-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        for f in ["devices.allow", "devices.deny"] {
            std::fs::write(dir.join(f), "").unwrap();
        }
        apply_v1(&dir, &[rule(false, "a", None, None, "rwm"), rule(true, "c", Some(1), Some(3), "rwm"), rule(true, "c", Some(1), Some(5), "r")]).unwrap();
        // A regular file keeps the writes in sequence; the cgroup files take each write as one rule.
        assert_eq!(std::fs::read_to_string(dir.join("devices.deny")).unwrap(), "a");
        assert_eq!(std::fs::read_to_string(dir.join("devices.allow")).unwrap(), "c 1:3 rwmc 1:5 r", "one write per rule");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_bpf_program_checks_rules_from_last_to_first_and_denies_by_default() {
        let prog = bpf_program(&[rule(false, "a", None, None, "rwm"), rule(true, "c", Some(1), Some(3), "rw")]).unwrap();
        // 6 loads, the char rule (type, 3 access insns, major, minor, return), then the deny-all,
        // which matches everything and so ends the program.
        assert_eq!(prog.len(), 6 + (1 + 3 + 2 + 2) + 2);
        let c_rule = &prog[6..14];
        assert_eq!(c_rule[0], insn(JMP_JNE_K, 2, 0, 7, DEV_TYPE_CHAR), "a failed check jumps past the rule's return");
        assert_eq!(c_rule[3], insn(JMP_JNE_K, 1, 0, 4, 0));
        assert_eq!(c_rule[4], insn(JMP_JNE_K, 4, 0, 3, 1));
        assert_eq!(c_rule[5], insn(JMP_JNE_K, 5, 0, 2, 3));
        assert_eq!(c_rule[6], insn(ALU64_MOV_K, 0, 0, 0, 1));
        assert_eq!(&prog[14..16], &[insn(ALU64_MOV_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
        // Without a catch-all rule, what nothing matches is denied at the end.
        let open = bpf_program(&[rule(true, "b", None, None, "m")]).unwrap();
        assert_eq!(&open[open.len() - 2..], &[insn(ALU64_MOV_K, 0, 0, 0, 0), insn(EXIT, 0, 0, 0, 0)]);
        assert_eq!(open.len(), 6 + (1 + 3) + 2 + 2);
    }
}
