//! Billing's runtime state, held by the controllers' context and the webhook: the Stripe client
//! when a key is configured, the report interval, the test-only crash points.

use std::collections::HashSet;
use std::sync::Mutex;
use std::time::Duration;

use super::stripe;
use crate::config::Secret;
use crate::error::Result;

/// Billing's runtime: the Stripe client when a key is configured.
pub struct Billing {
    pub stripe: Option<stripe::Stripe>,
    pub webhook_secret: Option<Secret>,
    pub interval: Duration,
    #[cfg(feature = "test-hooks")]
    crash_after: Option<String>,
    /// Instances whose Stripe records were checked against the ledger since this process started.
    checked: Mutex<HashSet<String>>,
}

impl Billing {
    pub fn new(
        args: &crate::config::OperatorArgs,
        config: &crate::config::Config,
    ) -> Result<Billing> {
        let stripe = args
            .stripe_api_key
            .as_ref()
            .map(|k| stripe::Stripe::new(k, &args.stripe_api_base))
            .transpose()?;
        Ok(Billing {
            stripe,
            webhook_secret: args.stripe_webhook_secret.clone(),
            interval: Duration::from_secs(config.billing.report_interval_seconds),
            #[cfg(feature = "test-hooks")]
            crash_after: args.crash_after.clone(),
            checked: Mutex::default(),
        })
    }

    /// Tests: dies here, as a SIGKILL would, when asked to (`--crash-after`). A no-op in builds
    /// without the `test-hooks` feature.
    pub(super) fn crash_point(&self, step: &str) {
        #[cfg(not(feature = "test-hooks"))]
        let _ = step;
        #[cfg(feature = "test-hooks")]
        if self.crash_after.as_deref() == Some(step) {
            tracing::warn!(step, "--crash-after: killing the operator now");
            // SAFETY: kill(2) on our own pid with SIGKILL has no memory-safety preconditions.
            #[allow(unsafe_code)]
            unsafe {
                libc::kill(libc::getpid(), libc::SIGKILL);
            }
        }
    }

    pub(super) fn checked(&self, uid: &str) -> bool {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).contains(uid)
    }

    pub(super) fn mark_checked(&self, uid: &str) {
        self.checked.lock().unwrap_or_else(|p| p.into_inner()).insert(uid.to_string());
    }
}
