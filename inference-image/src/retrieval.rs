//! Knowledge-base retrieval for `serve --kb DIR`: the top-k chunks by cosine similarity to the
//! last user message, across every attached index. An index re-written while the server runs
//! (the knowledge base was re-indexed) is picked up at the next request.

use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::bail;
use serde::Serialize;

use crate::index::{INDEX_FILE, Index, decode_vector};
use crate::model::Embedder;

/// Where a retrieved chunk came from; reported in responses as `sources`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Source {
    pub knowledge_base: String,
    pub document: String,
    pub chunk: usize,
    pub score: f32,
}

#[derive(Debug, Clone)]
pub struct Hit {
    pub source: Source,
    pub text: String,
}

struct Loaded {
    stamp: (SystemTime, u64, u64),
    name: String,
    dims: usize,
    chunks: Vec<(String, usize, String)>,
    /// Row-major, one unit vector per chunk.
    vectors: Vec<f32>,
}

struct Kb {
    dir: PathBuf,
    loaded: Option<Loaded>,
}

pub struct Library {
    kbs: Vec<Kb>,
    pub top_k: usize,
}

fn stamp(path: &Path) -> Option<(SystemTime, u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len(), m.ino()))
}

impl Library {
    /// Opens every index directory. An index built with another embedding model is refused; a
    /// directory not indexed yet is accepted and read once its index appears.
    pub fn open(dirs: &[PathBuf], embedder: &Embedder, top_k: usize) -> anyhow::Result<Self> {
        let mut lib =
            Self { kbs: dirs.iter().map(|d| Kb { dir: d.clone(), loaded: None }).collect(), top_k };
        for kb in &mut lib.kbs {
            if !kb.dir.is_dir() {
                bail!("--kb {}: no such directory", kb.dir.display());
            }
            if kb.dir.join(INDEX_FILE).exists() {
                refresh(kb, embedder)?;
            } else {
                tracing::warn!(kb = %kb.dir.display(), "no index yet; retrieval starts when one is written");
            }
        }
        Ok(lib)
    }

    pub fn is_empty(&self) -> bool {
        self.kbs.is_empty()
    }

    /// (name, documents-or-chunks) of each attached index, for logs.
    pub fn describe(&self) -> Vec<(String, usize)> {
        self.kbs
            .iter()
            .filter_map(|kb| kb.loaded.as_ref().map(|l| (l.name.clone(), l.chunks.len())))
            .collect()
    }

    /// The `top_k` best chunks for `query` over all indexes, best first.
    pub fn search(&mut self, embedder: &Embedder, query: &str) -> anyhow::Result<Vec<Hit>> {
        for kb in &mut self.kbs {
            if let Err(e) = refresh(kb, embedder) {
                // Keep serving the previous index; the error says what to fix.
                tracing::error!(kb = %kb.dir.display(), error = %e, "index not reloaded");
            }
        }
        if self.kbs.iter().all(|kb| kb.loaded.as_ref().is_none_or(|l| l.chunks.is_empty())) {
            return Ok(Vec::new());
        }
        let q = embedder.embed(&[query])?.remove(0);
        let mut hits: Vec<(f32, &Loaded, usize)> = Vec::new();
        for l in self.kbs.iter().filter_map(|kb| kb.loaded.as_ref()) {
            for (i, v) in l.vectors.chunks_exact(l.dims).enumerate() {
                let score = v.iter().zip(&q).map(|(a, b)| a * b).sum::<f32>();
                hits.push((score, l, i));
            }
        }
        hits.sort_by(|a, b| b.0.total_cmp(&a.0));
        Ok(hits
            .into_iter()
            .take(self.top_k)
            .map(|(score, l, i)| {
                let (doc, chunk, text) = &l.chunks[i];
                Hit {
                    source: Source {
                        knowledge_base: l.name.clone(),
                        document: doc.clone(),
                        chunk: *chunk,
                        score,
                    },
                    text: text.clone(),
                }
            })
            .collect())
    }
}

fn refresh(kb: &mut Kb, embedder: &Embedder) -> anyhow::Result<()> {
    let path = kb.dir.join(INDEX_FILE);
    let Some(now) = stamp(&path) else {
        kb.loaded = None; // the index was removed
        return Ok(());
    };
    if kb.loaded.as_ref().is_some_and(|l| l.stamp == now) {
        return Ok(());
    }
    let index = Index::read(&kb.dir)?;
    if index.embedding_model.fingerprint != embedder.fingerprint
        || index.embedding_model.dims != embedder.dims
    {
        bail!(
            "{} was built with embedding model {:?} ({} dimensions, fingerprint {}…); this server embeds with {:?} ({} dimensions, fingerprint {}…): re-index with the same model",
            path.display(),
            index.embedding_model.id,
            index.embedding_model.dims,
            &index.embedding_model.fingerprint.get(..12).unwrap_or_default(),
            embedder.id,
            embedder.dims,
            &embedder.fingerprint[..12],
        );
    }
    let mut vectors = Vec::with_capacity(index.chunks.len() * index.embedding_model.dims);
    let mut chunks = Vec::with_capacity(index.chunks.len());
    for c in index.chunks {
        vectors.extend(decode_vector(&c.vector, index.embedding_model.dims)?);
        chunks.push((c.document, c.index, c.text));
    }
    tracing::info!(kb = %index.name, documents = index.documents.len(), chunks = chunks.len(), "knowledge base index loaded");
    kb.loaded = Some(Loaded {
        stamp: now,
        name: index.name,
        dims: index.embedding_model.dims,
        chunks,
        vectors,
    });
    Ok(())
}
