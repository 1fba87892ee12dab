//! `POST /v1/embeddings`, `GET /v1/models`, and the conversation endpoints.

use std::sync::Arc;

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::oneshot;

use super::error::ApiError;
use super::types::{self, EmbeddingInput, EmbeddingRequest};
use super::{AppState, check_model, lock_conversation, read_body};
use crate::engine::Work;
use crate::history::valid_id;

/// Inputs per embeddings request, as OpenAI allows.
const MAX_INPUTS: usize = 2048;

pub async fn embeddings(
    State(s): State<Arc<AppState>>,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let loaded = s.loaded()?;
    let bytes = read_body(&s, body).await?;
    let req: EmbeddingRequest = types::parse(&bytes)?;
    let model = types::require_model(&req.model)?.to_string();
    check_model(loaded, &model, false)?;
    let embedder = loaded.embedder.clone().ok_or_else(|| ApiError::model_not_found(&model))?;
    let base64 = match req.encoding_format.as_deref() {
        None | Some("float") => false,
        Some("base64") => true,
        Some(other) => {
            return Err(ApiError::invalid(
                "encoding_format",
                format!("encoding_format must be \"float\" or \"base64\", got {other:?}."),
            ));
        }
    };
    if let Some(d) = req.dimensions
        && d as usize != embedder.dims
    {
        return Err(ApiError::invalid(
            "dimensions",
            format!(
                "this model's embeddings have {} dimensions; it cannot produce {d}.",
                embedder.dims
            ),
        ));
    }
    let inputs = match req.input {
        EmbeddingInput::One(s) => vec![s],
        EmbeddingInput::Many(v) => v,
    };
    if inputs.is_empty() || inputs.len() > MAX_INPUTS {
        return Err(ApiError::invalid(
            "input",
            format!("input must hold 1 to {MAX_INPUTS} strings, got {}.", inputs.len()),
        ));
    }
    let mut tokens = 0;
    for (i, text) in inputs.iter().enumerate() {
        if text.is_empty() {
            return Err(ApiError::invalid("input", format!("input[{i}] is empty.")));
        }
        let n = embedder
            .token_count(text)
            .map_err(|e| ApiError::internal(format!("tokenizing: {e}")))?;
        if n > embedder.max_tokens {
            return Err(ApiError::invalid(
                "input",
                format!(
                    "input[{i}] is {n} tokens; this model reads at most {}.",
                    embedder.max_tokens
                ),
            ));
        }
        tokens += n;
    }
    let (reply, answer) = oneshot::channel();
    loaded
        .engine
        .submit(Work::Embed { texts: inputs, reply })
        .map_err(|full| ApiError::busy(full.retry_after))?;
    let vectors = answer
        .await
        .map_err(|_| ApiError::internal("the model stopped before answering"))?
        .map_err(ApiError::from)?;
    s.metrics.prompt_tokens.inc_by(tokens as u64);
    let data: Vec<Value> = vectors
        .into_iter()
        .enumerate()
        .map(|(index, v)| {
            let embedding = if base64 {
                json!(
                    base64::engine::general_purpose::STANDARD
                        .encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>())
                )
            } else {
                json!(v)
            };
            json!({"object": "embedding", "index": index, "embedding": embedding})
        })
        .collect();
    Ok(Json(
        json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}),
    ))
}

fn model_entries(s: &AppState) -> Result<Vec<Value>, ApiError> {
    let loaded = s.loaded()?;
    let mut out = Vec::new();
    if let Some(v) = &loaded.vocab {
        out.push(json!({"id": v.id, "object": "model", "created": loaded.created, "owned_by": "alcove", "context_length": v.context_length}));
    }
    if let Some(e) = &loaded.embedder {
        out.push(json!({"id": e.id, "object": "model", "created": loaded.created, "owned_by": "alcove", "dimensions": e.dims}));
    }
    Ok(out)
}

pub async fn list_models(State(s): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"object": "list", "data": model_entries(&s)?})))
}

pub async fn get_model(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    model_entries(&s)?
        .into_iter()
        .find(|m| m["id"] == id.as_str())
        .map(Json)
        .ok_or_else(|| ApiError::model_not_found(&id))
}

fn history_for<'a>(s: &'a AppState, id: &str) -> Result<&'a crate::history::History, ApiError> {
    if !valid_id(id) {
        return Err(ApiError::invalid(
            "id",
            "conversation ids are 1 to 128 letters, digits, '-', '_' or '.'.",
        ));
    }
    s.history.as_ref().ok_or_else(|| {
        ApiError::invalid("id", "Conversation history is not enabled on this instance.")
    })
}

/// The instance's conversations, newest first: id, last change, number of turns and the first
/// question (for a list the customer picks from). Only the caller with the instance's key sees it.
pub async fn list_conversations(State(s): State<Arc<AppState>>) -> Result<Json<Value>, ApiError> {
    let history = s.history.as_ref().ok_or_else(|| {
        ApiError::invalid("conversation", "Conversation history is not enabled on this instance.")
    })?;
    let (list, _unreadable) = history
        .list()
        .map_err(|e| ApiError::internal(format!("the conversations cannot be listed: {e}")))?;
    let data: Vec<Value> = list
        .iter()
        .map(|c| {
            let title: String = c
                .messages
                .iter()
                .find(|m| m.role == "user")
                .map(|m| m.content.chars().take(80).collect())
                .unwrap_or_default();
            json!({"id": c.id, "object": "conversation", "updated_at": c.updated_at,
                   "messages": c.messages.len(), "title": title})
        })
        .collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn get_conversation(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let history = history_for(&s, &id)?;
    match history
        .load(&id)
        .map_err(|e| ApiError::internal(format!("the conversation cannot be read: {e}")))?
    {
        Some(c) => Ok(Json(
            json!({"id": c.id, "object": "conversation", "messages": c.messages, "updated_at": c.updated_at}),
        )),
        None => Err(ApiError::not_found(
            format!("No conversation `{id}` on this instance."),
            "conversation_not_found",
        )),
    }
}

pub async fn delete_conversation(
    State(s): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    let history = history_for(&s, &id)?;
    // Wait for a turn in progress, so a reply being written cannot resurrect the conversation.
    let _lock = lock_conversation(&s, &id).await;
    let deleted = history
        .delete(&id)
        .map_err(|e| ApiError::internal(format!("the conversation cannot be deleted: {e}")))?;
    if deleted {
        Ok(Json(json!({"id": id, "object": "conversation.deleted", "deleted": true})))
    } else {
        Err(ApiError::not_found(
            format!("No conversation `{id}` on this instance."),
            "conversation_not_found",
        ))
    }
}
