//! Reconcile slots shared fairly between tenants. Each controller runs at most `CONCURRENCY`
//! reconciles at once. When more wait, a freed slot goes to the next tenant in turn, not to the
//! longest waiter: a tenant that creates 5,000 instances at once waits behind its own, while
//! another tenant's one instance waits for at most one slot per busy tenant. (kube-runtime's own
//! limit is first come, first served.)

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// How many reconciles one controller runs at once. Unbounded, a burst (10,000 instances created
/// together) started thousands at once, each holding its objects, its builders' output and a
/// connection: the operator's memory peaked at 800 MiB. A few dozen keep the API server busy.
pub const CONCURRENCY: usize = 32;

/// One controller's slots: how many are free, each tenant's waiters, and whose turn is next.
#[derive(Default)]
struct Queue {
    busy: usize,
    waiting: HashMap<String, VecDeque<oneshot::Sender<Slot>>>,
    turns: VecDeque<String>,
}

/// Every controller's slots.
#[derive(Default)]
pub struct Slots {
    queues: Mutex<HashMap<&'static str, Queue>>,
    capacity: usize,
}

/// A running reconcile's slot; dropping it hands the slot on.
pub struct Slot {
    owner: Option<(Arc<Slots>, &'static str)>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some((slots, controller)) = self.owner.take() {
            slots.release(controller);
        }
    }
}

impl Slots {
    pub fn new(capacity: usize) -> Arc<Slots> {
        Arc::new(Slots { queues: Default::default(), capacity })
    }

    /// Waits for one of `controller`'s slots, in `tenant`'s turn.
    pub async fn take(self: &Arc<Self>, controller: &'static str, tenant: &str) -> Slot {
        let waiting = {
            let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
            let queue = queues.entry(controller).or_default();
            if queue.busy < self.capacity && queue.turns.is_empty() {
                queue.busy += 1;
                return Slot { owner: Some((self.clone(), controller)) };
            }
            let (tx, rx) = oneshot::channel();
            let mine = queue.waiting.entry(tenant.to_string()).or_default();
            if mine.is_empty() {
                queue.turns.push_back(tenant.to_string());
            }
            mine.push_back(tx);
            rx
        };
        // The sender lives until a slot is handed over (`release` never drops a waiter).
        waiting.await.unwrap_or(Slot { owner: None })
    }

    /// Hands a freed slot to the next tenant in turn, or marks it free. A waiter that went away
    /// (its reconcile was cancelled) is passed over.
    fn release(self: &Arc<Self>, controller: &'static str) {
        let mut queues = self.queues.lock().unwrap_or_else(|p| p.into_inner());
        let Some(queue) = queues.get_mut(controller) else { return };
        while let Some(tenant) = queue.turns.pop_front() {
            let Some(mine) = queue.waiting.get_mut(&tenant) else { continue };
            let next = mine.pop_front();
            if mine.is_empty() {
                queue.waiting.remove(&tenant);
            } else {
                queue.turns.push_back(tenant);
            }
            let Some(next) = next else { continue };
            // A slot the waiter never receives is dropped in the channel, which releases it
            // again: that must not happen under this lock, so a refused one is disarmed.
            match next.send(Slot { owner: Some((self.clone(), controller)) }) {
                Ok(()) => return,
                Err(mut refused) => refused.owner = None,
            }
        }
        queue.busy -= 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    /// Waiters queued in `order` (tenant names) behind one held slot; returns the order in which
    /// they got it.
    async fn served(order: &[&'static str]) -> Vec<&'static str> {
        let slots = Slots::new(1);
        let held = slots.take("c", "first").await;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for &tenant in order {
            let (slots, tx) = (slots.clone(), tx.clone());
            let mut waiter = Box::pin(async move {
                let _slot = slots.take("c", tenant).await;
                tx.send(tenant).unwrap();
            });
            // Queued now, in this order.
            assert!((&mut waiter).now_or_never().is_none());
            tokio::spawn(waiter);
        }
        drop(held);
        let mut got = Vec::new();
        while got.len() < order.len() {
            got.push(rx.recv().await.unwrap());
        }
        got
    }

    #[tokio::test]
    async fn a_busy_tenant_takes_turns_with_the_others() {
        let got = served(&["big", "big", "big", "big", "small", "other"]).await;
        assert_eq!(got, ["big", "small", "other", "big", "big", "big"]);
    }

    #[tokio::test]
    async fn a_waiter_that_went_away_is_passed_over_and_its_slot_not_lost() {
        let slots = Slots::new(1);
        let held = slots.take("c", "a").await;
        let mut gone = Box::pin(slots.take("c", "b"));
        assert!((&mut gone).now_or_never().is_none());
        drop(gone);
        let mut next = Box::pin(slots.take("c", "c"));
        assert!((&mut next).now_or_never().is_none());
        drop(held);
        let slot = next.await;
        drop(slot);
        // All free again: two controllers' slots are separate, and a fresh take is immediate.
        assert!(slots.take("c", "d").now_or_never().is_some());
        assert!(slots.take("other", "d").now_or_never().is_some());
        assert_eq!(slots.queues.lock().unwrap()["c"].busy, 0);
    }

    #[tokio::test]
    async fn at_most_capacity_run_at_once() {
        let slots = Slots::new(2);
        let a = slots.take("c", "t").await;
        let b = slots.take("c", "u").await;
        let mut third = Box::pin(slots.take("c", "v"));
        assert!((&mut third).now_or_never().is_none(), "a third waits");
        drop(a);
        assert!((&mut third).now_or_never().is_some(), "a freed slot is handed on");
        drop(b);
    }
}
