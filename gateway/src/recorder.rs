//! Usage records leave the request path through a bounded queue; one task writes them in
//! batches (one transaction each) and keeps a failed batch until the store takes it. Each record
//! comes with a signal of its commit: an answer's last byte waits for it, so that a gateway
//! killed a moment after answering has not lost what the answer is billed by.

use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::{mpsc, oneshot};

use crate::store::{Record, Store};

/// Records waiting for the store; beyond this, new records are dropped and counted.
const QUEUE: usize = 100_000;
const BATCH: usize = 500;

/// A queued record and who waits for its commit.
struct Queued {
    record: Record,
    committed: oneshot::Sender<()>,
}

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Queued>,
    dropped: IntCounter,
}

impl Recorder {
    /// Queues `r`. The receiver resolves once it is committed; None when the queue was full and
    /// it was dropped (counted).
    pub fn record(&self, r: Record) -> Option<oneshot::Receiver<()>> {
        let (committed, rx) = oneshot::channel();
        if self.tx.try_send(Queued { record: r, committed }).is_err() {
            self.dropped.inc();
            return None;
        }
        Some(rx)
    }
}

/// The recorder, and the task that writes its records until every sender is gone.
pub fn start(
    store: Store,
    dropped: IntCounter,
    written: IntCounter,
) -> (Recorder, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel::<Queued>(QUEUE);
    let writer = async move {
        let mut batch: Vec<Record> = Vec::with_capacity(BATCH);
        let mut waiting: Vec<oneshot::Sender<()>> = Vec::with_capacity(BATCH);
        let mut failures = 0u32;
        loop {
            // Group commit: what queued while the last transaction ran goes in the next one, so
            // the answers wait for one commit, not a timer, and a busy gateway commits in batches.
            if batch.is_empty() {
                match rx.recv().await {
                    Some(q) => {
                        batch.push(q.record);
                        waiting.push(q.committed);
                    }
                    None => return,
                }
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(q) => {
                        batch.push(q.record);
                        waiting.push(q.committed);
                    }
                    Err(_) => break,
                }
            }
            match store.insert(&batch).await {
                Ok(()) => {
                    written.inc_by(batch.len() as u64);
                    batch.clear();
                    for w in waiting.drain(..) {
                        let _ = w.send(());
                    }
                    failures = 0;
                }
                Err(e) => {
                    failures += 1;
                    tracing::warn!(error = %e, records = batch.len(), "usage store refused a batch; retrying");
                    let wait = Duration::from_millis(100 * 2u64.pow(failures.min(6)));
                    tokio::time::sleep(wait).await;
                }
            }
        }
    };
    (Recorder { tx, dropped }, writer)
}
