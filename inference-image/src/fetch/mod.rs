//! `alcove-inference fetch`: fills one model-cache volume from a URI before the server starts.
//!
//! The volume holds one directory per revision of the source, and `current`, a symlink to the
//! complete one. A revision becomes `current` only after every file in it matched its digest and
//! size, so the server never loads a half-written or corrupted model. Files download to
//! `NAME.part` and resume from there with a ranged GET after an interruption. A lock file makes a
//! second fetch of the same source (another instance starting) wait and then reuse the download.
//!
//! Progress goes to stdout as one JSON object a line (`{"event":"progress",…}`), every few
//! seconds: the operator reads the last line from the container's log for the instance status.
//! A failure is written to the termination-message file as JSON naming the URI and the reason;
//! exit code 2 means retrying cannot help (not found, refused credentials, a wrong digest, too
//! large), 1 that it may.

pub mod client;
mod source;

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use source::{Plan, Remote};

/// The symlink naming the complete revision.
pub const CURRENT: &str = "current";
/// In a revision directory: the link the server loads (`model.gguf`, or `model` for a directory).
pub const MODEL_LINK_GGUF: &str = "model.gguf";
pub const MODEL_LINK_DIR: &str = "model";
/// In a revision directory: what was fetched and verified; its presence marks it complete.
pub const MANIFEST: &str = ".complete.json";
const LOCK: &str = ".lock";
/// A lock not refreshed for this long belongs to a fetch that died; the next one takes over.
const LOCK_STALE: Duration = Duration::from_secs(30);
const LOCK_REFRESH: Duration = Duration::from_secs(5);
/// Bytes written between background flushes of a download.
const FLUSH_EVERY: u64 = 64 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    Gguf,
    Safetensors,
}

impl Format {
    pub fn model_link(self) -> &'static str {
        match self {
            Format::Gguf => MODEL_LINK_GGUF,
            Format::Safetensors => MODEL_LINK_DIR,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    pub uri: String,
    /// The mounted model-cache volume.
    pub cache: PathBuf,
    pub format: Format,
    /// Inside the source: the .gguf file, or the model's directory.
    pub path: Option<String>,
    /// SHA-256 (hex) the weights file must have.
    pub sha256: Option<String>,
    /// Directory with the credential files of the Secret the spec names (`header`, `token`).
    pub credentials: Option<PathBuf>,
    pub hub_endpoint: String,
    /// The S3-compatible store `s3://` URIs name.
    pub s3: S3Store,
    pub allow_private_addresses: bool,
    /// Most bytes the model may take (the volume's size, which the tenant's quota admitted).
    pub max_bytes: Option<u64>,
    pub progress_every: Duration,
    /// PEM certificates trusted besides the system's.
    pub extra_ca_pem: Option<String>,
}

/// Where `s3://bucket/…` lives.
#[derive(Debug, Clone, PartialEq)]
pub struct S3Store {
    /// e.g. `https://s3.eu-west-1.amazonaws.com`, or a MinIO or Ceph endpoint.
    pub endpoint: String,
    pub region: String,
    /// `endpoint/bucket/key` rather than `bucket.endpoint/key` (most stores besides AWS).
    pub path_style: bool,
}

impl Default for S3Store {
    fn default() -> Self {
        S3Store {
            endpoint: "https://s3.amazonaws.com".into(),
            region: "us-east-1".into(),
            path_style: false,
        }
    }
}

/// Why a fetch failed, as the operator's condition shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Reason {
    NotFound,
    AuthRefused,
    ChecksumMismatch,
    TooLarge,
    /// The source or an address it leads to is not allowed, or the spec cannot be fetched.
    Refused,
    /// Any other HTTP status.
    Http,
    /// The connection failed or broke off; retrying resumes.
    Network,
}

impl Reason {
    pub fn permanent(self) -> bool {
        !matches!(self, Reason::Network | Reason::Http)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub reason: Reason,
    pub message: String,
}

impl Failure {
    pub fn new(reason: Reason, message: String) -> Failure {
        Failure { reason, message }
    }
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// The failure an HTTP status means, naming `shown`.
pub fn failure_for_status(shown: &str, status: hyper::StatusCode) -> Failure {
    let (reason, what) = match status.as_u16() {
        401 | 403 => (Reason::AuthRefused, "authentication refused"),
        404 | 410 => (Reason::NotFound, "not found"),
        408 | 429 => (Reason::Http, "try again later"),
        s if s >= 500 => (Reason::Http, "server error"),
        _ => (Reason::Http, "unexpected answer"),
    };
    let mut f = Failure::new(reason, format!("{shown}: HTTP {status} ({what})"));
    // Other 4xx answers will not change on a retry.
    if reason == Reason::Http && status.is_client_error() && !matches!(status.as_u16(), 408 | 429) {
        f.reason = Reason::Refused;
    }
    f
}

/// What the termination message says on failure (the operator parses it).
#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub uri: String,
    pub reason: Reason,
    pub permanent: bool,
    pub message: String,
}

/// A progress line.
#[derive(Debug, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProgressLine {
    pub event: String,
    pub uri: String,
    pub bytes_done: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_total: Option<u64>,
    pub bytes_per_second: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
}

/// One file's entry in the manifest.
#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Fetched {
    pub name: String,
    pub size: u64,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etag: Option<String>,
}

#[derive(Debug, Serialize, Deserialize, Clone, PartialEq)]
pub struct Manifest {
    pub uri: String,
    pub revision: String,
    pub files: Vec<Fetched>,
    /// Seconds since the epoch.
    pub fetched_at: u64,
}

/// What a run did.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    pub revision: String,
    /// Bytes downloaded by this run (0: the cache had it).
    pub downloaded: u64,
    pub reused: bool,
}

struct Progress {
    uri: String,
    done: AtomicU64,
    total: AtomicU64,
    revision: std::sync::Mutex<Option<String>>,
}

impl Progress {
    fn line(&self, event: &str, rate: u64) -> String {
        let total = self.total.load(Ordering::Relaxed);
        let line = ProgressLine {
            event: event.into(),
            uri: self.uri.clone(),
            bytes_done: self.done.load(Ordering::Relaxed),
            bytes_total: (total > 0).then_some(total),
            bytes_per_second: rate,
            revision: self.revision.lock().unwrap_or_else(|e| e.into_inner()).clone(),
        };
        serde_json::to_string(&line).unwrap_or_default()
    }

    fn say(&self, event: &str, rate: u64) {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", self.line(event, rate));
        let _ = out.flush();
    }
}

/// Holds the cache's lock file, refreshing its time until dropped.
struct Lock {
    path: PathBuf,
    refresher: tokio::task::JoinHandle<()>,
}

impl Lock {
    async fn acquire(cache: &Path, progress: &Progress) -> std::io::Result<Lock> {
        let path = cache.join(LOCK);
        let mut said = false;
        loop {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    let p = path.clone();
                    let refresher = tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(LOCK_REFRESH).await;
                            if let Ok(f) = std::fs::File::options().write(true).open(&p) {
                                let _ = f.set_modified(std::time::SystemTime::now());
                            }
                        }
                    });
                    return Ok(Lock { path, refresher });
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let age = std::fs::metadata(&path)
                        .and_then(|m| m.modified())
                        .ok()
                        .and_then(|m| m.elapsed().ok());
                    if age.is_some_and(|a| a > LOCK_STALE) {
                        // Renaming is atomic: of two waiters taking over, one moves it.
                        let aside = cache.join(format!("{LOCK}.stale-{}", std::process::id()));
                        if std::fs::rename(&path, &aside).is_ok() {
                            let _ = std::fs::remove_file(&aside);
                        }
                        continue;
                    }
                    if !said {
                        progress.say("waiting", 0);
                        said = true;
                    }
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        self.refresher.abort();
        let _ = std::fs::remove_file(&self.path);
    }
}

fn io_failure(what: &str, e: std::io::Error) -> Failure {
    Failure::new(Reason::Network, format!("{what}: {e}"))
}

/// A relative path that stays inside its directory.
fn safe_relative(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && name.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
}

/// Reads a revision's manifest when the revision is complete and its files still have the sizes
/// it records (a truncated file makes it incomplete, so it is fetched again).
fn complete(dir: &Path) -> Option<Manifest> {
    let m: Manifest = serde_json::from_slice(&std::fs::read(dir.join(MANIFEST)).ok()?).ok()?;
    m.files
        .iter()
        .all(|f| std::fs::metadata(dir.join(&f.name)).is_ok_and(|md| md.len() == f.size))
        .then_some(m)
}

/// Points `link` (atomically) at `target`.
fn relink(link: &Path, target: &str) -> std::io::Result<()> {
    let dir = link.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".link-{}", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(target, &tmp)?;
    std::fs::rename(&tmp, link)
}

/// Runs a fetch. `Ok` once `current` names a complete, verified revision.
pub async fn run(opts: &Options) -> Result<Outcome, Failure> {
    if let Some(sha) = &opts.sha256
        && !(sha.len() == 64 && sha.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(Failure::new(
            Reason::Refused,
            format!("spec.model.sha256 {sha:?}: expected 64 hex digits"),
        ));
    }
    let opts =
        &Options { sha256: opts.sha256.as_ref().map(|s| s.to_ascii_lowercase()), ..opts.clone() };
    if let Some(p) = &opts.path
        && !safe_relative(p.trim_end_matches('/'))
    {
        return Err(Failure::new(
            Reason::Refused,
            format!("spec.model.path {p:?}: not a relative path inside the source"),
        ));
    }
    std::fs::create_dir_all(&opts.cache).map_err(|e| io_failure("the model cache", e))?;
    let progress = Arc::new(Progress {
        uri: opts.uri.clone(),
        done: AtomicU64::new(0),
        total: AtomicU64::new(0),
        revision: Default::default(),
    });
    let _lock = Lock::acquire(&opts.cache, &progress)
        .await
        .map_err(|e| io_failure("locking the model cache", e))?;
    let client = client::Client::new(opts.allow_private_addresses, opts.extra_ca_pem.as_deref())?;
    let plan = source::plan(&client, opts).await?;
    if !safe_relative(&plan.revision) || plan.files.iter().any(|f| !safe_relative(&f.name)) {
        return Err(Failure::new(
            Reason::Refused,
            format!("{}: a file name leaves the model's directory", opts.uri),
        ));
    }
    *progress.revision.lock().unwrap_or_else(|e| e.into_inner()) = Some(plan.revision.clone());
    let dir = opts.cache.join(&plan.revision);
    if complete(&dir).is_some() {
        publish(opts, &plan)?;
        progress.say("cached", 0);
        return Ok(Outcome { revision: plan.revision, downloaded: 0, reused: true });
    }
    let known: u64 = plan.files.iter().filter_map(|f| f.size).sum();
    if let Some(max) = opts.max_bytes
        && known > max
    {
        return Err(Failure::new(
            Reason::TooLarge,
            format!(
                "{}: the model is {known} bytes, more than its cache volume holds ({max} bytes, within the tenant's storage quota)",
                opts.uri
            ),
        ));
    }
    progress.total.store(known, Ordering::Relaxed);
    std::fs::create_dir_all(&dir).map_err(|e| io_failure("the model cache", e))?;

    let reporter = {
        let progress = progress.clone();
        let every = opts.progress_every;
        tokio::spawn(async move {
            let mut last = (Instant::now(), progress.done.load(Ordering::Relaxed));
            loop {
                tokio::time::sleep(every).await;
                let now = (Instant::now(), progress.done.load(Ordering::Relaxed));
                let secs = now.0.duration_since(last.0).as_secs_f64().max(0.001);
                progress.say("progress", ((now.1.saturating_sub(last.1)) as f64 / secs) as u64);
                last = now;
            }
        })
    };
    let started = Instant::now();
    let mut fetched = Vec::new();
    let mut downloaded = 0u64;
    let result = async {
        for f in &plan.files {
            let (entry, got) = download(&client, opts, &plan, f, &dir, &progress).await?;
            downloaded += got;
            fetched.push(entry);
        }
        Ok::<(), Failure>(())
    }
    .await;
    reporter.abort();
    result?;
    let manifest = Manifest {
        uri: opts.uri.clone(),
        revision: plan.revision.clone(),
        files: fetched,
        fetched_at: crate::unix_now(),
    };
    let json = serde_json::to_vec_pretty(&manifest).unwrap_or_default();
    crate::write_atomically(&dir.join(MANIFEST), &json)
        .map_err(|e| io_failure("writing the manifest", e))?;
    publish(opts, &plan)?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    progress.say("done", (downloaded as f64 / secs) as u64);
    Ok(Outcome { revision: plan.revision, downloaded, reused: false })
}

/// Makes `plan`'s revision the one served: its model link, then `current`; older revisions go.
fn publish(opts: &Options, plan: &Plan) -> Result<(), Failure> {
    let dir = opts.cache.join(&plan.revision);
    let target = if plan.model.is_empty() { ".".to_string() } else { plan.model.clone() };
    relink(&dir.join(opts.format.model_link()), &target)
        .and_then(|_| relink(&opts.cache.join(CURRENT), &plan.revision))
        .map_err(|e| io_failure("linking the model", e))?;
    // A server that loaded an older revision keeps its open files; nothing new can start on one.
    if let Ok(entries) = std::fs::read_dir(&opts.cache) {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().to_string();
            if name != plan.revision
                && !name.starts_with('.')
                && name != CURRENT
                && e.file_type().is_ok_and(|t| t.is_dir())
            {
                let _ = std::fs::remove_dir_all(e.path());
            }
        }
    }
    Ok(())
}

/// Downloads one file into `dir`, resuming a `.part` left by an interrupted run, and checks it.
/// Answers its manifest entry and the bytes this call transferred.
async fn download(
    client: &client::Client,
    opts: &Options,
    plan: &Plan,
    f: &Remote,
    dir: &Path,
    progress: &Progress,
) -> Result<(Fetched, u64), Failure> {
    let shown =
        if plan.files.len() == 1 { opts.uri.clone() } else { format!("{} ({})", opts.uri, f.name) };
    let target = dir.join(&f.name);
    if let Some(parent) = target.parent() {
        std::fs::create_dir_all(parent).map_err(|e| io_failure("the model cache", e))?;
    }
    let part = dir.join(format!("{}.part", f.name));
    let mut hasher = sha2::Sha256::new();
    let mut have = 0u64;
    if let Ok(mut file) = std::fs::File::open(&part) {
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).map_err(|e| io_failure("reading a partial download", e))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            have += n as u64;
        }
    }
    if f.size.is_some_and(|s| have > s) {
        have = 0;
        hasher = sha2::Sha256::new();
    }
    progress.done.fetch_add(have, Ordering::Relaxed);
    let (resp, _) = client.get(&f.url, &shown, &plan.credentials, Some(have), false).await?;
    let status = resp.status();
    let resumed = status == hyper::StatusCode::PARTIAL_CONTENT && have > 0;
    if !status.is_success() && status != hyper::StatusCode::RANGE_NOT_SATISFIABLE {
        return Err(source::failure_from(&shown, resp).await);
    }
    let mut got = 0u64;
    if status == hyper::StatusCode::RANGE_NOT_SATISFIABLE {
        // The partial file is already whole (or the server disagrees): the digest check decides.
    } else {
        if !resumed {
            progress.done.fetch_sub(have, Ordering::Relaxed);
            have = 0;
            hasher = sha2::Sha256::new();
        }
        if let Some(len) = resp
            .headers()
            .get(hyper::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
        {
            let whole = have + len;
            if f.size.is_none() {
                progress.total.fetch_add(whole, Ordering::Relaxed);
            }
            if let Some(max) = opts.max_bytes
                && progress.total.load(Ordering::Relaxed).max(whole) > max
            {
                return Err(Failure::new(
                    Reason::TooLarge,
                    format!(
                        "{shown}: {whole} bytes, more than the model's cache volume holds ({max} bytes, within the tenant's storage quota)"
                    ),
                ));
            }
        }
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(resumed)
            .truncate(!resumed)
            .open(&part)
            .map_err(|e| io_failure("writing the model cache", e))?;
        let mut body = resp.into_body();
        // Written data is flushed to disk in the background every FLUSH_EVERY bytes, so the
        // final fsync (the entry must be on disk before it is marked complete) finds little left.
        let mut flushing: Option<tokio::task::JoinHandle<()>> = None;
        let mut unflushed = 0u64;
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                Failure::new(
                    Reason::Network,
                    format!("{shown}: the download broke off after {} bytes: {e}", have + got),
                )
            })?;
            let Ok(data) = frame.into_data() else { continue };
            hasher.update(&data);
            file.write_all(&data).map_err(|e| io_failure("writing the model cache", e))?;
            got += data.len() as u64;
            unflushed += data.len() as u64;
            progress.done.fetch_add(data.len() as u64, Ordering::Relaxed);
            if unflushed >= FLUSH_EVERY && flushing.as_ref().is_none_or(|f| f.is_finished()) {
                unflushed = 0;
                if let Ok(handle) = file.try_clone() {
                    flushing = Some(tokio::task::spawn_blocking(move || {
                        let _ = handle.sync_data();
                    }));
                }
            }
            if let Some(max) = opts.max_bytes
                && have + got > max
            {
                drop(file);
                let _ = std::fs::remove_file(&part);
                return Err(Failure::new(
                    Reason::TooLarge,
                    format!(
                        "{shown}: more than the model's cache volume holds ({max} bytes, within the tenant's storage quota)"
                    ),
                ));
            }
        }
        if let Some(f) = flushing {
            let _ = f.await;
        }
        file.sync_all().map_err(|e| io_failure("writing the model cache", e))?;
    }
    let size = have + got;
    let digest = crate::hex(&hasher.finalize());
    if let Some(want) = f.size
        && size != want
    {
        return Err(Failure::new(
            Reason::Network,
            format!(
                "{shown}: got {size} bytes, expected {want}; the rest is fetched on the next try"
            ),
        ));
    }
    if let Some(want) = &f.sha256
        && *want != digest
    {
        let _ = std::fs::remove_file(&part);
        return Err(Failure::new(
            Reason::ChecksumMismatch,
            format!(
                "{shown}: file {} has SHA-256 {digest}, but {want} was expected; the download was discarded",
                f.name
            ),
        ));
    }
    std::fs::rename(&part, &target).map_err(|e| io_failure("writing the model cache", e))?;
    Ok((Fetched { name: f.name.clone(), size, sha256: digest, etag: f.etag.clone() }, got))
}

/// `alcove-inference fetch`: runs, then reports a failure in the termination-message file.
/// Answers the exit code.
pub fn main(opts: &Options, termination_log: Option<&Path>) -> i32 {
    let rt =
        match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
            Ok(rt) => rt,
            Err(e) => {
                eprintln!("error: {e}");
                return 1;
            }
        };
    match rt.block_on(run(opts)) {
        Ok(_) => 0,
        Err(f) => {
            let report = Report {
                uri: opts.uri.clone(),
                reason: f.reason,
                permanent: f.reason.permanent(),
                message: f.message.clone(),
            };
            let json = serde_json::to_string(&report).unwrap_or_default();
            eprintln!("{json}");
            if let Some(path) = termination_log {
                let _ = std::fs::write(path, &json);
            }
            if report.permanent { 2 } else { 1 }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    mod properties {
        use std::path::{Component, Path};

        use proptest::prelude::*;

        use super::*;

        proptest! {
            /// A name a hub's listing or a URL gives is used as a path under the revision
            /// directory only when it cannot leave it.
            #[test]
            fn names_taken_as_paths_stay_inside(
                parts in proptest::collection::vec(
                    prop_oneof![
                        Just(".."), Just("."), Just(""), Just("/"), Just("a"), Just("b.gguf"),
                        Just("..a"), Just("~"), Just("\\\\"),
                    ],
                    0..6,
                ),
            ) {
                let name = parts.join("/");
                if safe_relative(&name) {
                    let joined = Path::new("/cache/rev").join(&name);
                    prop_assert!(joined.starts_with("/cache/rev/"), "{name:?}");
                    prop_assert!(
                        Path::new(&name).components().all(|c| matches!(c, Component::Normal(_))),
                        "{name:?}"
                    );
                }
            }
        }
    }
}
