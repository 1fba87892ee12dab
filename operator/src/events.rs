//! Publishing Events (events.k8s.io/v1), with repeats of one Event folded into a series as
//! kube-runtime's `Recorder` does. That recorder remembers every Event it published for six
//! minutes and scans all of them under one lock on each publish: while 10,000 instances turned
//! Ready it held 24 MiB of the operator's peak and serialised every reconcile that published.
//! This one remembers at most `REMEMBERED` Events, each for `SERIES_WINDOW` from when it was
//! first published. Events are stamped with the wall clock, as kube-runtime's are, not the
//! injected one: a test's clock stands still between jumps, and Events must keep their order
//! and unique names.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::{Event as K8sEvent, EventSeries};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};

/// How long a repeat still joins the earlier Event's series (kube-runtime's window).
const SERIES_WINDOW: SignedDuration = SignedDuration::from_mins(6);

/// How many recent Events are remembered for series; the oldest is forgotten first, and its
/// next repeat starts a new Event.
const REMEMBERED: usize = 4096;

/// What makes two Events the same: who reports, about what, and what it says.
#[derive(Clone, PartialEq, Eq, Hash, Debug)]
struct Key {
    warning: bool,
    reason: String,
    action: String,
    note: String,
    regarding: (Option<String>, Option<String>, Option<String>, Option<String>),
}

/// The recent Events, by key, and the order they were first published in.
#[derive(Default)]
struct Recent {
    events: HashMap<Key, K8sEvent>,
    order: VecDeque<(Key, Timestamp)>,
}

impl Recent {
    /// The Event to write for `key` at `now`: the remembered one with its series counted on, or
    /// `fresh` (remembered from now on). The flag says whether it continues a series.
    fn next(
        &mut self,
        key: Key,
        now: Timestamp,
        fresh: impl FnOnce() -> K8sEvent,
    ) -> (K8sEvent, bool) {
        while let Some((oldest, at)) = self.order.front()
            && (self.order.len() >= REMEMBERED || *at + SERIES_WINDOW <= now)
        {
            self.events.remove(oldest);
            self.order.pop_front();
        }
        if let Some(event) = self.events.get_mut(&key) {
            let count = event.series.as_ref().map_or(2, |s| s.count + 1);
            event.series = Some(EventSeries { count, last_observed_time: MicroTime(now) });
            return (event.clone(), true);
        }
        let event = fresh();
        self.events.insert(key.clone(), event.clone());
        self.order.push_back((key, now));
        (event, false)
    }

    /// Forgets `key` after its write failed, so that the next repeat creates the Event afresh
    /// instead of patching one the API server never stored. Failures are rare; the scan of at
    /// most `REMEMBERED` keys keeps `order` and `events` in step.
    fn forget(&mut self, key: &Key) {
        self.events.remove(key);
        self.order.retain(|(k, _)| k != key);
    }
}

/// Publishes the operator's Events.
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    controller: String,
    instance: String,
    recent: Arc<Mutex<Recent>>,
}

impl Recorder {
    pub fn new(client: Client, controller: &str, instance: &str) -> Self {
        Recorder {
            client,
            controller: controller.into(),
            instance: instance.into(),
            recent: Default::default(),
        }
    }

    /// Publishes one Event about `regarding` (cluster-scoped objects' go to `default`). Events
    /// mark transitions and are written once: one refused by a passing API error (a 500, a
    /// 429) is tried again a few times, as client-go's recorder does, not lost.
    pub async fn publish(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        crate::error::retry_passing(|| {
            self.publish_once(regarding, warning, reason, action, note.clone())
        })
        .await
    }

    async fn publish_once(
        &self,
        regarding: &ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) -> Result<(), kube::Error> {
        let now = Timestamp::now();
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let key = Key {
            warning,
            reason: reason.into(),
            action: action.into(),
            note: note.clone(),
            regarding: (
                regarding.namespace.clone(),
                regarding.name.clone(),
                regarding.uid.clone(),
                regarding.kind.clone(),
            ),
        };
        let fresh = || K8sEvent {
            metadata: ObjectMeta {
                namespace: Some(namespace.clone()),
                name: Some(format!(
                    "{}.{:x}",
                    regarding.name.as_deref().unwrap_or(&self.controller),
                    now.as_nanosecond()
                )),
                ..Default::default()
            },
            action: Some(action.into()),
            reason: Some(reason.into()),
            note: Some(note),
            event_time: Some(MicroTime(now)),
            regarding: Some(regarding.clone()),
            reporting_controller: Some(self.controller.clone()),
            reporting_instance: Some(self.instance.clone()),
            type_: Some(if warning { "Warning" } else { "Normal" }.into()),
            ..Default::default()
        };
        let (event, repeat) = self.recent().next(key.clone(), now, fresh);
        let events: Api<K8sEvent> = Api::namespaced(self.client.clone(), &namespace);
        let written = if repeat {
            let name = event.metadata.name.clone().unwrap_or_default();
            events.patch(&name, &PatchParams::default(), &Patch::Merge(&event)).await.map(drop)
        } else {
            events.create(&PostParams::default(), &event).await.map(drop)
        };
        if written.is_err() {
            self.recent().forget(&key);
        }
        written
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, Recent> {
        self.recent.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(note: &str) -> Key {
        Key {
            warning: false,
            reason: "Ready".into(),
            action: "Reconcile".into(),
            note: note.into(),
            regarding: (Some("ns".into()), Some("i1".into()), None, None),
        }
    }

    fn named(name: &str) -> impl FnOnce() -> K8sEvent {
        let name = name.to_string();
        move || K8sEvent {
            metadata: ObjectMeta { name: Some(name), ..Default::default() },
            ..Default::default()
        }
    }

    #[test]
    fn repeats_within_the_window_count_on_one_event() {
        let mut recent = Recent::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let (first, repeat) = recent.next(key("a"), t0, named("e1"));
        assert!(!repeat && first.series.is_none());
        let (second, repeat) =
            recent.next(key("a"), t0 + SignedDuration::from_secs(60), named("e2"));
        assert!(repeat, "the same Event a minute later continues the first");
        assert_eq!(second.metadata.name.as_deref(), Some("e1"));
        assert_eq!(second.series.as_ref().map(|s| s.count), Some(2));
        let (third, _) = recent.next(key("a"), t0 + SignedDuration::from_secs(120), named("e3"));
        assert_eq!(third.series.map(|s| s.count), Some(3));
        let (other, repeat) = recent.next(key("b"), t0, named("e4"));
        assert!(!repeat && other.metadata.name.as_deref() == Some("e4"), "another note is new");
        let later = t0 + SERIES_WINDOW + SignedDuration::from_secs(1);
        let (late, repeat) = recent.next(key("a"), later, named("e5"));
        assert!(!repeat && late.metadata.name.as_deref() == Some("e5"), "past the window: new");
    }

    #[test]
    fn a_forgotten_event_starts_afresh_and_leaves_no_stale_order() {
        let mut recent = Recent::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        recent.next(key("a"), t0, named("e1"));
        recent.next(key("b"), t0, named("e2"));
        recent.forget(&key("a"));
        let (again, repeat) = recent.next(key("a"), t0, named("e3"));
        assert!(!repeat, "a failed create is not patched later");
        assert_eq!(again.metadata.name.as_deref(), Some("e3"));
        assert_eq!(recent.order.len(), 2, "one entry per remembered Event");
        assert_eq!(recent.events.len(), 2);
    }

    #[test]
    fn at_most_the_remembered_number_is_kept_oldest_forgotten_first() {
        let mut recent = Recent::default();
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        for n in 0..REMEMBERED + 10 {
            recent.next(key(&n.to_string()), t0, named("e"));
        }
        recent.next(key("last"), t0, named("e"));
        assert_eq!(recent.events.len(), REMEMBERED);
        assert_eq!(recent.order.len(), REMEMBERED);
        let (_, repeat) = recent.next(key("0"), t0, named("again"));
        assert!(!repeat, "the oldest was forgotten");
        let (_, repeat) = recent.next(key(&(REMEMBERED + 9).to_string()), t0, named("again"));
        assert!(repeat, "a recent one is remembered");
    }
}
