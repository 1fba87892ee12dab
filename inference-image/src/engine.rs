//! The model thread. One OS thread owns the weights and serves a bounded queue of jobs; a full
//! queue is refused at once (429) rather than growing without bound.
//!
//! Generations are batched continuously: up to `parallel` of them are running at once, each with
//! its own KV cache, and every step runs one forward pass over all of them, a decode token for
//! each that is generating and a chunk of prompt for those still reading theirs. A new request
//! joins at the next step instead of waiting for the others to finish, and a long prompt is read
//! a chunk per step so the others keep generating meanwhile. Tokens stream back to the request
//! over a channel; a request whose client went away leaves the batch, freeing its place, at the
//! next step.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use candle_transformers::generation::{LogitsProcessor, Sampling};
use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::metrics::Metrics;
use crate::model::{ChatModel, Embedder, Message, PrefixCache, Sequence, Vocab};
use crate::retrieval::{Hit, Library, Source};

#[derive(Debug, Clone, PartialEq)]
pub struct SamplingParams {
    /// 0 picks the most likely token (greedy).
    pub temperature: f64,
    pub top_p: f64,
    /// `None`: up to the context length.
    pub max_tokens: Option<usize>,
    pub seed: u64,
    pub stop: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FinishReason {
    Stop,
    Length,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// First event of every generation: the final prompt's size and what retrieval added.
    Started {
        prompt_tokens: usize,
        sources: Vec<Source>,
    },
    Text(String),
    Done {
        finish_reason: FinishReason,
        prompt_tokens: usize,
        completion_tokens: usize,
    },
    Failed(EngineError),
}

/// Why the model thread could not serve a job. The HTTP layer turns each into an OpenAI-shaped
/// error (`api::error`), so the type decides the status, not the text.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum EngineError {
    #[error("no language model is loaded")]
    NoLanguageModel,
    #[error("no embedding model is loaded")]
    NoEmbeddingModel,
    /// Retrieval added context until nothing was left for the answer.
    #[error("the prompt's {prompt} tokens fill the model's context of {context}")]
    ContextFull { prompt: usize, context: usize },
    #[error("generation failed: {0}")]
    Generation(String),
    #[error("embedding failed: {0}")]
    Embedding(String),
    /// The model code panicked; the thread caught it and goes on with the next job.
    #[error("{0} failed: internal error")]
    Panicked(&'static str),
}

impl EngineError {
    /// The OpenAI error type (`error.type`) this failure is reported as.
    pub fn openai_type(&self) -> &'static str {
        match self {
            EngineError::ContextFull { .. } => "invalid_request_error",
            _ => "server_error",
        }
    }
}

pub enum Prompt {
    /// A conversation, rendered with the model's chat template. `retrieval_query` (the last user
    /// message) is looked up in the attached knowledge bases.
    Chat { messages: Vec<Message>, retrieval_query: Option<String> },
    /// Token ids as they are (`/v1/completions`).
    Raw(Vec<u32>),
}

pub struct Generate {
    pub prompt: Prompt,
    pub params: SamplingParams,
    pub events: mpsc::UnboundedSender<Event>,
}

pub enum Work {
    Generate(Generate),
    Embed { texts: Vec<String>, reply: oneshot::Sender<Result<Vec<Vec<f32>>, EngineError>> },
}

struct Job {
    work: Work,
    enqueued: Instant,
}

/// What the engine thread owns.
pub struct Models {
    pub chat: Option<ChatModel>,
    pub embedder: Option<Arc<Embedder>>,
    pub library: Option<Library>,
    pub prefix_cache: PrefixCache,
}

#[derive(Debug)]
pub struct QueueFull {
    /// A fair guess of when a slot frees up, in whole seconds (≥ 1).
    pub retry_after: u64,
}

/// Prompt tokens read per step while other sequences are generating: small enough that their
/// next token is not held up by a whole long prompt, large enough that the weights read for the
/// step serve many rows.
const CHUNK_BESIDE_DECODE: usize = 128;
/// Prompt tokens read per step when no sequence is generating (nobody waits on the step).
pub const CHUNK_ALONE: usize = 512;

#[derive(Clone)]
pub struct Engine {
    tx: mpsc::Sender<Job>,
    metrics: Arc<Metrics>,
    /// Exponential moving average of a job's duration, in microseconds.
    avg_job_us: Arc<AtomicU64>,
    /// Generations that run at once.
    slots: usize,
}

impl Engine {
    /// Starts the model thread with room for `queue` waiting jobs besides the running ones, of
    /// which there are up to `parallel` (one where the model keeps a single KV cache).
    pub fn start(models: Models, metrics: Arc<Metrics>, queue: usize, parallel: usize) -> Self {
        let (tx, rx) = mpsc::channel(queue.max(1));
        let avg_job_us = Arc::new(AtomicU64::new(1_000_000));
        let capacity = models.chat.as_ref().map_or(1, ChatModel::batch_capacity);
        let slots = parallel.clamp(1, capacity);
        let worker =
            Worker { models, metrics: metrics.clone(), avg_job_us: avg_job_us.clone(), slots };
        std::thread::Builder::new()
            .name("model".into())
            .spawn(move || worker.run(rx))
            .expect("spawning the model thread");
        Self { tx, metrics, avg_job_us, slots }
    }

    /// Generations that run at once.
    pub fn slots(&self) -> usize {
        self.slots
    }

    pub fn submit(&self, work: Work) -> Result<(), QueueFull> {
        // Counted before sending, so the model thread's decrement can never come first.
        self.metrics.queue_depth.inc();
        match self.tx.try_send(Job { work, enqueued: Instant::now() }) {
            Ok(()) => Ok(()),
            Err(_) => {
                self.metrics.queue_depth.dec();
                let waiting = self.metrics.queue_depth.get().max(0) as u64 + 1;
                let avg = self.avg_job_us.load(Ordering::Relaxed);
                let wait = (waiting * avg).div_ceil(self.slots as u64);
                Err(QueueFull { retry_after: wait.div_ceil(1_000_000).max(1) })
            }
        }
    }
}

struct Worker {
    models: Models,
    metrics: Arc<Metrics>,
    avg_job_us: Arc<AtomicU64>,
    slots: usize,
}

/// A generation in the batch.
struct Running {
    events: mpsc::UnboundedSender<Event>,
    seq: Sequence,
    prompt: Vec<u32>,
    /// The token sampled last, to be run at the next step; `None` while the prompt is being read.
    next: Option<u32>,
    sampler: LogitsProcessor,
    detok: Detokenizer,
    stops: StopFilter,
    generated: usize,
    max_new: usize,
    enqueued: Instant,
    admitted: Instant,
    last: Instant,
}

/// What a step did to one generation.
enum Outcome {
    Continue,
    Finished(FinishReason),
    /// The client went away.
    Gone,
}

/// Runs `f`, turning an error or a panic into the [`EngineError`] the request is told.
fn guarded<T>(what: &'static str, f: impl FnOnce() -> anyhow::Result<T>) -> Result<T, EngineError> {
    match std::panic::catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(e
            .downcast::<EngineError>()
            .unwrap_or_else(|e| EngineError::Generation(format!("{e:#}")))),
        Err(_) => Err(EngineError::Panicked(what)),
    }
}

fn fail(events: &mpsc::UnboundedSender<Event>, error: EngineError) {
    tracing::error!(%error, "generation failed");
    let _ = events.send(Event::Failed(error));
}

impl Worker {
    fn run(mut self, mut rx: mpsc::Receiver<Job>) {
        let mut running: Vec<Running> = Vec::new();
        loop {
            while running.len() < self.slots {
                let job = if running.is_empty() {
                    match rx.blocking_recv() {
                        Some(job) => job,
                        None => return,
                    }
                } else {
                    match rx.try_recv() {
                        Ok(job) => job,
                        Err(_) => break,
                    }
                };
                self.metrics.queue_depth.dec();
                match job.work {
                    Work::Generate(g) => {
                        let events = g.events.clone();
                        match guarded("generation", || self.admit(g, job.enqueued)) {
                            Ok(Some(r)) => running.push(r),
                            Ok(None) => {}
                            Err(error) => fail(&events, error),
                        }
                    }
                    Work::Embed { texts, reply } => {
                        let started = Instant::now();
                        let _ = reply.send(self.embed(&texts));
                        self.record_job(started);
                    }
                }
            }
            if !running.is_empty() {
                self.step(&mut running);
            }
            self.metrics.running.set(running.len() as i64);
        }
    }

    fn record_job(&self, started: Instant) {
        let took = started.elapsed().as_micros() as u64;
        let avg = self.avg_job_us.load(Ordering::Relaxed);
        self.avg_job_us.store((avg * 7 + took) / 8, Ordering::Relaxed);
    }

    fn embed(&self, texts: &[String]) -> Result<Vec<Vec<f32>>, EngineError> {
        let embedder = self.models.embedder.as_ref().ok_or(EngineError::NoEmbeddingModel)?;
        let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
        guarded("embedding", || embedder.embed(&refs)).map_err(|e| match e {
            EngineError::Generation(m) => EngineError::Embedding(m),
            e => e,
        })
    }

    /// Builds a request's prompt (retrieval included) and starts its sequence; `None` when the
    /// client has already gone.
    fn admit(&mut self, g: Generate, enqueued: Instant) -> anyhow::Result<Option<Running>> {
        let Models { chat, embedder, library, prefix_cache } = &mut self.models;
        let model = chat.as_mut().ok_or(EngineError::NoLanguageModel)?;
        let vocab = model.vocab.clone();
        let ctx = vocab.context_length;

        let (prompt, sources) = match g.prompt {
            Prompt::Raw(ids) => (ids, Vec::new()),
            Prompt::Chat { messages, retrieval_query } => {
                let hits = match (retrieval_query, embedder.as_ref(), library.as_mut()) {
                    (Some(q), Some(e), Some(lib)) => lib.search(e, &q)?,
                    _ => Vec::new(),
                };
                with_context(&vocab, messages, hits, g.params.max_tokens)?
            }
        };
        if prompt.len() >= ctx {
            return Err(EngineError::ContextFull { prompt: prompt.len(), context: ctx }.into());
        }
        let max_new = g.params.max_tokens.unwrap_or(ctx - prompt.len()).min(ctx - prompt.len());
        if g.events.send(Event::Started { prompt_tokens: prompt.len(), sources }).is_err() {
            return Ok(None);
        }
        let (seq, reused) = model.begin(&prompt, prefix_cache)?;
        self.metrics.prompt_tokens_reused.inc_by(reused as u64);
        let sampling = if g.params.temperature <= 0.0 {
            Sampling::ArgMax
        } else if g.params.top_p < 1.0 {
            Sampling::TopP { p: g.params.top_p, temperature: g.params.temperature }
        } else {
            Sampling::All { temperature: g.params.temperature }
        };
        let now = Instant::now();
        Ok(Some(Running {
            events: g.events,
            seq,
            prompt,
            next: None,
            sampler: LogitsProcessor::from_sampling(g.params.seed, sampling),
            detok: Detokenizer::default(),
            stops: StopFilter::new(g.params.stop),
            generated: 0,
            max_new,
            enqueued,
            admitted: now,
            last: now,
        }))
    }

    /// One forward pass over the batch: a token for each generating sequence, and prompt chunks,
    /// oldest request first, up to the step's budget.
    fn step(&mut self, running: &mut Vec<Running>) {
        running.retain(|r| !r.events.is_closed());
        let Some(model) = self.models.chat.as_mut().filter(|_| !running.is_empty()) else {
            return;
        };
        let vocab = model.vocab.clone();
        let mut budget = match running.iter().any(|r| r.next.is_some()) {
            true => CHUNK_BESIDE_DECODE,
            false => CHUNK_ALONE,
        };
        let mut members = Vec::new();
        let mut feeds: Vec<(&mut Sequence, &[u32], bool)> = Vec::new();
        for (i, r) in running.iter_mut().enumerate() {
            let (tokens, logits): (&[u32], bool) = match &r.next {
                Some(t) => (std::slice::from_ref(t), true),
                None if budget == 0 => continue,
                None => {
                    let (from, to) = (r.seq.len(), r.prompt.len().min(r.seq.len() + budget));
                    budget -= to - from;
                    (&r.prompt[from..to], to == r.prompt.len())
                }
            };
            members.push(i);
            feeds.push((&mut r.seq, tokens, logits));
        }
        self.metrics.step_sequences.observe(feeds.len() as f64);
        let result = guarded("generation", || Ok(model.step(&mut feeds)?));
        drop(feeds);
        let logits = match result {
            Ok(logits) => logits,
            Err(error) => {
                // Which member caused it is unknown: each is told, and leaves the batch.
                for &i in members.iter().rev() {
                    fail(&running.remove(i).events, error.clone());
                }
                return;
            }
        };
        let mut done = Vec::new();
        for (&i, logits) in members.iter().zip(logits) {
            let Some(logits) = logits else { continue };
            match guarded("generation", || self.advance(&vocab, &mut running[i], &logits)) {
                Ok(Outcome::Continue) => {}
                Ok(outcome) => done.push((i, outcome)),
                Err(error) => {
                    fail(&running[i].events, error);
                    done.push((i, Outcome::Gone));
                }
            }
        }
        for (i, outcome) in done.into_iter().rev() {
            let r = running.remove(i);
            if let Outcome::Finished(reason) = outcome {
                let events = r.events.clone();
                if let Err(error) = guarded("generation", || self.finish(r, reason)) {
                    fail(&events, error);
                }
            }
        }
    }

    /// Samples a sequence's next token from `logits` and streams its text.
    fn advance(
        &self,
        vocab: &Vocab,
        r: &mut Running,
        logits: &candle_core::Tensor,
    ) -> anyhow::Result<Outcome> {
        let next = r.sampler.sample(logits)?;
        if vocab.eos.contains(&next) {
            return Ok(Outcome::Finished(FinishReason::Stop));
        }
        r.generated += 1;
        let now = Instant::now();
        if r.generated == 1 {
            self.metrics.time_to_first_token.observe(now.duration_since(r.enqueued).as_secs_f64());
        } else {
            self.metrics.time_per_output_token.observe(now.duration_since(r.last).as_secs_f64());
        }
        r.last = now;
        r.detok.push(vocab, next)?;
        let (delta, stopped) = r.stops.push(&r.detok.text, false);
        if !delta.is_empty() && r.events.send(Event::Text(delta)).is_err() {
            return Ok(Outcome::Gone);
        }
        if stopped {
            return Ok(Outcome::Finished(FinishReason::Stop));
        }
        if r.generated >= r.max_new {
            return Ok(Outcome::Finished(FinishReason::Length));
        }
        r.next = Some(next);
        Ok(Outcome::Continue)
    }

    fn finish(&mut self, mut r: Running, reason: FinishReason) -> anyhow::Result<()> {
        let Models { chat, prefix_cache, .. } = &mut self.models;
        if let Some(model) = chat.as_ref() {
            model.finish(r.seq, prefix_cache);
            r.detok.flush(&model.vocab)?;
        }
        self.metrics.prefix_cache_bytes.set(prefix_cache.bytes() as i64);
        let (delta, _) = r.stops.push(&r.detok.text, true);
        if !delta.is_empty() {
            let _ = r.events.send(Event::Text(delta));
        }
        self.metrics.prompt_tokens.inc_by(r.prompt.len() as u64);
        self.metrics.completion_tokens.inc_by(r.generated as u64);
        let _ = r.events.send(Event::Done {
            finish_reason: reason,
            prompt_tokens: r.prompt.len(),
            completion_tokens: r.generated,
        });
        self.record_job(r.admitted);
        release_free_memory();
        Ok(())
    }
}

/// Hands the pages of freed memory back to the system. A finished sequence frees its KV cache, and
/// the caches' ever-changing sizes fragment glibc's heap, whose free pages it otherwise keeps:
/// over 1,000 requests resident memory grew by 50 MiB without this, and not after the first 200
/// with it (`inference-image/bench/streams.sh`). It costs well under a millisecond per request.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only returns free pages; it takes the allocator's own locks.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Renders the conversation with the retrieved excerpts added to its system message, dropping the
/// weakest excerpts until the prompt and the requested completion fit the context.
fn with_context(
    vocab: &Vocab,
    mut messages: Vec<Message>,
    mut hits: Vec<Hit>,
    max_tokens: Option<usize>,
) -> anyhow::Result<(Vec<u32>, Vec<Source>)> {
    let render = |messages: &[Message]| -> anyhow::Result<Vec<u32>> {
        let text = vocab
            .template
            .render(messages)
            .map_err(|e| anyhow::anyhow!("the chat template refused the conversation: {e}"))?;
        vocab.encode_chat(&text, messages)
    };
    let base = messages.clone();
    loop {
        if hits.is_empty() {
            return Ok((render(&base)?, Vec::new()));
        }
        let mut excerpt = String::from(
            "Use these excerpts from the knowledge base when they help to answer; cite them by number.\n",
        );
        for (i, h) in hits.iter().enumerate() {
            excerpt.push_str(&format!(
                "\n[{}] {} / {}\n{}\n",
                i + 1,
                h.source.knowledge_base,
                h.source.document,
                h.text
            ));
        }
        messages.clone_from(&base);
        match messages.first_mut() {
            Some(m) if m.role == "system" => m.content = format!("{}\n\n{excerpt}", m.content),
            _ => messages.insert(0, Message { role: "system".into(), content: excerpt }),
        }
        let tokens = render(&messages)?;
        let room = vocab.context_length.saturating_sub(tokens.len());
        if room >= max_tokens.unwrap_or(1).max(1) {
            return Ok((tokens, hits.into_iter().map(|h| h.source).collect()));
        }
        hits.pop();
    }
}

/// Turns tokens into text incrementally. Decoding a window that starts a little before the new
/// token (rather than the token alone) keeps the spaces that SentencePiece-style decoders attach
/// to word starts; a trailing partial UTF-8 character is held until its other bytes arrive.
#[derive(Default)]
struct Detokenizer {
    tokens: Vec<u32>,
    prefix_offset: usize,
    read_offset: usize,
    text: String,
}

impl Detokenizer {
    fn push(&mut self, vocab: &Vocab, token: u32) -> anyhow::Result<()> {
        self.tokens.push(token);
        self.advance(vocab, false)
    }

    fn flush(&mut self, vocab: &Vocab) -> anyhow::Result<()> {
        self.advance(vocab, true)
    }

    fn advance(&mut self, vocab: &Vocab, last: bool) -> anyhow::Result<()> {
        let decode =
            |ids: &[u32]| vocab.tokenizer.decode(ids, true).map_err(|e| anyhow::anyhow!("{e}"));
        let prefix = decode(&self.tokens[self.prefix_offset..self.read_offset])?;
        let full = decode(&self.tokens[self.prefix_offset..])?;
        if full.len() > prefix.len()
            && (last || !full.ends_with('\u{FFFD}'))
            && full.is_char_boundary(prefix.len())
        {
            self.text.push_str(&full[prefix.len()..]);
            self.prefix_offset = self.read_offset;
            self.read_offset = self.tokens.len();
        }
        Ok(())
    }
}

/// Holds back text that could be the start of a stop sequence, and cuts the output where one
/// appears (the stop sequence itself is not returned, as OpenAI does).
struct StopFilter {
    stops: Vec<String>,
    longest: usize,
    emitted: usize,
    done: bool,
}

impl StopFilter {
    fn new(stops: Vec<String>) -> Self {
        let stops: Vec<String> = stops.into_iter().filter(|s| !s.is_empty()).collect();
        let longest = stops.iter().map(String::len).max().unwrap_or(0);
        Self { stops, longest, emitted: 0, done: false }
    }

    /// Given all the text so far, returns what may be sent now and whether a stop sequence ended it.
    fn push(&mut self, text: &str, finished: bool) -> (String, bool) {
        if self.done {
            return (String::new(), true);
        }
        let from = floor_boundary(text, self.emitted.saturating_sub(self.longest));
        let hit =
            self.stops.iter().filter_map(|s| text[from..].find(s.as_str()).map(|p| from + p)).min();
        let end = match hit {
            Some(p) => p,
            None if finished => text.len(),
            None => floor_boundary(text, text.len().saturating_sub(self.longest.saturating_sub(1))),
        };
        let delta = if end > self.emitted {
            text.get(self.emitted..end).unwrap_or_default().to_string()
        } else {
            String::new()
        };
        self.emitted = self.emitted.max(end);
        self.done = hit.is_some();
        (delta, self.done)
    }
}

fn floor_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(stops: &[&str], pieces: &[&str]) -> (String, bool) {
        let mut f = StopFilter::new(stops.iter().map(|s| s.to_string()).collect());
        let mut text = String::new();
        let mut out = String::new();
        for p in pieces {
            text.push_str(p);
            let (d, stopped) = f.push(&text, false);
            out.push_str(&d);
            if stopped {
                return (out, true);
            }
        }
        let (d, stopped) = f.push(&text, true);
        out.push_str(&d);
        (out, stopped)
    }

    #[test]
    fn without_stops_everything_passes_at_once() {
        let mut f = StopFilter::new(vec![]);
        assert_eq!(f.push("abc", false), ("abc".to_string(), false));
        assert_eq!(f.push("abcdé", false), ("dé".to_string(), false));
    }

    #[test]
    fn a_stop_split_across_tokens_is_never_emitted() {
        assert_eq!(feed(&["END"], &["hello E", "N", "D more"]), ("hello ".to_string(), true));
        assert_eq!(feed(&["\n\n"], &["a\n", "\nb"]), ("a".to_string(), true));
    }

    #[test]
    fn text_that_only_looked_like_a_stop_is_released() {
        assert_eq!(feed(&["END"], &["hello E", "N", "d"]), ("hello ENd".to_string(), false));
    }

    #[test]
    fn the_earliest_of_several_stops_wins() {
        assert_eq!(feed(&["zz", "b"], &["a", "bzz"]), ("a".to_string(), true));
    }

    #[test]
    fn multibyte_text_is_held_on_character_boundaries() {
        assert_eq!(feed(&["éé"], &["aé", "b", "éé"]), ("aéb".to_string(), true));
    }
}
