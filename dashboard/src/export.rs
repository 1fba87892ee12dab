//! "Export your data" (GDPR Art. 20): one POSIX tar archive (ustar members, a pax header for
//! a long path), uncompressed, streamed part by part as each is read, so the archive is never
//! held whole. The layout is documented in docs/dashboard.md ("The export archive");
//! `manifest.json`, written last, lists every part with its size and SHA-256, and every part
//! that could not be included with the reason.
//!
//! Everything is read as the signed-in owner (impersonation), as every other page does:
//! the export holds exactly what the owner may read, nothing the dashboard alone could.

use crate::billing::Billing;
use crate::cluster::Cluster;
use crate::gateway::GatewayClient;
use alcove_clock::Clock;
use alcove_crds::{InferenceInstance, KnowledgeBase, Tenant};
use bytes::Bytes;
use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::ResourceExt as _;
use kube::api::{Api, ListParams};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};
use std::collections::BTreeMap;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The `format` of `manifest.json`; a change to the layout changes it.
pub const FORMAT: &str = "alcove-export/1";

/// Request-log rows per `usage/requests-NNNN.csv` part.
const ROWS_PER_PART: usize = 10_000;

const BLOCK: usize = 512;

/// A path component made safe: the characters Kubernetes names and keys use, nothing that
/// climbs or hides (`.`/`..` become `_`).
pub fn component(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
        .collect();
    match c.as_str() {
        "" | "." | ".." => "_".into(),
        _ => c,
    }
}

fn octal(field: &mut [u8], value: u64) {
    // Zero-padded octal in all but the last byte, which stays NUL.
    let digits = field.len() - 1;
    let s = format!("{value:0digits$o}");
    field[..digits].copy_from_slice(&s.as_bytes()[s.len() - digits..]);
}

fn block(name: &[u8], prefix: &[u8], size: u64, mtime: u64, kind: u8) -> [u8; BLOCK] {
    let mut h = [0u8; BLOCK];
    h[..name.len()].copy_from_slice(name);
    octal(&mut h[100..108], 0o644);
    octal(&mut h[108..116], 0);
    octal(&mut h[116..124], 0);
    octal(&mut h[124..136], size);
    octal(&mut h[136..148], mtime);
    h[156] = kind;
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[345..345 + prefix.len()].copy_from_slice(prefix);
    // The checksum is taken with its own field as spaces, and written as six octal digits,
    // a NUL and a space.
    h[148..156].copy_from_slice(b"        ");
    let sum: u64 = h.iter().map(|b| u64::from(*b)).sum();
    let s = format!("{sum:06o}\0 ");
    h[148..156].copy_from_slice(s.as_bytes());
    h
}

/// Splits a path into ustar's prefix (≤ 155 bytes) and name (≤ 100 bytes) at a `/`.
fn split(path: &str) -> Option<(&str, &str)> {
    if path.len() <= 100 {
        return Some(("", path));
    }
    path.match_indices('/').map(|(i, _)| i).find_map(|i| {
        let (prefix, name) = (&path[..i], &path[i + 1..]);
        (prefix.len() <= 155 && name.len() <= 100 && !name.is_empty()).then_some((prefix, name))
    })
}

/// The header of one regular file: one ustar block, after a pax extended header carrying the
/// path when it does not fit ustar's fields.
pub fn header(path: &str, size: u64, mtime: u64) -> Vec<u8> {
    if let Some((prefix, name)) = split(path) {
        return block(name.as_bytes(), prefix.as_bytes(), size, mtime, b'0').to_vec();
    }
    // A pax record is "<length> path=<path>\n", its length counting its own digits.
    let body = format!(" path={path}\n");
    let mut len = body.len() + 1;
    while format!("{len}").len() + body.len() != len {
        len += 1;
    }
    let record = format!("{len}{body}");
    let mut out = block(b"pax-header", b"", record.len() as u64, mtime, b'x').to_vec();
    out.extend_from_slice(record.as_bytes());
    out.resize(out.len() + padding(record.len() as u64), 0);
    let short: String = path.chars().rev().take(90).collect::<Vec<_>>().into_iter().rev().collect();
    out.extend_from_slice(&block(component(&short).as_bytes(), b"", size, mtime, b'0'));
    out
}

/// Zero bytes that bring a member's data to a whole block.
pub fn padding(size: u64) -> usize {
    (BLOCK - (size as usize % BLOCK)) % BLOCK
}

/// The end of an archive: two zero blocks.
pub const END: [u8; 2 * BLOCK] = [0; 2 * BLOCK];

/// The client went away: stop reading.
#[derive(Debug)]
struct Gone;

/// Writes members in order to the response and remembers what the manifest lists.
struct Writer {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    mtime: u64,
    parts: Vec<Value>,
    omitted: Vec<Value>,
}

impl Writer {
    async fn send(&self, b: Vec<u8>) -> Result<(), Gone> {
        self.tx.send(Ok(Bytes::from(b))).await.map_err(|_| Gone)
    }

    async fn file(&mut self, path: &str, what: &str, data: Vec<u8>) -> Result<(), Gone> {
        let size = data.len() as u64;
        self.parts.push(json!({
            "path": path,
            "what": what,
            "bytes": size,
            "sha256": crate::random::hex(&Sha256::digest(&data)),
        }));
        self.send(header(path, size, self.mtime)).await?;
        let pad = padding(size);
        self.send(data).await?;
        self.send(vec![0; pad]).await
    }

    async fn json(&mut self, path: &str, what: &str, v: &Value) -> Result<(), Gone> {
        let mut data = serde_json::to_vec_pretty(v).unwrap_or_default();
        data.push(b'\n');
        self.file(path, what, data).await
    }

    fn omit(&mut self, part: &str, why: impl Into<String>) {
        self.omitted.push(json!({"part": part, "why": why.into()}));
    }
}

/// A Kubernetes object as JSON without its field-manager bookkeeping.
fn object<K: serde::Serialize>(k: &K) -> Value {
    let mut v = serde_json::to_value(k).unwrap_or_default();
    if let Some(m) = v.get_mut("metadata").and_then(Value::as_object_mut) {
        m.remove("managedFields");
    }
    v
}

const README: &str = "Your data from Alcove

This archive holds what Alcove keeps for your account, as it was when you downloaded it:

  account.json                  your account (tenant) settings, credit and erasure receipts
  instances/<name>.json         each instance and its settings (not its API key)
  knowledge-bases/<name>.json   each knowledge base and its settings
  knowledge-bases/<name>/documents/<source>/<file>
                                the documents it answers from, as they were given
  conversations/<instance>/<id>.json
                                each kept conversation, decrypted for you
  usage/requests-NNNN.csv       the gateway's request log (no prompts or answers: none are kept)
  billing/history.json          top-ups and charges, from the payment processor
  manifest.json                 every file above with its size and SHA-256, and anything that
                                could not be included, with the reason

JSON files are UTF-8; amounts are in the currency's smallest unit (cents for EUR).
";

/// What the archive is read from: the dashboard's clients, cloned into the writing task.
pub struct Sources {
    pub cluster: Cluster,
    pub gateway: GatewayClient,
    pub usage: Option<alcove_gateway::store::Store>,
    pub billing: Option<Arc<Billing>>,
    pub clock: Arc<dyn Clock>,
}

/// A CSV field: quoted when it holds a comma, a quote or a line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The request log's CSV columns (the download and the export).
pub(crate) const USAGE_HEADER: &str = "time_utc,request_id,instance,model,endpoint,status,prompt_tokens,completion_tokens,latency_ms,key_id\n";

/// One request-log record as a CSV line.
pub(crate) fn usage_line(r: &alcove_gateway::store::Record) -> String {
    let at = jiff::Timestamp::from_millisecond(r.at_ms)
        .map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.3fZ").to_string())
        .unwrap_or_default();
    format!(
        "{at},{},{},{},{},{},{},{},{},{}\n",
        csv_field(&r.request_id),
        csv_field(&r.instance),
        csv_field(&r.model),
        csv_field(&r.endpoint),
        r.status,
        r.prompt_tokens,
        r.completion_tokens,
        r.latency_ms,
        csv_field(&r.key_id)
    )
}

/// Reads every part as `email` and streams the archive into `tx`. A failure part way cuts the
/// stream, so the download is visibly incomplete rather than a valid archive missing parts.
pub async fn write(
    app: Sources,
    email: String,
    tenant: Arc<Tenant>,
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
) {
    let now = app.clock.now();
    let mut w =
        Writer { tx, mtime: now.as_second().max(0) as u64, parts: Vec::new(), omitted: Vec::new() };
    match parts(&app, &email, &tenant, &mut w).await {
        Ok(Ok(())) => {
            let manifest = json!({
                "format": FORMAT,
                "tenant": tenant.name_any(),
                "requested_by": email,
                "created_at": alcove_clock::format(now),
                "parts": w.parts,
                "omitted": w.omitted,
            });
            if w.json("manifest.json", "this list", &manifest).await.is_ok() {
                let _ = w.send(END.to_vec()).await;
            }
        }
        Ok(Err(Gone)) => {}
        Err(e) => {
            tracing::warn!(tenant = %tenant.name_any(), error = %e, "an export stopped part way");
            let _ = w.tx.send(Err(std::io::Error::other("the export stopped part way"))).await;
        }
    }
}

/// An instance's key, asked again (twice at most, 1 s then 2 s later) after the API server's own
/// passing trouble: a 5xx or no answer (kube's client already waits out a 429). An export is
/// read once; a part left out for a moment's trouble would be missing from what the customer
/// keeps.
async fn key_of(
    app: &Sources,
    email: &str,
    tenant: &str,
    name: &str,
) -> Result<Option<String>, kube::Error> {
    let passing = |r: &Result<Option<String>, kube::Error>| match r {
        Err(kube::Error::Api(s)) => s.code >= 500,
        Err(_) => true,
        Ok(_) => false,
    };
    let key = || app.cluster.instance_key(email, tenant, name);
    crate::gateway::ask_again_while(key, passing).await
}

async fn parts(
    app: &Sources,
    email: &str,
    tenant: &Tenant,
    w: &mut Writer,
) -> anyhow::Result<Result<(), Gone>> {
    let t = tenant.name_any();
    let ns = alcove_crds::tenant::namespace_of(&t);
    let client = app.cluster.as_user(email, &t);
    macro_rules! put {
        ($e:expr) => {
            if let Err(Gone) = $e {
                return Ok(Err(Gone));
            }
        };
    }
    put!(w.file("README.txt", "what this archive holds", README.as_bytes().to_vec()).await);
    put!(w.json("account.json", "your account (tenant)", &object(tenant)).await);

    let instances: Api<InferenceInstance> = Api::namespaced(client.clone(), &ns);
    let instances = instances.list(&ListParams::default()).await?.items;
    for i in &instances {
        let path = format!("instances/{}.json", component(&i.name_any()));
        put!(w.json(&path, "an instance", &object(i)).await);
    }

    let kbs: Api<KnowledgeBase> = Api::namespaced(client.clone(), &ns);
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), &ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    for kb in kbs.list(&ListParams::default()).await?.items {
        let name = component(&kb.name_any());
        put!(
            w.json(&format!("knowledge-bases/{name}.json"), "a knowledge base", &object(&kb)).await
        );
        for s in &kb.spec.sources {
            let dir = format!("knowledge-bases/{name}/documents/{}", component(&s.name));
            let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
            if let Some(inline) = &s.inline {
                files.insert("inline.txt".into(), inline.as_bytes().to_vec());
            }
            if let Some(r) = &s.config_map {
                match cms.get_opt(&r.name).await? {
                    Some(cm) => {
                        let text = cm
                            .data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.into_bytes()));
                        let binary =
                            cm.binary_data.unwrap_or_default().into_iter().map(|(k, v)| (k, v.0));
                        files.extend(
                            text.chain(binary)
                                .filter(|(k, _)| r.keys.is_empty() || r.keys.contains(k)),
                        );
                    }
                    None => w.omit(&dir, format!("its ConfigMap {} does not exist", r.name)),
                }
            }
            if let Some(r) = &s.secret {
                match secrets.get_opt(&r.name).await? {
                    Some(sec) => files.extend(
                        sec.data
                            .unwrap_or_default()
                            .into_iter()
                            .map(|(k, v)| (k, v.0))
                            .filter(|(k, _)| r.keys.is_empty() || r.keys.contains(k)),
                    ),
                    None => w.omit(&dir, format!("its Secret {} does not exist", r.name)),
                }
            }
            if let Some(url) = &s.url {
                w.omit(&dir, format!("read from {url} when indexed; the original stays there"));
            }
            for (key, data) in files {
                put!(
                    w.file(&format!("{dir}/{}", component(&key)), "a document as given", data)
                        .await
                );
            }
        }
    }

    for i in &instances {
        let name = i.name_any();
        let dir = format!("conversations/{}", component(&name));
        let key = match key_of(app, email, &t, &name).await {
            Ok(Some(k)) => k,
            Ok(None) => {
                w.omit(&dir, "the instance has no API key yet, so its store cannot be read");
                continue;
            }
            Err(e) => {
                w.omit(
                    &dir,
                    format!(
                        "the instance's key could not be read ({e}). Export again to include them."
                    ),
                );
                continue;
            }
        };
        let (status, list) = match app.gateway.read("/conversations", &key).await {
            Ok(answer) => answer,
            Err(e) => {
                w.omit(&dir, format!("the instance could not be reached: {e}"));
                continue;
            }
        };
        if status != 200 {
            let why = list["error"]["message"].as_str().unwrap_or("it did not answer");
            w.omit(&dir, format!("the instance's store could not be read (status {status}): {why}. Start the instance and export again to include them."));
            continue;
        }
        for c in list["data"].as_array().cloned().unwrap_or_default() {
            let Some(id) = c["id"].as_str() else { continue };
            let path = format!("/conversations/{}", component(id));
            match app.gateway.read(&path, &key).await {
                Ok((200, body)) => {
                    let p = format!("{dir}/{}.json", component(id));
                    put!(w.json(&p, "a conversation, decrypted", &body).await);
                }
                Ok((status, _)) => {
                    w.omit(&format!("{dir}/{id}"), format!("the instance answered {status}"))
                }
                Err(e) => w.omit(&format!("{dir}/{id}"), e.to_string()),
            }
        }
    }

    match &app.usage {
        Some(store) => {
            let (mut before, mut n, mut rows, mut csv) = (i64::MAX, 0, 0, String::new());
            loop {
                let page = store.tenant_records(&t, None, before, 1000).await?;
                let last = page.len() < 1000;
                for r in &page {
                    csv.push_str(&usage_line(r));
                    rows += 1;
                }
                before = page.last().map(|r| r.at_ms).unwrap_or(before);
                if (rows >= ROWS_PER_PART || last) && (rows > 0 || n == 0) {
                    n += 1;
                    let data = format!("{}{csv}", USAGE_HEADER).into_bytes();
                    let path = format!("usage/requests-{n:04}.csv");
                    put!(w.file(&path, "the gateway's request log, newest first", data).await);
                    (rows, csv) = (0, String::new());
                }
                if last {
                    break;
                }
            }
        }
        None => w.omit("usage", "this dashboard is not connected to the gateway's usage store"),
    }

    let customer =
        tenant.status.as_ref().and_then(|s| s.billing.as_ref()).and_then(|b| b.customer_id.clone());
    let currency = tenant.spec.billing.as_ref().map(|b| b.currency.to_ascii_lowercase());
    match (&app.billing, customer.filter(|c| !c.is_empty()), currency) {
        (Some(b), Some(cus), Some(cur)) => {
            let (payments, items) = b.records(&cus).await?;
            let entries = crate::billing::history(&cus, &payments, &items);
            let history = json!({
                "currency": cur,
                "customer": cus,
                "entries": entries.iter().map(entry).collect::<Vec<_>>(),
            });
            put!(w.json("billing/history.json", "top-ups and charges", &history).await);
        }
        (_, _, None) => w.omit("billing", "the account is not billed"),
        (None, _, _) => w.omit("billing", "this dashboard is not connected to the payment processor; ask your platform team for statements"),
        (_, None, _) => w.omit("billing", "the account has no payment processor customer yet"),
    }
    Ok(Ok(()))
}

/// One billing history line as the export writes it (amounts in the currency's minor unit).
pub fn entry(e: &crate::billing::Entry) -> Value {
    use crate::billing::{Entry, Usage};
    match e {
        Entry::TopUp { day, at, amount, intent } => json!({
            "kind": "top-up", "day": day.to_string(), "at": alcove_clock::format(*at),
            "amount": amount, "payment_intent": intent,
        }),
        Entry::Charge { day, instance, usage, amount, records } => {
            let mut v = json!({
                "day": day.to_string(), "instance": instance, "amount": amount, "records": records,
            });
            match usage {
                Usage::Gpu { millis } => {
                    v["kind"] = "gpu-time".into();
                    v["gpu_millis"] = (*millis).into();
                }
                Usage::Tokens { prompt, completion } => {
                    v["kind"] = "tokens".into();
                    v["prompt_tokens"] = (*prompt).into();
                    v["completion_tokens"] = (*completion).into();
                }
            }
            v
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(h: &[u8], r: std::ops::Range<usize>) -> String {
        String::from_utf8_lossy(&h[r]).trim_end_matches('\0').to_string()
    }

    fn checksum_holds(h: &[u8]) -> bool {
        let mut copy = h[..BLOCK].to_vec();
        copy[148..156].copy_from_slice(b"        ");
        let sum: u64 = copy.iter().map(|b| u64::from(*b)).sum();
        u64::from_str_radix(field(h, 148..154).trim(), 8) == Ok(sum)
    }

    #[test]
    fn a_short_path_is_one_ustar_block() {
        let h = header("account.json", 1234, 1_700_000_000);
        assert_eq!(h.len(), BLOCK);
        assert_eq!(field(&h, 0..100), "account.json");
        assert_eq!(field(&h, 124..136), format!("{:011o}", 1234));
        assert_eq!(field(&h, 136..148), format!("{:011o}", 1_700_000_000));
        assert_eq!(&h[257..265], b"ustar\x0000");
        assert_eq!(h[156], b'0');
        assert!(checksum_holds(&h));
    }

    #[test]
    fn a_long_path_uses_the_prefix_or_a_pax_record() {
        let dir = format!("knowledge-bases/{}/documents/uploads", "k".repeat(63));
        let path = format!("{dir}/{}", "d".repeat(90));
        let h = header(&path, 1, 0);
        assert_eq!(h.len(), BLOCK, "prefix and name fit");
        assert_eq!(format!("{}/{}", field(&h, 345..500), field(&h, 0..100)), path);
        assert!(checksum_holds(&h));

        let long = format!("{dir}/{}", "d".repeat(200));
        let h = header(&long, 7, 0);
        assert_eq!(h[156], b'x', "a pax header first");
        let size = usize::from_str_radix(&field(&h, 124..136), 8).unwrap();
        let record = String::from_utf8(h[BLOCK..BLOCK + size].to_vec()).unwrap();
        let (len, rest) = record.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), record.len(), "the length counts itself");
        assert_eq!(rest, format!("path={long}\n"));
        assert_eq!(h.len(), 3 * BLOCK);
        let file = &h[2 * BLOCK..];
        assert_eq!(file[156], b'0');
        assert!(checksum_holds(&h) && checksum_holds(file));
    }

    #[test]
    fn members_end_on_a_block() {
        assert_eq!(padding(0), 0);
        assert_eq!(padding(1), 511);
        assert_eq!(padding(512), 0);
        assert_eq!(padding(513), 511);
    }

    #[test]
    fn components_cannot_climb_or_hide() {
        assert_eq!(component("leave.md"), "leave.md");
        assert_eq!(component(".."), "_");
        assert_eq!(component("a/b"), "a_b");
        assert_eq!(component(""), "_");
        assert_eq!(component("c-0f3a"), "c-0f3a");
    }

    #[test]
    fn history_lines_keep_amounts_in_minor_units() {
        use crate::billing::{Entry, Usage};
        let day: jiff::civil::Date = "2026-12-01".parse().unwrap();
        let top_up = Entry::TopUp {
            day,
            at: "2026-12-01T10:00:00Z".parse().unwrap(),
            amount: 2500,
            intent: "pi_1".into(),
        };
        assert_eq!(
            entry(&top_up),
            json!({"kind": "top-up", "day": "2026-12-01", "at": "2026-12-01T10:00:00Z", "amount": 2500, "payment_intent": "pi_1"})
        );
        let tokens = Entry::Charge {
            day,
            instance: "chat".into(),
            usage: Usage::Tokens { prompt: 10, completion: 5 },
            amount: 3,
            records: 2,
        };
        assert_eq!(entry(&tokens)["kind"], "tokens");
        assert_eq!(entry(&tokens)["completion_tokens"], 5);
    }
}
