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
    if let Some(rest) = uri.strip_prefix("s3://") {
        return s3_plan(client, opts, rest).await;
    }
    if uri.starts_with("https://") || uri.starts_with("http://") {
        return http_plan(client, opts).await;
    }
    Err(Failure::new(
        Reason::Refused,
        format!("{uri}: unknown scheme; model sources are https://, http://, s3:// or hf://"),
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
    let mut credentials = Credentials::for_origin_of(&parsed);
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

/// A file a listing (the hub's, a bucket's) names.
struct Listed {
    /// Relative to the repository or the prefix.
    name: String,
    size: Option<u64>,
    sha256: Option<String>,
    etag: Option<String>,
}

/// The chosen files, each with the SHA-256 it must have (when known).
type Chosen<'a> = Vec<(&'a Listed, Option<String>)>;

/// The files of a listing that make the model, each with the SHA-256 it must have, and the link
/// target the server loads: the one `.gguf` (or the one `spec.model.path` names), or a
/// safetensors directory's config, tokenizer and weights (under `spec.model.path` when set).
fn choose<'a>(opts: &Options, listed: &'a [Listed]) -> Result<(Chosen<'a>, String), Failure> {
    let uri = opts.uri.as_str();
    let prefix = opts.path.as_deref().unwrap_or_default().trim_matches('/');
    let chosen: Vec<&Listed> = match opts.format {
        Format::Gguf => {
            let ggufs: Vec<&Listed> = listed
                .iter()
                .filter(|f| f.name.ends_with(".gguf") && (prefix.is_empty() || f.name == prefix))
                .collect();
            match ggufs.as_slice() {
                [one] => vec![*one],
                [] if prefix.is_empty() => {
                    return Err(Failure::new(
                        Reason::NotFound,
                        format!("{uri}: no .gguf file there"),
                    ));
                }
                [] => {
                    return Err(Failure::new(
                        Reason::NotFound,
                        format!("{uri}: no file {prefix} there"),
                    ));
                }
                many => {
                    let names: Vec<&str> = many.iter().map(|f| f.name.as_str()).collect();
                    return Err(Failure::new(
                        Reason::Refused,
                        format!(
                            "{uri}: several .gguf files ({}); set spec.model.path to the one to serve",
                            names.join(", ")
                        ),
                    ));
                }
            }
        }
        Format::Safetensors => {
            let under = |f: &Listed| {
                let rel = match prefix {
                    "" => Some(f.name.as_str()),
                    p => f.name.strip_prefix(p).and_then(|r| r.strip_prefix('/')),
                };
                rel.filter(|r| !r.contains('/'))
                    .is_some_and(|r| SAFETENSORS_FILES.contains(&r) || r.ends_with(".safetensors"))
            };
            let files: Vec<&Listed> = listed.iter().filter(|f| under(f)).collect();
            let has = |n: &str| files.iter().any(|f| f.name.ends_with(n));
            for needed in ["config.json", "tokenizer.json", ".safetensors"] {
                if !has(needed) {
                    let at =
                        if prefix.is_empty() { String::new() } else { format!(" under {prefix}/") };
                    return Err(Failure::new(
                        Reason::NotFound,
                        format!("{uri}: no {needed} file{at}"),
                    ));
                }
            }
            files
        }
    };
    let weights = |f: &Listed| f.name.ends_with(".gguf") || f.name.ends_with(".safetensors");
    if opts.sha256.is_some() && chosen.iter().filter(|f| weights(f)).count() != 1 {
        return Err(Failure::new(
            Reason::Refused,
            format!(
                "{uri}: spec.model.sha256 names one file, but the model has several weight files; leave it unset (each file is checked against its listed digest)"
            ),
        ));
    }
    let model = match opts.format {
        Format::Gguf => chosen[0].name.clone(),
        Format::Safetensors => prefix.to_string(),
    };
    let with_digest = chosen
        .into_iter()
        .map(|f| {
            let want = match &opts.sha256 {
                Some(s) if weights(f) => Some(s.clone()),
                _ => f.sha256.clone(),
            };
            (f, want)
        })
        .collect();
    Ok((with_digest, model))
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
    let mut credentials = Credentials::for_origin_of(&hub_uri);
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
    let listed: Vec<Listed> = listing
        .siblings
        .iter()
        .map(|f| Listed {
            name: f.rfilename.clone(),
            size: f.lfs.as_ref().and_then(|l| l.size).or(f.size),
            sha256: f.lfs.as_ref().map(|l| l.sha256.to_ascii_lowercase()),
            etag: None,
        })
        .collect();
    let (chosen, model) = choose(opts, &listed)?;
    let files = chosen
        .into_iter()
        .map(|(f, sha256)| Remote {
            name: f.name.clone(),
            url: format!("{hub}/{repo}/resolve/{}/{}", listing.sha, encode_path(&f.name)),
            size: f.size,
            sha256,
            etag: None,
        })
        .collect();
    Ok(Plan { revision: listing.sha.to_ascii_lowercase(), files, credentials, model })
}

/// How long a signed S3 request stays valid (a download that outlives it continues; a resumed
/// one signs again).
const S3_SIGNED_FOR: std::time::Duration = std::time::Duration::from_secs(3600);

/// The `<Code>` of an S3 error body, if it has one.
fn s3_error_code(body: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(body).ok()?;
    let start = text.find("<Code>")? + "<Code>".len();
    let end = text[start..].find("</Code>")? + start;
    Some(text[start..end].to_string()).filter(|c| c.len() < 64 && !c.is_empty())
}

/// The failure an answer means: its S3 error code when the body has one (S3-compatible stores
/// say why in XML), else its status.
pub async fn failure_from(shown: &str, resp: hyper::Response<hyper::body::Incoming>) -> Failure {
    let status = resp.status();
    let body = http_body_util::Limited::new(resp.into_body(), 64 << 10)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let Some(code) = s3_error_code(&body) else { return failure_for_status(shown, status) };
    let reason = match code.as_str() {
        "NoSuchKey" | "NoSuchBucket" => Reason::NotFound,
        "AccessDenied"
        | "InvalidAccessKeyId"
        | "SignatureDoesNotMatch"
        | "ExpiredToken"
        | "InvalidToken" => Reason::AuthRefused,
        _ if status.is_server_error() || status.as_u16() == 429 => Reason::Http,
        _ => Reason::Refused,
    };
    Failure::new(reason, format!("{shown}: S3 error {code} (HTTP {status})"))
}

/// `s3://bucket/key.gguf` (one object) or `s3://bucket/prefix/` (a directory of objects) on the
/// S3-compatible store the platform configures; requests are signed (SigV4, by `rusty-s3`)
/// with the credentials Secret's `accessKeyId` / `secretAccessKey` (/ `sessionToken`), or sent
/// unsigned to a public bucket when it has none.
async fn s3_plan(client: &Client, opts: &Options, rest: &str) -> Result<Plan, Failure> {
    use rusty_s3::S3Action;
    let uri = opts.uri.as_str();
    let (bucket_name, key) = rest.split_once('/').unwrap_or((rest, ""));
    let bucket_ok = (3..=63).contains(&bucket_name.len())
        && bucket_name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || ".-".contains(c));
    if !bucket_ok || key.split('/').any(|p| p == ".." || p == ".") {
        return Err(Failure::new(
            Reason::Refused,
            format!("{uri}: expected s3://bucket/key.gguf or s3://bucket/prefix/"),
        ));
    }
    let endpoint: url::Url = opts.s3.endpoint.parse().map_err(|e| {
        Failure::new(
            Reason::Refused,
            format!("the platform's S3 endpoint {}: {e}", opts.s3.endpoint),
        )
    })?;
    let style =
        if opts.s3.path_style { rusty_s3::UrlStyle::Path } else { rusty_s3::UrlStyle::VirtualHost };
    let bucket =
        rusty_s3::Bucket::new(endpoint, style, bucket_name.to_string(), opts.s3.region.clone())
            .map_err(|e| Failure::new(Reason::Refused, format!("{uri}: {e}")))?;
    let creds = match (credential(opts, "accessKeyId")?, credential(opts, "secretAccessKey")?) {
        (Some(k), Some(s)) => Some(match credential(opts, "sessionToken")? {
            Some(t) => rusty_s3::Credentials::new_with_token(k, s, t),
            None => rusty_s3::Credentials::new(k, s),
        }),
        (None, None) => None,
        _ => {
            return Err(Failure::new(
                Reason::AuthRefused,
                "the credentials Secret needs both accessKeyId and secretAccessKey".to_string(),
            ));
        }
    };
    let none = Credentials::default();
    let header = |resp: &hyper::Response<hyper::body::Incoming>, h: hyper::header::HeaderName| {
        resp.headers().get(h).and_then(|v| v.to_str().ok()).map(str::to_string)
    };
    let single = !key.is_empty() && !key.ends_with('/');
    let (listed, prefix): (Vec<Listed>, String) = if single {
        let head = bucket.head_object(creds.as_ref(), key).sign(S3_SIGNED_FOR);
        let (resp, _) = client.get(head.as_str(), uri, &none, None, true).await?;
        if !resp.status().is_success() {
            return Err(failure_from(uri, resp).await);
        }
        let name = key.rsplit('/').next().unwrap_or(key).to_string();
        let size = header(&resp, hyper::header::CONTENT_LENGTH).and_then(|l| l.parse().ok());
        let etag = header(&resp, hyper::header::ETAG);
        let dir = key[..key.len() - name.len()].to_string();
        (vec![Listed { name, size, sha256: None, etag }], dir)
    } else {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut list = bucket.list_objects_v2(creds.as_ref());
            if !key.is_empty() {
                list.with_prefix(key);
            }
            if let Some(t) = &token {
                list.with_continuation_token(t.as_str());
            }
            let url = list.sign(S3_SIGNED_FOR);
            let (resp, _) = client.get(url.as_str(), uri, &none, None, false).await?;
            if !resp.status().is_success() {
                return Err(failure_from(uri, resp).await);
            }
            let body = http_body_util::Limited::new(resp.into_body(), 16 << 20)
                .collect()
                .await
                .map_err(|e| {
                    Failure::new(Reason::Network, format!("{uri}: reading the listing: {e}"))
                })?
                .to_bytes();
            let page = rusty_s3::actions::ListObjectsV2::parse_response(&body).map_err(|e| {
                Failure::new(Reason::Http, format!("{uri}: the store's listing is not S3's: {e}"))
            })?;
            for o in page.contents {
                if let Some(rel) = o.key.strip_prefix(key).filter(|r| !r.is_empty()) {
                    out.push(Listed {
                        name: rel.to_string(),
                        size: Some(o.size),
                        sha256: None,
                        etag: Some(o.etag),
                    });
                }
            }
            match page.next_continuation_token {
                Some(t) if out.len() < 100_000 => token = Some(t),
                _ => break,
            }
        }
        if out.is_empty() {
            return Err(Failure::new(
                Reason::NotFound,
                format!("{uri}: no object under this prefix"),
            ));
        }
        (out, key.to_string())
    };
    let (chosen, model) = choose(opts, &listed)?;
    let mut tags: Vec<String> = Vec::new();
    let mut files = Vec::new();
    for (f, sha256) in chosen {
        let object = format!("{prefix}{}", f.name);
        let url = bucket.get_object(creds.as_ref(), &object).sign(S3_SIGNED_FOR);
        tags.push(format!("{}={}", f.name, f.etag.clone().unwrap_or_default()));
        files.push(Remote {
            name: f.name.clone(),
            url: url.to_string(),
            size: f.size,
            sha256,
            etag: f.etag.clone(),
        });
    }
    let revision = match &opts.sha256 {
        Some(sha) => format!("sha256-{}", &sha[..16]),
        None => format!("etag-{}", short_digest(&tags.join("\n"))),
    };
    Ok(Plan { revision, files, credentials: Credentials::default(), model })
}
