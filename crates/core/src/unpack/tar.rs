//! Streaming reader for tar archives as found in container image layers: ustar, GNU (long names
//! and long link names) and PAX (per-member extended headers). Global PAX headers are skipped, as
//! docker and containerd do. Sparse members are refused rather than silently unpacked wrong.
//!
//! Metadata blocks (PAX records, long names) come from untrusted input and are read into memory,
//! so their size is capped; member data is never buffered, the caller reads it through `Read`.

use std::collections::HashMap;
use std::io::{self, Read};

use super::error::{Error, Result};
use super::path::show;

const BLOCK: usize = 512;
/// Upper bound for one PAX extended header; generous enough for many large xattrs.
const MAX_PAX_SIZE: u64 = 1 << 20;
/// Most extended attributes one entry may carry. A filesystem keeps a few per inode (ext4 fits
/// them in one block); the bound keeps a hostile header from making thousands per entry.
pub const MAX_XATTRS_PER_ENTRY: usize = 256;
/// Longest xattr name and value the kernel accepts (XATTR_NAME_MAX, XATTR_SIZE_MAX).
const MAX_XATTR_NAME: usize = 255;
const MAX_XATTR_VALUE: usize = 64 << 10;
/// Upper bound for a GNU long name or long link name (PATH_MAX is 4096).
const MAX_LONG_NAME: u64 = 64 << 10;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EntryKind {
    Regular,
    HardLink,
    Symlink,
    CharDevice,
    BlockDevice,
    Directory,
    Fifo,
}

/// Seconds and nanoseconds since the epoch, nanoseconds always in `0..1e9`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timestamp {
    pub secs: i64,
    pub nanos: u32,
}

impl Timestamp {
    pub fn from_secs(secs: i64) -> Timestamp {
        Timestamp { secs, nanos: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct Header {
    /// Member name as stored (PAX `path`, GNU long name or ustar prefix + name), not yet cleaned.
    pub name: Vec<u8>,
    /// Hardlink or symlink target as stored.
    pub link_name: Vec<u8>,
    pub kind: EntryKind,
    /// Permission bits including setuid, setgid and sticky.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Bytes of member data that follow the header.
    pub size: u64,
    pub mtime: Timestamp,
    pub atime: Option<Timestamp>,
    pub dev_major: u32,
    pub dev_minor: u32,
    /// Extended attributes from PAX `SCHILY.xattr.<name>` records, in archive order.
    pub xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

pub struct TarReader<R> {
    inner: R,
    /// Unread data bytes of the current member.
    remaining: u64,
    /// Zero padding after the current member's data, up to the next block boundary.
    padding: u64,
    /// Bytes consumed from `inner`, for error messages.
    offset: u64,
    finished: bool,
}

/// Member-level overrides collected from PAX records.
#[derive(Default)]
struct Pax {
    path: Option<Vec<u8>>,
    link_path: Option<Vec<u8>>,
    size: Option<u64>,
    uid: Option<u32>,
    gid: Option<u32>,
    mtime: Option<Timestamp>,
    atime: Option<Timestamp>,
    xattrs: Vec<(Vec<u8>, Vec<u8>)>,
}

impl<R: Read> TarReader<R> {
    pub fn new(inner: R) -> TarReader<R> {
        TarReader { inner, remaining: 0, padding: 0, offset: 0, finished: false }
    }

    /// The underlying reader, positioned after the last block consumed (for example the
    /// end-of-archive marker; trailing padding is still unread).
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Advances to the next member, discarding unread data of the current one. `None` at the
    /// end-of-archive marker or at a clean end of stream on a block boundary.
    pub fn next_entry(&mut self) -> Result<Option<Header>> {
        if self.finished {
            return Ok(None);
        }
        self.skip_rest()?;

        let mut pax: Option<Pax> = None;
        let mut long_name: Option<Vec<u8>> = None;
        let mut long_link: Option<Vec<u8>> = None;
        loop {
            let header_offset = self.offset;
            let Some(block) = self.read_block()? else {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(Error::format("tar stream ends after an extended header without its member"));
                }
                self.finished = true;
                return Ok(None);
            };
            if block.iter().all(|&b| b == 0) {
                if pax.is_some() || long_name.is_some() || long_link.is_some() {
                    return Err(Error::format("end-of-archive marker after an extended header without its member"));
                }
                self.finished = true;
                return Ok(None);
            }
            verify_checksum(&block).map_err(|e| e.context(format!("tar header at offset {header_offset}")))?;

            let typeflag = block[156];
            let stored_size = parse_unsigned(&block[124..136], "size")
                .map_err(|e| e.context(format!("tar header at offset {header_offset}")))?;
            match typeflag {
                b'x' => {
                    if pax.is_some() {
                        return Err(Error::format(format!("two PAX headers for one member at offset {header_offset}")));
                    }
                    let data = self.read_meta(stored_size, MAX_PAX_SIZE, "PAX header")?;
                    pax = Some(parse_pax(&data).map_err(|e| e.context(format!("PAX header at offset {header_offset}")))?);
                }
                b'g' => {
                    // Global defaults; docker and containerd ignore them, and so do we.
                    self.remaining = stored_size;
                    self.padding = padding_for(stored_size);
                    self.skip_rest()?;
                }
                b'L' => {
                    if long_name.is_some() {
                        return Err(Error::format(format!("two GNU long names for one member at offset {header_offset}")));
                    }
                    long_name = Some(until_nul(&self.read_meta(stored_size, MAX_LONG_NAME, "GNU long name")?).to_vec());
                }
                b'K' => {
                    if long_link.is_some() {
                        return Err(Error::format(format!(
                            "two GNU long link names for one member at offset {header_offset}"
                        )));
                    }
                    long_link =
                        Some(until_nul(&self.read_meta(stored_size, MAX_LONG_NAME, "GNU long link name")?).to_vec());
                }
                _ => {
                    let header = build_header(&block, stored_size, pax.take().unwrap_or_default(), long_name, long_link)
                        .map_err(|e| e.context(format!("tar header at offset {header_offset}")))?;
                    self.remaining = header.size;
                    self.padding = padding_for(header.size);
                    return Ok(Some(header));
                }
            }
        }
    }

    fn read_block(&mut self) -> Result<Option<[u8; BLOCK]>> {
        let mut block = [0u8; BLOCK];
        let mut filled = 0;
        while filled < BLOCK {
            match self.inner.read(&mut block[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::io("read tar stream", e)),
            }
        }
        self.offset += filled as u64;
        match filled {
            0 => Ok(None),
            BLOCK => Ok(Some(block)),
            _ => Err(Error::format(format!("tar stream truncated inside a header at offset {}", self.offset))),
        }
    }

    fn read_meta(&mut self, size: u64, limit: u64, what: &str) -> Result<Vec<u8>> {
        if size > limit {
            return Err(Error::format(format!("{what} of {size} bytes exceeds the {limit} byte limit")));
        }
        let mut data = vec![0u8; size as usize];
        self.remaining = size;
        self.padding = padding_for(size);
        self.read_exact(&mut data).map_err(|e| Error::io(format!("read {what}"), e))?;
        self.skip_rest()?;
        Ok(data)
    }

    /// Discards the rest of the current member's data and its padding.
    fn skip_rest(&mut self) -> Result<()> {
        let want = self.remaining + self.padding;
        if want == 0 {
            return Ok(());
        }
        let skipped = io::copy(&mut (&mut self.inner).take(want), &mut io::sink())
            .map_err(|e| Error::io("read tar stream", e))?;
        self.offset += skipped;
        self.remaining = 0;
        self.padding = 0;
        if skipped < want {
            return Err(Error::format(format!("tar stream truncated inside a member at offset {}", self.offset)));
        }
        Ok(())
    }
}

/// Reads the current member's data; ends at the member's size.
impl<R: Read> Read for TarReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.remaining == 0 || buf.is_empty() {
            return Ok(0);
        }
        let max = buf.len().min(usize::try_from(self.remaining).unwrap_or(usize::MAX));
        let n = self.inner.read(&mut buf[..max])?;
        if n == 0 {
            return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "tar stream truncated inside a member"));
        }
        self.remaining -= n as u64;
        self.offset += n as u64;
        Ok(n)
    }
}

fn padding_for(size: u64) -> u64 {
    (BLOCK as u64 - size % BLOCK as u64) % BLOCK as u64
}

fn build_header(
    block: &[u8; BLOCK],
    stored_size: u64,
    pax: Pax,
    long_name: Option<Vec<u8>>,
    long_link: Option<Vec<u8>>,
) -> Result<Header> {
    let magic = &block[257..265];
    let is_ustar = &magic[..6] == b"ustar\0";
    let is_gnu = magic == b"ustar  \0";

    let name = match (pax.path, long_name) {
        (Some(path), _) if !path.is_empty() => path,
        (_, Some(long)) => long,
        _ => {
            let name = until_nul(&block[0..100]);
            let prefix = if is_ustar { until_nul(&block[345..500]) } else { &[][..] };
            if prefix.is_empty() {
                name.to_vec()
            } else {
                [prefix, b"/", name].concat()
            }
        }
    };
    let link_name = match (pax.link_path, long_link) {
        (Some(path), _) if !path.is_empty() => path,
        (_, Some(long)) => long,
        _ => until_nul(&block[157..257]).to_vec(),
    };

    let typeflag = block[156];
    let kind = match typeflag {
        // Pre-POSIX archives mark directories only by a trailing slash.
        b'\0' if name.ends_with(b"/") => EntryKind::Directory,
        b'0' | b'\0' | b'7' => EntryKind::Regular,
        b'1' => EntryKind::HardLink,
        b'2' => EntryKind::Symlink,
        b'3' => EntryKind::CharDevice,
        b'4' => EntryKind::BlockDevice,
        b'5' => EntryKind::Directory,
        b'6' => EntryKind::Fifo,
        b'S' => return Err(Error::unsupported(format!("member {} is a GNU sparse file", show(&name)))),
        other => {
            return Err(Error::unsupported(format!(
                "member {} has unsupported tar entry type {:?}",
                show(&name),
                other as char
            )))
        }
    };

    // Like Go's archive/tar (and so docker): only regular files carry data, whatever the size
    // field of other types says.
    let size = match kind {
        EntryKind::Regular => pax.size.unwrap_or(stored_size),
        _ => 0,
    };

    let mode = parse_unsigned(&block[100..108], "mode")? as u32 & 0o7777;
    let uid = match pax.uid {
        Some(uid) => uid,
        None => id_from_u64(parse_unsigned(&block[108..116], "uid")?, "uid")?,
    };
    let gid = match pax.gid {
        Some(gid) => gid,
        None => id_from_u64(parse_unsigned(&block[116..124], "gid")?, "gid")?,
    };
    let mtime = match pax.mtime {
        Some(t) => t,
        None => Timestamp::from_secs(parse_signed(&block[136..148], "mtime")?),
    };
    let atime = match pax.atime {
        Some(t) => Some(t),
        None if is_gnu => match parse_signed(&block[345..357], "atime")? {
            0 => None,
            secs => Some(Timestamp::from_secs(secs)),
        },
        None => None,
    };
    let (dev_major, dev_minor) = match kind {
        EntryKind::CharDevice | EntryKind::BlockDevice => (
            device_number(parse_unsigned(&block[329..337], "devmajor")?, "devmajor")?,
            device_number(parse_unsigned(&block[337..345], "devminor")?, "devminor")?,
        ),
        _ => (0, 0),
    };

    Ok(Header { name, link_name, kind, mode, uid, gid, size, mtime, atime, dev_major, dev_minor, xattrs: pax.xattrs })
}

fn id_from_u64(value: u64, what: &str) -> Result<u32> {
    // u32::MAX is chown's "leave unchanged" sentinel, never a real owner.
    u32::try_from(value)
        .ok()
        .filter(|&id| id != u32::MAX)
        .ok_or_else(|| Error::format(format!("{what} {value} is out of range")))
}

fn device_number(value: u64, what: &str) -> Result<u32> {
    u32::try_from(value).map_err(|_| Error::format(format!("{what} {value} is out of range")))
}

fn verify_checksum(block: &[u8; BLOCK]) -> Result<()> {
    let stored = parse_unsigned(&block[148..156], "checksum")?;
    let mut unsigned: u64 = 0;
    let mut signed: i64 = 0;
    for (i, &b) in block.iter().enumerate() {
        // The checksum field counts as eight spaces.
        let b = if (148..156).contains(&i) { b' ' } else { b };
        unsigned += u64::from(b);
        signed += i64::from(b as i8);
    }
    // Some historic writers summed signed chars; accept both like GNU tar does.
    if stored == unsigned || i64::try_from(stored).ok() == Some(signed) {
        Ok(())
    } else {
        Err(Error::format(format!("checksum mismatch (stored {stored}, computed {unsigned})")))
    }
}

fn until_nul(field: &[u8]) -> &[u8] {
    match field.iter().position(|&b| b == 0) {
        Some(end) => &field[..end],
        None => field,
    }
}

fn parse_unsigned(field: &[u8], what: &str) -> Result<u64> {
    let value = parse_signed(field, what)?;
    u64::try_from(value).map_err(|_| Error::format(format!("negative {what} field")))
}

/// Parses a numeric header field: octal text padded with spaces/NULs, or base-256 (two's
/// complement, marked by the high bit of the first byte) for values that do not fit.
fn parse_signed(field: &[u8], what: &str) -> Result<i64> {
    if field.first().is_some_and(|&b| b & 0x80 != 0) {
        let invert = if field[0] & 0x40 != 0 { 0xff } else { 0x00 };
        let mut value: u64 = 0;
        for (i, &byte) in field.iter().enumerate() {
            let mut byte = byte ^ invert;
            if i == 0 {
                byte &= 0x7f;
            }
            if value >> 56 != 0 {
                return Err(Error::format(format!("base-256 {what} field overflows")));
            }
            value = (value << 8) | u64::from(byte);
        }
        if value >> 63 != 0 {
            return Err(Error::format(format!("base-256 {what} field overflows")));
        }
        let value = value as i64;
        return Ok(if invert == 0xff { !value } else { value });
    }

    let text = trim(field, |b| b == b' ' || b == 0);
    let mut value: i64 = 0;
    for &b in text {
        if !(b'0'..=b'7').contains(&b) {
            return Err(Error::format(format!("invalid octal {what} field {}", show(field))));
        }
        value = value
            .checked_mul(8)
            .and_then(|v| v.checked_add(i64::from(b - b'0')))
            .ok_or_else(|| Error::format(format!("octal {what} field overflows")))?;
    }
    Ok(value)
}

fn trim(bytes: &[u8], strip: impl Fn(u8) -> bool) -> &[u8] {
    let start = bytes.iter().position(|&b| !strip(b)).unwrap_or(bytes.len());
    let end = bytes.iter().rposition(|&b| !strip(b)).map_or(start, |i| i + 1);
    &bytes[start..end]
}

/// Parses PAX records (`"<len> <key>=<value>\n"`, len counting the whole record).
fn parse_pax(mut data: &[u8]) -> Result<Pax> {
    let mut pax = Pax::default();
    // Where each xattr name is in `pax.xattrs`: a repeated name replaces the earlier value in
    // constant time (a scan per record made a header of many records quadratic).
    let mut xattr_index: HashMap<Vec<u8>, usize> = HashMap::new();
    while !data.is_empty() && data[0] != 0 {
        let space = data
            .iter()
            .position(|&b| b == b' ')
            .ok_or_else(|| Error::format("PAX record without a length"))?;
        let len: usize = std::str::from_utf8(&data[..space])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| Error::format(format!("invalid PAX record length {}", show(&data[..space]))))?;
        if len <= space + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(Error::format(format!("malformed PAX record of length {len}")));
        }
        let record = &data[space + 1..len - 1];
        data = &data[len..];
        let eq = record
            .iter()
            .position(|&b| b == b'=')
            .ok_or_else(|| Error::format(format!("PAX record {} has no '='", show(record))))?;
        let (key, value) = (&record[..eq], &record[eq + 1..]);
        apply_pax_record(&mut pax, &mut xattr_index, key, value)?;
    }
    Ok(pax)
}

fn apply_pax_record(pax: &mut Pax, xattr_index: &mut HashMap<Vec<u8>, usize>, key: &[u8], value: &[u8]) -> Result<()> {
    const XATTR: &[u8] = b"SCHILY.xattr.";
    match key {
        b"path" => pax.path = Some(value.to_vec()),
        b"linkpath" => pax.link_path = Some(value.to_vec()),
        b"size" => pax.size = Some(parse_decimal(value, "size")?),
        b"uid" => pax.uid = Some(id_from_u64(parse_decimal(value, "uid")?, "uid")?),
        b"gid" => pax.gid = Some(id_from_u64(parse_decimal(value, "gid")?, "gid")?),
        b"mtime" => pax.mtime = Some(parse_pax_time(value)?),
        b"atime" => pax.atime = Some(parse_pax_time(value)?),
        _ if key.starts_with(XATTR) => {
            let name = &key[XATTR.len()..];
            if name.is_empty() || name.contains(&0) {
                return Err(Error::format(format!("invalid xattr name in PAX record {}", show(key))));
            }
            if name.len() > MAX_XATTR_NAME || value.len() > MAX_XATTR_VALUE {
                return Err(Error::format(format!("xattr {} in a PAX record is longer than the kernel allows", show(&name[..name.len().min(64)]))));
            }
            match xattr_index.get(name) {
                Some(&at) => pax.xattrs[at].1 = value.to_vec(),
                None => {
                    if pax.xattrs.len() >= MAX_XATTRS_PER_ENTRY {
                        return Err(Error::format(format!("more than {MAX_XATTRS_PER_ENTRY} xattrs on one entry")));
                    }
                    xattr_index.insert(name.to_vec(), pax.xattrs.len());
                    pax.xattrs.push((name.to_vec(), value.to_vec()));
                }
            }
        }
        _ if key.starts_with(b"GNU.sparse.") => {
            return Err(Error::unsupported("PAX sparse files are not supported"));
        }
        // uname/gname (numeric ids win), ctime, comment, charset, LIBARCHIVE.* duplicates, ...
        _ => {}
    }
    Ok(())
}

fn parse_decimal(value: &[u8], what: &str) -> Result<u64> {
    std::str::from_utf8(value)
        .ok()
        .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit()))
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| Error::format(format!("invalid PAX {what} {}", show(value))))
}

/// Parses a PAX time, `[-]seconds[.fraction]`.
fn parse_pax_time(value: &[u8]) -> Result<Timestamp> {
    let invalid = || Error::format(format!("invalid PAX time {}", show(value)));
    let (negative, rest) = match value.strip_prefix(b"-") {
        Some(rest) => (true, rest),
        None => (false, value),
    };
    let (whole, fraction) = match rest.iter().position(|&b| b == b'.') {
        Some(dot) => (&rest[..dot], &rest[dot + 1..]),
        None => (rest, &[][..]),
    };
    if whole.is_empty() || !whole.iter().all(u8::is_ascii_digit) || !fraction.iter().all(u8::is_ascii_digit) {
        return Err(invalid());
    }
    let secs: i64 = std::str::from_utf8(whole).ok().and_then(|s| s.parse().ok()).ok_or_else(invalid)?;
    // Nanosecond precision; further digits are truncated.
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + fraction.get(i).map_or(0, |&d| u32::from(d - b'0'));
    }
    Ok(match (negative, nanos) {
        (false, _) => Timestamp { secs, nanos },
        (true, 0) => Timestamp { secs: -secs, nanos: 0 },
        (true, _) => Timestamp { secs: -secs - 1, nanos: 1_000_000_000 - nanos },
    })
}

#[cfg(test)]
mod tests {
    use super::super::testutil::{pax_record, TarBuilder};
    use super::*;

    fn headers(archive: &[u8]) -> Result<Vec<(Header, Vec<u8>)>> {
        let mut reader = TarReader::new(archive);
        let mut out = Vec::new();
        while let Some(header) = reader.next_entry()? {
            let mut data = Vec::new();
            reader.read_to_end(&mut data).map_err(|e| Error::io("read member", e))?;
            out.push((header, data));
        }
        Ok(out)
    }

    #[test]
    fn reads_ustar_members_and_data() {
        let mut tar = TarBuilder::new();
        tar.dir("etc", 0o755);
        tar.file("etc/hostname", b"box\n", 0o644);
        tar.symlink("etc/localtime", "/usr/share/zoneinfo/UTC");
        let entries = headers(&tar.finish()).unwrap();
        assert_eq!(entries.len(), 3);
        assert_eq!(entries[0].0.kind, EntryKind::Directory);
        assert_eq!(entries[0].0.mode, 0o755);
        assert_eq!(entries[1].0.name, b"etc/hostname");
        assert_eq!(entries[1].1, b"box\n");
        assert_eq!(entries[2].0.kind, EntryKind::Symlink);
        assert_eq!(entries[2].0.link_name, b"/usr/share/zoneinfo/UTC");
    }

    #[test]
    fn unread_data_is_skipped() {
        let mut tar = TarBuilder::new();
        tar.file("a", &[7u8; 1000], 0o644);
        tar.file("b", b"second", 0o644);
        let archive = tar.finish();
        let mut reader = TarReader::new(&archive[..]);
        assert_eq!(reader.next_entry().unwrap().unwrap().name, b"a");
        let b = reader.next_entry().unwrap().unwrap();
        assert_eq!(b.name, b"b");
        let mut data = String::new();
        reader.read_to_string(&mut data).unwrap();
        assert_eq!(data, "second");
        assert!(reader.next_entry().unwrap().is_none());
    }

    #[test]
    fn ustar_prefix_is_joined() {
        let long_dir = "d".repeat(120);
        let mut tar = TarBuilder::new();
        tar.file_with_prefix(&long_dir, "file", b"x");
        let entries = headers(&tar.finish()).unwrap();
        assert_eq!(entries[0].0.name, format!("{long_dir}/file").into_bytes());
    }

    #[test]
    fn gnu_long_names_and_links() {
        let name = format!("{}/file", "n".repeat(200));
        let target = format!("{}/target", "t".repeat(150));
        let mut tar = TarBuilder::new();
        tar.gnu_long(b'L', name.as_bytes());
        tar.gnu_long(b'K', target.as_bytes());
        tar.symlink("short", "short-target");
        let entries = headers(&tar.finish()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.name, name.as_bytes());
        assert_eq!(entries[0].0.link_name, target.as_bytes());
    }

    #[test]
    fn pax_records_override_the_header() {
        let mut records = Vec::new();
        records.extend(pax_record("path", b"very/long/pax/path"));
        records.extend(pax_record("uid", b"3000000000"));
        records.extend(pax_record("gid", b"42"));
        records.extend(pax_record("mtime", b"1700000000.123456789123"));
        records.extend(pax_record("atime", b"-1.25"));
        records.extend(pax_record("SCHILY.xattr.user.note", b"a\0b"));
        records.extend(pax_record("SCHILY.xattr.security.capability", b"\x01\x00"));
        records.extend(pax_record("comment", b"ignored"));
        let mut tar = TarBuilder::new();
        tar.pax(&records);
        tar.file("short", b"data", 0o4755);
        let entries = headers(&tar.finish()).unwrap();
        let h = &entries[0].0;
        assert_eq!(h.name, b"very/long/pax/path");
        assert_eq!(h.uid, 3_000_000_000);
        assert_eq!(h.gid, 42);
        assert_eq!(h.mode, 0o4755);
        assert_eq!(h.mtime, Timestamp { secs: 1_700_000_000, nanos: 123_456_789 });
        assert_eq!(h.atime, Some(Timestamp { secs: -2, nanos: 750_000_000 }));
        assert_eq!(
            h.xattrs,
            vec![(b"user.note".to_vec(), b"a\0b".to_vec()), (b"security.capability".to_vec(), b"\x01\x00".to_vec())]
        );
    }

    #[test]
    fn pax_size_overrides_header_size() {
        let mut tar = TarBuilder::new();
        tar.pax(&pax_record("size", b"5"));
        tar.raw_file_header("f", 0, b'0');
        tar.data(b"hello");
        let entries = headers(&tar.finish()).unwrap();
        assert_eq!(entries[0].1, b"hello");
    }

    #[test]
    fn global_headers_are_skipped() {
        let mut tar = TarBuilder::new();
        tar.global_pax(&pax_record("comment", b"git archive"));
        tar.file("a", b"x", 0o644);
        let entries = headers(&tar.finish()).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].0.name, b"a");
    }

    #[test]
    fn header_only_types_carry_no_data() {
        let mut tar = TarBuilder::new();
        // A directory header that claims a size must not swallow the next member.
        tar.raw_file_header("d", 3, b'5');
        tar.file("after", b"ok", 0o644);
        let entries = headers(&tar.finish()).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].0.name, b"after");
    }

    #[test]
    fn base256_numbers() {
        let value: i64 = (1 << 33) + 7;
        let mut field = [0u8; 12];
        field[4..].copy_from_slice(&value.to_be_bytes());
        field[0] = 0x80;
        assert_eq!(parse_signed(&field, "size").unwrap(), value);
        let negative = [0xffu8; 12];
        assert_eq!(parse_signed(&negative, "mtime").unwrap(), -1);
        assert_eq!(parse_signed(b"0000644 \0", "mode").unwrap(), 0o644);
        assert_eq!(parse_signed(b"\0\0\0\0", "mode").unwrap(), 0);
        assert_eq!(parse_signed(b"12x", "mode").unwrap_err().code(), "EFORMAT");
    }

    #[test]
    fn corrupt_and_truncated_archives_are_format_errors() {
        let mut tar = TarBuilder::new();
        tar.file("a", &[1u8; 600], 0o644);
        let archive = tar.finish();

        let mut corrupt = archive.clone();
        corrupt[10] ^= 0x55;
        assert_eq!(headers(&corrupt).unwrap_err().code(), "EFORMAT");

        let truncated = &archive[..700];
        assert_eq!(headers(truncated).unwrap_err().code(), "EFORMAT");

        let half_header = &archive[..100];
        assert_eq!(headers(half_header).unwrap_err().code(), "EFORMAT");
    }

    #[test]
    fn oversized_metadata_is_refused() {
        let mut tar = TarBuilder::new();
        tar.raw_file_header("././@LongLink", MAX_LONG_NAME + 1, b'L');
        assert_eq!(headers(&tar.finish()).unwrap_err().code(), "EFORMAT");
    }

    #[test]
    fn sparse_and_unknown_types_are_unsupported() {
        for typeflag in [b'S', b'V', b'D'] {
            let mut tar = TarBuilder::new();
            tar.raw_file_header("x", 0, typeflag);
            assert_eq!(headers(&tar.finish()).unwrap_err().code(), "EUNSUPPORTED");
        }
        let mut tar = TarBuilder::new();
        tar.pax(&pax_record("GNU.sparse.major", b"1"));
        tar.file("x", b"", 0o644);
        assert_eq!(headers(&tar.finish()).unwrap_err().code(), "EUNSUPPORTED");
    }

    #[test]
    fn xattrs_are_bounded_per_entry_and_a_repeated_name_keeps_its_last_value() {
        // The most an entry may carry is accepted; a header of tens of thousands of names, which
        // still fits the 1 MiB PAX limit (30000 records of 29 bytes), is refused.
        for (count, ok) in [(MAX_XATTRS_PER_ENTRY, true), (30_000, false)] {
            let mut records = Vec::new();
            for i in 0..count {
                records.extend(pax_record(&format!("SCHILY.xattr.user.{i:05}"), b"v"));
            }
            assert!(records.len() as u64 <= MAX_PAX_SIZE);
            let mut tar = TarBuilder::new();
            tar.pax(&records);
            tar.file("x", b"", 0o644);
            let result = headers(&tar.finish());
            if ok {
                assert_eq!(result.unwrap()[0].0.xattrs.len(), count);
            } else {
                assert_eq!(result.err().map(|e| e.code()), Some("EFORMAT"), "{count} xattrs are refused");
            }
        }

        // A value longer than the kernel accepts is refused too.
        let mut tar = TarBuilder::new();
        tar.pax(&pax_record("SCHILY.xattr.user.big", &vec![b'x'; MAX_XATTR_VALUE + 1]));
        tar.file("x", b"", 0o644);
        assert_eq!(headers(&tar.finish()).unwrap_err().code(), "EFORMAT");

        let mut records = Vec::new();
        records.extend(pax_record("SCHILY.xattr.user.a", b"first"));
        records.extend(pax_record("SCHILY.xattr.user.b", b"b"));
        records.extend(pax_record("SCHILY.xattr.user.a", b"last"));
        let mut tar = TarBuilder::new();
        tar.pax(&records);
        tar.file("x", b"", 0o644);
        let entries = headers(&tar.finish()).unwrap();
        assert_eq!(entries[0].0.xattrs, vec![(b"user.a".to_vec(), b"last".to_vec()), (b"user.b".to_vec(), b"b".to_vec())]);
    }

    #[test]
    fn malformed_pax_is_a_format_error() {
        for records in [&b"5 a=b\n"[..], b"x path=a\n", b"99 path=a\n", b"8 patha\n"] {
            let mut tar = TarBuilder::new();
            tar.pax(records);
            tar.file("x", b"", 0o644);
            assert_eq!(headers(&tar.finish()).unwrap_err().code(), "EFORMAT", "{records:?}");
        }
    }

    #[test]
    fn stream_without_end_marker_ends_cleanly_on_a_block_boundary() {
        let mut tar = TarBuilder::new();
        tar.file("a", b"x", 0o644);
        let archive = tar.into_blocks_without_trailer();
        assert_eq!(headers(&archive).unwrap().len(), 1);
    }
}
