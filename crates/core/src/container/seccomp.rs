//! Compiles an OCI `linux.seccomp` profile into a classic BPF program for
//! seccomp(SECCOMP_SET_MODE_FILTER), without libseccomp.
//!
//! Layout of the generated program:
//!
//! ```text
//!   ld  arch
//!   jeq AUDIT_ARCH_X86_64 → x86_64 section     (one dispatch per supported architecture)
//!   jeq AUDIT_ARCH_I386   → i386 section
//!   ret KILL_PROCESS                           (an architecture the profile does not cover)
//! section:
//!   ld  nr
//!   (x86_64 only) nr has the x32 bit → x32 section, or KILL_PROCESS when x32 is not listed
//!   jeq <nr>, fall through, else next block    (one block per syscall with a non-default rule)
//!     rules with argument conditions, in profile order: all conditions hold → ret <action>
//!     the unconditional rule, if any → ret <action>
//!     ret <default>
//!   ...
//!   ret <default>
//! ```
//!
//! Argument conditions compare the full 64-bit argument as two 32-bit halves, unsigned, as
//! libseccomp does. Syscall names unknown for an architecture are skipped, as libseccomp
//! skips names that do not exist on the architecture being compiled.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::spec::{Seccomp, SeccompArg};
use super::syscalls;

// Classic BPF opcodes (linux/bpf_common.h), class | size/op | source.
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_ALU_AND_K: u16 = 0x54; // BPF_ALU | BPF_AND | BPF_K
const BPF_JMP_JA: u16 = 0x05; // BPF_JMP | BPF_JA
const BPF_JMP_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JMP_JGT_K: u16 = 0x25; // BPF_JMP | BPF_JGT | BPF_K
const BPF_JMP_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JMP_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

/// The longest program the kernel accepts (BPF_MAXINSNS).
pub const MAX_INSNS: usize = 4096;

const AUDIT_ARCH_X86_64: u32 = 0xc000_003e;
const AUDIT_ARCH_I386: u32 = 0x4000_0003;
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

// struct seccomp_data offsets.
const OFF_NR: u32 = 0;
const OFF_ARCH: u32 = 4;
const OFF_ARGS: u32 = 16;

pub const RET_KILL_PROCESS: u32 = 0x8000_0000;
pub const RET_KILL_THREAD: u32 = 0x0000_0000;
pub const RET_TRAP: u32 = 0x0003_0000;
pub const RET_ERRNO: u32 = 0x0005_0000;
pub const RET_TRACE: u32 = 0x7ff0_0000;
pub const RET_LOG: u32 = 0x7ffc_0000;
pub const RET_ALLOW: u32 = 0x7fff_0000;

/// A compiled filter and the seccomp(2) flags to install it with.
#[derive(Clone)]
pub struct Program {
    pub filter: Vec<libc::sock_filter>,
    pub flags: libc::c_ulong,
    /// Profile entries that could not be applied (unknown architectures) — worth a log line.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for Program {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Program").field("instructions", &self.filter.len()).field("flags", &self.flags).finish()
    }
}

/// The architectures a filter can cover, as seccomp_data.arch reports them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Arch {
    X86_64,
    I386,
    X32,
}

impl Arch {
    fn table(self) -> &'static [(&'static str, u32)] {
        match self {
            Arch::X86_64 => syscalls::X86_64,
            Arch::I386 => syscalls::I386,
            Arch::X32 => syscalls::X32,
        }
    }

    fn number(self, name: &str) -> Option<u32> {
        let table = self.table();
        let nr = table.binary_search_by(|(n, _)| (*n).cmp(name)).ok().map(|i| table[i].1)?;
        Some(if self == Arch::X32 { nr | X32_SYSCALL_BIT } else { nr })
    }
}

/// Parses an OCI action name with its errno/trace data.
pub fn action(name: &str, errno_ret: Option<u32>) -> Result<u32, String> {
    let data = |default: u32| errno_ret.unwrap_or(default) & 0xffff;
    Ok(match name {
        "SCMP_ACT_ALLOW" => RET_ALLOW,
        "SCMP_ACT_ERRNO" => RET_ERRNO | data(libc::EPERM as u32),
        "SCMP_ACT_KILL" | "SCMP_ACT_KILL_THREAD" => RET_KILL_THREAD,
        "SCMP_ACT_KILL_PROCESS" => RET_KILL_PROCESS,
        "SCMP_ACT_TRAP" => RET_TRAP,
        "SCMP_ACT_LOG" => RET_LOG,
        // Without a tracer attached the kernel fails the call with ENOSYS.
        "SCMP_ACT_TRACE" => RET_TRACE | data(0),
        "SCMP_ACT_NOTIFY" => return Err("seccomp action SCMP_ACT_NOTIFY is not supported".into()),
        other => return Err(format!("unknown seccomp action {:?}", other)),
    })
}

fn filter_flag(name: &str) -> Result<libc::c_ulong, String> {
    Ok(match name {
        "SECCOMP_FILTER_FLAG_TSYNC" => libc::SECCOMP_FILTER_FLAG_TSYNC,
        "SECCOMP_FILTER_FLAG_LOG" => libc::SECCOMP_FILTER_FLAG_LOG,
        "SECCOMP_FILTER_FLAG_SPEC_ALLOW" => libc::SECCOMP_FILTER_FLAG_SPEC_ALLOW,
        other => return Err(format!("unknown seccomp flag {:?}", other)),
    })
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
    MaskedEq,
}

fn op(name: &str) -> Result<Op, String> {
    Ok(match name {
        "SCMP_CMP_EQ" => Op::Eq,
        "SCMP_CMP_NE" => Op::Ne,
        "SCMP_CMP_LT" => Op::Lt,
        "SCMP_CMP_LE" => Op::Le,
        "SCMP_CMP_GT" => Op::Gt,
        "SCMP_CMP_GE" => Op::Ge,
        "SCMP_CMP_MASKED_EQ" => Op::MaskedEq,
        other => return Err(format!("unknown seccomp comparison {:?}", other)),
    })
}

#[derive(Clone, Debug)]
struct Cond {
    index: u32,
    op: Op,
    value: u64,
    value_two: u64,
}

#[derive(Clone, Debug)]
struct Rule {
    conds: Vec<Cond>,
    action: u32,
}

/// The native architecture and the extra ones the profile asks for.
fn architectures(profile: &Seccomp, warnings: &mut Vec<String>) -> Result<Vec<Arch>, String> {
    if !cfg!(target_arch = "x86_64") {
        return Err("seccomp profiles are only supported on x86_64 hosts".into());
    }
    let mut archs = vec![Arch::X86_64];
    for name in &profile.architectures {
        let arch = match name.as_str() {
            "SCMP_ARCH_X86_64" | "SCMP_ARCH_NATIVE" => Arch::X86_64,
            "SCMP_ARCH_X86" => Arch::I386,
            "SCMP_ARCH_X32" => Arch::X32,
            other => {
                warnings.push(format!("seccomp architecture {} does not run on this host; ignored", other));
                continue;
            }
        };
        if !archs.contains(&arch) {
            archs.push(arch);
        }
    }
    Ok(archs)
}

/// Compiles `profile` for this host.
/// `compile`, remembering the last few profiles: compiling the default profile takes about a
/// fifth of a millisecond, and a pod's containers and every exec into them use the same few.
pub fn compile_cached(profile: &Seccomp) -> Result<Program, String> {
    const KEPT: usize = 8;
    static CACHE: Mutex<Vec<(Seccomp, Program)>> = Mutex::new(Vec::new());
    let mut cache = CACHE.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if let Some(i) = cache.iter().position(|(p, _)| p == profile) {
        let entry = cache.remove(i);
        let program = entry.1.clone();
        cache.push(entry);
        return Ok(program);
    }
    let program = compile(profile)?;
    if cache.len() >= KEPT {
        cache.remove(0);
    }
    cache.push((profile.clone(), program.clone()));
    Ok(program)
}

pub fn compile(profile: &Seccomp) -> Result<Program, String> {
    let mut warnings = Vec::new();
    let default = action(&profile.default_action, profile.default_errno_ret)?;
    let mut flags = 0;
    for f in &profile.flags {
        flags |= filter_flag(f)?;
    }
    let archs = architectures(profile, &mut warnings)?;

    // Parse every rule once; names are resolved per architecture below.
    let mut parsed: Vec<(&[String], Rule)> = Vec::new();
    for entry in &profile.syscalls {
        let act = action(&entry.action, entry.errno_ret)?;
        let conds = entry.args.iter().map(cond).collect::<Result<Vec<_>, _>>()?;
        parsed.push((&entry.names, Rule { conds, action: act }));
    }

    let mut asm = Asm::default();
    let sections: Vec<(Arch, Label)> = archs
        .iter()
        .filter(|a| **a != Arch::X32)
        .map(|a| (*a, asm.label()))
        .collect();
    asm.load(OFF_ARCH);
    for (arch, label) in &sections {
        let audit = match arch {
            Arch::X86_64 => AUDIT_ARCH_X86_64,
            _ => AUDIT_ARCH_I386,
        };
        asm.jump(BPF_JMP_JEQ_K, audit, Target::Next, Target::Skip(1));
        asm.ja(*label);
    }
    asm.ret(RET_KILL_PROCESS);

    for (arch, label) in sections {
        asm.bind(label);
        asm.load(OFF_NR);
        if arch == Arch::X86_64 {
            // x32 calls share AUDIT_ARCH_X86_64 and are told apart by a bit in the number.
            let x32 = archs.contains(&Arch::X32).then(|| asm.label());
            asm.jump(BPF_JMP_JSET_K, X32_SYSCALL_BIT, Target::Next, Target::Skip(1));
            match x32 {
                Some(l) => asm.ja(l),
                None => asm.ret(RET_KILL_PROCESS),
            }
            section(&mut asm, Arch::X86_64, &parsed, default)?;
            if let Some(l) = x32 {
                asm.bind(l);
                section(&mut asm, Arch::X32, &parsed, default)?;
            }
        } else {
            section(&mut asm, arch, &parsed, default)?;
        }
    }
    let filter = asm.assemble()?;
    if filter.len() > MAX_INSNS {
        return Err(format!("seccomp profile compiles to {} instructions; the kernel accepts {}", filter.len(), MAX_INSNS));
    }
    Ok(Program { filter, flags, warnings })
}

fn cond(arg: &SeccompArg) -> Result<Cond, String> {
    if arg.index > 5 {
        return Err(format!("seccomp argument index {} is out of range (0..=5)", arg.index));
    }
    Ok(Cond { index: arg.index, op: op(&arg.op)?, value: arg.value, value_two: arg.value_two })
}

/// Emits the per-syscall blocks of one architecture; expects the syscall number in A.
fn section(asm: &mut Asm, arch: Arch, parsed: &[(&[String], Rule)], default: u32) -> Result<(), String> {
    let mut by_nr: BTreeMap<u32, Vec<&Rule>> = BTreeMap::new();
    for (names, rule) in parsed {
        for name in names.iter() {
            if let Some(nr) = arch.number(name) {
                let rules = by_nr.entry(nr).or_default();
                // The same rule listed twice under one name adds nothing.
                if !rules.iter().any(|r| std::ptr::eq(*r, rule)) {
                    rules.push(rule);
                }
            }
        }
    }
    for (nr, rules) in by_nr {
        if rules.iter().all(|r| r.action == default) {
            continue;
        }
        let next = asm.label();
        let start = asm.len();
        asm.jump(BPF_JMP_JEQ_K, nr, Target::Next, Target::Label(next));
        let mut unconditional = None;
        for rule in &rules {
            if rule.conds.is_empty() {
                unconditional.get_or_insert(rule.action);
                continue;
            }
            let fail = asm.label();
            for c in &rule.conds {
                emit_cond(asm, c, fail);
            }
            asm.ret(rule.action);
            asm.bind(fail);
        }
        asm.ret(unconditional.unwrap_or(default));
        if asm.len() - start > 256 {
            return Err(format!("seccomp rules for syscall {} are too complex", nr));
        }
        asm.bind(next);
        // Every block ends in a return, so A still holds the syscall number here.
    }
    asm.ret(default);
    Ok(())
}

/// Falls through when the condition holds, jumps to `fail` otherwise. Clobbers A.
fn emit_cond(asm: &mut Asm, c: &Cond, fail: Label) {
    let lo_off = OFF_ARGS + 8 * c.index + if cfg!(target_endian = "little") { 0 } else { 4 };
    let hi_off = OFF_ARGS + 8 * c.index + if cfg!(target_endian = "little") { 4 } else { 0 };
    let (hi, lo) = ((c.value >> 32) as u32, c.value as u32);
    let f = Target::Label(fail);
    let n = Target::Next;
    match c.op {
        Op::Eq => {
            asm.load(hi_off);
            asm.jump(BPF_JMP_JEQ_K, hi, n, f);
            asm.load(lo_off);
            asm.jump(BPF_JMP_JEQ_K, lo, n, f);
        }
        Op::MaskedEq => {
            let (d_hi, d_lo) = ((c.value_two >> 32) as u32, c.value_two as u32);
            asm.load(hi_off);
            asm.alu_and(hi);
            asm.jump(BPF_JMP_JEQ_K, d_hi, n, f);
            asm.load(lo_off);
            asm.alu_and(lo);
            asm.jump(BPF_JMP_JEQ_K, d_lo, n, f);
        }
        Op::Ne => {
            let pass = asm.label();
            asm.load(hi_off);
            asm.jump(BPF_JMP_JEQ_K, hi, n, Target::Label(pass));
            asm.load(lo_off);
            asm.jump(BPF_JMP_JEQ_K, lo, f, n);
            asm.bind(pass);
        }
        Op::Gt | Op::Ge => {
            let pass = asm.label();
            asm.load(hi_off);
            asm.jump(BPF_JMP_JGT_K, hi, Target::Label(pass), n);
            asm.jump(BPF_JMP_JEQ_K, hi, n, f);
            asm.load(lo_off);
            let code = if matches!(c.op, Op::Gt) { BPF_JMP_JGT_K } else { BPF_JMP_JGE_K };
            asm.jump(code, lo, n, f);
            asm.bind(pass);
        }
        Op::Lt | Op::Le => {
            let pass = asm.label();
            asm.load(hi_off);
            asm.jump(BPF_JMP_JGT_K, hi, f, n);
            asm.jump(BPF_JMP_JEQ_K, hi, n, Target::Label(pass));
            asm.load(lo_off);
            // lo < v ⇔ !(lo >= v); lo <= v ⇔ !(lo > v).
            let code = if matches!(c.op, Op::Lt) { BPF_JMP_JGE_K } else { BPF_JMP_JGT_K };
            asm.jump(code, lo, f, n);
            asm.bind(pass);
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Label(usize);

#[derive(Clone, Copy, Debug)]
enum Target {
    Next,
    /// Skip this many following instructions.
    Skip(u8),
    Label(Label),
}

struct Insn {
    code: u16,
    jt: Target,
    jf: Target,
    k: u32,
    /// For BPF_JA: the label whose offset becomes k.
    ja: Option<Label>,
}

/// A tiny assembler with forward labels.
#[derive(Default)]
struct Asm {
    insns: Vec<Insn>,
    labels: Vec<Option<usize>>,
}

impl Asm {
    fn len(&self) -> usize {
        self.insns.len()
    }

    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.insns.len());
    }

    fn push(&mut self, code: u16, k: u32) {
        self.insns.push(Insn { code, jt: Target::Next, jf: Target::Next, k, ja: None });
    }

    fn load(&mut self, offset: u32) {
        self.push(BPF_LD_W_ABS, offset);
    }

    fn alu_and(&mut self, k: u32) {
        self.push(BPF_ALU_AND_K, k);
    }

    fn ret(&mut self, k: u32) {
        self.push(BPF_RET_K, k);
    }

    fn jump(&mut self, code: u16, k: u32, jt: Target, jf: Target) {
        self.insns.push(Insn { code, jt, jf, k, ja: None });
    }

    fn ja(&mut self, l: Label) {
        self.insns.push(Insn { code: BPF_JMP_JA, jt: Target::Next, jf: Target::Next, k: 0, ja: Some(l) });
    }

    fn assemble(&self) -> Result<Vec<libc::sock_filter>, String> {
        let offset = |at: usize, l: Label| -> Result<usize, String> {
            let pos = self.labels[l.0].ok_or("internal error: unbound seccomp label")?;
            pos.checked_sub(at + 1).ok_or_else(|| "internal error: backward seccomp jump".to_string())
        };
        let mut out = Vec::with_capacity(self.insns.len());
        for (i, insn) in self.insns.iter().enumerate() {
            let short = |t: Target| -> Result<u8, String> {
                match t {
                    Target::Next => Ok(0),
                    Target::Skip(n) => Ok(n),
                    Target::Label(l) => {
                        u8::try_from(offset(i, l)?).map_err(|_| "seccomp jump out of range; profile too complex".to_string())
                    }
                }
            };
            let k = match insn.ja {
                Some(l) => offset(i, l)? as u32,
                None => insn.k,
            };
            out.push(libc::sock_filter { code: insn.code, jt: short(insn.jt)?, jf: short(insn.jf)?, k });
        }
        Ok(out)
    }
}

/// Installs a compiled filter on the calling thread. Async-signal-safe (a single syscall).
///
/// # Safety
/// `filter` must stay alive for the duration of the call (the kernel copies it).
pub unsafe fn install(filter: &[libc::sock_filter], flags: libc::c_ulong) -> libc::c_long {
    let prog = libc::sock_fprog { len: filter.len() as libc::c_ushort, filter: filter.as_ptr() as *mut libc::sock_filter };
    unsafe {
        libc::syscall(
            libc::SYS_seccomp,
            libc::SECCOMP_SET_MODE_FILTER as libc::c_ulong,
            flags,
            &prog as *const libc::sock_fprog,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys;
    use serde_json::json;

    fn profile(v: serde_json::Value) -> Seccomp {
        serde_json::from_value(v).unwrap()
    }

    /// Installs `p` in a forked child (with no_new_privs, so no privilege is needed), runs `f`
    /// there and returns the child's exit status.
    fn run_filtered(p: &Program, f: fn() -> i32) -> sys::ExitStatus {
        match unsafe { sys::fork() }.unwrap() {
            sys::Fork::Child => unsafe {
                if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0 {
                    libc::_exit(90);
                }
                if install(&p.filter, p.flags) != 0 {
                    libc::_exit(91);
                }
                libc::_exit(f())
            },
            sys::Fork::Parent(pid) => sys::wait_pid(pid).unwrap(),
        }
    }

    fn errno() -> i32 {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
    }

    /// dup(2) on an fd number that is never open: EBADF unless a rule intervenes.
    fn dup_errno(arg: u64) -> i32 {
        let r = unsafe { libc::syscall(libc::SYS_dup, arg) };
        if r >= 0 {
            unsafe { libc::close(r as i32) };
            0
        } else {
            errno()
        }
    }

    #[test]
    fn cached_compiles_equal_fresh_ones_and_tell_profiles_apart() {
        let a = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["sethostname"], "action": "SCMP_ACT_ERRNO"}]}));
        let b = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["setdomainname"], "action": "SCMP_ACT_ERRNO"}]}));
        let fresh = |p: &Seccomp| compile(p).unwrap().filter.iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect::<Vec<_>>();
        let cached = |p: &Seccomp| compile_cached(p).unwrap().filter.iter().map(|f| (f.code, f.jt, f.jf, f.k)).collect::<Vec<_>>();
        assert_eq!(cached(&a), fresh(&a));
        assert_eq!(cached(&b), fresh(&b));
        assert_eq!(cached(&a), fresh(&a), "a hit returns the program of the same profile");
        assert_ne!(cached(&a), cached(&b));
        assert!(compile_cached(&profile(json!({"defaultAction": "SCMP_ACT_NOPE"}))).is_err());
    }

    #[test]
    fn actions_parse_with_their_data() {
        assert_eq!(action("SCMP_ACT_ERRNO", None).unwrap(), RET_ERRNO | 1);
        assert_eq!(action("SCMP_ACT_ERRNO", Some(38)).unwrap(), RET_ERRNO | 38);
        assert_eq!(action("SCMP_ACT_KILL", None).unwrap(), RET_KILL_THREAD);
        assert_eq!(action("SCMP_ACT_KILL_PROCESS", None).unwrap(), RET_KILL_PROCESS);
        assert_eq!(action("SCMP_ACT_TRACE", Some(7)).unwrap(), RET_TRACE | 7);
        assert!(action("SCMP_ACT_NOTIFY", None).unwrap_err().contains("not supported"));
        assert!(action("SCMP_ACT_MAYBE", None).is_err());
    }

    #[test]
    fn rejects_malformed_profiles() {
        let bad_op = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["dup"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 0, "value": 1, "op": "SCMP_CMP_SOMETIMES"}]}]}));
        assert!(compile(&bad_op).unwrap_err().contains("comparison"));
        let bad_index = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [
            {"names": ["dup"], "action": "SCMP_ACT_ERRNO", "args": [{"index": 6, "value": 1, "op": "SCMP_CMP_EQ"}]}]}));
        assert!(compile(&bad_index).unwrap_err().contains("index"));
        let bad_flag = profile(json!({"defaultAction": "SCMP_ACT_ALLOW", "flags": ["SECCOMP_FILTER_FLAG_NOPE"]}));
        assert!(compile(&bad_flag).is_err());
    }

    #[test]
    fn program_shape_covers_listed_architectures() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "architectures": ["SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32", "SCMP_ARCH_AARCH64"],
            "flags": ["SECCOMP_FILTER_FLAG_LOG"],
            "syscalls": [{"names": ["sethostname", "not_a_syscall"], "action": "SCMP_ACT_ERRNO"}]
        })))
        .unwrap();
        assert_eq!(p.flags, libc::SECCOMP_FILTER_FLAG_LOG);
        assert_eq!(p.warnings.len(), 1, "{:?}", p.warnings);
        let arch_checks: Vec<u32> = p.filter.iter().filter(|i| i.code == BPF_JMP_JEQ_K && i.jf == 1).map(|i| i.k).collect();
        assert!(arch_checks.contains(&AUDIT_ARCH_X86_64) && arch_checks.contains(&AUDIT_ARCH_I386));
        // sethostname on all three ABIs: 170 (x86_64), 74 (i386), 170|x32 bit.
        let nrs: Vec<u32> = p.filter.iter().filter(|i| i.code == BPF_JMP_JEQ_K && i.jt == 0).map(|i| i.k).collect();
        for nr in [170, 74, 170 | X32_SYSCALL_BIT] {
            assert!(nrs.contains(&nr), "{} missing from {:?}", nr, nrs);
        }
        assert_eq!(p.filter.last().unwrap().code, BPF_RET_K);
    }

    #[test]
    fn default_action_and_unconditional_rules_apply() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["getppid"], "action": "SCMP_ACT_ERRNO", "errnoRet": 42},
                {"names": ["getpid"], "action": "SCMP_ACT_ALLOW"},
                {"names": ["no_such_call"], "action": "SCMP_ACT_KILL"}
            ]
        })))
        .unwrap();
        let status = run_filtered(&p, || {
            let ppid = unsafe { libc::syscall(libc::SYS_getppid) };
            if ppid != -1 || errno() != 42 {
                return 1;
            }
            if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
                return 2;
            }
            0
        });
        assert_eq!(status, sys::ExitStatus::Exited(0));
    }

    #[test]
    fn an_allow_list_blocks_everything_else() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ERRNO",
            "defaultErrnoRet": 1,
            "syscalls": [{"names": ["exit", "exit_group", "getpid"], "action": "SCMP_ACT_ALLOW"}]
        })))
        .unwrap();
        let status = run_filtered(&p, || {
            if unsafe { libc::syscall(libc::SYS_getpid) } <= 0 {
                return 1;
            }
            let r = unsafe { libc::syscall(libc::SYS_getppid) };
            if r != -1 || errno() != libc::EPERM {
                return 2;
            }
            0
        });
        assert_eq!(status, sys::ExitStatus::Exited(0));
    }

    #[test]
    fn kill_process_terminates_with_sigsys() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [{"names": ["getppid"], "action": "SCMP_ACT_KILL_PROCESS"}]
        })))
        .unwrap();
        let status = run_filtered(&p, || {
            unsafe { libc::syscall(libc::SYS_getppid) };
            0
        });
        assert!(matches!(status, sys::ExitStatus::Signaled { signal: libc::SIGSYS, .. }), "{:?}", status);
    }

    /// One rule on dup's first argument per comparison; each child checks which fd numbers
    /// the rule catches (EAGAIN) and which reach the kernel (EBADF).
    #[test]
    fn argument_comparisons_use_both_halves() {
        const HI: u64 = 1 << 32;
        let cases: Vec<(serde_json::Value, Vec<(u64, bool)>)> = vec![
            (json!({"index": 0, "value": HI + 1000, "op": "SCMP_CMP_EQ"}), vec![(HI + 1000, true), (1000, false), (HI + 1001, false)]),
            (json!({"index": 0, "value": HI + 1000, "op": "SCMP_CMP_NE"}), vec![(HI + 1000, false), (1000, true), (HI + 1001, true)]),
            (json!({"index": 0, "value": HI + 1000, "op": "SCMP_CMP_GT"}), vec![(HI + 1000, false), (HI + 1001, true), (2 * HI, true), (5000, false)]),
            (json!({"index": 0, "value": HI + 1000, "op": "SCMP_CMP_GE"}), vec![(HI + 1000, true), (HI + 999, false), (2 * HI + 1, true), (HI - 1, false)]),
            (json!({"index": 0, "value": HI + 1000, "op": "SCMP_CMP_LT"}), vec![(HI + 1000, false), (HI + 999, true), (HI - 1, true), (2 * HI + 2000, false)]),
            (json!({"index": 0, "value": HI + 1000, "op": "SCMP_CMP_LE"}), vec![(HI + 1000, true), (HI + 1001, false), (7, true), (2 * HI + 2000, false)]),
            (json!({"index": 0, "value": HI | 0xf00, "valueTwo": HI | 0x300, "op": "SCMP_CMP_MASKED_EQ"}),
                vec![(HI | 0x3ff, true), (HI | 0x7ff, false), (0x3ff, false), ((3 * HI) | 0x300, true)]),
        ];
        for (arg, probes) in cases {
            let p = compile(&profile(json!({
                "defaultAction": "SCMP_ACT_ALLOW",
                "syscalls": [{"names": ["dup"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EAGAIN, "args": [arg.clone()]}]
            })))
            .unwrap();
            for (value, caught) in probes {
                // The child reads the probe from a static set just before forking.
                PROBE.store(value, std::sync::atomic::Ordering::SeqCst);
                let status = run_filtered(&p, || dup_errno(PROBE.load(std::sync::atomic::Ordering::SeqCst)));
                let want = if caught { libc::EAGAIN } else { libc::EBADF };
                assert_eq!(status, sys::ExitStatus::Exited(want), "{} with {:#x}", arg, value);
            }
        }
    }

    static PROBE: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

    #[test]
    fn rules_with_conditions_precede_the_unconditional_one() {
        let p = compile(&profile(json!({
            "defaultAction": "SCMP_ACT_ALLOW",
            "syscalls": [
                {"names": ["dup"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::ENOENT},
                {"names": ["dup"], "action": "SCMP_ACT_ALLOW", "args": [{"index": 0, "value": 4000, "op": "SCMP_CMP_EQ"}]},
                {"names": ["dup"], "action": "SCMP_ACT_ERRNO", "errnoRet": libc::EAGAIN,
                 "args": [{"index": 0, "value": 4001, "op": "SCMP_CMP_GE"}, {"index": 0, "value": 4003, "op": "SCMP_CMP_LE"}]}
            ]
        })))
        .unwrap();
        let status = run_filtered(&p, || {
            let results = [dup_errno(4000), dup_errno(4002), dup_errno(4003), dup_errno(4004), dup_errno(3999)];
            if results == [libc::EBADF, libc::EAGAIN, libc::EAGAIN, libc::ENOENT, libc::ENOENT] {
                0
            } else {
                1
            }
        });
        assert_eq!(status, sys::ExitStatus::Exited(0));
    }
}
