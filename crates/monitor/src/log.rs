//! Minimal logfmt logging to stderr (which the daemon points at `<bundle>/monitor.log`).

use std::io::Write;
use std::sync::atomic::{AtomicU8, Ordering};

use crisp_core::monitor_proto::LogLevel;
use crisp_core::container::crilog::civil_from_days;

static LEVEL: AtomicU8 = AtomicU8::new(LogLevel::Info as u8);

pub fn set_level(level: LogLevel) {
    LEVEL.store(level as u8, Ordering::Relaxed);
}

pub fn enabled(level: LogLevel) -> bool {
    level as u8 <= LEVEL.load(Ordering::Relaxed)
}

pub fn write(level: LogLevel, msg: std::fmt::Arguments<'_>) {
    let name = match level {
        LogLevel::Error => "error",
        LogLevel::Warn => "warn",
        LogLevel::Info => "info",
        LogLevel::Debug => "debug",
    };
    let line = format!("time={} level={} pid={} msg={:?}\n", rfc3339_now(), name, std::process::id(), msg.to_string());
    // Logging must never take the monitor down; a full disk just loses lines.
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

#[macro_export]
macro_rules! log {
    ($level:ident, $($arg:tt)*) => {
        if $crate::log::enabled(crisp_core::monitor_proto::LogLevel::$level) {
            $crate::log::write(crisp_core::monitor_proto::LogLevel::$level, format_args!($($arg)*));
        }
    };
}

/// Current UTC time as RFC 3339 with milliseconds.
fn rfc3339_now() -> String {
    let ms = crisp_core::sys::now_unix_ms();
    format_rfc3339_ms(ms)
}

pub fn format_rfc3339_ms(unix_ms: u64) -> String {
    let secs = unix_ms / 1000;
    let (y, m, d) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}Z",
        y,
        m,
        d,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        unix_ms % 1000
    )
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(format_rfc3339_ms(951_782_400_123), "2000-02-29T00:00:00.123Z");
        assert_eq!(format_rfc3339_ms(1_700_000_000_000), "2023-11-14T22:13:20.000Z");
        assert_eq!(format_rfc3339_ms(4_102_444_799_999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn level_filter() {
        set_level(LogLevel::Warn);
        assert!(enabled(LogLevel::Error));
        assert!(enabled(LogLevel::Warn));
        assert!(!enabled(LogLevel::Info));
        set_level(LogLevel::Info);
    }
}
