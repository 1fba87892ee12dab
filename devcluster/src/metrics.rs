//! `/metrics` in the Prometheus text format, with kube-apiserver's metric and label names, so a
//! test can count exactly what a client asked for.

use std::collections::BTreeMap;
use std::sync::Mutex;

/// Labels of `apiserver_request_total`.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct RequestLabels {
    pub verb: String,
    pub group: String,
    pub version: String,
    pub resource: String,
    pub subresource: String,
    pub scope: String,
    pub code: u16,
    pub dry_run: bool,
}

#[derive(Default)]
pub struct Metrics {
    requests: Mutex<BTreeMap<RequestLabels, u64>>,
    watch_events: Mutex<BTreeMap<(String, String), u64>>,
}

impl Metrics {
    pub fn record(&self, labels: RequestLabels) {
        *self.requests.lock().unwrap_or_else(|p| p.into_inner()).entry(labels).or_default() += 1;
    }

    pub fn watch_event(&self, group: &str, resource: &str) {
        *self
            .watch_events
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry((group.to_string(), resource.to_string()))
            .or_default() += 1;
    }

    /// Total requests with any of `verbs` (e.g. the write verbs), for in-process tests.
    pub fn count(&self, verbs: &[&str]) -> u64 {
        self.requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .filter(|(l, _)| verbs.contains(&l.verb.as_str()))
            .map(|(_, n)| n)
            .sum()
    }

    pub fn render(&self, storage_objects: &[(String, usize)]) -> String {
        let mut out = String::new();
        out.push_str("# HELP apiserver_request_total [STABLE] Counter of apiserver requests broken out for each verb, dry run value, group, version, resource, scope, component, and HTTP response code.\n");
        out.push_str("# TYPE apiserver_request_total counter\n");
        for (l, n) in self.requests.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            out.push_str(&format!(
                "apiserver_request_total{{code=\"{}\",component=\"apiserver\",dry_run=\"{}\",group=\"{}\",resource=\"{}\",scope=\"{}\",subresource=\"{}\",verb=\"{}\",version=\"{}\"}} {n}\n",
                l.code,
                if l.dry_run { "All" } else { "" },
                l.group,
                l.resource,
                l.scope,
                l.subresource,
                l.verb,
                l.version
            ));
        }
        out.push_str(
            "# HELP apiserver_watch_events_total [ALPHA] Number of events sent in watch clients\n",
        );
        out.push_str("# TYPE apiserver_watch_events_total counter\n");
        for ((group, resource), n) in
            self.watch_events.lock().unwrap_or_else(|p| p.into_inner()).iter()
        {
            out.push_str(&format!(
                "apiserver_watch_events_total{{group=\"{group}\",resource=\"{resource}\"}} {n}\n"
            ));
        }
        out.push_str("# HELP apiserver_storage_objects [STABLE] Number of stored objects at the time of last check split by kind.\n");
        out.push_str("# TYPE apiserver_storage_objects gauge\n");
        for (resource, n) in storage_objects {
            out.push_str(&format!("apiserver_storage_objects{{resource=\"{resource}\"}} {n}\n"));
        }
        out
    }
}

/// Parses `apiserver_request_total` lines of a scrape into (labels, value) pairs: what a test
/// does with the text of `/metrics`.
pub fn parse_request_totals(text: &str) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter_map(|line| line.strip_prefix("apiserver_request_total{"))
        .filter_map(|rest| {
            let (labels, value) = rest.split_once("} ")?;
            let mut map = BTreeMap::new();
            for pair in labels.split("\",") {
                let (k, v) = pair.split_once("=\"")?;
                map.insert(k.to_string(), v.trim_end_matches('"').to_string());
            }
            Some((map, value.trim().parse().ok()?))
        })
        .collect()
}

/// The verbs that change state.
pub const WRITE_VERBS: &[&str] = &["POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"];

/// Write requests in a scrape by resource (`pods`, `inferenceinstances/status`), so a count of
/// writes can name what was written.
pub fn writes_by_resource(text: &str) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for (labels, v) in parse_request_totals(text) {
        if WRITE_VERBS.contains(&labels["verb"].as_str()) {
            let key = match labels["subresource"].as_str() {
                "" => labels["resource"].clone(),
                sub => format!("{}/{sub}", labels["resource"]),
            };
            *out.entry(key).or_default() += v;
        }
    }
    out
}

/// The writes a reconcile makes: all but Lease renewals (leader election) and Events.
pub fn reconcile_writes(by_resource: &BTreeMap<String, f64>) -> f64 {
    by_resource.iter().filter(|(k, _)| *k != "leases" && *k != "events").map(|(_, v)| v).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_and_parses() {
        let m = Metrics::default();
        m.record(RequestLabels {
            verb: "APPLY".into(),
            group: "".into(),
            version: "v1".into(),
            resource: "pods".into(),
            subresource: "".into(),
            scope: "resource".into(),
            code: 200,
            dry_run: false,
        });
        let text = m.render(&[]);
        let parsed = parse_request_totals(&text);
        assert_eq!(parsed.len(), 1);
        assert_eq!(parsed[0].0["verb"], "APPLY");
        assert_eq!(parsed[0].1, 1.0);
        assert_eq!(m.count(WRITE_VERBS), 1);
    }

    #[test]
    fn writes_are_counted_by_resource_and_reads_leases_and_events_left_out() {
        let m = Metrics::default();
        let req = |verb: &str, resource: &str, subresource: &str| RequestLabels {
            verb: verb.into(),
            group: "".into(),
            version: "v1".into(),
            resource: resource.into(),
            subresource: subresource.into(),
            scope: "resource".into(),
            code: 200,
            dry_run: false,
        };
        for (verb, resource, sub) in [
            ("APPLY", "pods", ""),
            ("PATCH", "pods", "status"),
            ("PATCH", "pods", "status"),
            ("GET", "pods", ""),
            ("PUT", "leases", ""),
            ("POST", "events", ""),
        ] {
            m.record(req(verb, resource, sub));
        }
        let w = writes_by_resource(&m.render(&[]));
        assert_eq!(w.get("pods"), Some(&1.0));
        assert_eq!(w.get("pods/status"), Some(&2.0));
        assert_eq!(w.get("leases"), Some(&1.0));
        assert_eq!(reconcile_writes(&w), 3.0);
    }
}
