//! moto's server mode (PyPI `moto[server]`; `./test.sh` installs it into `.venv`): an S3 API on a
//! free loopback port for the model-source tests. Objects are put with boto3 (moto's own
//! dependency), so the store is filled by a client other than the one under test.

use std::path::Path;
use std::time::Duration;

use crate::{eventually, free_port, workspace_root};

/// moto accepts any credentials; these are the ones the tests hand to the fetch step.
pub const ACCESS_KEY_ID: &str = "alcove-test-key";
pub const SECRET_ACCESS_KEY: &str = "alcove-test-secret";
pub const REGION: &str = "us-east-1";

pub struct Moto {
    /// `http://127.0.0.1:PORT`.
    pub endpoint: String,
    _child: tokio::process::Child,
}

impl Moto {
    /// Starts moto's server with its output in `log`, and waits until it answers.
    pub async fn start(log: &Path) -> Moto {
        let port = free_port();
        let server = workspace_root().join(".venv/bin/moto_server");
        assert!(server.exists(), "run ./test.sh: it installs moto[server] into .venv");
        let log = std::fs::File::create(log).unwrap();
        let child = tokio::process::Command::new(server)
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("moto_server");
        let endpoint = format!("http://127.0.0.1:{port}");
        let up = format!("{endpoint}/moto-api/");
        eventually("moto serves", Duration::from_secs(60), || async {
            crate::curl(&up).await.is_some()
        })
        .await;
        Moto { endpoint, _child: child }
    }

    /// Makes `bucket` (when missing) and puts each file of `dir` under `prefix`.
    pub async fn put_dir(&self, bucket: &str, prefix: &str, dir: &Path) {
        let script = r#"
import os, sys, boto3
endpoint, bucket, prefix, root = sys.argv[1:5]
s3 = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                  aws_access_key_id="alcove-test-key", aws_secret_access_key="alcove-test-secret")
if bucket not in [b["Name"] for b in s3.list_buckets().get("Buckets", [])]:
    s3.create_bucket(Bucket=bucket)
for name in sorted(os.listdir(root)):
    s3.upload_file(os.path.join(root, name), bucket, prefix + name)
"#;
        let out = tokio::process::Command::new(workspace_root().join(".venv/bin/python"))
            .args(["-c", script, &self.endpoint, bucket, prefix, dir.to_str().unwrap()])
            .output()
            .await
            .expect("python");
        assert!(out.status.success(), "boto3 put: {}", String::from_utf8_lossy(&out.stderr));
    }
}
