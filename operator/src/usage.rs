//! What the gateway publishes about an instance (see `alcove_crds::gateway_usage`), parsed: its
//! token totals (for token billing) and its last request and pending wake-up (for idling). Pure.

use alcove_crds::gateway_usage as u;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::ConfigMap;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct GatewayUsage {
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub last_request_at: Option<Timestamp>,
    /// The `status.idleSince` whose idling a waiting request ends.
    pub wake_for_idle_since: Option<String>,
    /// The gateway saw the instance deleted and published its last totals.
    pub last_word: bool,
}

impl GatewayUsage {
    pub fn of(cm: &ConfigMap) -> GatewayUsage {
        let data = cm.data.clone().unwrap_or_default();
        let int = |k: &str| data.get(k).and_then(|v| v.parse::<i64>().ok()).unwrap_or(0).max(0);
        let time = |k: &str| data.get(k).and_then(|v| alcove_clock::parse(v));
        GatewayUsage {
            prompt_tokens: int(u::PROMPT_TOKENS),
            completion_tokens: int(u::COMPLETION_TOKENS),
            last_request_at: time(u::LAST_REQUEST_AT),
            wake_for_idle_since: data.get(u::WAKE_FOR_IDLE_SINCE).cloned(),
            last_word: data.get(u::LAST_WORD).is_some_and(|v| v == "true"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_gateway_writes_and_ignores_garbage() {
        let cm = ConfigMap {
            data: Some(
                [
                    (u::PROMPT_TOKENS, "30"),
                    (u::COMPLETION_TOKENS, "-4"),
                    (u::LAST_REQUEST_AT, "2027-01-01T00:00:00.5Z"),
                    (u::WAKE_FOR_IDLE_SINCE, "2027-01-01T00:00:00Z"),
                ]
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ),
            ..Default::default()
        };
        let g = GatewayUsage::of(&cm);
        assert_eq!((g.prompt_tokens, g.completion_tokens), (30, 0));
        assert_eq!(g.last_request_at, Some("2027-01-01T00:00:00.5Z".parse().unwrap()));
        assert_eq!(g.wake_for_idle_since.as_deref(), Some("2027-01-01T00:00:00Z"));
        assert_eq!(GatewayUsage::of(&ConfigMap::default()), GatewayUsage::default());
    }
}
