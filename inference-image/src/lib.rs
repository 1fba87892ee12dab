//! `alcove-inference`: the program every Alcove instance pod runs.
//!
//! - [`api`]: the OpenAI-compatible HTTP server (`serve`).
//! - [`engine`]: the single model thread and its bounded queue; generation and sampling.
//! - [`model`]: loading llama-family causal LMs (safetensors or GGUF) and BERT embedders.
//! - [`retrieval`] and [`index`]: knowledge-base indexes, written by `index`, searched by `serve`.
//! - [`fetch`]: filling a model-cache volume from a URI (`fetch`), verified and resumable.
//! - [`history`]: conversation history, encrypted at rest.
//! - [`testmodel`]: random-weight models for tests and local runs (`make-test-model`).

pub mod api;
pub mod bench;
pub mod engine;
pub mod fetch;
pub mod history;
pub mod index;
pub mod metrics;
pub mod model;
pub mod prefix_cache;
pub mod retrieval;
pub mod testmodel;

/// Writes `bytes` to `path` so that a reader sees the old file or the new one, never half of
/// either: a temporary file beside it, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &std::path::Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let dir =
        path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(std::path::Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let mut suffix = [0u8; 6];
    getrandom::fill(&mut suffix).map_err(|e| std::io::Error::other(e.to_string()))?;
    let tmp = dir.join(format!(".{name}.tmp-{}", hex(&suffix)));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Removes temporary files a crashed [`write_atomically`] left in `dir`.
pub fn remove_stale_temporaries(dir: &std::path::Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name.starts_with('.') && name.contains(".tmp-") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Seconds since the Unix epoch, as OpenAI's `created` fields use.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
