//! Usage records leave the request path through a bounded queue; one task writes them in
//! batches (one transaction each) and keeps a failed batch until the store takes it.

use std::time::Duration;

use prometheus::IntCounter;
use tokio::sync::mpsc;

use crate::store::{Record, Store};

/// Records waiting for the store; beyond this, new records are dropped and counted.
const QUEUE: usize = 100_000;
const BATCH: usize = 500;
/// How long the writer lets records gather after the first one: a commit per request would
/// cost a disk sync per request; this makes it at most 20 a second.
const LINGER: Duration = Duration::from_millis(50);

#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<Record>,
    dropped: IntCounter,
}

impl Recorder {
    pub fn record(&self, r: Record) {
        if self.tx.try_send(r).is_err() {
            self.dropped.inc();
        }
    }
}

/// The recorder, and the task that writes its records until every sender is gone.
pub fn start(
    store: Store,
    dropped: IntCounter,
    written: IntCounter,
) -> (Recorder, impl std::future::Future<Output = ()>) {
    let (tx, mut rx) = mpsc::channel::<Record>(QUEUE);
    let writer = async move {
        let mut batch = Vec::with_capacity(BATCH);
        let mut failures = 0u32;
        loop {
            if batch.is_empty() {
                match rx.recv().await {
                    Some(r) => batch.push(r),
                    None => return,
                }
                tokio::time::sleep(LINGER).await;
            }
            while batch.len() < BATCH {
                match rx.try_recv() {
                    Ok(r) => batch.push(r),
                    Err(_) => break,
                }
            }
            match store.insert(&batch).await {
                Ok(()) => {
                    written.inc_by(batch.len() as u64);
                    batch.clear();
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
