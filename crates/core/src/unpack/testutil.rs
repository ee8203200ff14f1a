//! In-memory tar writer for tests. It writes exactly the bytes it is told to, including names
//! a well-behaved archiver would refuse, so tests can build hostile layers.

pub struct TarBuilder {
    out: Vec<u8>,
}

pub fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let body_len = 1 + key.len() + 1 + value.len() + 1;
    // The length prefix counts itself.
    let mut len = body_len + 1;
    while len != body_len + len.to_string().len() {
        len = body_len + len.to_string().len();
    }
    let mut record = format!("{len} {key}=").into_bytes();
    record.extend_from_slice(value);
    record.push(b'\n');
    assert_eq!(record.len(), len);
    record
}

pub struct Spec<'a> {
    pub name: &'a [u8],
    pub prefix: &'a [u8],
    pub typeflag: u8,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub mtime: u64,
    pub link_name: &'a [u8],
    pub dev_major: u32,
    pub dev_minor: u32,
}

impl Default for Spec<'_> {
    fn default() -> Self {
        Spec {
            name: b"",
            prefix: b"",
            typeflag: b'0',
            mode: 0o644,
            uid: 0,
            gid: 0,
            size: 0,
            mtime: 1_600_000_000,
            link_name: b"",
            dev_major: 0,
            dev_minor: 0,
        }
    }
}

fn octal(field: &mut [u8], value: u64) {
    let digits = field.len() - 1;
    let text = format!("{value:0digits$o}");
    assert!(text.len() <= digits, "value {value} does not fit an octal field");
    field[..digits].copy_from_slice(text.as_bytes());
    field[digits] = 0;
}

impl TarBuilder {
    pub fn new() -> TarBuilder {
        TarBuilder { out: Vec::new() }
    }

    pub fn header(&mut self, spec: Spec<'_>) {
        let mut block = [0u8; 512];
        block[..spec.name.len()].copy_from_slice(spec.name);
        octal(&mut block[100..108], u64::from(spec.mode));
        octal(&mut block[108..116], u64::from(spec.uid));
        octal(&mut block[116..124], u64::from(spec.gid));
        octal(&mut block[124..136], spec.size);
        octal(&mut block[136..148], spec.mtime);
        block[156] = spec.typeflag;
        block[157..157 + spec.link_name.len()].copy_from_slice(spec.link_name);
        block[257..263].copy_from_slice(b"ustar\0");
        block[263..265].copy_from_slice(b"00");
        octal(&mut block[329..337], u64::from(spec.dev_major));
        octal(&mut block[337..345], u64::from(spec.dev_minor));
        block[345..345 + spec.prefix.len()].copy_from_slice(spec.prefix);
        block[148..156].fill(b' ');
        let sum: u64 = block.iter().map(|&b| u64::from(b)).sum();
        octal(&mut block[148..155], sum);
        block[155] = b' ';
        self.out.extend_from_slice(&block);
    }

    /// Member data, padded to the block size.
    pub fn data(&mut self, data: &[u8]) {
        self.out.extend_from_slice(data);
        let pad = (512 - data.len() % 512) % 512;
        self.out.extend(std::iter::repeat_n(0, pad));
    }

    pub fn file(&mut self, name: &str, data: &[u8], mode: u32) {
        self.header(Spec { name: name.as_bytes(), mode, size: data.len() as u64, ..Spec::default() });
        self.data(data);
    }

    pub fn file_with_prefix(&mut self, prefix: &str, name: &str, data: &[u8]) {
        self.header(Spec {
            name: name.as_bytes(),
            prefix: prefix.as_bytes(),
            size: data.len() as u64,
            ..Spec::default()
        });
        self.data(data);
    }

    pub fn raw_file_header(&mut self, name: &str, size: u64, typeflag: u8) {
        self.header(Spec { name: name.as_bytes(), size, typeflag, ..Spec::default() });
    }

    pub fn dir(&mut self, name: &str, mode: u32) {
        self.header(Spec { name: name.as_bytes(), mode, typeflag: b'5', ..Spec::default() });
    }

    pub fn symlink(&mut self, name: &str, target: &str) {
        self.header(Spec {
            name: name.as_bytes(),
            link_name: target.as_bytes(),
            typeflag: b'2',
            mode: 0o777,
            ..Spec::default()
        });
    }

    pub fn hardlink(&mut self, name: &str, target: &str) {
        self.header(Spec { name: name.as_bytes(), link_name: target.as_bytes(), typeflag: b'1', ..Spec::default() });
    }

    pub fn pax(&mut self, records: &[u8]) {
        self.raw_file_header("PaxHeaders/x", records.len() as u64, b'x');
        self.data(records);
    }

    pub fn global_pax(&mut self, records: &[u8]) {
        self.raw_file_header("pax_global_header", records.len() as u64, b'g');
        self.data(records);
    }

    pub fn gnu_long(&mut self, typeflag: u8, name: &[u8]) {
        let mut data = name.to_vec();
        data.push(0);
        self.raw_file_header("././@LongLink", data.len() as u64, typeflag);
        self.data(&data);
    }

    /// The archive with its end-of-archive marker.
    pub fn finish(mut self) -> Vec<u8> {
        self.out.extend(std::iter::repeat_n(0, 1024));
        self.out
    }

    pub fn into_blocks_without_trailer(self) -> Vec<u8> {
        self.out
    }
}

/// A directory under the system temp dir, removed on drop.
pub struct TempDir {
    path: std::path::PathBuf,
}

impl TempDir {
    pub fn new() -> TempDir {
        use std::sync::atomic::{AtomicU32, Ordering};
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let path = std::env::temp_dir().join(format!(
            "crisp-unpack-test-{}-{}-{nanos}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir(&path).unwrap();
        TempDir { path }
    }

    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
