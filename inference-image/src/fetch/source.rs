//! What a URI names: the files to fetch, where each comes from, what each must hash to, and the
//! revision they belong to (the cache keeps one directory per revision).

use http_body_util::BodyExt;
use serde::Deserialize;

use super::client::{Client, Credentials};
use super::{Failure, Format, Options, Reason, failure_for_status};

/// One file of the model.
#[derive(Debug, Clone, PartialEq)]
pub struct Remote {
    /// Path inside the revision directory (the source's own relative path).
    pub name: String,
    pub url: String,
    pub size: Option<u64>,
    /// The SHA-256 it must have (hex): `spec.model.sha256`, or the hub's record.
    pub sha256: Option<String>,
    /// The server's ETag or digest, recorded when there is no SHA-256 to check.
    pub etag: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// A name for the content: the hub's commit, or a digest of the server's ETag or of
    /// `spec.model.sha256`. Safe as a directory name.
    pub revision: String,
    pub files: Vec<Remote>,
    pub credentials: Credentials,
    /// The file or directory (relative to the revision directory) the server loads.
    pub model: String,
}

/// Files of a safetensors model besides the weights.
const SAFETENSORS_FILES: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "model.safetensors.index.json",
];

fn short_digest(text: &str) -> String {
    use sha2::Digest;
    crate::hex(&sha2::Sha256::digest(text.as_bytes())[..8])
}

/// Reads a credential file the platform mounted from the Secret the spec names (absent: none).
fn credential(opts: &Options, key: &str) -> Result<Option<String>, Failure> {
    let Some(dir) = &opts.credentials else { return Ok(None) };
    match std::fs::read_to_string(dir.join(key)) {
        Ok(v) => Ok(Some(v.trim().to_string()).filter(|v| !v.is_empty())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Failure::new(Reason::AuthRefused, format!("reading credential {key}: {e}"))),
    }
}

pub async fn plan(client: &Client, opts: &Options) -> Result<Plan, Failure> {
    let uri = opts.uri.as_str();
    if let Some(rest) = uri.strip_prefix("hf://") {
        return hub_plan(client, opts, rest).await;
    }
    if uri.starts_with("https://") || uri.starts_with("http://") {
        return http_plan(client, opts).await;
    }
    Err(Failure::new(
        Reason::Refused,
        format!("{uri}: unknown scheme; model sources are https://, http:// or hf://"),
    ))
}

/// `https://host/…/file.gguf`: one file. A safetensors model is a directory, which a URL cannot
/// name.
async fn http_plan(client: &Client, opts: &Options) -> Result<Plan, Failure> {
    let uri = opts.uri.as_str();
    if opts.format == Format::Safetensors {
        return Err(Failure::new(
            Reason::Refused,
            format!(
                "{uri}: a safetensors model is a directory (config.json, tokenizer.json, weights); an https:// URI fetches one GGUF file. Use hf://org/repo for a directory"
            ),
        ));
    }
    let parsed: hyper::Uri = uri
        .parse()
        .map_err(|e| Failure::new(Reason::Refused, format!("{uri}: not a URL ({e})")))?;
    let name = parsed
        .path()
        .rsplit('/')
        .next()
        .filter(|n| !n.is_empty() && *n != "." && *n != "..")
        .unwrap_or("model.gguf")
        .to_string();
    let mut credentials =
        Credentials { host: parsed.host().unwrap_or_default().to_string(), ..Default::default() };
    if let Some(line) = credential(opts, "header")? {
        let Some((k, v)) = line.split_once(':') else {
            return Err(Failure::new(
                Reason::AuthRefused,
                "the credentials Secret's `header` must read `Name: value`".to_string(),
            ));
        };
        credentials.headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let (resp, _) = client.get(uri, uri, &credentials, None, true).await?;
    let status = resp.status();
    // Some servers answer HEAD with 405; the download will learn the size instead.
    if !status.is_success() && status != hyper::StatusCode::METHOD_NOT_ALLOWED {
        return Err(failure_for_status(uri, status));
    }
    let header = |h: hyper::header::HeaderName| {
        resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string)
    };
    let size = header(hyper::header::CONTENT_LENGTH)
        .and_then(|l| l.parse::<u64>().ok())
        .filter(|_| status.is_success());
    let etag = header(hyper::header::ETAG).filter(|e| !e.starts_with("W/"));
    let revision = match (&opts.sha256, &etag) {
        (Some(sha), _) => format!("sha256-{}", &sha[..16]),
        (None, Some(etag)) => format!("etag-{}", short_digest(etag)),
        (None, None) => format!(
            "at-{}",
            short_digest(&header(hyper::header::LAST_MODIFIED).unwrap_or_default())
        ),
    };
    Ok(Plan {
        revision,
        files: vec![Remote {
            name: name.clone(),
            url: uri.to_string(),
            size,
            sha256: opts.sha256.clone(),
            etag,
        }],
        credentials,
        model: name,
    })
}

#[derive(Deserialize)]
struct HubRevision {
    sha: String,
    #[serde(default)]
    siblings: Vec<HubFile>,
}

#[derive(Deserialize)]
struct HubFile {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<HubLfs>,
}

#[derive(Deserialize)]
struct HubLfs {
    sha256: String,
    #[serde(default)]
    size: Option<u64>,
}

/// Percent-encodes a repository path for a URL (slashes kept).
fn encode_path(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `hf://org/repo[@revision]` on a Hugging Face–compatible hub: the revision's commit and file
/// list from `/api/models/{repo}/revision/{rev}`, the files from `/{repo}/resolve/{commit}/…`.
async fn hub_plan(client: &Client, opts: &Options, rest: &str) -> Result<Plan, Failure> {
    let uri = opts.uri.as_str();
    let (repo, rev) = rest.split_once('@').unwrap_or((rest, "main"));
    let valid = |s: &str| {
        !s.is_empty()
            && s.split('/').all(|p| !p.is_empty() && p != "." && p != "..")
            && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
    };
    if !valid(repo) || repo.split('/').count() != 2 || !valid(rev) {
        return Err(Failure::new(
            Reason::Refused,
            format!("{uri}: expected hf://org/repo or hf://org/repo@revision"),
        ));
    }
    let hub = opts.hub_endpoint.trim_end_matches('/');
    let hub_uri: hyper::Uri = hub.parse().map_err(|e| {
        Failure::new(Reason::Refused, format!("the platform's model hub endpoint {hub}: {e}"))
    })?;
    let mut credentials =
        Credentials { host: hub_uri.host().unwrap_or_default().to_string(), ..Default::default() };
    if let Some(token) = credential(opts, "token")? {
        credentials.headers.push(("authorization".into(), format!("Bearer {token}")));
    }
    let api = format!("{hub}/api/models/{repo}/revision/{}?blobs=true", encode_path(rev));
    let (resp, _) = client.get(&api, uri, &credentials, None, false).await?;
    let status = resp.status();
    if !status.is_success() {
        return Err(failure_for_status(uri, status));
    }
    let body = http_body_util::Limited::new(resp.into_body(), 16 << 20)
        .collect()
        .await
        .map_err(|e| Failure::new(Reason::Network, format!("{uri}: reading the file list: {e}")))?
        .to_bytes();
    let listing: HubRevision = serde_json::from_slice(&body).map_err(|e| {
        Failure::new(
            Reason::Http,
            format!("{uri}: the hub's file list is not what a hub sends: {e}"),
        )
    })?;
    if !listing.sha.chars().all(|c| c.is_ascii_hexdigit()) || listing.sha.is_empty() {
        return Err(Failure::new(Reason::Http, format!("{uri}: the hub named no commit")));
    }
    let prefix = opts.path.as_deref().unwrap_or_default().trim_matches('/');
    let chosen: Vec<&HubFile> = match opts.format {
        Format::Gguf => {
            let ggufs: Vec<&HubFile> = listing
                .siblings
                .iter()
                .filter(|f| {
                    f.rfilename.ends_with(".gguf") && (prefix.is_empty() || f.rfilename == prefix)
                })
                .collect();
            match ggufs.as_slice() {
                [one] => vec![*one],
                [] if prefix.is_empty() => {
                    return Err(Failure::new(
                        Reason::NotFound,
                        format!("{uri}: the repository has no .gguf file"),
                    ));
                }
                [] => {
                    return Err(Failure::new(
                        Reason::NotFound,
                        format!("{uri}: the repository has no file {prefix}"),
                    ));
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|f| f.rfilename.as_str()).collect();
                    return Err(Failure::new(
                        Reason::Refused,
                        format!(
                            "{uri}: the repository has several .gguf files ({}); set spec.model.path to the one to serve",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        Format::Safetensors => {
            let under = |f: &HubFile| {
                let rel = match prefix {
                    "" => Some(f.rfilename.as_str()),
                    p => f.rfilename.strip_prefix(p).and_then(|r| r.strip_prefix('/')),
                };
                rel.filter(|r| !r.contains('/'))
                    .is_some_and(|r| SAFETENSORS_FILES.contains(&r) || r.ends_with(".safetensors"))
            };
            let files: Vec<&HubFile> = listing.siblings.iter().filter(|f| under(f)).collect();
            let has = |n: &str| files.iter().any(|f| f.rfilename.ends_with(n));
            for needed in ["config.json", "tokenizer.json", ".safetensors"] {
                if !has(needed) {
                    let at =
                        if prefix.is_empty() { String::new() } else { format!(" under {prefix}/") };
                    return Err(Failure::new(
                        Reason::NotFound,
                        format!("{uri}: no {needed} file{at} in the repository"),
                    ));
                }
            }
            files
        }
    };
    let single_weights = chosen
        .iter()
        .filter(|f| f.rfilename.ends_with(".gguf") || f.rfilename.ends_with(".safetensors"))
        .count()
        == 1;
    if opts.sha256.is_some() && !single_weights {
        return Err(Failure::new(
            Reason::Refused,
            format!(
                "{uri}: spec.model.sha256 names one file, but the model has several weight files; leave it unset (each file is checked against the hub's digest)"
            ),
        ));
    }
    let files = chosen
        .into_iter()
        .map(|f| {
            let weights = f.rfilename.ends_with(".gguf") || f.rfilename.ends_with(".safetensors");
            let sha256 = match (&opts.sha256, &f.lfs) {
                (Some(s), _) if weights => Some(s.clone()),
                (_, Some(lfs)) => Some(lfs.sha256.to_ascii_lowercase()),
                _ => None,
            };
            Remote {
                name: f.rfilename.clone(),
                url: format!("{hub}/{repo}/resolve/{}/{}", listing.sha, encode_path(&f.rfilename)),
                size: f.lfs.as_ref().and_then(|l| l.size).or(f.size),
                sha256,
                etag: None,
            }
        })
        .collect::<Vec<_>>();
    let model = match opts.format {
        Format::Gguf => files[0].name.clone(),
        Format::Safetensors => prefix.to_string(),
    };
    Ok(Plan { revision: listing.sha.to_ascii_lowercase(), files, credentials, model })
}
