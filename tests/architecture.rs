//! Dependencies point one way. For each crate, the modules and the `crate::`, `super::` and
//! child-module paths their code names (test-only items aside) form a graph; this fails when the
//! graph has a cycle, and, for the crates with a declared layering, when a module names one in a
//! higher layer (or, where a layer forbids it, one beside it), or is not placed in any layer.
//!
//! Run `cargo test -p alcove-tests --test architecture -- --nocapture` to print the layers.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// A layer: its name, whether its modules may name each other, and its modules (`crate` is the
/// library root).
type Layer = (&'static str, bool, &'static [&'static str]);

const OPERATOR: &[Layer] = &[
    (
        "foundation: names, hashing, retry delays, errors, metrics, configuration, typed-object constructors (time is the alcove-clock crate)",
        true,
        &["names", "hash", "backoff", "error", "metrics", "config", "objects"],
    ),
    (
        "pure builders and decisions (no I/O)",
        true,
        &[
            "conditions",
            "tenant::builders",
            "instance::builders",
            "instance::lifecycle",
            "knowledgebase::builders",
            "billing::meter",
            "billing::ledger",
            "billing::account",
            "retention::policy",
            "usage",
        ],
    ),
    (
        "writes, caches and clients: apply, status, context, Events, controller scaffolding, leader and shard Leases, Stripe, ledger",
        true,
        &[
            "apply",
            "status",
            "context",
            "events",
            "controller",
            "leader",
            "shard",
            "billing::stripe",
            "billing::store",
            "billing::runtime",
        ],
    ),
    (
        "controllers and hooks",
        true,
        &["tenant", "instance", "knowledgebase", "retention", "billing", "billing::webhook"],
    ),
    (
        "the binary: HTTP endpoints, `alcove up`, the operator's main loop",
        true,
        &["http", "up", "crate"],
    ),
];

const GATEWAY: &[Layer] = &[
    ("foundation: the error type, metrics", true, &["error", "metrics"]),
    (
        "pure parts and the store: key directory, limits, usage parsing, TLS, SQL",
        true,
        &["directory", "limits", "usage", "tls", "store"],
    ),
    (
        "what talks to others: the instance, the usage queue, the operator",
        true,
        &["upstream", "recorder", "publish"],
    ),
    ("the request path", true, &["server"]),
    ("the library root: starts everything", true, &["crate"]),
];

const DASHBOARD: &[Layer] = &[
    (
        "foundation: secrets, amounts, settings, the shared store",
        true,
        &["random", "money", "args", "store"],
    ),
    ("sign-in codes, sessions, the pages", true, &["codes", "session", "views"]),
    ("forms into API objects, account decisions, sign-up", true, &["forms", "account", "signup"]),
    (
        "what talks to others: mail, the cluster, the gateway, Stripe, the export",
        true,
        &["mail", "mailsink", "cluster", "gateway", "billing", "export", "notify"],
    ),
    ("the request path", true, &["server"]),
    ("the library root", true, &["crate"]),
];

const DEVCLUSTER: &[Layer] = &[
    (
        "foundation: configuration, errors, object metadata, quantities, types, metrics, TLS",
        true,
        &["config", "error", "meta", "quantity", "typeinfo", "metrics", "tls", "selectors"],
    ),
    (
        "schemas and the store",
        true,
        &[
            "schema",
            "resources",
            "state",
            "usage",
            "events",
            "patch",
            "fieldmanager",
            "builtin",
            "discovery",
            "openapi",
            "table",
            "protobuf",
            "netpol",
        ],
    ),
    ("admission, authorization, the process runtime", true, &["auth", "admission", "runtime"]),
    ("the write path and the shared server state", true, &["api", "shared"]),
    ("the pod network (namespaces, forwarding, its rules in force)", true, &["netns"]),
    (
        "workers: they share state below, never each other",
        false,
        &["scheduler", "controllers", "kubelet", "proxy"],
    ),
    ("the HTTP server", true, &["server"]),
    ("the library root: starts everything", true, &["crate"]),
];

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Module path (`a::b`, `crate` for the root) → file, for a library's `src`. Binary roots
/// (`main.rs`, `bin/`) are crates of their own and stand above everything.
fn modules(src: &Path) -> BTreeMap<String, PathBuf> {
    fn walk(dir: &Path, prefix: &[String], out: &mut BTreeMap<String, PathBuf>) {
        let mut entries: Vec<_> =
            std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
        entries.sort();
        for p in entries {
            let name = p.file_stem().unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                if prefix.is_empty() && name == "bin" {
                    continue;
                }
                let mut sub = prefix.to_vec();
                sub.push(name);
                walk(&p, &sub, out);
            } else if p.extension().is_some_and(|e| e == "rs") {
                if prefix.is_empty() && name == "main" {
                    continue;
                }
                let mut segs = prefix.to_vec();
                if !(name == "mod" || (prefix.is_empty() && name == "lib")) {
                    segs.push(name);
                }
                let key = if segs.is_empty() { "crate".to_string() } else { segs.join("::") };
                out.insert(key, p);
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(src, &[], &mut out);
    out
}

#[derive(Debug, Clone, PartialEq)]
enum Tok {
    Ident(String),
    Path, // ::
    Punct(char),
}

/// Tokens of Rust source without comments, string and character literals.
fn tokens(src: &str) -> Vec<Tok> {
    let c: Vec<char> = src.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < c.len() {
        let ch = c[i];
        if ch == '/' && c.get(i + 1) == Some(&'/') {
            while i < c.len() && c[i] != '\n' {
                i += 1;
            }
        } else if ch == '/' && c.get(i + 1) == Some(&'*') {
            let mut depth = 0;
            while i < c.len() {
                if c[i] == '/' && c.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if c[i] == '*' && c.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if ch == 'r'
            && (c.get(i + 1) == Some(&'"')
                || (c.get(i + 1) == Some(&'#') && matches!(c.get(i + 2), Some('"') | Some('#'))))
        {
            // Raw string: r"…", r#"…"#.
            let mut j = i + 1;
            let mut hashes = 0;
            while c.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            j += 1;
            loop {
                if j >= c.len() {
                    break;
                }
                if c[j] == '"' && (0..hashes).all(|h| c.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            i = j;
        } else if ch == '"' {
            i += 1;
            while i < c.len() && c[i] != '"' {
                if c[i] == '\\' {
                    i += 1;
                }
                i += 1;
            }
            i += 1;
        } else if ch == '\'' {
            // A character literal ('x', '\n', '\u{..}'), else a lifetime.
            if c.get(i + 1) == Some(&'\\') {
                i += 2;
                while i < c.len() && c[i] != '\'' {
                    i += 1;
                }
                i += 1;
            } else if c.get(i + 2) == Some(&'\'') {
                i += 3;
            } else {
                i += 1;
            }
        } else if ch.is_alphabetic() || ch == '_' {
            let start = i;
            while i < c.len() && (c[i].is_alphanumeric() || c[i] == '_') {
                i += 1;
            }
            out.push(Tok::Ident(c[start..i].iter().collect()));
        } else if ch == ':' && c.get(i + 1) == Some(&':') {
            out.push(Tok::Path);
            i += 2;
        } else {
            if !ch.is_whitespace() {
                out.push(Tok::Punct(ch));
            }
            i += 1;
        }
    }
    out
}

/// The tokens without items marked `#[cfg(test)]`: tests may reach anywhere.
fn without_tests(t: Vec<Tok>) -> Vec<Tok> {
    let attr = [
        Tok::Punct('#'),
        Tok::Punct('['),
        Tok::Ident("cfg".into()),
        Tok::Punct('('),
        Tok::Ident("test".into()),
        Tok::Punct(')'),
        Tok::Punct(']'),
    ];
    let mut out = Vec::new();
    let mut i = 0;
    while i < t.len() {
        if t[i..].starts_with(&attr) {
            i += attr.len();
            let mut depth = 0;
            while i < t.len() {
                match &t[i] {
                    Tok::Punct('{') => depth += 1,
                    Tok::Punct('}') => {
                        depth -= 1;
                        if depth == 0 {
                            i += 1;
                            break;
                        }
                    }
                    Tok::Punct(';') if depth == 0 => {
                        i += 1;
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
        } else {
            out.push(t[i].clone());
            i += 1;
        }
    }
    out
}

/// Parses the path (or `use` tree) starting at `t[i]`, pushing each full path to `out`.
fn path_tree(t: &[Tok], mut i: usize, prefix: Vec<String>, out: &mut Vec<Vec<String>>) -> usize {
    let mut segs = prefix;
    loop {
        match t.get(i) {
            Some(Tok::Ident(s)) => {
                segs.push(s.clone());
                i += 1;
                if t.get(i) == Some(&Tok::Path) {
                    i += 1;
                    continue;
                }
                out.push(segs);
                return i;
            }
            Some(Tok::Punct('{')) => {
                i += 1;
                loop {
                    match t.get(i) {
                        Some(Tok::Punct('}')) | None => return i + 1,
                        Some(Tok::Punct(',')) => i += 1,
                        Some(Tok::Ident(a)) if a == "as" => i += 2,
                        _ => {
                            let before = i;
                            i = path_tree(t, i, segs.clone(), out);
                            if i == before {
                                i += 1;
                            }
                        }
                    }
                }
            }
            _ => {
                out.push(segs);
                return i;
            }
        }
    }
}

/// The modules `module` (in `mods`) names.
fn references(module: &str, tokens: &[Tok], mods: &BTreeMap<String, PathBuf>) -> BTreeSet<String> {
    let here: Vec<String> =
        if module == "crate" { vec![] } else { module.split("::").map(String::from).collect() };
    let children: BTreeSet<String> = mods
        .keys()
        .filter_map(|m| {
            m.strip_prefix(&format!("{}::", here.join("::")))
                .or_else(|| here.is_empty().then_some(m.as_str()))
        })
        .filter(|r| !r.contains("::") && *r != "crate")
        .map(String::from)
        .collect();
    let mut paths = Vec::new();
    for i in 0..tokens.len() {
        let Tok::Ident(first) = &tokens[i] else { continue };
        if i > 0 && tokens[i - 1] == Tok::Path {
            continue;
        }
        if tokens.get(i + 1) != Some(&Tok::Path) {
            continue;
        }
        let base: Vec<String> = match first.as_str() {
            "crate" => vec![],
            "self" => here.clone(),
            "super" => here[..here.len().saturating_sub(1)].to_vec(),
            child if children.contains(child) => {
                let mut b = here.clone();
                b.push(child.to_string());
                b
            }
            _ => continue,
        };
        let mut found = Vec::new();
        path_tree(tokens, i + 2, base, &mut found);
        // `super::super::…` walks up further.
        for mut p in found {
            while p.len() > 1 && p.iter().any(|s| s == "super") {
                let at = p.iter().position(|s| s == "super").unwrap();
                p.remove(at);
                if at > 0 {
                    p.remove(at - 1);
                }
            }
            paths.push(p);
        }
    }
    let mut out = BTreeSet::new();
    for p in paths {
        let mut target = (0..=p.len())
            .rev()
            .map(|n| if n == 0 { "crate".to_string() } else { p[..n].join("::") })
            .find(|m| mods.contains_key(m))
            .unwrap_or_else(|| "crate".into());
        // `crate::Name` re-exported by the root: the module that defines it.
        if target == "crate"
            && let [name] = p.as_slice()
            && let Some(m) = definer(name, mods)
        {
            target = m;
        }
        if target != module {
            out.insert(target);
        }
    }
    out
}

/// The module (not the root) that defines the public item `name`, if one does.
fn definer(name: &str, mods: &BTreeMap<String, PathBuf>) -> Option<String> {
    let kinds = ["struct", "enum", "fn", "const", "type", "trait", "static"];
    mods.iter().filter(|(m, _)| *m != "crate").find_map(|(m, file)| {
        let text = std::fs::read_to_string(file).ok()?;
        kinds
            .iter()
            .any(|k| {
                text.contains(&format!("pub {k} {name}"))
                    && text.contains(&format!("pub {k} {name}"))
            })
            .then(|| m.clone())
    })
}

fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mods = modules(src);
    mods.iter()
        .map(|(m, file)| {
            let text = std::fs::read_to_string(file).unwrap();
            (m.clone(), references(m, &without_tests(tokens(&text)), &mods))
        })
        .collect()
}

/// A cycle through `start`, if there is one.
fn cycle_through(g: &BTreeMap<String, BTreeSet<String>>, start: &str) -> Option<Vec<String>> {
    let mut prev: BTreeMap<String, String> = BTreeMap::new();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    while let Some(n) = queue.pop_front() {
        for next in g.get(&n).into_iter().flatten() {
            if next == start {
                let mut path = vec![n.clone()];
                while let Some(p) = prev.get(path.last().unwrap()) {
                    path.push(p.clone());
                }
                path.reverse();
                path.push(start.to_string());
                return Some(path);
            }
            if !prev.contains_key(next) && next != start {
                prev.insert(next.clone(), n.clone());
                queue.push_back(next.clone());
            }
        }
    }
    None
}

fn check(krate: &str, layers: Option<&[Layer]>) -> Vec<String> {
    let g = graph(&workspace().join(krate).join("src"));
    assert!(g.len() > 3, "{krate}: found only {:?}", g.keys());
    let mut problems = Vec::new();
    let mut seen = BTreeSet::new();
    for m in g.keys() {
        if seen.contains(m) {
            continue;
        }
        if let Some(c) = cycle_through(&g, m) {
            seen.extend(c.iter().cloned());
            problems.push(format!("{krate}: import cycle {}", c.join(" → ")));
        }
    }
    if let Some(layers) = layers {
        let layer_of = |m: &str| layers.iter().position(|(_, _, ms)| ms.contains(&m));
        for (m, deps) in &g {
            let Some(lm) = layer_of(m) else {
                problems.push(format!(
                    "{krate}: module {m} is in no layer: place it in tests/architecture.rs"
                ));
                continue;
            };
            for d in deps {
                let Some(ld) = layer_of(d) else { continue };
                if ld > lm || (ld == lm && !layers[lm].1) {
                    problems.push(format!(
                        "{krate}: {m} ({}) names {d} ({})",
                        layers[lm].0, layers[ld].0
                    ));
                }
            }
        }
        for (_, _, ms) in layers {
            for m in *ms {
                if !g.contains_key(*m) {
                    problems.push(format!("{krate}: layer module {m} does not exist"));
                }
            }
        }
        eprintln!("{krate}, bottom to top:");
        for (name, _, ms) in layers {
            eprintln!("  {name}: {}", ms.join(", "));
        }
    }
    problems
}

#[test]
fn every_crate_is_acyclic_and_layered() {
    let mut problems = Vec::new();
    problems.extend(check("operator", Some(OPERATOR)));
    problems.extend(check("devcluster", Some(DEVCLUSTER)));
    problems.extend(check("gateway", Some(GATEWAY)));
    problems.extend(check("dashboard", Some(DASHBOARD)));
    problems.extend(check("crds", None));
    assert!(problems.is_empty(), "the module graph must point one way:\n{}", problems.join("\n"));
}

#[test]
fn the_check_sees_cycles_and_grouped_imports() {
    let src = r#"
        use crate::{a::{b, c as d}, e};
        use super::f; // crate::g in a comment
        fn x() { let s = "crate::h"; crate::i::j(); child::k(); }
        #[cfg(test)]
        mod tests { use crate::z; }
    "#;
    let mods: BTreeMap<String, PathBuf> =
        ["crate", "a", "a::b", "a::c", "e", "m", "m::child", "f", "i", "z"]
            .iter()
            .map(|m| (m.to_string(), PathBuf::new()))
            .collect();
    let refs = references("m", &without_tests(tokens(src)), &mods);
    let want: BTreeSet<String> =
        ["a::b", "a::c", "e", "f", "i", "m::child"].iter().map(|s| s.to_string()).collect();
    assert_eq!(refs, want, "not the comment, the string or the test module");
    let g: BTreeMap<String, BTreeSet<String>> =
        [("a", vec!["b"]), ("b", vec!["c"]), ("c", vec!["a"]), ("d", vec!["a"])]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.into_iter().map(String::from).collect()))
            .collect();
    assert_eq!(cycle_through(&g, "a").unwrap(), ["a", "b", "c", "a"]);
    assert!(cycle_through(&g, "d").is_none());
}
