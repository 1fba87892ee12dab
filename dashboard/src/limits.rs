//! A sliding-window count per key: at most `max` events per `window`. The sign-in limits (codes
//! per address, requests per client address) are such counts; each answer says when the next
//! event will be allowed, for `Retry-After` and for the words on the page.

use std::collections::HashMap;
use std::hash::Hash;

use jiff::{SignedDuration, Timestamp};

pub struct Window<K> {
    max: usize,
    window: SignedDuration,
    events: HashMap<K, Vec<Timestamp>>,
}

impl<K: Hash + Eq + Clone> Window<K> {
    pub fn new(max: usize, window: SignedDuration) -> Window<K> {
        Window { max, window, events: HashMap::new() }
    }

    /// Counts an event for `key` at `now` if the window allows it; otherwise how long until it
    /// will.
    pub fn take(&mut self, key: &K, now: Timestamp) -> Result<(), SignedDuration> {
        self.forget_before(now);
        let events = self.events.entry(key.clone()).or_default();
        if events.len() >= self.max {
            return Err(events[0].duration_since(now) + self.window);
        }
        events.push(now);
        Ok(())
    }

    /// Drops what has left the window, so the map holds only the last window's keys.
    fn forget_before(&mut self, now: Timestamp) {
        let window = self.window;
        self.events.retain(|_, events| {
            events.retain(|t| now.duration_since(*t) < window);
            !events.is_empty()
        });
    }

    /// Keys with events in the window (for tests and the memory bound).
    pub fn len(&self) -> usize {
        self.events.len()
    }

    pub fn is_empty(&self) -> bool {
        self.events.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_window_allows_max_events_then_says_when_the_next_is_allowed() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let mut w = Window::new(3, SignedDuration::from_mins(60));
        for m in 0..3 {
            w.take(&"a", t0 + SignedDuration::from_mins(m)).unwrap();
        }
        let at = t0 + SignedDuration::from_mins(10);
        assert_eq!(w.take(&"a", at), Err(SignedDuration::from_mins(50)));
        assert_eq!(w.take(&"b", at), Ok(()), "other keys are not affected");
        // The first event leaves the window after an hour: one more is allowed, not two.
        let later = t0 + SignedDuration::from_mins(60);
        assert_eq!(w.take(&"a", later), Ok(()));
        assert_eq!(w.take(&"a", later), Err(SignedDuration::from_mins(1)));
        // A quiet window forgets its keys.
        w.take(&"c", t0 + SignedDuration::from_mins(200)).unwrap();
        assert_eq!(w.len(), 1);
    }
}
