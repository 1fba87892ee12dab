//! Writes the files generated from the API types: `crds/manifests/*.yaml` (one per CRD, copied to
//! the Helm chart's `charts/alcove/crds/`) and
//! `docs/api.md`. With `--check` it writes nothing and exits 1 when a committed file differs.

fn main() {
    let check = std::env::args().any(|a| a == "--check");
    let root = alcove_crds::workspace_root();
    let mut stale = Vec::new();
    for (relative, content) in alcove_crds::generated_files() {
        let path = root.join(&relative);
        if std::fs::read_to_string(&path).ok().as_deref() == Some(content.as_str()) {
            continue;
        }
        if check {
            stale.push(relative);
        } else {
            std::fs::create_dir_all(path.parent().expect("generated files live in a directory"))
                .and_then(|()| std::fs::write(&path, &content))
                .unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
            println!("wrote {relative}");
        }
    }
    if !stale.is_empty() {
        eprintln!(
            "out of date: {}\nregenerate with: cargo run -p alcove-crds --bin crdgen",
            stale.join(", ")
        );
        std::process::exit(1);
    }
}
