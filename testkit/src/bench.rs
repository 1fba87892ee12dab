//! What every benchmark prints and reads: its `--name value` arguments, latency quantiles, and
//! the machine, since figures from different CPUs are not comparable.

use std::time::Duration;

/// `--name N` from the command line, else `default`.
pub fn arg(name: &str, default: u64) -> u64 {
    let args: Vec<String> = std::env::args().collect();
    args.windows(2).find(|w| w[0] == name).and_then(|w| w[1].parse().ok()).unwrap_or(default)
}

/// Milliseconds at quantile `q` (0 to 1) of sorted durations; 0 for none.
pub fn quantile_ms(sorted: &[Duration], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * q.clamp(0.0, 1.0)).round() as usize;
    sorted[i].as_secs_f64() * 1000.0
}

/// `model name` from /proc/cpuinfo.
pub fn cpu() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|m| m.trim().to_string())
        .unwrap_or_else(|| "unknown CPU".into())
}

/// `<cpu>, <n> CPUs`: the line each benchmark prints with its figures.
pub fn machine() -> String {
    format!("{}, {} CPUs", cpu(), std::thread::available_parallelism().map_or(0, |n| n.get()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_pick_the_nearest_rank() {
        let d: Vec<Duration> = (1..=100).map(Duration::from_millis).collect();
        assert_eq!(quantile_ms(&d, 0.5), 51.0);
        assert_eq!(quantile_ms(&d, 0.99), 99.0);
        assert_eq!(quantile_ms(&d, 1.0), 100.0);
        assert_eq!(quantile_ms(&[], 0.99), 0.0);
    }
}
