//! Request bodies as OpenAI defines them, and their checks. Unknown fields are ignored (clients
//! send many); known fields with wrong types or values are refused naming the field.

use serde::Deserialize;

use super::error::ApiError;
use crate::engine::SamplingParams;
use crate::model::Message;

/// Parses a JSON body; a failure names the field path (`messages[0].content: invalid type…`).
pub fn parse<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.is_empty() {
        return Err(ApiError::invalid("", "The request body is empty; send a JSON object."));
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{')
        && serde_json::from_slice::<serde_json::Value>(body).is_ok()
    {
        return Err(ApiError::invalid("", "Invalid request: the body must be a JSON object."));
    }
    let de = &mut serde_json::Deserializer::from_slice(body);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::invalid("", format!("The request body is not valid JSON: {inner}"))
        } else if path == "." {
            ApiError::invalid("", format!("Invalid request: {inner}"))
        } else {
            ApiError::invalid(path.clone(), format!("Invalid value for '{path}': {inner}"))
        }
    })
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct ContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub text: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of content parts")]
pub enum Content {
    Text(String),
    Parts(Vec<ContentPart>),
}

#[derive(Debug, Deserialize)]
pub struct MessageIn {
    pub role: String,
    #[serde(default)]
    pub content: Option<Content>,
}

#[derive(Debug, Deserialize, Default)]
pub struct StreamOptions {
    #[serde(default)]
    pub include_usage: bool,
}

/// Fields chat and completion requests share, parsed from the same body as the request itself
/// (not `#[serde(flatten)]`ed, which would lose the field names in errors).
#[derive(Debug, Deserialize, Default)]
pub struct Sampling {
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<i64>,
    #[serde(default)]
    pub max_completion_tokens: Option<i64>,
    #[serde(default)]
    pub stop: Option<OneOrMany>,
    #[serde(default)]
    pub seed: Option<i64>,
    #[serde(default)]
    pub n: Option<i64>,
    #[serde(default)]
    pub stream: Option<bool>,
    #[serde(default)]
    pub stream_options: Option<StreamOptions>,
}

#[derive(Debug, Deserialize)]
pub struct ChatRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub messages: Vec<MessageIn>,
    /// Alcove's extension: the id under which the turns are kept (`GET /v1/conversations/{id}`).
    #[serde(default)]
    pub conversation: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct CompletionRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub prompt: OneOrMany,
    #[serde(default)]
    pub echo: Option<bool>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a string or an array of strings")]
pub enum EmbeddingInput {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
pub struct EmbeddingRequest {
    #[serde(default)]
    pub model: Option<String>,
    pub input: EmbeddingInput,
    #[serde(default)]
    pub encoding_format: Option<String>,
    #[serde(default)]
    pub dimensions: Option<i64>,
}

pub fn require_model(model: &Option<String>) -> Result<&str, ApiError> {
    match model.as_deref() {
        Some(m) if !m.is_empty() => Ok(m),
        _ => Err(ApiError::invalid(
            "model",
            "You must provide a model parameter (GET /v1/models lists them).",
        )),
    }
}

/// Most stop sequences OpenAI accepts.
const MAX_STOPS: usize = 4;

#[derive(Debug)]
pub struct Checked {
    pub params: SamplingParams,
    pub stream: bool,
    pub include_usage: bool,
}

/// Checks the sampling fields; `max_tokens` against the context is checked once the prompt's
/// length is known.
pub fn check_sampling(s: Sampling) -> Result<Checked, ApiError> {
    let temperature = s.temperature.unwrap_or(1.0);
    if !(0.0..=2.0).contains(&temperature) {
        return Err(ApiError::invalid(
            "temperature",
            format!("temperature must be between 0 and 2, got {temperature}."),
        ));
    }
    let top_p = s.top_p.unwrap_or(1.0);
    if !(top_p > 0.0 && top_p <= 1.0) {
        return Err(ApiError::invalid(
            "top_p",
            format!("top_p must be greater than 0 and at most 1, got {top_p}."),
        ));
    }
    let (field, max) = match (s.max_completion_tokens, s.max_tokens) {
        (Some(m), _) => ("max_completion_tokens", Some(m)),
        (None, m) => ("max_tokens", m),
    };
    if let Some(m) = max
        && m < 1
    {
        return Err(ApiError::invalid(field, format!("{field} must be at least 1, got {m}.")));
    }
    if let Some(n) = s.n
        && n != 1
    {
        return Err(ApiError::invalid(
            "n",
            format!("n must be 1 (one choice per request), got {n}."),
        ));
    }
    let stop = s.stop.map(OneOrMany::into_vec).unwrap_or_default();
    if stop.len() > MAX_STOPS {
        return Err(ApiError::invalid(
            "stop",
            format!("stop takes at most {MAX_STOPS} sequences, got {}.", stop.len()),
        ));
    }
    if stop.iter().any(String::is_empty) {
        return Err(ApiError::invalid("stop", "stop sequences must not be empty."));
    }
    let seed = match s.seed {
        Some(seed) => seed as u64,
        None => {
            let mut b = [0u8; 8];
            getrandom::fill(&mut b)
                .map_err(|e| ApiError::internal(format!("no randomness: {e}")))?;
            u64::from_le_bytes(b)
        }
    };
    let stream = s.stream.unwrap_or(false);
    if s.stream_options.is_some() && !stream {
        return Err(ApiError::invalid(
            "stream_options",
            "stream_options is only allowed when stream is true.",
        ));
    }
    Ok(Checked {
        params: SamplingParams {
            temperature,
            top_p,
            max_tokens: max.map(|m| m as usize),
            seed,
            stop,
        },
        stream,
        include_usage: s.stream_options.is_some_and(|o| o.include_usage),
    })
}

/// The conversation's messages as the template sees them. `developer` is OpenAI's newer name for
/// `system`.
pub fn check_messages(messages: Vec<MessageIn>) -> Result<Vec<Message>, ApiError> {
    if messages.is_empty() {
        return Err(ApiError::invalid("messages", "messages must contain at least one message."));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let role = match m.role.as_str() {
            "system" | "developer" => "system",
            "user" => "user",
            "assistant" => "assistant",
            other => {
                return Err(ApiError::invalid(
                    format!("messages[{i}].role"),
                    format!(
                        "messages[{i}].role must be one of system, developer, user, assistant; got {other:?}."
                    ),
                ));
            }
        };
        let content = match m.content {
            None => String::new(),
            Some(Content::Text(t)) => t,
            Some(Content::Parts(parts)) => {
                let mut text = String::new();
                for (j, p) in parts.into_iter().enumerate() {
                    if p.kind != "text" {
                        return Err(ApiError::invalid(
                            format!("messages[{i}].content[{j}].type"),
                            format!(
                                "messages[{i}].content[{j}] is of type {:?}; this model reads text only.",
                                p.kind
                            ),
                        ));
                    }
                    text.push_str(&p.text.unwrap_or_default());
                }
                text
            }
        };
        if role == "user" && content.trim().is_empty() {
            return Err(ApiError::invalid(
                format!("messages[{i}].content"),
                format!("messages[{i}].content must not be empty."),
            ));
        }
        out.push(Message { role: role.into(), content });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err<T: std::fmt::Debug>(r: Result<T, ApiError>) -> ApiError {
        r.expect_err("should be refused")
    }

    #[test]
    fn type_errors_name_the_field() {
        let e =
            err(parse::<ChatRequest>(br#"{"model":"m","messages":[{"role":"user","content":5}]}"#));
        assert_eq!(e.param.as_deref(), Some("messages[0].content"));
        assert!(e.message.contains("a string or an array of content parts"), "{}", e.message);
        let e = err(parse::<Sampling>(br#"{"model":"m","messages":[],"temperature":"hot"}"#));
        assert_eq!(e.param.as_deref(), Some("temperature"));
        let e = err(parse::<ChatRequest>(br#"{"model":"m"}"#));
        assert!(e.message.contains("missing field `messages`"), "{}", e.message);
        let e = err(parse::<ChatRequest>(br#"{"model":"m","#));
        assert!(e.message.contains("not valid JSON"), "{}", e.message);
        assert!(err(parse::<ChatRequest>(b"")).message.contains("empty"));
    }

    #[test]
    fn sampling_ranges_are_checked() {
        let s = |json: &str| check_sampling(serde_json::from_str(json).unwrap());
        assert_eq!(err(s(r#"{"temperature": 2.5}"#)).param.as_deref(), Some("temperature"));
        assert_eq!(err(s(r#"{"top_p": 0}"#)).param.as_deref(), Some("top_p"));
        assert_eq!(err(s(r#"{"max_tokens": 0}"#)).param.as_deref(), Some("max_tokens"));
        assert_eq!(
            err(s(r#"{"max_completion_tokens": -3}"#)).param.as_deref(),
            Some("max_completion_tokens")
        );
        assert_eq!(err(s(r#"{"n": 2}"#)).param.as_deref(), Some("n"));
        assert_eq!(err(s(r#"{"stop": ["a","b","c","d","e"]}"#)).param.as_deref(), Some("stop"));
        assert_eq!(err(s(r#"{"stop": ""}"#)).param.as_deref(), Some("stop"));
        assert_eq!(
            err(s(r#"{"stream_options": {"include_usage": true}}"#)).param.as_deref(),
            Some("stream_options")
        );
        let ok = s(r#"{"temperature": 0, "max_tokens": 5, "stop": "x", "seed": 42, "stream": true, "stream_options": {"include_usage": true}}"#).unwrap();
        assert_eq!(ok.params.max_tokens, Some(5));
        assert_eq!(ok.params.stop, vec!["x"]);
        assert_eq!(ok.params.seed, 42);
        assert!(ok.stream && ok.include_usage);
    }

    #[test]
    fn messages_are_checked() {
        let m = |json: &str| check_messages(serde_json::from_str(json).unwrap());
        assert_eq!(err(m("[]")).param.as_deref(), Some("messages"));
        assert_eq!(
            err(m(r#"[{"role":"wizard","content":"x"}]"#)).param.as_deref(),
            Some("messages[0].role")
        );
        assert_eq!(
            err(m(r#"[{"role":"system","content":"s"},{"role":"user","content":"  "}]"#))
                .param
                .as_deref(),
            Some("messages[1].content")
        );
        assert_eq!(
            err(m(r#"[{"role":"user","content":[{"type":"image_url"}]}]"#)).param.as_deref(),
            Some("messages[0].content[0].type")
        );
        let ok = m(r#"[{"role":"developer","content":"d"},{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]},{"role":"assistant","content":null}]"#).unwrap();
        assert_eq!(
            ok.iter().map(|m| (m.role.as_str(), m.content.as_str())).collect::<Vec<_>>(),
            vec![("system", "d"), ("user", "ab"), ("assistant", "")]
        );
    }
}
