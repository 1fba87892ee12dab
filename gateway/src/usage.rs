//! Token counts from what the instance answers, and the request changes that make it answer them.
//!
//! Non-streamed answers carry `usage`. A stream carries it in a last chunk only when asked
//! (`stream_options.include_usage`), so the gateway always asks, and removes that chunk again
//! when the client did not ask for it.

use serde_json::{Value, json};

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
}

impl Usage {
    pub fn total(&self) -> i64 {
        self.prompt_tokens.saturating_add(self.completion_tokens)
    }

    /// The counts an answer reports. A count that is negative, or a total below the prompt's,
    /// is read as none: a record that lowered a tenant's totals would be credit out of nothing.
    pub fn of(v: &Value) -> Option<Usage> {
        let u = v.get("usage").filter(|u| u.is_object())?;
        let count = |k: &str| u[k].as_i64().map(|n| n.max(0));
        let prompt = count("prompt_tokens").unwrap_or(0);
        let completion = count("completion_tokens").unwrap_or_else(|| {
            count("total_tokens").map_or(0, |t| t.saturating_sub(prompt).max(0))
        });
        Some(Usage { prompt_tokens: prompt, completion_tokens: completion })
    }
}

/// The request as forwarded: `model` filled in when omitted, usage asked for on streams.
#[derive(Debug, PartialEq)]
pub struct Prepared {
    pub body: Value,
    pub stream: bool,
    /// The client asked for the usage chunk itself (it is then passed on).
    pub client_wants_usage: bool,
}

pub fn prepare(mut body: Value, served_name: &str, takes_model: bool) -> Prepared {
    let stream = body.get("stream").and_then(Value::as_bool).unwrap_or(false);
    let client_wants_usage =
        body.pointer("/stream_options/include_usage").and_then(Value::as_bool).unwrap_or(false);
    if let Some(obj) = body.as_object_mut() {
        if takes_model && obj.get("model").is_none_or(Value::is_null) {
            obj.insert("model".into(), Value::String(served_name.into()));
        }
        if stream && !client_wants_usage {
            match obj.get_mut("stream_options").and_then(Value::as_object_mut) {
                Some(o) => {
                    o.insert("include_usage".into(), Value::Bool(true));
                }
                None => {
                    obj.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
        }
    }
    Prepared { body, stream, client_wants_usage }
}

/// Splits a server-sent-event stream into whole events as bytes arrive, so each event is passed
/// on the moment it is complete.
#[derive(Default)]
pub struct EventSplitter {
    pending: Vec<u8>,
}

impl EventSplitter {
    /// The events completed by `chunk` (each with its terminating blank line).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<Vec<u8>> {
        self.pending.extend_from_slice(chunk);
        let mut events = Vec::new();
        while let Some(end) = find_event_end(&self.pending) {
            let rest = self.pending.split_off(end);
            events.push(std::mem::replace(&mut self.pending, rest));
        }
        events
    }

    /// Whatever is left when the stream ends.
    pub fn finish(&mut self) -> Option<Vec<u8>> {
        (!self.pending.is_empty()).then(|| std::mem::take(&mut self.pending))
    }
}

fn find_event_end(b: &[u8]) -> Option<usize> {
    let lf = b.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = b.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(c)) => Some(a.min(c)),
        (a, c) => a.or(c),
    }
}

/// What one event means for metering: its usage, and whether it is the usage-only chunk.
pub fn inspect_event(event: &[u8]) -> (Option<Usage>, bool) {
    let text = String::from_utf8_lossy(event);
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim_start)
        .collect::<Vec<_>>()
        .join("\n");
    if data.is_empty() || data == "[DONE]" {
        return (None, false);
    }
    let Ok(v) = serde_json::from_str::<Value>(&data) else { return (None, false) };
    let usage = Usage::of(&v);
    let usage_only =
        usage.is_some() && v.get("choices").and_then(Value::as_array).is_some_and(Vec::is_empty);
    (usage, usage_only)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_of_chat_and_of_embeddings() {
        let chat =
            json!({"usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}});
        assert_eq!(Usage::of(&chat), Some(Usage { prompt_tokens: 5, completion_tokens: 7 }));
        let emb = json!({"usage": {"prompt_tokens": 9, "total_tokens": 9}});
        assert_eq!(Usage::of(&emb), Some(Usage { prompt_tokens: 9, completion_tokens: 0 }));
        assert_eq!(Usage::of(&json!({"usage": null})), None);
    }

    #[test]
    fn prepare_fills_the_model_and_asks_streams_for_usage() {
        let p = prepare(json!({"messages": [], "stream": true}), "chat", true);
        assert_eq!(p.body["model"], "chat");
        assert_eq!(p.body["stream_options"]["include_usage"], true);
        assert!(p.stream && !p.client_wants_usage);
        let p = prepare(
            json!({"model": "x", "stream": true, "stream_options": {"include_usage": true}}),
            "chat",
            true,
        );
        assert_eq!(p.body["model"], "x", "a named model is the instance's to judge");
        assert!(p.client_wants_usage);
        let p = prepare(json!({"input": "a"}), "chat", true);
        assert!(p.body.get("stream_options").is_none(), "only streams get stream_options");
    }

    #[test]
    fn events_split_across_chunks_and_the_usage_chunk_is_recognised() {
        let mut s = EventSplitter::default();
        assert!(s.push(b"data: {\"choices\":[{\"delta\":{}}]}").is_empty());
        let e = s.push(b"\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":2,");
        assert_eq!(e.len(), 1);
        assert_eq!(inspect_event(&e[0]), (None, false));
        let e = s.push(b"\"completion_tokens\":3}}\n\ndata: [DONE]\n\n");
        assert_eq!(e.len(), 2);
        assert_eq!(
            inspect_event(&e[0]),
            (Some(Usage { prompt_tokens: 2, completion_tokens: 3 }), true)
        );
        assert_eq!(inspect_event(&e[1]), (None, false));
        assert!(s.finish().is_none());
        assert_eq!(s.push(b"data: x\r\n\r\ntail").len(), 1);
        assert_eq!(s.finish().as_deref(), Some(&b"tail"[..]));
    }

    mod properties {
        use proptest::prelude::*;
        use serde_json::Map;

        use super::*;

        /// Bytes shaped like an event stream: pieces of data lines and both terminators.
        fn stream() -> impl Strategy<Value = Vec<u8>> {
            let piece = prop_oneof![
                Just(b"\n\n".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r".to_vec()),
                Just(b"data: ".to_vec()),
                proptest::collection::vec(any::<u8>(), 0..8),
            ];
            proptest::collection::vec(piece, 0..40).prop_map(|p| p.concat())
        }

        proptest! {
            /// However the instance's bytes are cut into chunks, the client gets the same events,
            /// and every byte once, in order.
            #[test]
            fn events_do_not_depend_on_chunk_boundaries(
                bytes in stream(),
                cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12),
            ) {
                let mut whole = EventSplitter::default();
                let mut expected = whole.push(&bytes);
                expected.extend(whole.finish());
                let mut at: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
                at.sort();
                let mut chunked = EventSplitter::default();
                let (mut got, mut from) = (Vec::new(), 0);
                for to in at.into_iter().chain([bytes.len()]) {
                    got.extend(chunked.push(&bytes[from..to]));
                    from = to;
                }
                got.extend(chunked.finish());
                prop_assert_eq!(got.concat(), bytes);
                prop_assert_eq!(got, expected);
            }

            /// The gateway changes a request body only where it must: the model when none is
            /// named, usage asked for on a stream the client did not ask it for. Every other field
            /// reaches the instance as the client sent it.
            #[test]
            fn requests_are_forwarded_as_sent_but_for_model_and_usage(
                fields in proptest::collection::btree_map(
                    proptest::sample::select(vec!["model", "stream", "stream_options", "x"]),
                    prop_oneof![
                        Just(Value::Null),
                        any::<bool>().prop_map(Value::from),
                        "[a-z]{0,4}".prop_map(Value::from),
                        Just(json!({"include_usage": false})),
                        Just(json!({"include_usage": true, "other": 1})),
                    ],
                    0..5,
                ),
                takes_model in any::<bool>(),
            ) {
                let body: Map<String, Value> =
                    fields.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
                let body = Value::Object(body);
                let p = prepare(body.clone(), "served", takes_model);
                prop_assert_eq!(p.stream, body["stream"] == true);
                let asked = body["stream_options"]["include_usage"] == true;
                prop_assert_eq!(p.client_wants_usage, asked);
                for (k, v) in body.as_object().unwrap() {
                    match k.as_str() {
                        "model" if takes_model && v.is_null() => {
                            prop_assert_eq!(&p.body[k], "served")
                        }
                        "stream_options" if p.stream && !p.client_wants_usage => {
                            prop_assert_eq!(&p.body[k]["include_usage"], true);
                            if let Some(o) = v.as_object() {
                                for (ok, ov) in o.iter().filter(|(ok, _)| *ok != "include_usage") {
                                    prop_assert_eq!(&p.body[k][ok], ov);
                                }
                            }
                        }
                        _ => prop_assert_eq!(&p.body[k], v, "{}", k),
                    }
                }
                if takes_model && !body.as_object().unwrap().contains_key("model") {
                    prop_assert_eq!(&p.body["model"], "served");
                }
            }

            /// Whatever counts an answer claims, usage is never negative and never panics.
            #[test]
            fn usage_counts_are_never_negative(
                prompt in proptest::option::of(any::<i64>()),
                completion in proptest::option::of(any::<i64>()),
                total in proptest::option::of(any::<i64>()),
            ) {
                let v = json!({"usage": {
                    "prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": total,
                }});
                let u = Usage::of(&v).unwrap();
                prop_assert!(u.prompt_tokens >= 0 && u.completion_tokens >= 0, "{u:?}");
                prop_assert!(u.total() >= 0);
                if let (Some(p), Some(c)) = (prompt, completion) && p >= 0 && c >= 0 {
                    prop_assert_eq!(u, Usage { prompt_tokens: p, completion_tokens: c });
                }
            }
        }
    }
}
