//! `POST /v1/chat/completions` and `POST /v1/completions`, streaming (server-sent events in
//! OpenAI's chunk format, ending with `data: [DONE]`) or not.

use std::convert::Infallible;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::sync::mpsc;

use super::error::ApiError;
use super::types::{self, ChatRequest, CompletionRequest};
use super::{AppState, ConversationGuard, check_model, lock_conversation, read_body};
use crate::engine::{Event, FinishReason, Generate, Prompt, SamplingParams, Work};
use crate::history::{Conversation, valid_id};
use crate::model::{Message, UnplacedControlText, Vocab};
use crate::retrieval::Source;

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Text,
}

struct Meta {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    sources: Vec<Source>,
    prompt_tokens: usize,
    conversation: Option<String>,
}

/// The turns to store once the reply is complete, holding the conversation's lock until then.
struct Remember {
    state: Arc<AppState>,
    id: String,
    earlier: Vec<Message>,
    new: Vec<Message>,
    _lock: ConversationGuard,
}

impl Remember {
    fn save(&self, reply: &str) -> Result<(), ApiError> {
        let history = self
            .state
            .history
            .as_ref()
            .ok_or_else(|| ApiError::internal("history is not enabled"))?;
        let mut messages = self.earlier.clone();
        messages.extend(self.new.iter().cloned());
        messages.push(Message { role: "assistant".into(), content: reply.to_string() });
        history
            .save(&Conversation { id: self.id.clone(), messages, updated_at: crate::unix_now() })
            .map_err(|e| {
                ApiError::internal(format!(
                    "the reply could not be stored in the conversation: {e}"
                ))
            })
    }
}

fn new_id(prefix: &str) -> String {
    let mut b = [0u8; 12];
    let _ = getrandom::fill(&mut b);
    format!("{prefix}-{}", crate::hex(&b))
}

/// The prompt and the requested completion must fit the context, and the completion the
/// instance's per-request limit (which is also the default).
fn check_budget(
    vocab: &Vocab,
    prompt_tokens: usize,
    params: &mut SamplingParams,
    limit: Option<usize>,
) -> Result<(), ApiError> {
    let ctx = vocab.context_length;
    if let (Some(max), Some(limit)) = (params.max_tokens, limit)
        && max > limit
    {
        return Err(ApiError::invalid(
            "max_tokens",
            format!("max_tokens is {max}; this instance allows at most {limit} per request."),
        ));
    }
    if params.max_tokens.is_none() {
        params.max_tokens = limit.map(|l| l.min(ctx.saturating_sub(prompt_tokens)).max(1));
    }
    if prompt_tokens >= ctx {
        return Err(ApiError::invalid(
            "messages",
            format!(
                "The prompt is {prompt_tokens} tokens; this model's context length is {ctx} tokens. Shorten the messages."
            ),
        ));
    }
    if let Some(max) = params.max_tokens
        && prompt_tokens + max > ctx
    {
        return Err(ApiError::invalid(
            "max_tokens",
            format!(
                "max_tokens is {max}, but the prompt already takes {prompt_tokens} of this model's {ctx}-token context; at most {} tokens can be generated.",
                ctx - prompt_tokens
            ),
        ));
    }
    Ok(())
}

pub async fn chat_completions(
    State(s): State<Arc<AppState>>,
    body: Body,
) -> Result<Response, ApiError> {
    let loaded = s.loaded()?;
    let bytes = read_body(&s, body).await?;
    let req: ChatRequest = types::parse(&bytes)?;
    let sampling: types::Sampling = types::parse(&bytes)?;
    let model = types::require_model(&req.model)?.to_string();
    check_model(loaded, &model, true)?;
    let vocab = loaded.vocab.clone().ok_or_else(|| ApiError::model_not_found(&model))?;
    let checked = types::check_sampling(sampling)?;
    let new_messages = types::check_messages(req.messages)?;

    let remember = match req.conversation {
        None => None,
        Some(id) => {
            if !valid_id(&id) {
                return Err(ApiError::invalid(
                    "conversation",
                    "conversation ids are 1 to 128 letters, digits, '-', '_' or '.'.",
                ));
            }
            let Some(history) = s.history.as_ref() else {
                return Err(ApiError::invalid(
                    "conversation",
                    "Conversation history is not enabled on this instance.",
                ));
            };
            let lock = lock_conversation(&s, &id).await;
            let earlier = history
                .load(&id)
                .map_err(|e| ApiError::internal(format!("the conversation cannot be read: {e}")))?
                .map(|c| c.messages)
                .unwrap_or_default();
            Some(Remember { state: s.clone(), id, earlier, new: new_messages.clone(), _lock: lock })
        }
    };

    let mut messages = Vec::new();
    if let Some(prompt) = s.system_prompt()? {
        messages.push(Message { role: "system".into(), content: prompt });
    }
    if let Some(r) = &remember {
        messages.extend(r.earlier.iter().cloned());
    }
    messages.extend(new_messages.iter().cloned());
    let rendered = vocab.template.render(&messages).map_err(|e| {
        ApiError::invalid(
            "messages",
            format!("The model's chat template refused the conversation: {e}"),
        )
    })?;
    let prompt_tokens = vocab
        .encode_chat(&rendered, &messages)
        .map_err(|e| {
            // Numbered as the client sent them: the instance's system prompt and the stored
            // turns come first.
            let sent = messages.len() - new_messages.len();
            match e.downcast_ref::<UnplacedControlText>() {
                Some(u) if u.message >= sent => {
                    let param = format!("messages[{}].content", u.message - sent);
                    ApiError::invalid(
                        param.clone(),
                        format!(
                            "{param} contains {:?}, one of the model's control tokens, and this \
                             model's chat template cuts message text apart, so it cannot be kept \
                             as plain text; remove it from the message.",
                            u.token
                        ),
                    )
                }
                Some(u) => ApiError::invalid(
                    "messages",
                    format!(
                        "An earlier turn of this conversation, or the instance's system prompt, \
                         contains {:?}, one of the model's control tokens, and this model's chat \
                         template cuts message text apart; start a new conversation.",
                        u.token
                    ),
                ),
                None => ApiError::internal(format!("tokenizing: {e}")),
            }
        })?
        .len();
    let mut checked = checked;
    check_budget(&vocab, prompt_tokens, &mut checked.params, s.config.max_tokens)?;
    let retrieval_query = loaded
        .retrieval
        .then(|| new_messages.iter().rev().find(|m| m.role == "user").map(|m| m.content.clone()))
        .flatten();

    let (tx, rx) = mpsc::unbounded_channel();
    loaded
        .engine
        .submit(Work::Generate(Generate {
            prompt: Prompt::Chat { messages, retrieval_query },
            params: checked.params,
            events: tx,
        }))
        .map_err(|full| ApiError::busy(full.retry_after))?;
    let meta = Meta {
        kind: Kind::Chat,
        id: new_id("chatcmpl"),
        created: crate::unix_now(),
        model,
        sources: Vec::new(),
        prompt_tokens,
        conversation: remember.as_ref().map(|r| r.id.clone()),
    };
    respond(meta, rx, checked.stream, checked.include_usage, remember).await
}

pub async fn completions(State(s): State<Arc<AppState>>, body: Body) -> Result<Response, ApiError> {
    let loaded = s.loaded()?;
    let bytes = read_body(&s, body).await?;
    let req: CompletionRequest = types::parse(&bytes)?;
    let sampling: types::Sampling = types::parse(&bytes)?;
    let model = types::require_model(&req.model)?.to_string();
    check_model(loaded, &model, true)?;
    let vocab = loaded.vocab.clone().ok_or_else(|| ApiError::model_not_found(&model))?;
    if req.echo == Some(true) {
        return Err(ApiError::invalid("echo", "echo is not supported."));
    }
    let checked = types::check_sampling(sampling)?;
    let prompts = req.prompt.into_vec();
    let [prompt] = prompts.as_slice() else {
        return Err(ApiError::invalid(
            "prompt",
            format!(
                "prompt must be one string (got {}); send one request per prompt.",
                prompts.len()
            ),
        ));
    };
    if prompt.is_empty() {
        return Err(ApiError::invalid("prompt", "prompt must not be empty."));
    }
    let ids =
        vocab.encode_raw(prompt).map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?;
    let mut checked = checked;
    check_budget(&vocab, ids.len(), &mut checked.params, s.config.max_tokens).map_err(
        |mut e| {
            if e.param.as_deref() == Some("messages") {
                e.param = Some("prompt".into());
            }
            e
        },
    )?;
    let prompt_tokens = ids.len();
    let (tx, rx) = mpsc::unbounded_channel();
    loaded
        .engine
        .submit(Work::Generate(Generate {
            prompt: Prompt::Raw(ids),
            params: checked.params,
            events: tx,
        }))
        .map_err(|full| ApiError::busy(full.retry_after))?;
    let meta = Meta {
        kind: Kind::Text,
        id: new_id("cmpl"),
        created: crate::unix_now(),
        model,
        sources: Vec::new(),
        prompt_tokens,
        conversation: None,
    };
    respond(meta, rx, checked.stream, checked.include_usage, None).await
}

async fn respond(
    mut meta: Meta,
    mut rx: mpsc::UnboundedReceiver<Event>,
    stream: bool,
    include_usage: bool,
    remember: Option<Remember>,
) -> Result<Response, ApiError> {
    // Nothing is sent before the engine has taken the job, so a failure is still a plain error.
    match rx.recv().await {
        Some(Event::Started { prompt_tokens, sources }) => {
            meta.prompt_tokens = prompt_tokens;
            meta.sources = sources;
        }
        Some(Event::Failed(error)) => return Err(error.into()),
        _ => return Err(ApiError::internal("the model stopped before answering")),
    }
    if stream {
        return Ok(stream_response(meta, rx, include_usage, remember));
    }
    let mut text = String::new();
    loop {
        match rx.recv().await {
            Some(Event::Text(t)) => text.push_str(&t),
            Some(Event::Done { finish_reason, prompt_tokens, completion_tokens }) => {
                if let Some(r) = &remember {
                    r.save(&text)?;
                }
                let choice = match meta.kind {
                    Kind::Chat => {
                        json!({"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": null, "finish_reason": finish_reason})
                    }
                    Kind::Text => {
                        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish_reason})
                    }
                };
                let mut body = envelope(&meta, false);
                body["choices"] = json!([choice]);
                body["usage"] = usage(prompt_tokens, completion_tokens);
                decorate(&mut body, &meta);
                return Ok(axum::Json(body).into_response());
            }
            Some(Event::Failed(error)) => return Err(error.into()),
            Some(Event::Started { .. }) | None => {
                return Err(ApiError::internal("the model stopped mid-answer"));
            }
        }
    }
}

fn usage(prompt: usize, completion: usize) -> Value {
    json!({"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion})
}

fn envelope(meta: &Meta, chunk: bool) -> Value {
    let object = match (meta.kind, chunk) {
        (Kind::Chat, false) => "chat.completion",
        (Kind::Chat, true) => "chat.completion.chunk",
        (Kind::Text, _) => "text_completion",
    };
    json!({"id": meta.id, "object": object, "created": meta.created, "model": meta.model, "system_fingerprint": null})
}

/// Alcove's additions, which OpenAI clients ignore: where retrieved context came from, and the
/// conversation the turn was stored in.
fn decorate(body: &mut Value, meta: &Meta) {
    if !meta.sources.is_empty() {
        body["sources"] = json!(meta.sources);
    }
    if let Some(c) = &meta.conversation {
        body["conversation"] = json!(c);
    }
}

fn stream_response(
    meta: Meta,
    mut rx: mpsc::UnboundedReceiver<Event>,
    include_usage: bool,
    remember: Option<Remember>,
) -> Response {
    let (tx, frames) = mpsc::channel::<Result<Bytes, Infallible>>(64);
    tokio::spawn(async move {
        let chunk = |choice: Value| {
            let mut body = envelope(&meta, true);
            body["choices"] = json!([choice]);
            if include_usage {
                body["usage"] = Value::Null;
            }
            body
        };
        let delta = |content: Value, finish: Option<FinishReason>| match meta.kind {
            Kind::Chat => {
                json!({"index": 0, "delta": content, "logprobs": null, "finish_reason": finish})
            }
            Kind::Text => {
                json!({"index": 0, "text": content.get("content").cloned().unwrap_or(json!("")), "logprobs": null, "finish_reason": finish})
            }
        };
        let send = |v: Value| {
            let tx = tx.clone();
            async move { tx.send(Ok(Bytes::from(format!("data: {v}\n\n")))).await.is_ok() }
        };
        let mut first = chunk(delta(json!({"role": "assistant", "content": ""}), None));
        decorate(&mut first, &meta);
        if meta.kind == Kind::Chat && !send(first).await {
            return;
        }
        let mut text = String::new();
        loop {
            match rx.recv().await {
                Some(Event::Text(t)) => {
                    text.push_str(&t);
                    if !send(chunk(delta(json!({"content": t}), None))).await {
                        return; // client gone: dropping `rx` stops the generation
                    }
                }
                Some(Event::Done { finish_reason, prompt_tokens, completion_tokens }) => {
                    if let Some(r) = &remember
                        && let Err(e) = r.save(&text)
                    {
                        send(e.body()).await;
                    }
                    send(chunk(delta(json!({}), Some(finish_reason)))).await;
                    if include_usage {
                        let mut u = envelope(&meta, true);
                        u["choices"] = json!([]);
                        u["usage"] = usage(prompt_tokens, completion_tokens);
                        send(u).await;
                    }
                    break;
                }
                Some(Event::Failed(error)) => {
                    send(ApiError::from(error).body()).await;
                    break;
                }
                Some(Event::Started { .. }) | None => {
                    send(ApiError::internal("the model stopped mid-answer").body()).await;
                    break;
                }
            }
        }
        let _ = tx.send(Ok(Bytes::from_static(b"data: [DONE]\n\n"))).await;
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(tokio_stream::wrappers::ReceiverStream::new(frames)))
        .expect("static response parts")
}
