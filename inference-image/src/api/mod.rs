//! `alcove-inference serve`: the OpenAI-compatible HTTP API.
//!
//! The listener opens before the models load, so liveness probes pass during a long load;
//! `/readyz` turns 200 once they are loaded, and `/v1/*` answers 503 until then.

mod chat;
pub mod error;
mod other;
pub mod types;

use std::collections::HashMap;
use std::future::IntoFuture;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use anyhow::Context as _;
use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use sha2::Digest;
use subtle::ConstantTimeEq;

use crate::engine::{Engine, Models};
use crate::history::History;
use crate::metrics::Metrics;
use crate::model::PrefixCache;
use crate::model::{self, ChatModel, Embedder, ModelFiles, Vocab};
use crate::retrieval::Library;
pub use error::ApiError;

#[derive(Debug, Clone)]
pub struct ServeConfig {
    pub model: PathBuf,
    pub model_id: Option<String>,
    pub embedding_model: Option<PathBuf>,
    pub embedding_model_id: Option<String>,
    pub host: String,
    pub port: u16,
    pub api_key_file: PathBuf,
    pub kb: Vec<PathBuf>,
    pub kb_top_k: usize,
    pub history: Option<PathBuf>,
    pub history_key_file: Option<PathBuf>,
    pub system_prompt_file: Option<PathBuf>,
    pub max_queue: usize,
    pub max_body_bytes: usize,
    /// The instance's cap on generated tokens per request.
    pub max_tokens: Option<usize>,
    /// The instance's context window, when smaller than the model's.
    pub context_length: Option<usize>,
    pub prefix_cache_bytes: usize,
    /// Generations batched together (see `engine`).
    pub parallel: usize,
}

/// A small file re-read when it changes (a rotated key, an edited system prompt: mounted
/// Secrets and ConfigMaps are swapped in place by the kubelet).
pub struct WatchedFile {
    path: PathBuf,
    cached: Mutex<Option<(FileStamp, Arc<Vec<u8>>)>>,
}

/// Modification time, length and inode: changes whenever the file is rewritten or replaced.
type FileStamp = (SystemTime, u64, u64);

impl WatchedFile {
    pub fn new(path: &Path) -> anyhow::Result<Self> {
        let f = Self { path: path.to_path_buf(), cached: Mutex::new(None) };
        f.read().with_context(|| format!("reading {}", path.display()))?;
        Ok(f)
    }

    pub fn read(&self) -> std::io::Result<Arc<Vec<u8>>> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(&self.path)?;
        let stamp = (m.modified()?, m.len(), m.ino());
        let mut cached = self.cached.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((s, bytes)) = cached.as_ref()
            && *s == stamp
        {
            return Ok(bytes.clone());
        }
        let bytes = Arc::new(std::fs::read(&self.path)?);
        *cached = Some((stamp, bytes.clone()));
        Ok(bytes)
    }
}

/// What exists once the models are loaded.
pub struct Loaded {
    pub engine: Engine,
    pub vocab: Option<Arc<Vocab>>,
    pub embedder: Option<Arc<Embedder>>,
    pub retrieval: bool,
    pub created: u64,
}

pub struct AppState {
    pub config: ServeConfig,
    pub metrics: Arc<Metrics>,
    pub api_key: WatchedFile,
    pub system_prompt: Option<WatchedFile>,
    pub history: Option<History>,
    pub loaded: OnceLock<Loaded>,
    /// One lock per conversation in use (see [`lock_conversation`]).
    pub conversation_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl AppState {
    pub fn loaded(&self) -> Result<&Loaded, ApiError> {
        self.loaded.get().ok_or_else(ApiError::loading)
    }

    pub fn system_prompt(&self) -> Result<Option<String>, ApiError> {
        let Some(f) = &self.system_prompt else { return Ok(None) };
        let bytes = f.read().map_err(|e| {
            ApiError::internal(format!("the system prompt file cannot be read: {e}"))
        })?;
        let text = String::from_utf8_lossy(&bytes).trim().to_string();
        Ok(Some(text).filter(|t| !t.is_empty()))
    }
}

/// Runs the server until SIGTERM or Ctrl-C.
pub async fn serve(config: ServeConfig) -> anyhow::Result<()> {
    if !config.kb.is_empty() && config.embedding_model.is_none() {
        anyhow::bail!(
            "--kb needs --embedding-model: the model the knowledge bases were indexed with"
        );
    }
    if config.history.is_some() != config.history_key_file.is_some() {
        anyhow::bail!(
            "--history and --history-key-file go together: history is always encrypted at rest"
        );
    }
    let api_key = WatchedFile::new(&config.api_key_file)?;
    if String::from_utf8_lossy(&api_key.read()?).trim().is_empty() {
        anyhow::bail!("--api-key-file {} is empty", config.api_key_file.display());
    }
    let system_prompt = config.system_prompt_file.as_deref().map(WatchedFile::new).transpose()?;
    let history = match (&config.history, &config.history_key_file) {
        (Some(dir), Some(key)) => Some(History::open(dir, crate::history::read_key(key)?)?),
        _ => None,
    };
    let metrics = Arc::new(Metrics::new());
    let state = Arc::new(AppState {
        config: config.clone(),
        metrics: metrics.clone(),
        api_key,
        system_prompt,
        history,
        loaded: OnceLock::new(),
        conversation_locks: Mutex::new(HashMap::new()),
    });

    let addr: SocketAddr = format!("{}:{}", config.host, config.port)
        .parse()
        .with_context(|| format!("--host {} --port {}", config.host, config.port))?;
    let listener =
        tokio::net::TcpListener::bind(addr).await.with_context(|| format!("binding {addr}"))?;
    tracing::info!(address = %listener.local_addr()?, "listening");

    let loader_state = state.clone();
    let loader = tokio::task::spawn_blocking(move || {
        load(&loader_state.config, loader_state.metrics.clone())
    });
    // Streamed events are small writes: without TCP_NODELAY, Nagle holds each one until the
    // previous is acknowledged, and a delayed ACK makes that ~40 ms per token for a proxy.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    let serving = axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .into_future();
    tokio::pin!(serving);
    tokio::select! {
        loaded = loader => {
            let loaded = loaded.context("model loading panicked")??;
            let _ = state.loaded.set(loaded);
            tracing::info!("ready");
        }
        result = &mut serving => return result.context("server"),
    }
    serving.await.context("server")
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .expect("SIGTERM handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    tracing::info!("shutting down");
    // Streams may run for minutes; a pod's grace period is short. History writes are atomic,
    // so leaving now loses at most the reply in flight.
    tokio::spawn(async {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        std::process::exit(0);
    });
}

/// Loads the models and starts the engine. Runs on a blocking thread.
pub fn load(config: &ServeConfig, metrics: Arc<Metrics>) -> anyhow::Result<Loaded> {
    let started = Instant::now();
    let device = model::device();
    let mut chat = None;
    let mut embedder = None;
    match model::detect(&config.model)? {
        ModelFiles::Llama(dir) => {
            chat = Some(ChatModel::load_safetensors(
                &dir,
                config.model_id.clone().unwrap_or_else(|| model::default_id(&config.model)),
                &device,
            )?)
        }
        ModelFiles::Gguf(file) => {
            chat = Some(ChatModel::load_gguf(
                &file,
                config.model_id.clone().unwrap_or_else(|| model::default_id(&config.model)),
                &device,
            )?)
        }
        ModelFiles::Bert(dir) => {
            embedder = Some(Arc::new(Embedder::load(
                &dir,
                config.model_id.clone().unwrap_or_else(|| model::default_id(&config.model)),
                &device,
            )?))
        }
    }
    if let (Some(limit), Some(model)) = (config.context_length, chat.as_mut()) {
        model.limit_context(limit);
    }
    if let Some(path) = &config.embedding_model {
        if embedder.is_some() {
            anyhow::bail!(
                "--model is already an embedding model; --embedding-model is for a chat model's retrieval"
            );
        }
        let ModelFiles::Bert(dir) = model::detect(path)? else {
            anyhow::bail!(
                "--embedding-model {}: not a BERT-family embedding model",
                path.display()
            );
        };
        embedder = Some(Arc::new(Embedder::load(
            &dir,
            config.embedding_model_id.clone().unwrap_or_else(|| model::default_id(path)),
            &device,
        )?));
    }
    let library = match (&embedder, config.kb.is_empty()) {
        (Some(e), false) => Some(Library::open(&config.kb, e, config.kb_top_k)?),
        _ => None,
    };
    let took = started.elapsed();
    metrics.model_load_seconds.set(took.as_secs_f64());
    let vocab = chat.as_ref().map(|c| c.vocab.clone());
    tracing::info!(
        model = vocab.as_ref().map(|v| v.id.as_str()).or(embedder.as_ref().map(|e| e.id.as_str())).unwrap_or_default(),
        format = vocab.as_ref().map(|v| v.format).unwrap_or("safetensors"),
        context = vocab.as_ref().map(|v| v.context_length).unwrap_or(0),
        embedding_model = embedder.as_ref().map(|e| e.id.as_str()).unwrap_or("none"),
        knowledge_bases = ?library.as_ref().map(|l| l.describe()).unwrap_or_default(),
        device = if device.is_cpu() { "cpu" } else { "cuda" },
        load_seconds = took.as_secs_f64(),
        "models loaded"
    );
    let retrieval = library.is_some();
    let engine = Engine::start(
        Models {
            chat,
            embedder: embedder.clone(),
            library,
            prefix_cache: PrefixCache::new(config.prefix_cache_bytes),
        },
        metrics,
        config.max_queue,
        config.parallel,
    );
    tracing::info!(parallel = engine.slots(), "generations batched together");
    Ok(Loaded { engine, vocab, embedder, retrieval, created: crate::unix_now() })
}

pub fn router(state: Arc<AppState>) -> Router {
    use axum::routing::post;
    let api = Router::new()
        .route("/v1/chat/completions", post(chat::chat_completions))
        .route("/v1/completions", post(chat::completions))
        .route("/v1/embeddings", post(other::embeddings))
        .route("/v1/models", get(other::list_models))
        .route("/v1/models/{id}", get(other::get_model))
        .route("/v1/conversations", get(other::list_conversations))
        .route(
            "/v1/conversations/{id}",
            get(other::get_conversation).delete(other::delete_conversation),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate));
    Router::new()
        .merge(api)
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route(
            "/metrics",
            get(|State(s): State<Arc<AppState>>| async move {
                ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], s.metrics.render())
            }),
        )
        .fallback(|req: Request| async move {
            ApiError::not_found(
                format!("Unknown request URL: {} {}.", req.method(), req.uri().path()),
                "unknown_url",
            )
        })
        .method_not_allowed_fallback(|req: Request| async move {
            let mut e = ApiError::not_found(
                format!("Method {} is not allowed on {}.", req.method(), req.uri().path()),
                "method_not_allowed",
            );
            e.status = StatusCode::METHOD_NOT_ALLOWED;
            e
        })
        .layer(middleware::from_fn_with_state(state.clone(), observe))
        .with_state(state)
}

async fn readyz(State(s): State<Arc<AppState>>) -> Response {
    if s.loaded.get().is_some() {
        (StatusCode::OK, "ready").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "loading").into_response()
    }
}

/// The key from `Authorization: Bearer …`, or from `X-Api-Key` (the Kubernetes API server's
/// service proxy does not forward `Authorization`).
fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok()) {
        let v = v.trim();
        if v.len() > 7 && v[..7].eq_ignore_ascii_case("bearer ") {
            return Some(v[7..].trim());
        }
    }
    headers.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim)
}

async fn authenticate(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let Some(presented) = presented_key(req.headers()) else {
        return ApiError::unauthorized(
            "You didn't provide an API key. Send it as `Authorization: Bearer YOUR_KEY` or `X-Api-Key: YOUR_KEY`.",
            None,
        )
        .into_response();
    };
    let expected = match s.api_key.read() {
        Ok(k) => k,
        Err(e) => {
            return ApiError::internal(format!("the API key file cannot be read: {e}"))
                .into_response();
        }
    };
    let expected = String::from_utf8_lossy(&expected);
    // Comparing digests in constant time reveals neither the key's bytes nor its length.
    let a = sha2::Sha256::digest(presented.as_bytes());
    let b = sha2::Sha256::digest(expected.trim().as_bytes());
    if !bool::from(a.ct_eq(&b)) {
        return ApiError::unauthorized("Incorrect API key provided.", Some("invalid_api_key"))
            .into_response();
    }
    next.run(req).await
}

/// Counts every request by route template (never the concrete path: it may hold a conversation
/// id) and status, and logs it without bodies.
async fn observe(State(s): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let endpoint = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let method = req.method().clone();
    let started = Instant::now();
    let response = next.run(req).await;
    let code = response.status().as_u16().to_string();
    s.metrics.requests.with_label_values(&[endpoint.as_str(), code.as_str()]).inc();
    if endpoint != "/healthz" && endpoint != "/readyz" && endpoint != "/metrics" {
        tracing::info!(%method, %endpoint, status = %code, ms = started.elapsed().as_millis() as u64, "request");
    }
    response
}

/// Holds one conversation's lock; forgets the lock when nobody else waits for it.
pub struct ConversationGuard {
    state: Arc<AppState>,
    id: String,
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// Waits for any other turn of conversation `id` to finish, so that its turns are read,
/// extended and written as one step.
pub async fn lock_conversation(state: &Arc<AppState>, id: &str) -> ConversationGuard {
    let lock = state
        .conversation_locks
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(id.to_string())
        .or_default()
        .clone();
    let guard = lock.lock_owned().await;
    ConversationGuard { state: state.clone(), id: id.to_string(), guard: Some(guard) }
}

impl Drop for ConversationGuard {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut locks = self.state.conversation_locks.lock().unwrap_or_else(|e| e.into_inner());
        if locks.get(&self.id).is_some_and(|l| Arc::strong_count(l) == 1) {
            locks.remove(&self.id);
        }
    }
}

/// Reads a request body up to the configured limit; beyond it, 413.
pub async fn read_body(
    state: &AppState,
    body: axum::body::Body,
) -> Result<axum::body::Bytes, ApiError> {
    axum::body::to_bytes(body, state.config.max_body_bytes)
        .await
        .map_err(|_| ApiError::too_large(state.config.max_body_bytes))
}

/// The model a request names must be the one served for that endpoint.
pub fn check_model(loaded: &Loaded, requested: &str, want_chat: bool) -> Result<(), ApiError> {
    let chat_id = loaded.vocab.as_ref().map(|v| v.id.as_str());
    let embed_id = loaded.embedder.as_ref().map(|e| e.id.as_str());
    let served = if want_chat { chat_id } else { embed_id };
    if served == Some(requested) {
        return Ok(());
    }
    if want_chat && embed_id == Some(requested) {
        return Err(ApiError::invalid(
            "model",
            format!("`{requested}` is an embedding model; use POST /v1/embeddings."),
        ));
    }
    if !want_chat && chat_id == Some(requested) {
        return Err(ApiError::invalid(
            "model",
            format!("`{requested}` is a chat model and does not produce embeddings."),
        ));
    }
    Err(ApiError::model_not_found(requested))
}
