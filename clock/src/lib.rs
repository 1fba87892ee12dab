//! The one clock every controller and the gateway read. Production uses the system clock; tests
//! inject a clock file (`--clock-file`) holding an RFC 3339 instant, and advance it instead of
//! sleeping through retention windows, billing intervals and the usage records' 90 days.

use jiff::Timestamp;

pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;

    /// Ticks when "now" jumps (an injected clock moved), so that timers set in real time are
    /// re-evaluated. The system clock never jumps this way.
    fn jumps(&self) -> Option<futures::stream::BoxStream<'static, ()>> {
        None
    }
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// RFC 3339 at whole seconds, as Kubernetes writes times.
pub fn format(t: Timestamp) -> String {
    t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// RFC 3339 to the millisecond: billing periods, which must add up exactly. Truncated, as
/// `Timestamp::as_millisecond` (the unit of the periods' arithmetic and their keys) truncates.
pub fn format_millis(t: Timestamp) -> String {
    Timestamp::from_millisecond(t.as_millisecond()).unwrap_or(t).to_string()
}

/// `secs` after `t`, or the last representable instant where that would pass it: a window too long
/// to represent means "not yet", never (as a wrapped or defaulted sum would) "already".
pub fn later(t: Timestamp, secs: u64) -> Timestamp {
    i64::try_from(secs)
        .ok()
        .and_then(|s| t.checked_add(jiff::SignedDuration::from_secs(s)).ok())
        .unwrap_or(Timestamp::MAX)
}

/// The one timestamp parser (any RFC 3339 instant).
pub fn parse(s: &str) -> Option<Timestamp> {
    s.parse().ok()
}

#[cfg(feature = "test-hooks")]
pub use file::FileClock;

/// The injected clock of the tests (feature `test-hooks`): never in a production build.
#[cfg(feature = "test-hooks")]
mod file {
    use std::path::{Path, PathBuf};
    use std::sync::Mutex;
    use std::time::{Duration, SystemTime};

    use jiff::Timestamp;

    use super::Clock;

    /// "Now" read from a file; an empty or missing file means the system clock. Tests only.
    pub struct FileClock {
        path: PathBuf,
        cache: Mutex<Option<(SystemTime, Option<Timestamp>)>>,
    }

    impl FileClock {
        pub fn new(path: PathBuf) -> FileClock {
            FileClock { path, cache: Mutex::new(None) }
        }

        /// Sets the time a `FileClock` on `path` reads. Written under another name and renamed
        /// over `path`, so that no reader sees it half-written: a file caught between its
        /// truncation and its write reads as empty, which means the system clock, and an API-fault
        /// run had a receipt stamped with the real date, days before the injected one.
        pub fn set(path: &Path, t: Timestamp) -> std::io::Result<()> {
            let writing = path.with_extension("writing");
            std::fs::write(&writing, t.to_string())?;
            std::fs::rename(&writing, path)
        }

        fn read(&self) -> Option<Timestamp> {
            let modified = std::fs::metadata(&self.path).and_then(|m| m.modified()).ok();
            let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
            if let (Some(m), Some((cached_at, value))) = (modified, cache.as_ref())
                && *cached_at == m
            {
                return *value;
            }
            let value = std::fs::read_to_string(&self.path)
                .ok()
                .and_then(|s| s.trim().parse::<Timestamp>().ok());
            // Only what parsed is kept: a failed read must not stick until the next change.
            if let (Some(m), Some(_)) = (modified, value) {
                *cache = Some((m, value));
            }
            value
        }

        /// Ticks whenever the file changes, so controllers can re-evaluate time-based decisions.
        pub fn changes(&self) -> impl futures::Stream<Item = ()> + Send + 'static {
            let path = self.path.clone();
            let (tx, rx) = tokio::sync::mpsc::channel(1);
            tokio::spawn(async move {
                let mut last = None;
                loop {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    let now = std::fs::read_to_string(&path).ok();
                    if now != last {
                        last = now;
                        if tx.send(()).await.is_err() {
                            return;
                        }
                    }
                }
            });
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|v| (v, rx)) })
        }
    }

    impl Clock for FileClock {
        fn now(&self) -> Timestamp {
            self.read().unwrap_or_else(Timestamp::now)
        }

        fn jumps(&self) -> Option<futures::stream::BoxStream<'static, ()>> {
            use futures::StreamExt;
            Some(self.changes().boxed())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(feature = "test-hooks")]
    #[test]
    fn a_file_clock_reads_what_was_set_and_keeps_no_failed_read() {
        let dir = std::env::temp_dir().join(format!("alcove-clock-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("clock");
        let t: Timestamp = "2027-03-01T09:00:00Z".parse().unwrap();
        FileClock::set(&path, t).unwrap();
        let clock = FileClock::new(path.clone());
        assert_eq!(clock.now(), t);
        // Caught half-written (truncated, not yet written): the system clock for that read only.
        std::fs::write(&path, "").unwrap();
        assert!(clock.now() > t.checked_sub(jiff::SignedDuration::from_hours(24 * 365)).unwrap());
        std::fs::write(&path, "2027-03-01T09:00:05Z").unwrap();
        assert_eq!(clock.now(), "2027-03-01T09:00:05Z".parse::<Timestamp>().unwrap());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn later_saturates_instead_of_wrapping() {
        let t: Timestamp = "2026-12-05T10:00:00Z".parse().unwrap();
        assert_eq!(later(t, 90), "2026-12-05T10:01:30Z".parse::<Timestamp>().unwrap());
        assert_eq!(later(t, u64::MAX), Timestamp::MAX);
        assert_eq!(later(t, i64::MAX as u64), Timestamp::MAX);
    }

    #[test]
    fn millisecond_instants_are_truncated_like_as_millisecond() {
        let t: Timestamp = "2026-12-05T10:00:00.0019Z".parse().unwrap();
        assert_eq!(format_millis(t), "2026-12-05T10:00:00.001Z");
        assert_eq!(parse(&format_millis(t)).unwrap().as_millisecond(), t.as_millisecond());
    }
}
