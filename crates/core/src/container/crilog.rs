//! The CRI container log format kubelet reads:
//! `<RFC 3339 timestamp, nanoseconds> <stdout|stderr> <F|P> <content>\n`.
//!
//! Output is cut into lines as containerd does: a complete line (its "\n", and a "\r" right
//! before it, removed) is one `F` record; a line longer than the maximum is cut into `P`
//! records of exactly the maximum followed by an `F` record with the rest; output left
//! without a newline when the stream ends is flushed as a `P` record.

/// containerd's default maximum line size.
pub const MAX_LINE: usize = 16 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stream {
    Stdout,
    Stderr,
}

impl Stream {
    pub fn name(self) -> &'static str {
        match self {
            Stream::Stdout => "stdout",
            Stream::Stderr => "stderr",
        }
    }
}

/// Splits one stream's bytes into log records.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
}

impl LineSplitter {
    pub fn new(max: usize) -> Self {
        LineSplitter { buf: Vec::new(), max: max.max(1) }
    }

    /// Bytes waiting for the rest of their line.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// Feeds output; `emit(content, partial)` is called for every record that is complete.
    pub fn push(&mut self, data: &[u8], emit: &mut dyn FnMut(&[u8], bool)) {
        self.buf.extend_from_slice(data);
        let mut start = 0;
        loop {
            match self.buf[start..].iter().position(|&b| b == b'\n') {
                Some(off) => {
                    let end = start + off;
                    let mut line = &self.buf[start..end];
                    if let [rest @ .., b'\r'] = line {
                        line = rest;
                    }
                    while line.len() > self.max {
                        emit(&line[..self.max], true);
                        line = &line[self.max..];
                    }
                    emit(line, false);
                    start = end + 1;
                }
                None => {
                    while self.buf.len() - start > self.max {
                        emit(&self.buf[start..start + self.max], true);
                        start += self.max;
                    }
                    break;
                }
            }
        }
        self.buf.drain(..start);
    }

    /// The stream ended: what is left becomes a partial record.
    pub fn finish(&mut self, emit: &mut dyn FnMut(&[u8], bool)) {
        if !self.buf.is_empty() {
            emit(&self.buf, true);
            self.buf.clear();
        }
    }
}

/// Go's time.RFC3339Nano in UTC: fractional seconds without trailing zeros (none at all for a
/// whole second).
pub fn format_timestamp(unix_secs: i64, nanos: u32) -> String {
    let days = unix_secs.div_euclid(86_400);
    let rem = unix_secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    let mut s = format!("{:04}-{:02}-{:02}T{:02}:{:02}:{:02}", y, m, d, rem / 3600, rem % 3600 / 60, rem % 60);
    if nanos != 0 {
        let frac = format!("{:09}", nanos);
        s.push('.');
        s.push_str(frac.trim_end_matches('0'));
    }
    s.push('Z');
    s
}

/// The current time as [`format_timestamp`] renders it.
pub fn now_timestamp() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    format_timestamp(now.as_secs() as i64, now.subsec_nanos())
}

/// Appends one record to `out`.
pub fn append_record(out: &mut Vec<u8>, timestamp: &str, stream: Stream, partial: bool, content: &[u8]) {
    out.reserve(timestamp.len() + content.len() + 12);
    out.extend_from_slice(timestamp.as_bytes());
    out.push(b' ');
    out.extend_from_slice(stream.name().as_bytes());
    out.extend_from_slice(if partial { b" P " } else { b" F " });
    out.extend_from_slice(content);
    out.push(b'\n');
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day), via 400-year eras.
pub fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn split(max: usize, chunks: &[&[u8]], finish: bool) -> Vec<(String, bool)> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, &mut |b, p| out.push((String::from_utf8_lossy(b).into_owned(), p)));
        }
        if finish {
            s.finish(&mut |b, p| out.push((String::from_utf8_lossy(b).into_owned(), p)));
        }
        out
    }

    fn rec(s: &str, partial: bool) -> (String, bool) {
        (s.to_owned(), partial)
    }

    #[test]
    fn complete_lines_are_full_records() {
        assert_eq!(split(16, &[b"a\nbb\r\n\n"], false), vec![rec("a", false), rec("bb", false), rec("", false)]);
        // A line split across reads is still one record.
        assert_eq!(split(16, &[b"he", b"llo", b" world\nx"], false), vec![rec("hello world", false)]);
        // A lone '\r' inside a line is content.
        assert_eq!(split(16, &[b"a\rb\n"], false), vec![rec("a\rb", false)]);
    }

    #[test]
    fn long_lines_are_cut_into_partial_records() {
        assert_eq!(split(4, &[b"abcdefghij\n"], false), vec![rec("abcd", true), rec("efgh", true), rec("ij", false)]);
        // Exactly the maximum is still one full record.
        assert_eq!(split(4, &[b"abcd\n"], false), vec![rec("abcd", false)]);
        // Without a newline yet, the maximum is emitted once it is exceeded.
        assert_eq!(split(4, &[b"abcd"], false), vec![]);
        assert_eq!(split(4, &[b"abcd", b"e"], false), vec![rec("abcd", true)]);
        assert_eq!(split(4, &[b"abcd", b"ef\n"], false), vec![rec("abcd", true), rec("ef", false)]);
    }

    #[test]
    fn leftovers_at_eof_are_partial() {
        assert_eq!(split(16, &[b"done\nno newline"], true), vec![rec("done", false), rec("no newline", true)]);
        assert_eq!(split(16, &[b"x\n"], true), vec![rec("x", false)]);
    }

    #[test]
    fn timestamps_follow_rfc3339_nano() {
        assert_eq!(format_timestamp(0, 0), "1970-01-01T00:00:00Z");
        assert_eq!(format_timestamp(1_700_000_000, 123_456_789), "2023-11-14T22:13:20.123456789Z");
        assert_eq!(format_timestamp(1_700_000_000, 120_000_000), "2023-11-14T22:13:20.12Z");
        assert_eq!(format_timestamp(951_782_400, 1), "2000-02-29T00:00:00.000000001Z");
        assert_eq!(format_timestamp(4_102_444_799, 999_000_000), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn records_are_formatted_for_kubelet() {
        let mut out = Vec::new();
        append_record(&mut out, "2023-11-14T22:13:20.5Z", Stream::Stdout, false, b"hello");
        append_record(&mut out, "2023-11-14T22:13:20.6Z", Stream::Stderr, true, b"");
        assert_eq!(String::from_utf8(out).unwrap(), "2023-11-14T22:13:20.5Z stdout F hello\n2023-11-14T22:13:20.6Z stderr P \n");
    }
}
