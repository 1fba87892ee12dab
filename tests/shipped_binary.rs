//! The operator image ships less than the developer's binary: the build command of
//! `operator/Dockerfile`, run here (without `--release`, for time), yields an `alcove` with no
//! `up` (so no devcluster and no `cargo build`) and no test hooks (`--clock-file`,
//! `--crash-after`); the default build (what the README's `cargo run` gets) still has `up`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The arguments of the Dockerfile's `cargo build` of the operator.
fn dockerfile_build_args() -> Vec<String> {
    let text = std::fs::read_to_string(workspace().join("operator/Dockerfile")).unwrap();
    let line = text
        .lines()
        .find(|l| l.trim_start().starts_with("RUN cargo build"))
        .expect("the Dockerfile builds with cargo");
    let args = line.split("cargo build").nth(1).unwrap().split("&&").next().unwrap();
    args.split_whitespace().filter(|a| *a != "\\").map(String::from).collect()
}

/// Builds `alcove` with `args` (a `cargo build` argument list) and returns a copy of the
/// executable named `name`: both builds write the same `target/debug/alcove`.
fn build(args: &[String], name: &str) -> PathBuf {
    let out = Command::new(env!("CARGO"))
        .arg("build")
        .args(args)
        .args(["--quiet", "--bin", "alcove", "--message-format=json"])
        .current_dir(workspace())
        .output()
        .expect("cargo");
    assert!(
        out.status.success(),
        "cargo build {args:?}:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let built = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(executable_of)
        .next_back()
        .expect("cargo reported the alcove executable");
    let copy = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::copy(built, &copy).unwrap();
    copy
}

/// The `"executable"` of a cargo JSON message naming the `alcove` binary (no JSON crate needed
/// for one field).
fn executable_of(line: &str) -> Option<String> {
    let at = line.find("\"executable\":\"")? + "\"executable\":\"".len();
    let path = &line[at..at + line[at..].find('"')?];
    path.ends_with("/alcove").then(|| path.to_string())
}

fn run(bin: &Path, args: &[&str]) -> (bool, String) {
    let out = Command::new(bin).args(args).output().unwrap();
    (
        out.status.success(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn the_image_build_has_no_dev_platform_and_no_test_hooks() {
    let args = dockerfile_build_args();
    assert!(
        args.iter().any(|a| a == "--no-default-features"),
        "the image build leaves out `dev`: {args:?}"
    );
    assert!(!args.iter().any(|a| a.starts_with("--features") || a == "--all-features"), "{args:?}");
    let image: Vec<String> = args.into_iter().filter(|a| a != "--release").collect();
    let shipped = build(&image, "alcove-image");
    let developer =
        build(&["--locked".to_string(), "-p".to_string(), "alcove".to_string()], "alcove-default");

    let (_, help) = run(&developer, &["--help"]);
    assert!(
        help.lines().any(|l| l.trim_start().starts_with("up ")),
        "the default build has `up`:\n{help}"
    );
    let (_, help) = run(&shipped, &["--help"]);
    assert!(
        help.contains("operator") && !help.lines().any(|l| l.trim_start().starts_with("up ")),
        "{help}"
    );
    let (ok, out) = run(&shipped, &["up"]);
    assert!(!ok && out.contains("unrecognized subcommand"), "{out}");
    for hook in ["--clock-file", "--crash-after"] {
        let (ok, out) = run(&shipped, &["operator", hook, "x", "--help"]);
        assert!(
            !ok && out.contains(&format!("unexpected argument '{hook}'")),
            "{hook} in the shipped binary: {out}"
        );
        // The developer's build hides them too, but a test build's operator (test-hooks) has them.
        let (ok, out) = run(&developer, &["operator", hook, "x", "--help"]);
        assert!(!ok && out.contains("unexpected argument"), "{hook} outside the tests: {out}");
    }
    // No line of the API-server emulator or the process kubelet is linked in.
    let bytes = std::fs::read(&shipped).unwrap();
    let has = |needle: &str| bytes.windows(needle.len()).any(|w| w == needle.as_bytes());
    assert!(!has("alcove_devcluster"), "devcluster is linked into the shipped binary");
    assert!(
        std::fs::read(&developer).unwrap().windows(17).any(|w| w == b"alcove_devcluster"),
        "the check can see it"
    );
    let size = |p: &Path| std::fs::metadata(p).unwrap().len() as f64 / 1048576.0;
    eprintln!(
        "alcove (debug): default build {:.1} MiB, image build {:.1} MiB",
        size(&developer),
        size(&shipped)
    );
}
