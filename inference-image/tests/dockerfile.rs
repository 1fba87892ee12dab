//! No Docker engine here: the Dockerfile is checked by reading it, for the properties the
//! cluster relies on.

fn dockerfile() -> String {
    std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap()
}

/// Instructions with their continuation lines joined.
fn instructions() -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    let mut current = String::new();
    for line in dockerfile().lines() {
        let line = line.trim();
        if line.starts_with('#') || line.is_empty() {
            continue;
        }
        if let Some(body) = line.strip_suffix('\\') {
            current.push_str(body);
            current.push(' ');
        } else {
            current.push_str(line);
            out.push(std::mem::take(&mut current));
        }
    }
    out
}

#[test]
fn the_image_builds_with_cuda_in_one_stage_and_runs_without_it_in_another() {
    let ins = instructions();
    let froms: Vec<&String> = ins.iter().filter(|i| i.starts_with("FROM ")).collect();
    assert_eq!(froms.len(), 2, "multi-stage: {froms:?}");
    assert!(
        froms[0].contains("nvidia/cuda")
            && froms[0].contains("-devel-")
            && froms[0].ends_with("AS build")
    );
    assert!(
        froms[1].contains("nvidia/cuda") && froms[1].contains("-runtime-"),
        "CUDA runtime stage: {}",
        froms[1]
    );
    let build = ins.iter().find(|i| i.contains("cargo build")).expect("a cargo build");
    assert!(
        build.contains("-p alcove-inference")
            && build.contains("--features cuda")
            && build.contains("--release")
            && build.contains("--locked")
    );
    let runtime_stage = ins.iter().position(|i| i == froms[1]).unwrap();
    let runtime = &ins[runtime_stage..];
    assert!(
        runtime.iter().any(|i| i.starts_with("COPY --from=build")
            && i.ends_with("/usr/local/bin/alcove-inference"))
    );
    assert!(
        !runtime.iter().any(|i| i.contains("cargo") || i.starts_with("COPY . ")),
        "no toolchain or sources at run time"
    );
}

#[test]
fn the_server_runs_as_a_numeric_non_root_user_without_a_shell() {
    let ins = instructions();
    let user = ins.iter().rev().find(|i| i.starts_with("USER ")).expect("a USER");
    let uid: u32 = user[5..].split(':').next().unwrap().trim().parse().expect("numeric uid");
    assert_ne!(uid, 0);
    let entry = ins.iter().rev().find(|i| i.starts_with("ENTRYPOINT ")).expect("an ENTRYPOINT");
    let argv: Vec<String> = serde_json::from_str(&entry["ENTRYPOINT ".len()..])
        .expect("exec form (a JSON array), no shell");
    assert_eq!(argv, vec!["/usr/local/bin/alcove-inference"]);
    let last_user = ins.iter().rposition(|i| i.starts_with("USER ")).unwrap();
    let last_run = ins.iter().rposition(|i| i.starts_with("RUN ")).unwrap();
    assert!(last_user > last_run, "nothing runs as root after USER");
}
