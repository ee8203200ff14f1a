//! Layer decompression and the digest of the uncompressed stream (the layer's diffID).

use std::fmt;
use std::io::{self, BufReader, Cursor, Read};

use sha2::{Digest, Sha256};

use super::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    pub fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// Compression recognised from the first bytes of a stream, if any.
fn sniff(prefix: &[u8]) -> Option<Compression> {
    if prefix.starts_with(&GZIP_MAGIC) {
        return Some(Compression::Gzip);
    }
    if prefix.starts_with(&ZSTD_MAGIC) {
        return Some(Compression::Zstd);
    }
    // A zstd stream may open with a skippable frame (magic 0x184D2A50..=0x184D2A5F, little endian).
    if prefix.len() >= 4 && prefix[0] & 0xf0 == 0x50 && prefix[1..4] == [0x2a, 0x4d, 0x18] {
        return Some(Compression::Zstd);
    }
    None
}

/// Wraps `src` in the decoder its magic bytes call for. Like containerd, this ignores the media
/// type: registries do serve layers whose media type disagrees with their bytes, and a
/// compressed stream always starts with its magic, so data without one is read as a plain tar.
pub fn decoder<'a, R: Read + 'a>(mut src: R) -> Result<(Compression, Box<dyn Read + 'a>)> {
    let mut prefix = [0u8; 4];
    let mut filled = 0;
    while filled < prefix.len() {
        match src.read(&mut prefix[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(Error::io("read layer", e)),
        }
    }
    let actual = sniff(&prefix[..filled]).unwrap_or(Compression::None);
    let stream = Cursor::new(prefix).take(filled as u64).chain(src);
    let reader: Box<dyn Read + 'a> = match actual {
        // Multi-member aware: parallel compressors (pigz) emit concatenated gzip members.
        Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(BufReader::with_capacity(128 << 10, stream))),
        Compression::Zstd => Box::new(
            zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(128 << 10, stream))
                .map_err(|e| Error::io("initialise zstd decoder", e))?,
        ),
        Compression::None => Box::new(stream),
    };
    Ok((actual, reader))
}

/// Counts and hashes everything read through it.
pub struct DigestReader<R> {
    inner: R,
    hasher: Sha256,
    bytes: u64,
}

impl<R: Read> DigestReader<R> {
    pub fn new(inner: R) -> DigestReader<R> {
        DigestReader { inner, hasher: Sha256::new(), bytes: 0 }
    }

    pub fn byte_count(&self) -> u64 {
        self.bytes
    }

    /// `sha256:<hex>` of everything read so far.
    pub fn digest(&self) -> String {
        let hash = self.hasher.clone().finalize();
        let mut out = String::with_capacity(7 + 64);
        out.push_str("sha256:");
        for byte in hash {
            out.push_str(&format!("{byte:02x}"));
        }
        out
    }
}

impl<R: Read> Read for DigestReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(data).unwrap();
        enc.finish().unwrap()
    }

    fn read_all(src: &[u8]) -> (Compression, Vec<u8>) {
        let (actual, mut reader) = decoder(src).unwrap();
        let mut out = Vec::new();
        reader.read_to_end(&mut out).unwrap();
        (actual, out)
    }

    #[test]
    fn detects_gzip_zstd_and_plain() {
        let data = b"hello layer".repeat(100);
        assert_eq!(read_all(&gzip(&data)), (Compression::Gzip, data.clone()));
        let zst = zstd::stream::encode_all(&data[..], 3).unwrap();
        assert_eq!(read_all(&zst), (Compression::Zstd, data.clone()));
        assert_eq!(read_all(&data), (Compression::None, data.clone()));
        assert_eq!(read_all(b"ab"), (Compression::None, b"ab".to_vec()));
        assert_eq!(read_all(b""), (Compression::None, Vec::new()));
    }

    #[test]
    fn concatenated_gzip_members_are_one_stream() {
        let mut both = gzip(b"first ");
        both.extend(gzip(b"second"));
        assert_eq!(read_all(&both).1, b"first second");
    }

    #[test]
    fn corrupt_gzip_is_a_format_error() {
        let mut data = gzip(&b"x".repeat(1000));
        let mid = data.len() / 2;
        data[mid] ^= 0xff;
        data.truncate(mid + 4);
        let (_, mut reader) = decoder(&data[..]).unwrap();
        let err = reader.read_to_end(&mut Vec::new()).unwrap_err();
        assert_eq!(Error::io("read", err).code(), "EFORMAT");
    }

    #[test]
    fn digest_matches_known_sha256() {
        let mut reader = DigestReader::new(&b"abc"[..]);
        std::io::copy(&mut reader, &mut std::io::sink()).unwrap();
        assert_eq!(reader.byte_count(), 3);
        assert_eq!(reader.digest(), "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    }
}
