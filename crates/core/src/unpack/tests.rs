//! End-to-end tests: hand-built (often hostile) archives unpacked into temp directories.

use std::ffi::CStr;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::testutil::{pax_record, Spec, TarBuilder, TempDir};
use super::{sys, unpack_layer, Compression, UnpackOptions, UnpackStats};

/// A temp dir holding the unpack destination and, next to it, a directory a hostile layer would
/// like to reach.
struct Sandbox {
    base: TempDir,
}

impl Sandbox {
    fn new() -> Sandbox {
        let base = TempDir::new();
        fs::create_dir(base.path().join("dest")).unwrap();
        fs::create_dir(base.path().join("outside")).unwrap();
        fs::write(base.path().join("outside/sentinel"), b"untouched").unwrap();
        Sandbox { base }
    }

    fn dest(&self) -> PathBuf {
        self.base.path().join("dest")
    }

    fn at(&self, rel: &str) -> PathBuf {
        self.dest().join(rel)
    }

    fn unpack(&self, archive: &[u8]) -> super::Result<UnpackStats> {
        unpack_layer(archive, &self.dest(), &UnpackOptions::default())
    }

    fn assert_outside_untouched(&self) {
        let mut siblings: Vec<_> =
            fs::read_dir(self.base.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        siblings.sort();
        assert_eq!(siblings, ["dest", "outside"]);
        let outside: Vec<_> = fs::read_dir(self.base.path().join("outside")).unwrap().collect();
        assert_eq!(outside.len(), 1);
        assert_eq!(fs::read(self.base.path().join("outside/sentinel")).unwrap(), b"untouched");
    }

    /// Absolute path of the `outside` directory, as a hostile layer would spell it.
    fn outside(&self) -> String {
        self.base.path().join("outside").to_str().unwrap().to_string()
    }
}

fn is_root() -> bool {
    sys::geteuid() == 0
}

fn lstat(path: &Path) -> fs::Metadata {
    fs::symlink_metadata(path).unwrap_or_else(|e| panic!("lstat {}: {e}", path.display()))
}

fn mode(path: &Path) -> u32 {
    lstat(path).permissions().mode() & 0o7777
}

fn xattr(path: &Path, key: &CStr) -> Option<Vec<u8>> {
    sys::lget_xattr(path, key).unwrap()
}

fn is_whiteout(path: &Path) -> bool {
    let meta = lstat(path);
    meta.file_type().is_char_device() && meta.rdev() == 0
}

fn sha256(data: &[u8]) -> String {
    let hash = Sha256::digest(data);
    format!("sha256:{}", hash.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    enc.write_all(data).unwrap();
    enc.finish().unwrap()
}

fn host_passwd_identity() -> (u64, u64, i64) {
    let meta = fs::symlink_metadata("/etc/passwd").unwrap();
    (meta.ino(), meta.nlink(), meta.mtime())
}

// --- entry types and metadata ---------------------------------------------------------------

#[test]
fn files_directories_and_their_metadata() {
    let mut tar = TarBuilder::new();
    tar.header(Spec { name: b"etc/", typeflag: b'5', mode: 0o750, mtime: 1_000_000_000, ..Spec::default() });
    tar.header(Spec { name: b"etc/motd", mode: 0o640, size: 6, mtime: 1_100_000_000, ..Spec::default() });
    tar.data(b"hello\n");
    // Parents that the archive never lists are created 0755.
    tar.file("usr/local/bin/tool", b"#!/bin/sh\n", 0o755);
    let archive = tar.finish();

    let sb = Sandbox::new();
    let stats = sb.unpack(&archive).unwrap();
    assert_eq!(fs::read(sb.at("etc/motd")).unwrap(), b"hello\n");
    assert_eq!(mode(&sb.at("etc")), 0o750);
    assert_eq!(mode(&sb.at("etc/motd")), 0o640);
    assert_eq!(mode(&sb.at("usr")), 0o755);
    assert_eq!(mode(&sb.at("usr/local/bin")), 0o755);
    assert_eq!(mode(&sb.at("usr/local/bin/tool")), 0o755);
    assert_eq!(lstat(&sb.at("etc/motd")).mtime(), 1_100_000_000);
    // Set after etc/motd was created inside it.
    assert_eq!(lstat(&sb.at("etc")).mtime(), 1_000_000_000);

    assert_eq!(stats.compression, Compression::None);
    assert_eq!(stats.entries, 3);
    assert_eq!(stats.bytes_written, 6 + 10);
    assert_eq!(stats.tar_bytes, archive.len() as u64);
    assert_eq!(stats.diff_id, sha256(&archive));
    sb.assert_outside_untouched();
}

#[test]
fn gzip_zstd_and_plain_layers_unpack_identically() {
    let mut tar = TarBuilder::new();
    tar.dir("data", 0o755);
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    tar.file("data/big.bin", &big, 0o644);
    tar.symlink("data/link", "big.bin");
    // Writers pad archives to a record size; the padding is part of the diffID.
    let mut archive = tar.finish();
    archive.resize(archive.len().next_multiple_of(10240), 0);

    for (encoded, expected) in [
        (archive.clone(), Compression::None),
        (gzip(&archive), Compression::Gzip),
        (zstd::stream::encode_all(&archive[..], 3).unwrap(), Compression::Zstd),
    ] {
        let sb = Sandbox::new();
        let stats = sb.unpack(&encoded).unwrap();
        assert_eq!(stats.compression, expected);
        assert_eq!(stats.tar_bytes, archive.len() as u64);
        assert_eq!(stats.diff_id, sha256(&archive));
        assert_eq!(stats.entries, 3);
        assert_eq!(fs::read(sb.at("data/big.bin")).unwrap(), big);
        assert_eq!(fs::read_link(sb.at("data/link")).unwrap(), Path::new("big.bin"));
    }
}

#[test]
fn special_mode_bits_survive_ownership_changes() {
    let mut tar = TarBuilder::new();
    tar.header(Spec { name: b"tmp", typeflag: b'5', mode: 0o1777, ..Spec::default() });
    tar.header(Spec { name: b"shared", typeflag: b'5', mode: 0o2775, uid: 10, gid: 20, ..Spec::default() });
    tar.header(Spec { name: b"su", mode: 0o4755, uid: 10, gid: 20, ..Spec::default() });
    tar.header(Spec { name: b"sg", mode: 0o2711, uid: 10, gid: 20, ..Spec::default() });
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(mode(&sb.at("tmp")), 0o1777);
    assert_eq!(mode(&sb.at("shared")), 0o2775);
    assert_eq!(mode(&sb.at("su")), 0o4755);
    assert_eq!(mode(&sb.at("sg")), 0o2711);
}

#[test]
fn ownership_is_applied_without_following_symlinks() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut tar = TarBuilder::new();
    tar.header(Spec { name: b"home/app", typeflag: b'5', mode: 0o700, uid: 1000, gid: 1001, ..Spec::default() });
    tar.header(Spec { name: b"home/app/f", uid: 1000, gid: 1001, ..Spec::default() });
    tar.header(Spec { name: b"target", uid: 0, gid: 0, ..Spec::default() });
    tar.header(Spec {
        name: b"link",
        typeflag: b'2',
        link_name: b"target",
        uid: 4000,
        gid: 4001,
        ..Spec::default()
    });
    tar.header(Spec { name: b"pipe", typeflag: b'6', mode: 0o620, uid: 7, gid: 8, ..Spec::default() });
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    let owner = |rel: &str| {
        let meta = lstat(&sb.at(rel));
        (meta.uid(), meta.gid())
    };
    assert_eq!(owner("home/app"), (1000, 1001));
    assert_eq!(owner("home/app/f"), (1000, 1001));
    assert_eq!(owner("link"), (4000, 4001));
    assert_eq!(owner("target"), (0, 0));
    assert_eq!(owner("pipe"), (7, 8));
    assert!(lstat(&sb.at("pipe")).file_type().is_fifo());
    assert_eq!(mode(&sb.at("pipe")), 0o620);
}

#[test]
fn symlinks_keep_their_target_text_and_times() {
    let mut tar = TarBuilder::new();
    tar.symlink("abs", "/usr/lib/os-release");
    tar.symlink("rel", "../../somewhere");
    tar.header(Spec {
        name: b"dangling",
        typeflag: b'2',
        link_name: b"missing",
        mtime: 1_234_567_890,
        ..Spec::default()
    });
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(fs::read_link(sb.at("abs")).unwrap(), Path::new("/usr/lib/os-release"));
    assert_eq!(fs::read_link(sb.at("rel")).unwrap(), Path::new("../../somewhere"));
    assert_eq!(lstat(&sb.at("dangling")).mtime(), 1_234_567_890);
    sb.assert_outside_untouched();
}

#[test]
fn hardlinks_share_the_inode() {
    let mut tar = TarBuilder::new();
    tar.file("bin/busybox", b"multi-call", 0o755);
    tar.hardlink("bin/sh", "bin/busybox");
    tar.hardlink("/bin/ls", "/bin/busybox");
    tar.symlink("s", "bin/busybox");
    // A hardlink to a symlink links the symlink itself.
    tar.hardlink("s2", "s");
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    let ino = lstat(&sb.at("bin/busybox")).ino();
    assert_eq!(lstat(&sb.at("bin/sh")).ino(), ino);
    assert_eq!(lstat(&sb.at("bin/ls")).ino(), ino);
    assert_eq!(lstat(&sb.at("bin/busybox")).nlink(), 3);
    assert!(lstat(&sb.at("s2")).file_type().is_symlink());
    assert_eq!(lstat(&sb.at("s2")).ino(), lstat(&sb.at("s")).ino());
}

#[test]
fn hardlink_to_a_missing_target_or_a_directory_fails() {
    let mut tar = TarBuilder::new();
    tar.hardlink("a", "nope");
    assert_eq!(Sandbox::new().unpack(&tar.finish()).unwrap_err().code(), "EFORMAT");

    let mut tar = TarBuilder::new();
    tar.dir("d", 0o755);
    tar.hardlink("a", "d");
    assert_eq!(Sandbox::new().unpack(&tar.finish()).unwrap_err().code(), "EFORMAT");
}

#[test]
fn device_nodes_and_fifos() {
    if !is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let mut tar = TarBuilder::new();
    tar.header(Spec { name: b"dev/null", typeflag: b'3', mode: 0o666, dev_major: 1, dev_minor: 3, ..Spec::default() });
    tar.header(Spec { name: b"dev/loop9", typeflag: b'4', mode: 0o660, dev_major: 7, dev_minor: 9, ..Spec::default() });
    tar.header(Spec { name: b"run/fifo", typeflag: b'6', mode: 0o600, ..Spec::default() });
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    let null = lstat(&sb.at("dev/null"));
    assert!(null.file_type().is_char_device());
    assert_eq!(null.rdev(), libc::makedev(1, 3));
    assert_eq!(mode(&sb.at("dev/null")), 0o666);
    let loop9 = lstat(&sb.at("dev/loop9"));
    assert!(loop9.file_type().is_block_device());
    assert_eq!(loop9.rdev(), libc::makedev(7, 9));
    assert!(lstat(&sb.at("run/fifo")).file_type().is_fifo());
}

#[test]
fn pax_xattrs_are_applied_except_overlay_metadata() {
    if !is_root() {
        eprintln!("skipped: needs root (trusted.* xattrs)");
        return;
    }
    let mut tar = TarBuilder::new();
    let mut records = pax_record("SCHILY.xattr.user.origin", b"layer-1");
    records.extend(pax_record("SCHILY.xattr.trusted.note", b"\x00\x01binary"));
    tar.pax(&records);
    tar.file("f", b"x", 0o644);
    tar.pax(&pax_record("SCHILY.xattr.user.kind", b"dir"));
    tar.dir("d", 0o755);
    tar.pax(&pax_record("SCHILY.xattr.trusted.link", b"yes"));
    tar.symlink("l", "f");
    // Forged overlay metadata could redirect lookups into other layers: never applied.
    tar.pax(&pax_record("SCHILY.xattr.trusted.overlay.redirect", b"/etc"));
    tar.dir("forged", 0o755);
    let sb = Sandbox::new();
    let stats = sb.unpack(&tar.finish()).unwrap();
    assert_eq!(xattr(&sb.at("f"), c"user.origin").unwrap(), b"layer-1");
    assert_eq!(xattr(&sb.at("f"), c"trusted.note").unwrap(), b"\x00\x01binary");
    assert_eq!(xattr(&sb.at("d"), c"user.kind").unwrap(), b"dir");
    assert_eq!(xattr(&sb.at("l"), c"trusted.link").unwrap(), b"yes");
    assert_eq!(xattr(&sb.at("f"), c"trusted.link"), None);
    assert_eq!(xattr(&sb.at("forged"), c"trusted.overlay.redirect"), None);
    assert_eq!(stats.xattrs_skipped, 1);
}

#[test]
fn long_names_and_pax_paths() {
    let deep = format!("{}/{}/file", "a".repeat(150), "b".repeat(150));
    let mut tar = TarBuilder::new();
    tar.gnu_long(b'L', deep.as_bytes());
    tar.file("ignored-short-name", b"gnu", 0o644);
    let pax_path = format!("{}/pax", "c".repeat(200));
    tar.pax(&pax_record("path", pax_path.as_bytes()));
    tar.file("ignored-too", b"pax", 0o644);
    let sb = Sandbox::new();
    let stats = sb.unpack(&tar.finish()).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(fs::read(sb.at(&deep)).unwrap(), b"gnu");
    assert_eq!(fs::read(sb.at(&pax_path)).unwrap(), b"pax");
    assert!(!sb.at("ignored-short-name").exists());
}

#[test]
fn the_root_entry_does_not_change_the_destination() {
    let mut tar = TarBuilder::new();
    tar.header(Spec { name: b"./", typeflag: b'5', mode: 0o700, ..Spec::default() });
    tar.file("./a", b"x", 0o644);
    let sb = Sandbox::new();
    let before = mode(&sb.dest());
    let stats = sb.unpack(&tar.finish()).unwrap();
    assert_eq!(stats.entries, 2);
    assert_eq!(mode(&sb.dest()), before);
    assert_eq!(fs::read(sb.at("a")).unwrap(), b"x");
}

// --- whiteouts ------------------------------------------------------------------------------

#[test]
fn whiteouts_become_overlay_whiteouts() {
    if !is_root() {
        eprintln!("skipped: needs root (mknod)");
        return;
    }
    let mut tar = TarBuilder::new();
    tar.file(".wh.removed", b"", 0o644);
    tar.dir("etc", 0o755);
    tar.file("etc/.wh.old.conf", b"", 0o644);
    // aufs bookkeeping is ignored, as by docker.
    tar.file(".wh..wh.plnk", b"", 0o644);
    let sb = Sandbox::new();
    let stats = sb.unpack(&tar.finish()).unwrap();
    assert_eq!(stats.entries, 4);
    assert!(is_whiteout(&sb.at("removed")));
    assert!(is_whiteout(&sb.at("etc/old.conf")));
    assert!(!sb.at(".wh.removed").exists());
    assert!(!sb.at("etc/.wh.old.conf").exists());
    assert!(!sb.at(".wh..wh.plnk").exists());
    assert!(!sb.at("plnk").exists());
}

#[test]
fn opaque_markers_set_the_overlay_xattr() {
    if !is_root() {
        eprintln!("skipped: needs root (trusted.* xattrs)");
        return;
    }
    let mut tar = TarBuilder::new();
    tar.dir("var/cache", 0o755);
    tar.file("var/cache/.wh..wh..opq", b"", 0o644);
    tar.file("var/cache/fresh", b"new", 0o644);
    // A marker in a directory the archive never listed creates it.
    tar.file("opt/app/.wh..wh..opq", b"", 0o644);
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(xattr(&sb.at("var/cache"), c"trusted.overlay.opaque").unwrap(), b"y");
    assert_eq!(xattr(&sb.at("opt/app"), c"trusted.overlay.opaque").unwrap(), b"y");
    assert_eq!(xattr(&sb.at("var"), c"trusted.overlay.opaque"), None);
    assert!(!sb.at("var/cache/.wh..wh..opq").exists());
    assert_eq!(fs::read(sb.at("var/cache/fresh")).unwrap(), b"new");
}

#[test]
fn whiteouts_only_hide_lower_layers() {
    if !is_root() {
        eprintln!("skipped: needs root (mknod, trusted.* xattrs)");
        return;
    }
    let mut tar = TarBuilder::new();
    // Same-layer entries named by a later whiteout stay (OCI image spec).
    tar.file("kept", b"this layer", 0o644);
    tar.file(".wh.kept", b"", 0o644);
    tar.dir("keptdir", 0o755);
    tar.file("keptdir/inner", b"", 0o644);
    tar.file(".wh.keptdir", b"", 0o644);
    // A whiteout followed by a new entry of the same name: the entry replaces the whiteout, and
    // a directory must then hide the lower directory's content.
    tar.file(".wh.recreated", b"", 0o644);
    tar.dir("recreated", 0o755);
    tar.file(".wh.refile", b"", 0o644);
    tar.file("refile", b"new", 0o644);
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(fs::read(sb.at("kept")).unwrap(), b"this layer");
    assert!(sb.at("keptdir/inner").exists());
    assert_eq!(xattr(&sb.at("keptdir"), c"trusted.overlay.opaque").unwrap(), b"y");
    assert!(lstat(&sb.at("recreated")).is_dir());
    assert_eq!(xattr(&sb.at("recreated"), c"trusted.overlay.opaque").unwrap(), b"y");
    assert_eq!(fs::read(sb.at("refile")).unwrap(), b"new");
}

#[test]
fn whiteout_of_dot_dot_is_an_escape() {
    let mut tar = TarBuilder::new();
    tar.file("d/.wh...", b"", 0o644);
    assert_eq!(Sandbox::new().unpack(&tar.finish()).unwrap_err().code(), "EPATHESCAPE");
}

// --- escape attempts ------------------------------------------------------------------------

#[test]
fn dot_dot_names_are_rejected() {
    for name in ["../x", "a/../../x", "./../outside/sentinel"] {
        let mut tar = TarBuilder::new();
        tar.file(name, b"evil", 0o644);
        let sb = Sandbox::new();
        let err = sb.unpack(&tar.finish()).unwrap_err();
        assert_eq!(err.code(), "EPATHESCAPE", "{name}");
        assert!(err.message().contains("escapes"), "{}", err.message());
        sb.assert_outside_untouched();
    }
}

#[test]
fn dot_dot_in_pax_and_gnu_names_is_rejected() {
    let mut tar = TarBuilder::new();
    tar.pax(&pax_record("path", b"../../pax-evil"));
    tar.file("innocent", b"evil", 0o644);
    let sb = Sandbox::new();
    assert_eq!(sb.unpack(&tar.finish()).unwrap_err().code(), "EPATHESCAPE");
    sb.assert_outside_untouched();

    let mut tar = TarBuilder::new();
    tar.gnu_long(b'L', b"../gnu-evil");
    tar.file("innocent", b"evil", 0o644);
    let sb = Sandbox::new();
    assert_eq!(sb.unpack(&tar.finish()).unwrap_err().code(), "EPATHESCAPE");
    sb.assert_outside_untouched();
}

#[test]
fn absolute_names_land_inside_the_destination() {
    let mut tar = TarBuilder::new();
    tar.file("/etc/crisp-unpack-absolute", b"inside", 0o644);
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(fs::read(sb.at("etc/crisp-unpack-absolute")).unwrap(), b"inside");
    assert!(!Path::new("/etc/crisp-unpack-absolute").exists());
}

#[test]
fn writes_through_symlinks_that_leave_the_layer_are_escapes() {
    let marker = format!("crisp-unpack-escape-{}", std::process::id());
    for target in ["/", "../..", "../../../../../../.."] {
        let sb = Sandbox::new();
        let mut tar = TarBuilder::new();
        tar.symlink("a", target);
        tar.file(&format!("a/{marker}"), b"contained", 0o644);
        let err = sb.unpack(&tar.finish()).unwrap_err();
        assert_eq!(err.code(), "EPATHESCAPE", "via {target}: {err}");
        assert!(!Path::new("/").join(&marker).exists(), "via {target}");
        sb.assert_outside_untouched();
    }

    // An absolute symlink is never followed while unpacking, even to a directory of the layer.
    let sb = Sandbox::new();
    let mut tar = TarBuilder::new();
    tar.dir("etc", 0o755);
    tar.symlink("a", "/etc");
    let before = host_passwd_identity();
    tar.file("a/passwd", b"root::0:0::/:/bin/sh\n", 0o644);
    assert_eq!(sb.unpack(&tar.finish()).unwrap_err().code(), "EPATHESCAPE");
    assert_eq!(host_passwd_identity(), before);

    // A relative symlink that stays inside the layer is followed.
    let sb = Sandbox::new();
    let mut tar = TarBuilder::new();
    tar.dir("usr/lib", 0o755);
    tar.symlink("lib", "usr/lib");
    tar.file("lib/libc.so", b"elf", 0o644);
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(fs::read(sb.at("usr/lib/libc.so")).unwrap(), b"elf");

    // Symlink to the real outside directory, by absolute path.
    let sb = Sandbox::new();
    let mut tar = TarBuilder::new();
    tar.symlink("out", &sb.outside());
    tar.file("out/sentinel", b"overwritten", 0o644);
    let err = sb.unpack(&tar.finish()).unwrap_err();
    assert_eq!(err.code(), "EPATHESCAPE", "{err}");
    sb.assert_outside_untouched();
}

#[test]
fn a_member_replaces_a_symlink_instead_of_writing_through_it() {
    let sb = Sandbox::new();
    let target = format!("{}/created-through-link", sb.outside());
    let mut tar = TarBuilder::new();
    tar.symlink("f", &target);
    tar.file("f", b"regular", 0o644);
    tar.symlink("sentinel-link", &format!("{}/sentinel", sb.outside()));
    tar.file("sentinel-link", b"overwritten?", 0o644);
    sb.unpack(&tar.finish()).unwrap();
    assert!(lstat(&sb.at("f")).is_file());
    assert_eq!(fs::read(sb.at("f")).unwrap(), b"regular");
    assert!(lstat(&sb.at("sentinel-link")).is_file());
    sb.assert_outside_untouched();
}

#[test]
fn hardlinks_cannot_reach_outside() {
    let before = host_passwd_identity();

    let mut tar = TarBuilder::new();
    tar.hardlink("passwd", "../../etc/passwd");
    let sb = Sandbox::new();
    assert_eq!(sb.unpack(&tar.finish()).unwrap_err().code(), "EPATHESCAPE");

    // Absolute targets are relative to the layer root like names; this one is not in the layer.
    let mut tar = TarBuilder::new();
    tar.hardlink("passwd", "/etc/passwd");
    let sb = Sandbox::new();
    assert_eq!(sb.unpack(&tar.finish()).unwrap_err().code(), "EFORMAT");

    // Through a symlinked directory pointing outside: an escape.
    let mut tar = TarBuilder::new();
    tar.symlink("etcdir", "/etc");
    tar.hardlink("passwd", "etcdir/passwd");
    let sb = Sandbox::new();
    assert_eq!(sb.unpack(&tar.finish()).unwrap_err().code(), "EPATHESCAPE");

    // To a symlink pointing outside: links the symlink, never what it points at.
    let mut tar = TarBuilder::new();
    tar.symlink("s", "/etc/passwd");
    tar.hardlink("h", "s");
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert!(lstat(&sb.at("h")).file_type().is_symlink());
    assert_eq!(fs::read_link(sb.at("h")).unwrap(), Path::new("/etc/passwd"));
    assert_ne!(lstat(&sb.at("h")).ino(), before.0);

    // To the sentinel next to the destination, by absolute path.
    let mut tar = TarBuilder::new();
    tar.hardlink("h", &format!("{}/sentinel", sb.outside()));
    let sb2 = Sandbox::new();
    assert_eq!(sb2.unpack(&tar.finish()).unwrap_err().code(), "EFORMAT");
    assert_eq!(lstat(&sb2.base.path().join("outside/sentinel")).nlink(), 1);
    sb2.assert_outside_untouched();

    assert_eq!(host_passwd_identity(), before);
}

// --- replacement ----------------------------------------------------------------------------

#[test]
fn later_members_replace_earlier_ones() {
    let mut tar = TarBuilder::new();
    tar.file("f", b"first", 0o644);
    tar.file("f", b"second", 0o600);
    // Directory over file.
    tar.file("d", b"file", 0o644);
    tar.dir("d", 0o711);
    // File over a populated directory.
    tar.dir("tree/sub", 0o755);
    tar.file("tree/sub/leaf", b"x", 0o644);
    tar.symlink("tree/link", "/");
    tar.file("tree", b"now a file", 0o644);
    // Symlink over directory.
    tar.dir("ldir", 0o755);
    tar.symlink("ldir", "elsewhere");
    // Directory over directory merges and takes the new metadata.
    tar.dir("m", 0o755);
    tar.file("m/a", b"a", 0o644);
    tar.dir("m", 0o700);
    tar.file("m/b", b"b", 0o644);
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(fs::read(sb.at("f")).unwrap(), b"second");
    assert_eq!(mode(&sb.at("f")), 0o600);
    assert!(lstat(&sb.at("d")).is_dir());
    assert_eq!(mode(&sb.at("d")), 0o711);
    assert_eq!(fs::read(sb.at("tree")).unwrap(), b"now a file");
    assert_eq!(fs::read_link(sb.at("ldir")).unwrap(), Path::new("elsewhere"));
    assert!(sb.at("m/a").exists() && sb.at("m/b").exists());
    assert_eq!(mode(&sb.at("m")), 0o700);
    sb.assert_outside_untouched();
}

#[test]
fn hardlinks_keep_content_when_their_target_is_replaced() {
    let mut tar = TarBuilder::new();
    tar.file("orig", b"old", 0o644);
    tar.hardlink("link", "orig");
    tar.file("orig", b"new", 0o644);
    // A member that hardlinks to itself, or repeats an existing link, is a no-op.
    tar.hardlink("link", "link");
    tar.hardlink("link", "./link");
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(fs::read(sb.at("orig")).unwrap(), b"new");
    assert_eq!(fs::read(sb.at("link")).unwrap(), b"old");
}

#[test]
fn directory_times_are_applied_last_and_survive_replacement() {
    let mut tar = TarBuilder::new();
    tar.header(Spec { name: b"a", typeflag: b'5', mode: 0o755, mtime: 1_500_000_000, ..Spec::default() });
    tar.file("a/child", b"x", 0o644);
    tar.header(Spec { name: b"gone", typeflag: b'5', mode: 0o755, mtime: 1_500_000_000, ..Spec::default() });
    tar.header(Spec { name: b"gone", mtime: 1_400_000_000, ..Spec::default() });
    let sb = Sandbox::new();
    sb.unpack(&tar.finish()).unwrap();
    assert_eq!(lstat(&sb.at("a")).mtime(), 1_500_000_000);
    assert!(lstat(&sb.at("gone")).is_file());
    assert_eq!(lstat(&sb.at("gone")).mtime(), 1_400_000_000);
}

// --- failures -------------------------------------------------------------------------------

#[test]
fn corrupt_streams_fail_with_format_errors() {
    let mut tar = TarBuilder::new();
    tar.file("a", &[9u8; 4096], 0o644);
    let archive = tar.finish();

    let truncated = gzip(&archive[..2048]);
    assert_eq!(Sandbox::new().unpack(&truncated).unwrap_err().code(), "EFORMAT");

    let mut garbled = gzip(&archive);
    let mid = garbled.len() / 2;
    garbled[mid] ^= 0xff;
    assert_eq!(Sandbox::new().unpack(&garbled).unwrap_err().code(), "EFORMAT");

    assert_eq!(Sandbox::new().unpack(b"definitely not a tar archive").unwrap_err().code(), "EFORMAT");
}

#[test]
fn missing_destination_is_an_os_error() {
    let tmp = TempDir::new();
    let err = unpack_layer(&b""[..], &tmp.path().join("missing"), &UnpackOptions::default()).unwrap_err();
    assert_eq!(err.code(), "ENOENT");
}

#[test]
fn empty_layer_is_valid() {
    let archive = TarBuilder::new().finish();
    let sb = Sandbox::new();
    let stats = sb.unpack(&archive).unwrap();
    assert_eq!(stats.entries, 0);
    assert_eq!(stats.tar_bytes, 1024);
    assert_eq!(fs::read_dir(sb.dest()).unwrap().count(), 0);
}

#[test]
fn unpack_layer_file_reads_from_a_path_and_syncs() {
    let tmp = TempDir::new();
    let mut tar = TarBuilder::new();
    tar.file("hello", b"world", 0o644);
    let layer = tmp.path().join("layer.tar.gz");
    fs::write(&layer, gzip(&tar.finish())).unwrap();
    let dest = tmp.path().join("rootfs");
    fs::create_dir(&dest).unwrap();
    let stats =
        super::unpack_layer_file(&layer, &dest, &UnpackOptions { sync: true, ..UnpackOptions::default() }).unwrap();
    assert_eq!(stats.compression, Compression::Gzip);
    assert_eq!(fs::read(dest.join("hello")).unwrap(), b"world");

    let err = super::unpack_layer_file(&tmp.path().join("nope"), &dest, &UnpackOptions::default()).unwrap_err();
    assert_eq!(err.code(), "ENOENT");
}
