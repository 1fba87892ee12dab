//! `alcove-inference index`: documents → chunks → vectors, in one index file that is replaced
//! atomically, so a server reading it never sees half an index and a removed document leaves no
//! copy behind.
//!
//! The file (`index.json`) holds the manifest (embedding model, chunking, one entry per source
//! document with its sha256) and every chunk with its text and vector. Re-indexing reuses the
//! vectors of documents whose hash, model and chunking are unchanged.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::Digest;

use crate::model::Embedder;

pub const INDEX_FILE: &str = "index.json";
pub const FORMAT: u32 = 1;

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Chunking {
    /// Longest chunk, in characters.
    pub chunk_chars: usize,
    /// Characters of the previous chunk repeated at the start of the next.
    pub overlap_chars: usize,
}

impl Default for Chunking {
    fn default() -> Self {
        Self { chunk_chars: 800, overlap_chars: 100 }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct EmbeddingStamp {
    pub id: String,
    pub fingerprint: String,
    pub dims: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct DocumentEntry {
    /// Path relative to the documents directory, `/`-separated.
    pub id: String,
    pub sha256: String,
    pub bytes: u64,
    pub chunks: usize,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ChunkEntry {
    pub document: String,
    /// Position of the chunk within its document, from 0.
    pub index: usize,
    pub text: String,
    /// Little-endian f32s, base64.
    pub vector: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Index {
    pub format: u32,
    pub name: String,
    pub embedding_model: EmbeddingStamp,
    pub chunking: Chunking,
    /// Unix seconds.
    pub indexed_at: u64,
    /// sha256 over every (document id, document sha256): changes exactly when the sources do.
    pub source_hash: String,
    pub documents: Vec<DocumentEntry>,
    pub chunks: Vec<ChunkEntry>,
}

impl Index {
    pub fn read(dir: &Path) -> anyhow::Result<Self> {
        let path = dir.join(INDEX_FILE);
        let bytes = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
        let index: Index = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not an index", path.display()))?;
        if index.format != FORMAT {
            bail!(
                "{}: index format {} (this server reads {FORMAT}); re-run index",
                path.display(),
                index.format
            );
        }
        Ok(index)
    }
}

pub fn encode_vector(v: &[f32]) -> String {
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

pub fn decode_vector(s: &str, dims: usize) -> anyhow::Result<Vec<f32>> {
    let bytes = base64::engine::general_purpose::STANDARD.decode(s)?;
    if bytes.len() != dims * 4 {
        bail!("vector of {} bytes where {dims} dimensions need {}", bytes.len(), dims * 4);
    }
    Ok(bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
}

/// What one run of `index` did; printed as JSON (and written to `--summary-file`, e.g. a pod's
/// termination-message path, so a controller can read it without parsing logs).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Summary {
    pub documents: usize,
    pub chunks: usize,
    /// Documents whose vectors were reused from the previous index.
    pub reused: usize,
    /// Documents chunked and embedded in this run.
    pub embedded: usize,
    pub removed: usize,
    pub source_hash: String,
    pub indexed_at: u64,
}

pub struct Document {
    pub id: String,
    pub text: String,
    pub sha256: String,
}

impl Document {
    pub fn new(id: String, text: String) -> Document {
        let sha256 = crate::hex(&sha2::Sha256::digest(text.as_bytes()));
        Document { id, text, sha256 }
    }
}

/// Largest document `fetch` accepts.
pub const MAX_FETCH_BYTES: usize = 16 << 20;

/// Fetches an HTTP(S) URL as the document `<name>/<last path segment>` (`index` when the path
/// ends in `/`). Follows up to 5 redirects; a non-2xx answer, a body over 16 MiB or one that is
/// not UTF-8 text is an error naming the URL.
pub async fn fetch(name: &str, url: &str) -> anyhow::Result<Document> {
    use http_body_util::{BodyExt, Empty, Limited};
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_native_roots()
        .context("loading the system's CA certificates")?
        .https_or_http()
        .enable_http1()
        .build();
    let client: hyper_util::client::legacy::Client<_, Empty<bytes::Bytes>> =
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build(https);
    let mut uri: hyper::Uri = url.parse().with_context(|| format!("{url}: not a URL"))?;
    for _ in 0..=5 {
        let req = hyper::Request::get(uri.clone())
            .header("user-agent", "alcove-index")
            .body(Empty::new())?;
        let resp = tokio::time::timeout(std::time::Duration::from_secs(60), client.request(req))
            .await
            .with_context(|| format!("{url}: no answer within 60 s"))?
            .with_context(|| format!("fetching {url}"))?;
        let status = resp.status();
        if status.is_redirection()
            && let Some(loc) =
                resp.headers().get(hyper::header::LOCATION).and_then(|l| l.to_str().ok())
        {
            uri = crate::fetch::client::resolve(&uri, loc)
                .map_err(|e| anyhow::anyhow!("{url}: bad redirect to {loc}: {e}"))?;
            continue;
        }
        if !status.is_success() {
            bail!("fetching {url}: HTTP {status}");
        }
        let body = Limited::new(resp.into_body(), MAX_FETCH_BYTES)
            .collect()
            .await
            .map_err(|e| anyhow::anyhow!("reading {url}: {e}"))?
            .to_bytes();
        if body.contains(&0) {
            bail!("{url}: binary content; documents are text");
        }
        let text = String::from_utf8(body.to_vec())
            .map_err(|_| anyhow::anyhow!("{url}: not UTF-8 text"))?;
        let last = uri.path().rsplit('/').next().filter(|s| !s.is_empty()).unwrap_or("index");
        return Ok(Document::new(format!("{name}/{last}"), text));
    }
    bail!("{url}: more than 5 redirects")
}

/// Every text document under `dir`. Names starting with `.` are skipped: Kubernetes ConfigMap
/// and Secret volumes keep their bookkeeping (`..data`, timestamped copies) under such names.
pub fn read_documents(dir: &Path) -> anyhow::Result<Vec<Document>> {
    fn walk(root: &Path, dir: &Path, out: &mut Vec<Document>) -> anyhow::Result<()> {
        for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry?;
            let name = entry.file_name();
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let path = entry.path();
            let meta = std::fs::metadata(&path)?; // follows the symlinks ConfigMap volumes use
            if meta.is_dir() {
                walk(root, &path, out)?;
                continue;
            }
            let bytes = std::fs::read(&path)?;
            let id = path
                .strip_prefix(root)
                .unwrap_or(&path)
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            if bytes.contains(&0) {
                tracing::warn!(document = %id, "skipped: binary file");
                continue;
            }
            let Ok(text) = String::from_utf8(bytes) else {
                tracing::warn!(document = %id, "skipped: not UTF-8 text");
                continue;
            };
            out.push(Document::new(id, text));
        }
        Ok(())
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out)?;
    out.sort_by(|a, b| a.id.cmp(&b.id));
    Ok(out)
}

pub fn source_hash<'a>(docs: impl Iterator<Item = (&'a str, &'a str)>) -> String {
    let mut h = sha2::Sha256::new();
    for (id, sha) in docs {
        h.update(id.as_bytes());
        h.update([0]);
        h.update(sha.as_bytes());
        h.update([0]);
    }
    crate::hex(&h.finalize())
}

/// Splits `text` into chunks of at most `chunk_chars` characters, breaking after a sentence or
/// paragraph where one falls in the second half of a chunk, else between words; each chunk after
/// the first repeats up to `overlap_chars` of its predecessor's closing words.
pub fn chunk(text: &str, chunking: Chunking) -> Vec<String> {
    let size = chunking.chunk_chars.max(1);
    let overlap = chunking.overlap_chars.min(size / 2);
    // Words with the whitespace that follows them; words longer than a chunk are cut.
    let mut words: Vec<String> = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space {
            words.push(std::mem::take(&mut current));
            in_space = false;
        }
        current.push(c);
    }
    if !current.is_empty() {
        words.push(current);
    }
    let words: Vec<String> = words
        .into_iter()
        .flat_map(|w| {
            let chars: Vec<char> = w.chars().collect();
            chars.chunks(size).map(|c| c.iter().collect::<String>()).collect::<Vec<_>>()
        })
        .collect();
    let len = |w: &String| w.chars().count();
    let ends_sentence = |w: &String| {
        let t = w.trim_end();
        w.contains("\n")
            || t.ends_with('.')
            || t.ends_with('!')
            || t.ends_with('?')
            || t.ends_with(':')
    };

    let mut chunks = Vec::new();
    let mut start = 0;
    while start < words.len() {
        let mut end = start;
        let mut chars = 0;
        while end < words.len() && chars + len(&words[end].trim_end().to_string()) <= size {
            chars += len(&words[end]);
            end += 1;
        }
        if end == start {
            end = start + 1; // a single cut word always fits; defensive
        }
        if end < words.len() {
            // Prefer a sentence boundary in the second half.
            let mut acc = 0;
            let mut best = None;
            for (i, w) in words[start..end].iter().enumerate() {
                acc += len(w);
                if ends_sentence(w) && acc * 2 >= size {
                    best = Some(start + i + 1);
                }
            }
            if let Some(b) = best {
                end = b;
            }
        }
        let text: String = words[start..end].concat();
        let text = text.trim().to_string();
        if !text.is_empty() {
            chunks.push(text);
        }
        if end >= words.len() {
            break;
        }
        // Step back over up to `overlap` characters of whole words.
        let mut next = end;
        let mut back = 0;
        while next > start + 1 && back + len(&words[next - 1]) <= overlap {
            back += len(&words[next - 1]);
            next -= 1;
        }
        start = next;
    }
    chunks
}

pub struct Options {
    /// The documents, read with `read_documents` and `fetch`; ids must be unique.
    pub docs: Vec<Document>,
    pub out: PathBuf,
    pub name: Option<String>,
    pub chunking: Chunking,
}

/// Builds (or rebuilds) the index in `opts.out` from `opts.docs`. The new index replaces the old
/// file whole, so a removed document's chunks leave the volume with it.
pub fn build(embedder: &Embedder, opts: &Options) -> anyhow::Result<Summary> {
    std::fs::create_dir_all(&opts.out)
        .with_context(|| format!("creating {}", opts.out.display()))?;
    crate::remove_stale_temporaries(&opts.out);
    let mut docs: Vec<&Document> = opts.docs.iter().collect();
    docs.sort_by(|a, b| a.id.cmp(&b.id));
    if let Some(w) = docs.windows(2).find(|w| w[0].id == w[1].id) {
        bail!("two documents named {}", w[0].id);
    }
    let stamp = EmbeddingStamp {
        id: embedder.id.clone(),
        fingerprint: embedder.fingerprint.clone(),
        dims: embedder.dims,
    };

    // Vectors of unchanged documents from the previous index, when it used the same model and chunking.
    let previous = Index::read(&opts.out).ok();
    let mut reusable: HashMap<(String, String), Vec<ChunkEntry>> = HashMap::new();
    let mut previous_ids: Vec<String> = Vec::new();
    if let Some(prev) = previous {
        previous_ids = prev.documents.iter().map(|d| d.id.clone()).collect();
        if prev.embedding_model == stamp && prev.chunking == opts.chunking {
            let shas: HashMap<&str, &str> =
                prev.documents.iter().map(|d| (d.id.as_str(), d.sha256.as_str())).collect();
            for c in prev.chunks {
                if let Some(sha) = shas.get(c.document.as_str()) {
                    reusable.entry((c.document.clone(), sha.to_string())).or_default().push(c);
                }
            }
        }
    }

    let mut documents = Vec::new();
    let mut chunks = Vec::new();
    let (mut reused, mut embedded) = (0, 0);
    for doc in docs.iter().copied() {
        let doc_chunks = match reusable.remove(&(doc.id.clone(), doc.sha256.clone())) {
            Some(c) => {
                reused += 1;
                c
            }
            None => {
                embedded += 1;
                let texts = chunk(&doc.text, opts.chunking);
                let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
                let vectors =
                    embedder.embed(&refs).with_context(|| format!("embedding {}", doc.id))?;
                texts
                    .into_iter()
                    .zip(vectors)
                    .enumerate()
                    .map(|(index, (text, v))| ChunkEntry {
                        document: doc.id.clone(),
                        index,
                        text,
                        vector: encode_vector(&v),
                    })
                    .collect()
            }
        };
        documents.push(DocumentEntry {
            id: doc.id.clone(),
            sha256: doc.sha256.clone(),
            bytes: doc.text.len() as u64,
            chunks: doc_chunks.len(),
        });
        chunks.extend(doc_chunks);
    }
    let removed = previous_ids.iter().filter(|id| !docs.iter().any(|d| &d.id == *id)).count();
    let name = opts.name.clone().unwrap_or_else(|| crate::model::default_id(&opts.out));
    let index = Index {
        format: FORMAT,
        name,
        embedding_model: stamp,
        chunking: opts.chunking,
        indexed_at: crate::unix_now(),
        source_hash: source_hash(docs.iter().map(|d| (d.id.as_str(), d.sha256.as_str()))),
        documents,
        chunks,
    };
    crate::write_atomically(&opts.out.join(INDEX_FILE), &serde_json::to_vec(&index)?)
        .with_context(|| format!("writing {}", opts.out.join(INDEX_FILE).display()))?;
    Ok(Summary {
        documents: index.documents.len(),
        chunks: index.chunks.len(),
        reused,
        embedded,
        removed,
        source_hash: index.source_hash,
        indexed_at: index.indexed_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunking(size: usize, overlap: usize) -> Chunking {
        Chunking { chunk_chars: size, overlap_chars: overlap }
    }

    #[test]
    fn short_text_is_one_chunk() {
        assert_eq!(chunk("Hello there.  ", chunking(100, 10)), vec!["Hello there."]);
        assert!(chunk("   ", chunking(100, 10)).is_empty());
    }

    #[test]
    fn chunks_respect_the_size_and_cover_every_word() {
        let text = (0..200).map(|i| format!("word{i}")).collect::<Vec<_>>().join(" ");
        let chunks = chunk(&text, chunking(60, 0));
        assert!(chunks.iter().all(|c| c.chars().count() <= 60), "{chunks:?}");
        let rejoined = chunks.join(" ");
        assert_eq!(rejoined, text);
    }

    #[test]
    fn chunks_prefer_sentence_ends_and_overlap() {
        let text = "The first sentence is here. The second one follows it closely. And a third one ends the text.";
        let chunks = chunk(text, chunking(70, 20));
        assert_eq!(chunks[0], "The first sentence is here. The second one follows it closely.");
        assert!(
            chunks[1].starts_with("follows it closely."),
            "overlap repeats the closing words: {chunks:?}"
        );
        assert!(chunks.last().unwrap().ends_with("ends the text."));
    }

    #[test]
    fn a_giant_word_is_cut() {
        let text = "x".repeat(250);
        let chunks = chunk(&text, chunking(100, 10));
        assert_eq!(chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![100, 100, 50]);
    }

    #[test]
    fn multibyte_text_is_cut_on_characters() {
        let text = "é".repeat(30);
        let chunks = chunk(&text, chunking(7, 0));
        assert!(chunks.iter().all(|c| c.chars().count() <= 7));
        assert_eq!(chunks.concat(), text);
    }

    #[test]
    fn vectors_round_trip() {
        let v = vec![0.5f32, -1.25, 3.0];
        assert_eq!(decode_vector(&encode_vector(&v), 3).unwrap(), v);
        assert!(decode_vector(&encode_vector(&v), 4).is_err());
    }

    #[test]
    fn documents_skip_kubernetes_volume_bookkeeping() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("..2026_11_22")).unwrap();
        std::fs::write(dir.path().join("..2026_11_22/a.md"), "alpha").unwrap();
        std::os::unix::fs::symlink("..2026_11_22", dir.path().join("..data")).unwrap();
        std::os::unix::fs::symlink("..data/a.md", dir.path().join("a.md")).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b.txt"), "beta").unwrap();
        std::fs::write(dir.path().join("bin"), [0u8, 1, 2]).unwrap();
        let docs = read_documents(dir.path()).unwrap();
        assert_eq!(
            docs.iter().map(|d| d.id.as_str()).collect::<Vec<_>>(),
            vec!["a.md", "sub/b.txt"]
        );
        assert_eq!(docs[0].text, "alpha");
    }
}
