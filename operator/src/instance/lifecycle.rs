//! An instance's phase, conditions and GPU usage, from what was observed. Pure: the controller
//! gathers the observation, this decides, the status writer writes.

use alcove_crds::{
    InferenceInstance, InferenceInstanceStatus, InstancePhase, InstanceState, condition,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;

use super::builders;
use crate::conditions;

/// What the controller saw this time.
#[derive(Debug, Default, Clone)]
pub struct Observation {
    pub pod: Option<PodView>,
    /// The API server refused to create the pod for quota (its message).
    pub quota_refusal: Option<String>,
    /// The spec cannot be served (which field and why).
    pub invalid_spec: Option<String>,
    /// The pod waits for something it needs (a knowledge base being indexed).
    pub waiting: Option<String>,
    /// The tenant's credit is exhausted past its grace (why).
    pub credit_suspended: Option<String>,
    /// The tenant declares sensitive data without a consent record for it (why).
    pub consent_required: Option<String>,
    /// SHA-256 of the instance's API key (hex), published for the gateway.
    pub api_key_hash: Option<String>,
    /// The gateway's limits for the instance's key.
    pub rate_limits: Option<alcove_crds::instance::RateLimits>,
    /// No request for `spec.idleTimeout` (why, for people).
    pub idle: Option<String>,
    /// The model-cache volume of a URI source.
    pub model_cache: Option<String>,
    /// How far the fetch step got (its last progress line), while it runs.
    pub download: Option<alcove_crds::instance::DownloadStatus>,
}

/// The pod's fetch step, while it has not completed.
#[derive(Debug, Clone, PartialEq)]
pub enum FetchState {
    /// Running, or about to (the pod is initializing).
    Running,
    /// It failed; `permanent`: retrying cannot help (not found, refused credentials, a wrong
    /// digest, too large), so the instance is Failed while the kubelet backs off.
    Failed { permanent: bool, message: String },
}

/// What `alcove-inference fetch` writes as its termination message.
#[derive(Debug, serde::Deserialize)]
struct FetchReport {
    permanent: bool,
    message: String,
}

impl FetchState {
    fn of(pod: &Pod) -> Option<FetchState> {
        let has_fetch = pod.spec.as_ref().is_some_and(|s| {
            s.init_containers.iter().flatten().any(|c| c.name == builders::FETCH_CONTAINER)
        });
        if !has_fetch {
            return None;
        }
        let status = pod.status.clone().unwrap_or_default();
        let Some(c) = status
            .init_container_statuses
            .iter()
            .flatten()
            .find(|c| c.name == builders::FETCH_CONTAINER)
        else {
            return Some(FetchState::Running);
        };
        let state = c.state.clone().unwrap_or_default();
        if state.terminated.as_ref().is_some_and(|t| t.exit_code == 0) {
            return None;
        }
        let failed = state
            .terminated
            .filter(|t| t.exit_code != 0)
            .or_else(|| state.waiting.and(c.last_state.clone().and_then(|l| l.terminated)));
        match failed {
            Some(t) if state.running.is_none() => {
                let text = t.message.unwrap_or_default();
                Some(match serde_json::from_str::<FetchReport>(text.trim()) {
                    Ok(r) => FetchState::Failed { permanent: r.permanent, message: r.message },
                    Err(_) => FetchState::Failed {
                        permanent: false,
                        message: format!("the fetch step exited with code {}", t.exit_code),
                    },
                })
            }
            _ => Some(FetchState::Running),
        }
    }
}

/// The progress line `alcove-inference fetch` printed last, as the instance status shows it.
pub fn download_progress(log_tail: &str) -> Option<alcove_crds::instance::DownloadStatus> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Line {
        event: String,
        uri: String,
        bytes_done: i64,
        bytes_total: Option<i64>,
        bytes_per_second: i64,
        revision: Option<String>,
    }
    let line: Line = log_tail.lines().rev().find_map(|l| serde_json::from_str(l.trim()).ok())?;
    Some(alcove_crds::instance::DownloadStatus {
        uri: line.uri,
        bytes_done: line.bytes_done,
        bytes_total: line.bytes_total,
        bytes_per_second: line.bytes_per_second,
        revision: line.revision,
        waiting: line.event == "waiting",
    })
}

/// Bytes for people: `1.5 GiB`.
fn size(bytes: i64) -> String {
    let b = bytes.max(0) as f64;
    match b {
        b if b >= (1u64 << 30) as f64 => format!("{:.1} GiB", b / (1u64 << 30) as f64),
        b if b >= (1u64 << 20) as f64 => format!("{:.1} MiB", b / (1u64 << 20) as f64),
        b if b >= 1024.0 => format!("{:.1} KiB", b / 1024.0),
        b => format!("{b} B"),
    }
}

/// The Ready message while the model downloads.
fn downloading_message(uri: &str, d: Option<&alcove_crds::instance::DownloadStatus>) -> String {
    match d {
        Some(d) if d.waiting => {
            format!("waiting for another instance's download of {uri} (the same model, shared)")
        }
        Some(d) => {
            let total = d.bytes_total.map(|t| format!(" of {}", size(t))).unwrap_or_default();
            format!(
                "downloading {uri}: {}{total} at {}/s",
                size(d.bytes_done),
                size(d.bytes_per_second)
            )
        }
        None => format!("downloading {uri}"),
    }
}

/// Whether an instance should be idle now, by `spec.idleTimeout` and what the gateway published;
/// `Err(wait)`: not idle, look again after `wait` (None: nothing to wait for).
pub fn idle(
    i: &InferenceInstance,
    usage: Option<&crate::usage::GatewayUsage>,
    now: jiff::Timestamp,
) -> Result<String, Option<std::time::Duration>> {
    let Some(timeout) = i.spec.idle_timeout.as_deref().and_then(alcove_crds::Window::parse) else {
        return Err(None);
    };
    let prev = i.status.clone().unwrap_or_default();
    if prev.phase == Some(InstancePhase::Idle) {
        // A request waits for it: this idling ends.
        if prev.idle_since.is_some()
            && usage.and_then(|u| u.wake_for_idle_since.as_ref()) == prev.idle_since.as_ref()
        {
            return Err(None);
        }
        return Ok(prev.message.unwrap_or_default());
    }
    // Only a running server idles; a starting one (or one never started) waits for its run.
    let Some(started) = prev.started_at.as_deref().and_then(alcove_clock::parse) else {
        return Err(None);
    };
    let last = usage.and_then(|u| u.last_request_at).map_or(started, |l| l.max(started));
    let deadline = alcove_clock::later(last, timeout.as_secs());
    if now >= deadline {
        Ok(format!(
            "idle: no request since {} (spec.idleTimeout {timeout}); the pod is stopped and GPU \
             billing with it; the next request through the gateway wakes it",
            alcove_clock::format(last)
        ))
    } else {
        Err(Some(deadline.duration_since(now).unsigned_abs()))
    }
}

/// The parts of a pod the lifecycle depends on.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct PodView {
    pub deleting: bool,
    /// `PodScheduled`: (status, reason, message).
    pub scheduled: Option<(bool, String, String)>,
    pub node: Option<String>,
    pub ready: bool,
    pub phase: String,
    /// Why the server is not running, when it keeps failing (CrashLoopBackOff, an exit).
    pub failure: Option<String>,
    /// The model's fetch step, until it completes.
    pub fetch: Option<FetchState>,
}

/// How long a new pod may wait for the scheduler's verdict (bound, or refused with a reason)
/// before the status says it is waiting.
pub const SCHEDULER_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// Whether the scheduler has yet to say anything about a pod created less than
/// `SCHEDULER_GRACE` ago (its verdict is the next event, and worth a status; this moment is not).
pub fn awaiting_scheduler(pod: &PodView, created: Option<&Time>, now: jiff::Timestamp) -> bool {
    !pod.deleting
        && pod.scheduled.is_none()
        && created
            .is_some_and(|c| now.duration_since(c.0).as_secs_f64() < SCHEDULER_GRACE.as_secs_f64())
}

impl PodView {
    pub fn of(pod: &Pod) -> PodView {
        let status = pod.status.clone().unwrap_or_default();
        let cond = |t: &str| status.conditions.iter().flatten().find(|c| c.type_ == t).cloned();
        let scheduled = cond("PodScheduled").map(|c| {
            (
                c.status == alcove_crds::condition::TRUE,
                c.reason.unwrap_or_default(),
                c.message.unwrap_or_default(),
            )
        });
        let ready = cond("Ready").is_some_and(|c| c.status == alcove_crds::condition::TRUE);
        let failure = status.container_statuses.iter().flatten().find_map(|c| {
            let state = c.state.clone().unwrap_or_default();
            let last = c.last_state.clone().unwrap_or_default().terminated;
            let detail = |t: &k8s_openapi::api::core::v1::ContainerStateTerminated| {
                let msg = t.message.clone().unwrap_or_default();
                let msg = msg.trim();
                if msg.is_empty() {
                    format!("exit code {}", t.exit_code)
                } else {
                    format!("exit code {}: {}", t.exit_code, last_line(msg))
                }
            };
            match (state.waiting, state.terminated) {
                (Some(w), _) if w.reason.as_deref() == Some("CrashLoopBackOff") => Some(format!(
                    "the server keeps exiting ({})",
                    last.as_ref().map(detail).unwrap_or_else(|| "no exit detail".into())
                )),
                (_, Some(t)) if t.exit_code != 0 => {
                    Some(format!("the server exited ({})", detail(&t)))
                }
                _ => None,
            }
        });
        PodView {
            deleting: pod.metadata.deletion_timestamp.is_some(),
            scheduled,
            node: pod.spec.as_ref().and_then(|s| s.node_name.clone()),
            ready,
            phase: status.phase.unwrap_or_default(),
            failure,
            fetch: FetchState::of(pod),
        }
    }
}

/// The last line of a log tail (a termination message), bounded: enough to say why, never a dump.
fn last_line(text: &str) -> String {
    let line = text.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or_default().trim();
    line.chars().take(300).collect()
}

/// GPU-seconds between two instants for `gpus` devices, rounded to the nearest second.
pub fn usage(from: jiff::Timestamp, to: jiff::Timestamp, gpus: i32) -> i64 {
    let ms = to.as_millisecond() - from.as_millisecond();
    if ms <= 0 {
        return 0;
    }
    (ms * gpus as i64 + 500) / 1000
}

/// GPUs an instance is billed for: its whole GPUs, or one device for a MIG slice.
pub fn billed_gpus(i: &InferenceInstance) -> i32 {
    builders::gpu_resource(i).1
}

/// Closes the current run (if any) at `end`: its GPU-seconds join the total.
pub fn close_run(s: &mut InferenceInstanceStatus, end: jiff::Timestamp, gpus: i32) -> i64 {
    let Some(start) = s.started_at.take().as_deref().and_then(alcove_clock::parse) else {
        return 0;
    };
    let used = usage(start, end, gpus);
    s.gpu_seconds += used;
    used
}

/// The status an instance should have.
pub fn desired_status(
    i: &InferenceInstance,
    obs: &Observation,
    now: jiff::Timestamp,
) -> InferenceInstanceStatus {
    let prev = i.status.clone().unwrap_or_default();
    let generation = i.metadata.generation;
    let c = |type_: &str, ok: bool, reason: &str, message: &str| {
        conditions::condition(&prev.conditions, type_, ok, reason, message, generation, now)
    };
    let endpoint = builders::endpoint(i);
    let pod = obs.pod.as_ref().filter(|p| !p.deleting);

    let (phase, ready, scheduled) = if let Some(why) = &obs.invalid_spec {
        (
            InstancePhase::Failed,
            c(condition::READY, false, alcove_crds::reason::INVALID_SPEC, why),
            c(
                condition::SCHEDULED,
                false,
                alcove_crds::reason::INVALID_SPEC,
                "no pod for a spec that cannot be served",
            ),
        )
    } else if let Some(why) = &obs.consent_required {
        let msg = format!("{why}; no pod runs until then (volumes and key are kept)");
        (
            InstancePhase::Pending,
            c(condition::READY, false, alcove_crds::reason::CONSENT_REQUIRED, &msg),
            c(condition::SCHEDULED, false, alcove_crds::reason::CONSENT_REQUIRED, &msg),
        )
    } else if let Some(why) = &obs.credit_suspended {
        let msg = format!("{why}; the pod is deleted, billing stopped; volumes and key are kept");
        (
            InstancePhase::Suspended,
            c(condition::READY, false, alcove_crds::reason::CREDIT_EXHAUSTED, &msg),
            c(condition::SCHEDULED, false, alcove_crds::reason::CREDIT_EXHAUSTED, &msg),
        )
    } else if i.spec.state == InstanceState::Suspended {
        let msg = "suspended by spec.state: the pod is deleted, billing stopped; volumes and key are kept";
        (
            InstancePhase::Suspended,
            c(condition::READY, false, alcove_crds::reason::SUSPENDED, msg),
            c(condition::SCHEDULED, false, alcove_crds::reason::SUSPENDED, msg),
        )
    } else if let Some(why) = &obs.idle {
        (
            InstancePhase::Idle,
            c(condition::READY, false, alcove_crds::reason::IDLE, why),
            c(condition::SCHEDULED, false, alcove_crds::reason::IDLE, why),
        )
    } else if let Some(refusal) = &obs.quota_refusal {
        let msg = format!("the tenant's quota has no room for this instance: {refusal}");
        (
            InstancePhase::Pending,
            c(condition::READY, false, alcove_crds::reason::QUOTA_EXCEEDED, &msg),
            c(condition::SCHEDULED, false, alcove_crds::reason::QUOTA_EXCEEDED, &msg),
        )
    } else {
        match pod {
            None if obs.waiting.is_some() => {
                let msg = obs.waiting.clone().unwrap_or_default();
                (
                    InstancePhase::Pending,
                    c(condition::READY, false, "KnowledgeBaseNotReady", &msg),
                    c(condition::SCHEDULED, false, "KnowledgeBaseNotReady", &msg),
                )
            }
            None => (
                InstancePhase::Pending,
                c(condition::READY, false, "Creating", "creating the server pod"),
                c(condition::SCHEDULED, false, "Creating", "creating the server pod"),
            ),
            Some(p) if !p.scheduled.as_ref().is_some_and(|s| s.0) => {
                let (reason, message) = match &p.scheduled {
                    Some((_, r, m)) if !m.is_empty() => (
                        if r.is_empty() {
                            alcove_crds::reason::UNSCHEDULABLE.to_string()
                        } else {
                            r.clone()
                        },
                        m.clone(),
                    ),
                    _ => ("Scheduling".to_string(), "waiting for the scheduler".to_string()),
                };
                let msg = format!("waiting for GPUs: {message}");
                (
                    InstancePhase::Pending,
                    c(condition::READY, false, &reason, &msg),
                    c(condition::SCHEDULED, false, &reason, &message),
                )
            }
            Some(p) => {
                let node = p.node.clone().unwrap_or_default();
                let sched =
                    c(condition::SCHEDULED, true, "Scheduled", &format!("running on node {node}"));
                let uri = i.spec.model.source.uri.clone().unwrap_or_default();
                if let Some(FetchState::Failed { permanent: true, message }) = &p.fetch {
                    (
                        InstancePhase::Failed,
                        c(
                            condition::READY,
                            false,
                            alcove_crds::reason::MODEL_FETCH_FAILED,
                            message,
                        ),
                        sched,
                    )
                } else if let Some(f) = &p.fetch {
                    let mut msg = downloading_message(&uri, obs.download.as_ref());
                    if let FetchState::Failed { message, .. } = f {
                        msg = format!("{msg}; retrying after: {message}");
                    }
                    (
                        InstancePhase::Downloading,
                        c(condition::READY, false, "Downloading", &msg),
                        sched,
                    )
                } else if p.ready {
                    (
                        InstancePhase::Ready,
                        c(condition::READY, true, "Serving", &format!("serving at {endpoint}")),
                        sched,
                    )
                } else if let Some(f) = &p.failure {
                    (InstancePhase::Failed, c(condition::READY, false, "ServerFailing", f), sched)
                } else {
                    (
                        InstancePhase::Provisioning,
                        c(
                            condition::READY,
                            false,
                            "Starting",
                            &format!("the server is starting on node {node}"),
                        ),
                        sched,
                    )
                }
            }
        }
    };
    let quota = match &obs.quota_refusal {
        Some(r) => c(condition::QUOTA_AVAILABLE, false, alcove_crds::reason::QUOTA_EXCEEDED, r),
        None => c(
            condition::QUOTA_AVAILABLE,
            true,
            "WithinQuota",
            "the instance fits the tenant's quota",
        ),
    };

    let mut s = InferenceInstanceStatus {
        phase: Some(phase),
        message: Some(ready.message.clone()),
        endpoint: Some(endpoint),
        api_key_secret: Some(builders::api_key_secret_name(&i.name_any())),
        api_key_hash: obs.api_key_hash.clone().or(prev.api_key_hash.clone()),
        rate_limits: obs.rate_limits.or(prev.rate_limits),
        node: pod.filter(|_| phase != InstancePhase::Pending).and_then(|p| p.node.clone()),
        observed_generation: generation,
        model_cache: obs.model_cache.clone(),
        download: obs.download.clone().filter(|_| phase == InstancePhase::Downloading),
        // The Billing condition is metering's verdict: kept here for `set_billing` to replace, so
        // its transition time survives.
        conditions: [ready, scheduled, quota]
            .into_iter()
            .chain(prev.conditions.iter().find(|c| c.type_ == condition::BILLING).cloned())
            .collect(),
        ..prev.clone()
    };
    s.idle_since = match phase {
        InstancePhase::Idle => {
            prev.idle_since.clone().or_else(|| Some(alcove_clock::format_millis(now)))
        }
        _ => None,
    };
    // Metering: a run starts when the pod is Ready and ends when it no longer is.
    match (phase == InstancePhase::Ready, prev.started_at.is_some()) {
        (true, false) => s.started_at = Some(alcove_clock::format_millis(now)),
        (false, true) => {
            close_run(&mut s, now, billed_gpus(i));
        }
        _ => {}
    }
    s
}

/// The `Billing` condition and `billedThrough`, from what metering reported.
pub fn set_billing(
    s: &mut InferenceInstanceStatus,
    metered: &crate::billing::meter::Metered,
    credit_suspended: Option<&str>,
    generation: Option<i64>,
    now: jiff::Timestamp,
) {
    use crate::billing::meter::Metered;
    let prev = s.conditions.clone();
    let c = |ok: bool, reason: &str, message: &str| {
        conditions::condition(&prev, condition::BILLING, ok, reason, message, generation, now)
    };
    // Billing only moves forward: a pass that read a ledger cache from before this instance's
    // last report (a re-listing lags) must not take `billedThrough` back. (Under API faults it
    // flipped between the two, and with it the tenant's balance.)
    if let Metered::Billed { through: Some(through), .. } = metered {
        let known = s.billed_through.as_deref().and_then(alcove_clock::parse);
        if known.is_none_or(|k| k < *through) {
            s.billed_through = Some(alcove_clock::format_millis(*through));
        }
    }
    let through =
        s.billed_through.clone().map(|t| format!("; billed through {t}")).unwrap_or_default();
    let cond = match (credit_suspended, metered) {
        (Some(why), _) => {
            c(false, alcove_crds::reason::CREDIT_EXHAUSTED, &format!("{why}{through}"))
        }
        (None, Metered::Off(reason, message)) => c(false, reason, message),
        (None, Metered::Failed(e)) => c(
            false,
            "ReportFailed",
            &format!("usage could not be reported to Stripe ({e}); retrying{through}"),
        ),
        (None, Metered::Billed { .. }) => c(
            true,
            alcove_crds::reason::METERED,
            &format!("GPU time is reported to Stripe{through}"),
        ),
    };
    s.conditions.retain(|x| x.type_ != condition::BILLING);
    s.conditions.push(cond);
}

/// The final status of a destroyed instance: its run ends at the delete request.
pub fn final_status(i: &InferenceInstance, now: jiff::Timestamp) -> (InferenceInstanceStatus, i64) {
    let mut s = i.status.clone().unwrap_or_default();
    let end = i.metadata.deletion_timestamp.as_ref().map(|t| t.0).unwrap_or(now);
    let used = close_run(&mut s, end, billed_gpus(i));
    s.phase = Some(InstancePhase::Terminating);
    let msg = format!("destroyed: the pod is deleted; {} GPU-seconds used in total", s.gpu_seconds);
    s.message = Some(msg.clone());
    let generation = i.metadata.generation;
    let ready = conditions::condition(
        &s.conditions,
        condition::READY,
        false,
        "Terminating",
        &msg,
        generation,
        now,
    );
    s.conditions.retain(|c| c.type_ != condition::READY);
    s.conditions.insert(0, ready);
    s.node = None;
    (s, used)
}

/// Whether this is the instance's first Ready (for the time-to-ready histogram).
pub fn first_ready(prev: &InferenceInstanceStatus, next: &InferenceInstanceStatus) -> bool {
    next.phase == Some(InstancePhase::Ready)
        && prev.phase != Some(InstancePhase::Ready)
        && prev.gpu_seconds == 0
        && prev.started_at.is_none()
        && !prev
            .conditions
            .iter()
            .any(|c| c.type_ == condition::READY && c.reason == alcove_crds::reason::SUSPENDED)
}

/// A log key for an instance.
pub fn key(i: &InferenceInstance) -> String {
    format!("{}/{}", i.namespace().unwrap_or_default(), i.name_any())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn instance() -> InferenceInstance {
        serde_json::from_value(json!({
            "apiVersion": "alcove.dev/v1alpha1", "kind": "InferenceInstance",
            "metadata": {"name": "chat", "namespace": "tenant-startup", "uid": "u1", "generation": 3},
            "spec": {"model": {"format": "safetensors", "source": {"platform": "default"}}, "gpu": {"count": 2}},
        }))
        .unwrap()
    }

    fn at(s: &str) -> jiff::Timestamp {
        s.parse().unwrap()
    }

    fn pod(scheduled: Option<(bool, &str, &str)>, ready: bool) -> PodView {
        PodView {
            scheduled: scheduled.map(|(a, b, c)| (a, b.to_string(), c.to_string())),
            node: scheduled.filter(|s| s.0).map(|_| "gpu-tw-1".to_string()),
            ready,
            phase: "Running".into(),
            ..Default::default()
        }
    }

    #[test]
    fn a_new_pod_awaits_the_scheduler_only_within_the_grace() {
        let created = Time(at("2026-01-01T00:00:00Z"));
        let fresh = at("2026-01-01T00:00:02Z");
        let late = at("2026-01-01T00:00:06Z");
        assert!(awaiting_scheduler(&pod(None, false), Some(&created), fresh));
        assert!(!awaiting_scheduler(&pod(None, false), Some(&created), late), "silent scheduler");
        let refused = pod(Some((false, "Unschedulable", "0/3 nodes have GPUs")), false);
        assert!(!awaiting_scheduler(&refused, Some(&created), fresh), "a refusal is news");
        assert!(!awaiting_scheduler(&pod(Some((true, "", "")), false), Some(&created), fresh));
        let deleting = PodView { deleting: true, ..pod(None, false) };
        assert!(!awaiting_scheduler(&deleting, Some(&created), fresh));
    }

    fn step(i: &mut InferenceInstance, obs: Observation, now: &str) -> InferenceInstanceStatus {
        let s = desired_status(i, &obs, at(now));
        i.status = Some(s.clone());
        s
    }

    fn cond<'a>(s: &'a InferenceInstanceStatus, t: &str) -> &'a alcove_crds::Condition {
        s.conditions.iter().find(|c| c.type_ == t).unwrap()
    }

    #[test]
    fn phases_follow_the_pod_and_meter_ready_time() {
        let mut i = instance();
        let s = step(&mut i, Observation::default(), "2026-11-22T10:00:00Z");
        assert_eq!(s.phase, Some(InstancePhase::Pending));
        let unsched = "0/6 nodes are available: 6 Insufficient nvidia.com/gpu.";
        let s = step(
            &mut i,
            Observation {
                pod: Some(pod(Some((false, "Unschedulable", unsched)), false)),
                ..Default::default()
            },
            "2026-11-22T10:00:01Z",
        );
        assert_eq!(s.phase, Some(InstancePhase::Pending));
        assert_eq!(cond(&s, "Scheduled").message, unsched, "the scheduler's own words");
        assert_eq!(cond(&s, "Scheduled").reason, "Unschedulable");
        let s = step(
            &mut i,
            Observation { pod: Some(pod(Some((true, "", "")), false)), ..Default::default() },
            "2026-11-22T10:00:05Z",
        );
        assert_eq!(s.phase, Some(InstancePhase::Provisioning));
        assert_eq!(s.node.as_deref(), Some("gpu-tw-1"));
        assert!(s.started_at.is_none(), "not billed before Ready");
        let s = step(
            &mut i,
            Observation { pod: Some(pod(Some((true, "", "")), true)), ..Default::default() },
            "2026-11-22T10:00:10Z",
        );
        assert_eq!(s.phase, Some(InstancePhase::Ready));
        assert_eq!(s.started_at.as_deref(), Some("2026-11-22T10:00:10Z"));
        assert_eq!(cond(&s, "Ready").status, "True");
        // Unchanged observation, later: identical status (no write).
        let again = desired_status(
            &i,
            &Observation { pod: Some(pod(Some((true, "", "")), true)), ..Default::default() },
            at("2026-11-22T10:05:00Z"),
        );
        assert_eq!(Some(&again), i.status.as_ref());
        // Suspend at 10:01:10: 60 s × 2 GPUs.
        i.spec.state = InstanceState::Suspended;
        let s = step(&mut i, Observation::default(), "2026-11-22T10:01:10Z");
        assert_eq!(s.phase, Some(InstancePhase::Suspended));
        assert_eq!(s.gpu_seconds, 120);
        assert!(s.started_at.is_none());
    }

    #[test]
    fn billed_through_never_goes_back() {
        use crate::billing::meter::Metered;
        let i = instance();
        let ready =
            Observation { pod: Some(pod(Some((true, "", "")), true)), ..Default::default() };
        let now = at("2026-11-22T10:05:00Z");
        let billed = |t: Option<&str>| Metered::Billed { through: t.map(at), next: None };
        let mut s = desired_status(&i, &ready, now);
        set_billing(&mut s, &billed(Some("2026-11-22T10:04:00Z")), None, Some(1), now);
        let through = |t: &str| Some(alcove_clock::format_millis(at(t)));
        assert_eq!(s.billed_through, through("2026-11-22T10:04:00Z"));
        for stale in [billed(Some("2026-11-22T10:03:00Z")), billed(None)] {
            let mut again = s.clone();
            set_billing(&mut again, &stale, None, Some(1), now);
            assert_eq!(again.billed_through, s.billed_through, "{stale:?}");
        }
        set_billing(&mut s, &billed(Some("2026-11-22T10:05:00Z")), None, Some(1), now);
        assert_eq!(s.billed_through, through("2026-11-22T10:05:00Z"));
    }

    #[test]
    fn an_unchanged_billing_verdict_keeps_its_transition_time() {
        let mut i = instance();
        let ready =
            Observation { pod: Some(pod(Some((true, "", "")), true)), ..Default::default() };
        let off = crate::billing::meter::Metered::Off("Disabled", "billing is disabled".into());
        let mut s = desired_status(&i, &ready, at("2026-11-22T10:00:00Z"));
        set_billing(&mut s, &off, None, Some(3), at("2026-11-22T10:00:00Z"));
        i.status = Some(s.clone());
        // A resync an hour later: the same verdict yields the identical status (no write).
        let mut again = desired_status(&i, &ready, at("2026-11-22T11:00:00Z"));
        set_billing(&mut again, &off, None, Some(3), at("2026-11-22T11:00:00Z"));
        assert_eq!(again, s);
        assert_eq!(again.conditions.iter().filter(|c| c.type_ == condition::BILLING).count(), 1);
    }

    #[test]
    fn quota_refusals_and_failures_are_conditions() {
        let mut i = instance();
        let s = step(
            &mut i,
            Observation {
                quota_refusal: Some("exceeded quota: alcove-quota".into()),
                ..Default::default()
            },
            "2026-11-22T10:00:00Z",
        );
        assert_eq!(s.phase, Some(InstancePhase::Pending));
        assert_eq!(cond(&s, "QuotaAvailable").status, "False");
        assert!(cond(&s, "Ready").message.contains("exceeded quota"));
        let failing = PodView {
            failure: Some("the server keeps exiting (exit code 1: error: no such model)".into()),
            ..pod(Some((true, "", "")), false)
        };
        let s = step(
            &mut i,
            Observation { pod: Some(failing), ..Default::default() },
            "2026-11-22T10:00:01Z",
        );
        assert_eq!(s.phase, Some(InstancePhase::Failed));
        assert_eq!(cond(&s, "Ready").reason, "ServerFailing");
        assert_eq!(cond(&s, "QuotaAvailable").status, "True");
        let s = step(
            &mut i,
            Observation {
                invalid_spec: Some("spec.knowledgeBases[0].namespace: another namespace".into()),
                ..Default::default()
            },
            "2026-11-22T10:00:02Z",
        );
        assert_eq!(s.phase, Some(InstancePhase::Failed));
        assert_eq!(cond(&s, "Ready").reason, "InvalidSpec");
    }

    #[test]
    fn destroy_bills_up_to_the_delete_request() {
        let mut i = instance();
        step(
            &mut i,
            Observation { pod: Some(pod(Some((true, "", "")), true)), ..Default::default() },
            "2026-11-22T10:00:00Z",
        );
        i.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            at("2026-11-22T10:00:30.400Z"),
        ));
        let (s, used) = final_status(&i, at("2026-11-22T10:00:31Z"));
        assert_eq!(used, 61, "30.4 s × 2 GPUs, rounded");
        assert_eq!(s.gpu_seconds, 61);
        assert_eq!(s.phase, Some(InstancePhase::Terminating));
        assert!(s.started_at.is_none());
    }

    #[test]
    fn crash_loops_are_read_from_container_statuses() {
        let p: Pod = serde_json::from_value(json!({"metadata": {"name": "chat"}, "spec": {"nodeName": "n1", "containers": []}, "status": {
            "phase": "Running",
            "conditions": [{"type": "PodScheduled", "status": "True"}, {"type": "Ready", "status": "False"}],
            "containerStatuses": [{"name": "server", "image": "i", "imageID": "", "ready": false, "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": 1, "message": "loading\nerror: /models: no such model file or directory\n"}}}]}}))
        .unwrap();
        let v = PodView::of(&p);
        assert_eq!(
            v.failure.as_deref(),
            Some(
                "the server keeps exiting (exit code 1: error: /models: no such model file or directory)"
            )
        );
        assert_eq!(v.node.as_deref(), Some("n1"));
    }

    fn fetching_pod(init_status: Value) -> Pod {
        serde_json::from_value(json!({
            "metadata": {"name": "chat"},
            "spec": {"initContainers": [{"name": "fetch"}], "containers": [{"name": "server"}]},
            "status": {"phase": "Pending", "initContainerStatuses": [init_status]},
        }))
        .unwrap()
    }

    #[test]
    fn a_download_shows_its_progress_and_a_permanent_fetch_failure_fails_the_instance() {
        let mut i = instance();
        i.spec.model.source = alcove_crds::ModelSource {
            uri: Some("https://models.example/tiny.gguf".into()),
            ..Default::default()
        };
        let running = fetching_pod(json!({"name": "fetch", "state": {"running": {}}}));
        let mut view = PodView::of(&running);
        assert_eq!(view.fetch, Some(FetchState::Running));
        view.scheduled = Some((true, String::new(), String::new()));
        let progress = download_progress(
            "{\"level\":\"info\"}\n{\"event\":\"progress\",\"uri\":\"https://models.example/tiny.gguf\",\"bytesDone\":1048576,\"bytesTotal\":4194304,\"bytesPerSecond\":524288}\n",
        );
        let obs = Observation {
            pod: Some(view.clone()),
            download: progress.clone(),
            model_cache: Some("model-cache-1".into()),
            ..Default::default()
        };
        let s = step(&mut i, obs, "2026-11-22T10:00:00Z");
        assert_eq!(s.phase, Some(InstancePhase::Downloading));
        assert_eq!(s.download, progress);
        assert_eq!(s.model_cache.as_deref(), Some("model-cache-1"));
        assert_eq!(
            cond(&s, "Ready").message,
            "downloading https://models.example/tiny.gguf: 1.0 MiB of 4.0 MiB at 512.0 KiB/s"
        );
        assert!(s.started_at.is_none(), "a download is not billed");

        // A retry after a broken connection is still a download; a 404 is a failure.
        let report = |permanent: bool, message: &str| {
            json!({"name": "fetch", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                "lastState": {"terminated": {"exitCode": if permanent { 2 } else { 1 },
                    "message": json!({"uri": "u", "reason": "x", "permanent": permanent, "message": message}).to_string()}}})
        };
        let broken = PodView::of(&fetching_pod(report(false, "the download broke off")));
        assert!(matches!(broken.fetch, Some(FetchState::Failed { permanent: false, .. })));
        let mut gone = PodView::of(&fetching_pod(report(
            true,
            "https://models.example/tiny.gguf: HTTP 404 Not Found (not found)",
        )));
        gone.scheduled = view.scheduled.clone();
        let s = step(
            &mut i,
            Observation { pod: Some(gone), ..Default::default() },
            "2026-11-22T10:00:05Z",
        );
        assert_eq!(s.phase, Some(InstancePhase::Failed));
        assert_eq!(cond(&s, "Ready").reason, alcove_crds::reason::MODEL_FETCH_FAILED);
        assert!(cond(&s, "Ready").message.contains("HTTP 404"));
        assert!(s.download.is_none());

        // Done: the init container completed, the server takes over.
        let done = PodView::of(&fetching_pod(
            json!({"name": "fetch", "state": {"terminated": {"exitCode": 0}}}),
        ));
        assert_eq!(done.fetch, None);
    }
}
