//! Chaos (issue 24 §1): churn of instances (create, suspend, resume, destroy, through kubectl and
//! the dashboard), a knowledge base, top-ups, gateway traffic and a tenant's deletion, with a
//! SIGKILL in every round, at a random moment, of one component: the operator's leader, its
//! standby, the gateway or the dashboard, each then restarted in place as a kubelet would. After
//! every round the whole world must converge; at the end the money, the usage records and the
//! erasures are checked to the second and the token.
//!
//! `ALCOVE_CHAOS_KILLS` (rounds, one kill each; default 8), `ALCOVE_CHAOS_INSTANCES` (churned
//! instances made over the run; default 8) and `ALCOVE_CHAOS_SEED` size it; run with
//! `-- --nocapture` to see its figures (docs/reliability.md, "Chaos").

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use alcove_tests::*;
use jiff::{SignedDuration, Timestamp};
use serde_json::Value;

const TENANTS: [&str; 3] = ["a", "b", "c"];
/// Instances that serve the gateway's traffic throughout (until the final suspension).
const STEADY: [(&str, &str); 2] = [("a", "steady"), ("b", "steady")];
/// Running churned instances at most at once: real inference processes on a small machine.
const MAX_RUNNING: usize = 6;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A seeded die (xorshift64*): a run is repeated by its seed.
struct Die(u64);

impl Die {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) % n.max(1)
    }

    fn chance(&mut self, one_in: u64) -> bool {
        self.below(one_in) == 0
    }

    fn millis(&mut self, from: u64, to: u64) -> Duration {
        Duration::from_millis(from + self.below(to - from))
    }
}

fn tenant(name: &str) -> String {
    format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: Tenant\nmetadata: {{name: {name}}}\nspec:\n  displayName: Chaos {name}\n  tier: basic\n  region: tw-taipei-1\n  quota: {{maxGpus: 16, maxInstances: 64, maxStorage: 1Ti, maxKnowledgeBases: 4}}\n  owners: [{{kind: User, name: owner@{name}.example}}]\n  billing: {{customer: create, currency: usd, suspendGracePeriod: 30d}}\n  retention: {{conversationHistory: 1d, knowledgeBase: 1d}}\n"
    )
}

fn instance(tenant: &str, name: &str, state: &str) -> String {
    format!(
        "apiVersion: alcove.dev/v1alpha1\nkind: InferenceInstance\nmetadata: {{name: {name}, namespace: tenant-{tenant}}}\nspec:\n  model: {{format: gguf, source: {{platform: default-gguf}}, path: model.gguf}}\n  gpu: {{count: 1}}\n  state: {state}\n"
    )
}

const KNOWLEDGE_BASE: &str = "apiVersion: alcove.dev/v1alpha1\nkind: KnowledgeBase\nmetadata: {name: notes, namespace: tenant-b}\nspec:\n  sources:\n    - name: notes\n      inline: The office opens at nine. Lunch is at noon.\n  embeddingModel:\n    source: {platform: default-embedding}\n";

#[derive(Clone, Copy, PartialEq, Debug)]
enum Want {
    Running,
    Suspended,
    Gone,
}

/// What the test asked of one instance, and the GPU time it expects billed: each run from the
/// clock at which it became Ready to the clock at which it was stopped.
struct Inst {
    tenant: String,
    name: String,
    uid: String,
    want: Want,
    runs: Vec<(Timestamp, Option<Timestamp>)>,
    steady: bool,
}

impl Inst {
    fn id(&self) -> String {
        format!("tenant-{}/{}", self.tenant, self.name)
    }

    fn stop(&mut self, at: Timestamp) {
        if let Some(run) = self.runs.last_mut().filter(|r| r.1.is_none()) {
            run.1 = Some(at);
        }
    }

    fn expected_gpu_millis(&self) -> i64 {
        self.runs.iter().map(|(a, b)| b.unwrap().duration_since(*a).as_millis() as i64).sum()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Target {
    Leader,
    Gateway,
    Standby,
    Dashboard,
}

/// One answer the gateway gave the traffic.
struct Answer {
    instance: String,
    status: u16,
    request_id: String,
}

struct World {
    p: Platform,
    stripe: LocalStripe,
    clock: Clock,
    gw: Gateway,
    dashboard: Dashboard,
    customers: BTreeMap<String, String>,
    credited: BTreeMap<String, i64>,
    now: Timestamp,
}

impl World {
    async fn start() -> World {
        let mut p = Platform::start_with(with_inference).await;
        let stripe = LocalStripe::start(&p.dir.path().join("localstripe.log")).await;
        let config = p.dir.path().join("operator.yaml");
        std::fs::write(
            &config,
            "billing:\n  reportIntervalSeconds: 60\n  prices:\n    usd:\n      \"*\": {perGpuHour: 360, perMillionInputTokens: 10000, perMillionOutputTokens: 30000}\ntiers:\n  basic: {requestsPerMinute: 100000, tokensPerMinute: 100000000}\n",
        )
        .unwrap();
        let clock = Clock(p.dir.path().join("clock"));
        let now = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
        clock.set(now);
        let clock_path = clock.0.display().to_string();
        let args = billing_operator_args(&config, &stripe, &clock);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Two replicas with leader election (the chart's default).
        p.spawn_operator(&args).await;
        p.spawn_operator(&args).await;
        for t in TENANTS {
            p.ok_in(&["apply", "-f", "-"], &tenant(t)).await;
        }
        let mut customers = BTreeMap::new();
        for t in TENANTS {
            p.wait_condition(&format!("tenant/{t}"), "Ready", 90).await;
            let id =
                until_some("the tenant's Stripe customer", Duration::from_secs(60), || async {
                    Some(p.jsonpath(&["get", "tenant", t], "{.status.billing.customerId}").await)
                        .filter(|s| !s.is_empty())
                })
                .await;
            customers.insert(t.to_string(), id);
        }
        let store = format!("sqlite://{}", p.dir.path().join("usage.db").display());
        let gw = Gateway::start(
            &p,
            "gw",
            &["--usage-store", &store, "--publish-seconds", "1", "--clock-file", &clock_path],
        )
        .await;
        let base = gw.base.trim_end_matches("/v1").to_string();
        let ca = gw.ca.display().to_string();
        let dashboard = Dashboard::start_as(
            &p,
            "dashboard",
            &p.component_kubeconfig("dashboard"),
            &["--gateway-url", &base, "--gateway-ca", &ca, "--usage-store", &store],
        )
        .await;
        let credited = TENANTS.iter().map(|t| (t.to_string(), 0)).collect();
        World { p, stripe, clock, gw, dashboard, customers, credited, now }
    }

    /// Applies an instance; returns its UID.
    async fn create(&self, t: &str, name: &str, state: &str) -> String {
        self.p.ok_in(&["apply", "-f", "-"], &instance(t, name, state)).await;
        let ns = format!("tenant-{t}");
        self.p.jsonpath(&["get", "inst", name, "-n", &ns], "{.metadata.uid}").await
    }

    /// Sets the injected clock to the real time (whole seconds), and holds it there for the
    /// round. It must not run ahead of the API server's: a destroyed run ends at its
    /// deletionTimestamp, which the API server stamps with the real time.
    fn tick(&mut self) {
        let real = Timestamp::from_second(Timestamp::now().as_second()).unwrap();
        self.now = real.max(self.now.checked_add(SignedDuration::from_secs(1)).unwrap());
        self.clock.set(self.now);
    }

    /// Deletes an instance as a GitOps pipeline would; returns the deletionTimestamp the API
    /// server gave it (the operator's finalizer holds it until its final usage is recorded).
    async fn destroy(&self, t: &str, name: &str) -> Timestamp {
        use alcove_crds::instance::InferenceInstance;
        let api: kube::Api<InferenceInstance> =
            kube::Api::namespaced(self.p.client.clone(), &format!("tenant-{t}"));
        let deleted = api.delete(name, &Default::default()).await.unwrap().left();
        let at = deleted
            .and_then(|i| i.metadata.deletion_timestamp)
            .unwrap_or_else(|| panic!("{t}/{name} went at once: no finalizer held it"))
            .0;
        Timestamp::from_second(at.as_second()).unwrap()
    }

    /// The operator replica holding the leader Lease.
    async fn leader(&self) -> Option<usize> {
        let (_, holder, _) = self
            .p
            .kubectl(&[
                "get",
                "lease",
                alcove::leader::LEASE_NAME,
                "-n",
                "alcove-system",
                "-o",
                "jsonpath={.spec.holderIdentity}",
            ])
            .await;
        self.p.operators.iter().position(|o| o.identity == holder.trim())
    }

    /// A card payment at Stripe, whose `payment_intent.succeeded` event is then delivered, as
    /// Stripe does, to the operator's Service (a random replica; a dead one is tried again
    /// elsewhere) until one answers 200; `twice`: delivered again, as after a lost answer.
    async fn top_up(&mut self, t: &str, amount: i64, twice: bool, die: &mut Die) {
        let pi = self.stripe.pay(&self.customers[t], amount).await;
        let event = self.stripe.succeeded_event(&pi).await;
        let payload = event.to_string();
        for _ in 0..if twice { 2 } else { 1 } {
            let started = Instant::now();
            loop {
                let n = die.below(self.p.operators.len() as u64) as usize;
                let hook = format!("{}/webhooks/stripe", self.p.operators[n].http);
                let signature = stripe_signature(self.clock.now().as_second(), &payload);
                let (code, body) =
                    http("POST", &hook, &[("Stripe-Signature", &signature)], Some(&payload)).await;
                if code == 200 {
                    break;
                }
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "no replica took the delivery: {code} {body}"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
        *self.credited.get_mut(t).unwrap() += amount;
    }

    async fn kill(&mut self, target: Target) -> &'static str {
        let leader = self.leader().await;
        match target {
            Target::Leader | Target::Standby => {
                let n = match (target, leader) {
                    (Target::Leader, Some(l)) => l,
                    (_, Some(l)) => (l + 1) % self.p.operators.len(),
                    (_, None) => 0,
                };
                self.p.operators[n].kill().await;
                if leader == Some(n) { "operator (leader)" } else { "operator (standby)" }
            }
            Target::Gateway => {
                self.gw.kill().await;
                "gateway"
            }
            Target::Dashboard => {
                self.dashboard.kill().await;
                "dashboard"
            }
        }
    }

    async fn restart(&mut self, target: Target) {
        match target {
            Target::Leader | Target::Standby => {
                for o in &mut self.p.operators {
                    if o.child.try_wait().unwrap().is_some() {
                        o.restart().await;
                    }
                }
            }
            Target::Gateway => self.gw.restart().await,
            Target::Dashboard => self.dashboard.restart().await,
        }
    }

    /// What is not yet as asked, or None when everything is.
    async fn unconverged(&self, insts: &[Inst], kb: Option<bool>, deleted: bool) -> Option<String> {
        let all = self.p.json(&["get", "inst", "-A"]).await;
        let pods = self.p.json(&["get", "pods", "-A", "-l", "alcove.dev/instance"]).await;
        let found: BTreeMap<String, &Value> = all["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| {
                let m = &i["metadata"];
                (format!("{}/{}", m["namespace"].as_str().unwrap(), m["name"].as_str().unwrap()), i)
            })
            .collect();
        let pod_of: BTreeSet<String> = pods["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| {
                let m = &p["metadata"];
                format!("{}/{}", m["namespace"].as_str().unwrap(), m["name"].as_str().unwrap())
            })
            .collect();
        for i in insts {
            let id = i.id();
            let got = found.get(&id);
            let phase = got.map(|g| g["status"]["phase"].as_str().unwrap_or("").to_string());
            match i.want {
                Want::Gone if got.is_some() => return Some(format!("{id} is not gone")),
                Want::Running if phase.as_deref() != Some("Ready") => {
                    let why = got.and_then(|g| g["status"]["message"].as_str()).unwrap_or("");
                    return Some(format!("{id} is {phase:?}, not Ready: {why}"));
                }
                Want::Running => {
                    let started = got.unwrap()["status"]["startedAt"].as_str().unwrap_or("");
                    let want = i.runs.last().unwrap().0;
                    // Checked, not waited for: a run's start never moves once written.
                    let at: Timestamp = started.parse().expect("a Ready instance has startedAt");
                    assert_eq!(at, want, "{id}'s run started at the clock of its round");
                }
                Want::Suspended if phase.as_deref() != Some("Suspended") => {
                    return Some(format!("{id} is {phase:?}, not Suspended"));
                }
                _ => {}
            }
            if i.want != Want::Running && pod_of.contains(&id) {
                return Some(format!("{id} still has its pod"));
            }
        }
        for t in TENANTS {
            let phase = self.p.jsonpath(&["get", "tenant", t], "{.status.phase}").await;
            let want = if t == "c" && deleted { "Erasing" } else { "Ready" };
            if phase != want {
                return Some(format!("tenant {t} is {phase:?}, not {want}"));
            }
            if t == "c" && deleted {
                continue;
            }
            let credited =
                self.p.jsonpath(&["get", "tenant", t], "{.status.billing.credited}").await;
            if credited.parse::<i64>().ok() != Some(self.credited[t]) {
                return Some(format!("tenant {t} credited {credited}, not {}", self.credited[t]));
            }
        }
        match kb {
            Some(true) => {
                let phase = self
                    .p
                    .jsonpath(&["get", "kb", "notes", "-n", "tenant-b"], "{.status.phase}")
                    .await;
                if phase != "Ready" {
                    return Some(format!("knowledge base notes is {phase:?}"));
                }
            }
            Some(false) if self.p.kubectl(&["get", "kb", "notes", "-n", "tenant-b"]).await.0 => {
                return Some("knowledge base notes is not gone".into());
            }
            _ => {}
        }
        None
    }

    async fn converge(&self, insts: &[Inst], kb: Option<bool>, deleted: bool) -> Duration {
        let started = Instant::now();
        loop {
            let Some(why) = self.unconverged(insts, kb, deleted).await else {
                return started.elapsed();
            };
            if started.elapsed() > Duration::from_secs(240) {
                let logs: String = self
                    .p
                    .operators
                    .iter()
                    .map(|o| {
                        let text = o.log_text();
                        let tail = &text[text.len().saturating_sub(6000)..];
                        format!("--- {} (tail)\n{tail}\n", o.identity)
                    })
                    .collect();
                panic!("not converged after 240 s: {why}\n{logs}");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

/// Chat completions through the gateway, alternating between the steady instances, until told
/// to stop. Every answer is kept; a refused connection (the gateway killed) is not an answer.
fn traffic(
    base: String,
    ca: std::path::PathBuf,
    keys: Vec<(String, String)>,
    stop: Arc<AtomicBool>,
    answers: Arc<Mutex<Vec<Answer>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let body = r#"{"messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}"#;
        let mut n = 0;
        while !stop.load(Ordering::Relaxed) {
            let (instance, key) = &keys[n % keys.len()];
            n += 1;
            let auth = format!("Bearer {key}");
            let r = call_gateway(
                &base,
                &ca,
                "/chat/completions",
                &[("Authorization", &auth)],
                Some(body),
            )
            .await;
            if r.status == 0 {
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
            let request_id = r.header("x-request-id").unwrap_or_default().to_string();
            answers.lock().unwrap().push(Answer {
                instance: instance.clone(),
                status: r.status,
                request_id,
            });
        }
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_promise_holds_through_sigkills_during_churn() {
    let kills = env_or("ALCOVE_CHAOS_KILLS", 8) as usize;
    let to_make = env_or("ALCOVE_CHAOS_INSTANCES", 8) as usize;
    let seed = env_or("ALCOVE_CHAOS_SEED", 1);
    let mut die = Die(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    let run_started = Instant::now();
    let mut w = World::start().await;

    // Credit first, so that no tenant starts in debt.
    for t in TENANTS {
        w.top_up(t, 100_000, false, &mut die).await;
    }
    let mut insts: Vec<Inst> = Vec::new();
    for (t, name) in STEADY {
        insts.push(Inst {
            tenant: t.into(),
            name: name.into(),
            uid: w.create(t, name, "Running").await,
            want: Want::Running,
            runs: vec![(w.now, None)],
            steady: true,
        });
    }
    w.converge(&insts, None, false).await;
    let mut keys = Vec::new();
    for (t, name) in STEADY {
        keys.push((
            format!("tenant-{t}/{name}"),
            api_key(&w.p, &format!("tenant-{t}"), name).await,
        ));
    }
    let owner = w.dashboard.sign_in("owner@a.example", 0).await;
    let csrf = owner.get("/").await.csrf();
    let stop = Arc::new(AtomicBool::new(false));
    let answers = Arc::new(Mutex::new(Vec::new()));
    let load = traffic(w.gw.base.clone(), w.gw.ca.clone(), keys, stop.clone(), answers.clone());

    let cycle = [Target::Leader, Target::Gateway, Target::Standby, Target::Dashboard];
    let per_round = to_make.div_ceil(kills.max(1));
    let (mut made, mut transitions, mut top_ups) = (0, 0, 0);
    let mut killed: BTreeMap<&str, usize> = BTreeMap::new();
    let mut slowest = Duration::ZERO;
    let (mut kb, mut deleted, mut failovers) = (None, false, 0);
    for round in 0..kills {
        w.tick();
        let now = w.now;
        let round_started = Instant::now();
        // Transitions of the instances made in earlier rounds, at most one each.
        let mut running = insts.iter().filter(|i| !i.steady && i.want == Want::Running).count();
        for i in insts.iter_mut().filter(|i| !i.steady && i.want != Want::Gone) {
            if !die.chance(3) {
                continue;
            }
            let next = match i.want {
                Want::Running if die.chance(3) => Want::Gone,
                Want::Running => Want::Suspended,
                Want::Suspended if die.chance(2) => Want::Gone,
                Want::Suspended if running < MAX_RUNNING => Want::Running,
                _ => continue,
            };
            let ns = format!("tenant-{}", i.tenant);
            let mut end = now;
            match next {
                Want::Gone => end = w.destroy(&i.tenant, &i.name).await,
                // The tenant a's owner works from the dashboard; the others through kubectl.
                _ if i.tenant == "a" => {
                    let state = if next == Want::Running { "Running" } else { "Suspended" };
                    let path = format!("/t/a/i/{}/state", i.name);
                    let r = owner.post(&path, &[("csrf", &csrf), ("state", state)], &[]).await;
                    assert_eq!(r.status, 303, "{path}: {}", r.body);
                }
                _ => {
                    let state = if next == Want::Running { "Running" } else { "Suspended" };
                    let patch = format!(r#"{{"spec":{{"state":"{state}"}}}}"#);
                    w.p.ok(&["patch", "inst", &i.name, "-n", &ns, "--type", "merge", "-p", &patch])
                        .await;
                }
            }
            match (i.want, next) {
                (Want::Running, _) => {
                    i.stop(end);
                    running -= 1;
                }
                (_, Want::Running) => {
                    i.runs.push((now, None));
                    running += 1;
                }
                _ => {}
            }
            println!("round {round}: {} {:?} -> {next:?}", i.id(), i.want);
            i.want = next;
            transitions += 1;
        }
        // Before this round's creations: a run that ends before it was ever Ready is not billed.
        if round == kills / 2 {
            // Its instances first, so that the test knows when each run ended.
            for i in insts.iter_mut().filter(|i| i.tenant == "c" && i.want != Want::Gone) {
                let end = w.destroy("c", &i.name).await;
                i.stop(end);
                i.want = Want::Gone;
            }
            w.p.ok(&["delete", "tenant", "c", "--wait=false"]).await;
            deleted = true;
        }
        for _ in 0..per_round.min(to_make - made) {
            let t = TENANTS[die.below(if deleted { 2 } else { 3 }) as usize];
            let name = format!("i{made}");
            let run = running < MAX_RUNNING;
            let state = if run { "Running" } else { "Suspended" };
            insts.push(Inst {
                tenant: t.into(),
                uid: w.create(t, &name, state).await,
                name,
                want: if run { Want::Running } else { Want::Suspended },
                runs: if run { vec![(now, None)] } else { Vec::new() },
                steady: false,
            });
            running += usize::from(run);
            made += 1;
        }
        if round == 1 {
            w.p.ok_in(&["apply", "-f", "-"], KNOWLEDGE_BASE).await;
            kb = Some(true);
        }
        if round + 2 == kills && kb.is_some() {
            w.p.ok(&["delete", "kb", "notes", "-n", "tenant-b", "--wait=false"]).await;
            kb = Some(false);
        }
        let payer = TENANTS[die.below(2) as usize];
        w.top_up(payer, 100 + die.below(10_000) as i64, die.chance(4), &mut die).await;
        top_ups += 1;

        // The kill, at a random moment while all that converges; the restart a moment later.
        tokio::time::sleep(die.millis(0, 2500)).await;
        let target = cycle[round % cycle.len()];
        let leader = w.leader().await;
        let what = w.kill(target).await;
        *killed.entry(what).or_default() += 1;
        // Every other kill of the leader keeps it down past its Lease (10 s): the standby takes
        // over mid-churn. The others restart at once and take their own Lease back.
        let failover = target == Target::Leader && killed[what].is_multiple_of(2);
        let down = if failover { Duration::from_secs(13) } else { die.millis(500, 3000) };
        tokio::time::sleep(down).await;
        w.restart(target).await;
        w.converge(&insts, kb, deleted).await;
        let took = round_started.elapsed();
        slowest = slowest.max(took);
        if failover {
            assert_ne!(w.leader().await, leader, "the standby took the Lease");
            failovers += 1;
        }
        // The owner's session outlives every restart of the dashboard.
        let page = owner.get("/t/a").await;
        assert_eq!(page.status, 200, "the owner's page after round {round}: {}", page.body);
        assert!(page.body.contains("steady"), "{}", page.body);
        println!(
            "round {round}: killed {what}{}; {} instances, {running} running; converged {:.1} s after its changes",
            if failover { ", down 13 s" } else { "" },
            insts.iter().filter(|i| i.want != Want::Gone).count(),
            took.as_secs_f64()
        );
    }

    // Traffic stops; then every run ends: the steady instances are destroyed (a destroy bills
    // every token left; a suspended instance carries tokens worth less than a cent until it is
    // used again), the rest suspended.
    stop.store(true, Ordering::Relaxed);
    load.await.unwrap();
    w.tick();
    for i in insts.iter_mut().filter(|i| i.want == Want::Running) {
        if i.steady {
            let end = w.destroy(&i.tenant, &i.name).await;
            i.stop(end);
            i.want = Want::Gone;
            continue;
        }
        let patch = r#"{"spec":{"state":"Suspended"}}"#;
        let ns = format!("tenant-{}", i.tenant);
        w.p.ok(&["patch", "inst", &i.name, "-n", &ns, "--type", "merge", "-p", patch]).await;
        i.stop(w.now);
        i.want = Want::Suspended;
    }
    w.converge(&insts, kb, deleted).await;

    // GPU time: per instance, records that do not overlap and add up to its runs, to the ms.
    let mut gpu_records = 0;
    for t in TENANTS {
        let customer = &w.customers[t];
        let mine: Vec<&Inst> = insts.iter().filter(|i| i.tenant == t).collect();
        let want: i64 = mine.iter().map(|i| i.expected_gpu_millis()).sum();
        // Waited for until the sum is reached (records of stops come a moment after); then
        // checked per instance, which names the one that is off.
        let started = Instant::now();
        let records = loop {
            let r: Vec<Value> = w
                .stripe
                .usage(customer)
                .await
                .into_iter()
                .filter(|r| r["metadata"]["alcove_kind"] != "tokens")
                .collect();
            let sum: i64 = r.iter().map(gpu_millis).sum();
            if sum >= want || started.elapsed() > Duration::from_secs(90) {
                break r;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        };
        let by_instance =
            records.iter().fold(BTreeMap::<String, Vec<&Value>>::new(), |mut m, r| {
                let uid = r["metadata"]["alcove_instance_uid"].as_str().unwrap_or_default();
                m.entry(uid.to_string()).or_default().push(r);
                m
            });
        for i in &mine {
            let mut periods: Vec<(Timestamp, Timestamp, i64)> = by_instance
                .get(&i.uid)
                .map(|rs| {
                    rs.iter()
                        .map(|r| (at(r, "period_start"), at(r, "period_end"), gpu_millis(r)))
                        .collect()
                })
                .unwrap_or_default();
            periods.sort();
            assert!(
                periods.windows(2).all(|w| w[0].1 <= w[1].0),
                "{}: overlapping (doubled) records: {periods:?}",
                i.id()
            );
            let billed: i64 = periods.iter().map(|p| p.2).sum();
            assert_eq!(
                billed,
                i.expected_gpu_millis(),
                "{}: billed {periods:?} for {:?}",
                i.id(),
                i.runs
            );
        }
        gpu_records += records.len();
    }

    // Tokens: every answered request has exactly one usage record, and Stripe's token records
    // add up to the store's totals.
    let answers = std::mem::take(&mut *answers.lock().unwrap());
    let store = alcove_gateway::store::Store::open(&format!(
        "sqlite://{}",
        w.p.dir.path().join("usage.db").display()
    ))
    .await
    .unwrap();
    let mut records_by_id: BTreeMap<String, usize> = BTreeMap::new();
    for (t, name) in STEADY {
        for r in store.records(&format!("tenant-{t}"), name, 10_000_000).await.unwrap() {
            *records_by_id.entry(r.request_id).or_default() += 1;
        }
    }
    let answered: Vec<&Answer> = answers.iter().filter(|a| a.status == 200).collect();
    assert!(answered.len() > 10, "traffic was served: {} answers", answers.len());
    for a in &answered {
        assert_eq!(
            records_by_id.get(&a.request_id).copied().unwrap_or(0),
            1,
            "request {} to {} answered: one usage record",
            a.request_id,
            a.instance
        );
    }
    assert!(records_by_id.values().all(|&n| n == 1), "a request recorded twice");
    // Tokens: Stripe's records for each steady instance are contiguous (each starts where the
    // last ended, so none twice) and charge exactly the price of every token the store counted,
    // in whole cents: the remainder under a cent at the destroy is never billed, by design.
    for i in insts.iter().filter(|i| i.steady) {
        let totals = store.totals(&i.uid).await.unwrap();
        let used = (totals.prompt_tokens, totals.completion_tokens);
        let exact = (used.0 * 10_000 + used.1 * 30_000) / 1_000_000;
        let token_records = || async {
            let mut r: Vec<Value> = w
                .stripe
                .usage(&w.customers[&i.tenant])
                .await
                .into_iter()
                .filter(|r| {
                    r["metadata"]["alcove_kind"] == "tokens"
                        && r["metadata"]["alcove_instance_uid"] == i.uid.as_str()
                })
                .collect();
            r.sort_by_key(|r| (meta_i64(r, "prompt_through"), meta_i64(r, "completion_through")));
            r
        };
        let cents = |r: &[Value]| r.iter().map(|r| r["amount"].as_i64().unwrap()).sum::<i64>();
        let started = Instant::now();
        let mut records = token_records().await;
        while cents(&records) < exact && started.elapsed() < Duration::from_secs(60) {
            tokio::time::sleep(Duration::from_secs(1)).await;
            records = token_records().await;
        }
        assert_eq!(cents(&records), exact, "{}: {used:?} tokens", i.id());
        let mut through = (0, 0);
        for r in &records {
            let from = (
                meta_i64(r, "prompt_through") - meta_i64(r, "prompt_tokens"),
                meta_i64(r, "completion_through") - meta_i64(r, "completion_tokens"),
            );
            assert_eq!(from, through, "{}: records not contiguous: {records:#?}", i.id());
            through = (meta_i64(r, "prompt_through"), meta_i64(r, "completion_through"));
        }
        assert!(through.0 <= used.0 && through.1 <= used.1, "{}: billed beyond use", i.id());
    }

    // No orphans: every child of an instance belongs to one that exists; a gone instance keeps
    // only its conversation history, until its deadline.
    let existing: BTreeSet<String> =
        insts.iter().filter(|i| i.want != Want::Gone).map(Inst::id).collect();
    let children =
        w.p.json(&[
            "get",
            "pods,services,secrets,configmaps,networkpolicies",
            "-A",
            "-l",
            "alcove.dev/instance",
        ])
        .await;
    for c in children["items"].as_array().unwrap() {
        let m = &c["metadata"];
        // The gateway's usage ConfigMaps live in the operator's namespace and name theirs.
        let ns = c["data"]["namespace"].as_str().or(m["namespace"].as_str()).unwrap();
        let owner = format!("{ns}/{}", m["labels"]["alcove.dev/instance"].as_str().unwrap());
        assert!(existing.contains(&owner), "orphaned {} {}", c["kind"], m["name"]);
    }

    // Erasure: tenant c's namespace is kept until its deadline (a kill just before), gone after
    // it; every receipt was written at or after its deadline; the history of every gone instance
    // is erased (its 1d window passed).
    let erase_after: Timestamp =
        w.p.jsonpath(&["get", "tenant", "c"], "{.status.eraseAfter}").await.parse().unwrap();
    w.now = erase_after.checked_sub(SignedDuration::from_secs(1)).unwrap();
    w.clock.set(w.now);
    let what = w.kill(Target::Leader).await;
    *killed.entry(what).or_default() += 1;
    tokio::time::sleep(Duration::from_secs(2)).await;
    w.restart(Target::Leader).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(w.p.kubectl(&["get", "namespace", "tenant-c"]).await.0, "tenant c erased early");
    w.now = w.now.checked_add(SignedDuration::from_secs(2)).unwrap();
    w.clock.set(w.now);
    eventually("tenant c erased after its deadline", Duration::from_secs(120), || async {
        !w.p.kubectl(&["get", "tenant", "c"]).await.0
            && !w.p.kubectl(&["get", "namespace", "tenant-c"]).await.0
    })
    .await;
    // Every released volume has its receipt: each gone instance's history, and the knowledge
    // base's index.
    let mut released: Vec<String> = insts
        .iter()
        .filter(|i| i.want == Want::Gone)
        .map(|i| format!("tenant-{}/{}-history", i.tenant, i.name))
        .collect();
    if kb.is_some() {
        released.push("tenant-b/notes-index".into());
    }
    for volume in &released {
        let (t, claim) = volume.strip_prefix("tenant-").unwrap().split_once('/').unwrap();
        eventually(
            &format!("{volume} erased, with a receipt"),
            Duration::from_secs(120),
            || async {
                !w.p.kubectl(&["get", "pvc", claim, "-n", &format!("tenant-{t}")]).await.0
                    && w.p
                        .erasure_receipts(t)
                        .await
                        .iter()
                        .any(|r| r["what"].as_str().unwrap_or_default().contains(volume.as_str()))
            },
        )
        .await;
    }
    // An intent left by a killed pass is finished within 30 s (retention::finish_pending).
    eventually("no erasure intent left unfinished", Duration::from_secs(60), || async {
        let mut all = Vec::new();
        for t in TENANTS {
            all.extend(w.p.erasure_intents(t).await);
        }
        all.is_empty()
    })
    .await;
    let mut receipts = 0;
    for t in TENANTS {
        let all = w.p.erasure_receipts(t).await;
        let mut whats = BTreeSet::new();
        for r in all {
            assert!(whats.insert(r["what"].to_string()), "a second receipt: {r}");
            let deadline: Timestamp = r["deadline"].as_str().unwrap().parse().unwrap();
            let erased: Timestamp = r["erasedAt"].as_str().unwrap().parse().unwrap();
            assert!(erased >= deadline, "erased before its deadline: {r}");
            println!("receipt: {} ({}, deadline {deadline})", r["what"], r["rule"]);
            receipts += 1;
        }
    }
    // Nothing billed for the week the instances were suspended.
    for t in ["a", "b"] {
        let gpu: i64 = w
            .stripe
            .usage(&w.customers[t])
            .await
            .iter()
            .filter(|r| r["metadata"]["alcove_kind"] != "tokens")
            .map(gpu_millis)
            .sum();
        let want: i64 = insts.iter().filter(|i| i.tenant == t).map(Inst::expected_gpu_millis).sum();
        assert_eq!(gpu, want, "tenant {t}: nothing billed while suspended");
    }

    let served = answered.len();
    println!(
        "chaos (seed {seed}): {} kills {killed:?}, {failovers} failovers; {made} instances made, {transitions} transitions, {top_ups} top-ups; \
         {served} requests answered 200 of {} answers, {} usage records; {gpu_records} GPU records exact; \
         {receipts} erasure receipts, none early; slowest round {:.1} s; {:.0} s in all",
        killed.values().sum::<usize>(),
        answers.len(),
        records_by_id.len(),
        slowest.as_secs_f64(),
        run_started.elapsed().as_secs_f64()
    );
}

fn meta_i64(r: &Value, key: &str) -> i64 {
    r["metadata"][key].as_str().and_then(|s| s.parse().ok()).unwrap_or(0)
}

fn gpu_millis(r: &Value) -> i64 {
    meta_i64(r, "gpu_millis")
}

fn at(r: &Value, key: &str) -> Timestamp {
    r["metadata"][key].as_str().unwrap().parse().unwrap()
}
