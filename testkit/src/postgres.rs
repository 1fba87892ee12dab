//! PostgreSQL (Debian's package; `./test.sh` installs it when missing) in a throwaway data
//! directory on a free loopback port, for the usage store's multi-replica setup. Stopped and
//! deleted on drop.

use std::path::PathBuf;
use std::process::Command;

pub struct Postgres {
    /// `postgres://alcove@127.0.0.1:<port>/postgres`
    pub dsn: String,
    bin: PathBuf,
    data: PathBuf,
    as_user: Option<&'static str>,
    _dir: tempfile::TempDir,
}

/// The directory with `initdb` and `pg_ctl` (they are not on Debian's PATH).
fn bin_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("ALCOVE_TEST_PG_BIN") {
        return dir.into();
    }
    let mut versions: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| {
            d.flatten()
                .map(|e| e.path().join("bin"))
                .filter(|p| p.join("initdb").exists())
                .collect()
        })
        .unwrap_or_default();
    versions.sort();
    versions
        .pop()
        .expect("PostgreSQL is not installed: run ./test.sh (it installs Debian's postgresql)")
}

impl Postgres {
    pub fn start() -> Postgres {
        let bin = bin_dir();
        let dir = tempfile::tempdir().expect("tempdir");
        // PostgreSQL refuses to run as root: as root, the server runs as Debian's `postgres`.
        let root = std::fs::read_to_string("/proc/self/status")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find(|l| l.starts_with("Uid:"))
                    .map(|l| l.split_whitespace().nth(2) == Some("0"))
            })
            .unwrap_or(false);
        let as_user = root.then_some("postgres");
        if as_user.is_some() {
            let status =
                Command::new("chown").args(["-R", "postgres:postgres"]).arg(dir.path()).status();
            assert!(status.is_ok_and(|s| s.success()), "chown the data directory to postgres");
        }
        let data = dir.path().join("data");
        let port = crate::free_port();
        let pg = Postgres {
            dsn: format!("postgres://alcove@127.0.0.1:{port}/postgres"),
            bin,
            data: data.clone(),
            as_user,
            _dir: dir,
        };
        pg.run(
            "initdb",
            &[
                "-D",
                data.to_str().unwrap(),
                "-U",
                "alcove",
                "-A",
                "trust",
                "--no-sync",
                "-E",
                "UTF8",
            ],
        );
        let log = data.parent().unwrap().join("postgres.log");
        let options = format!(
            "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            data.parent().unwrap().display()
        );
        pg.run(
            "pg_ctl",
            &[
                "-D",
                data.to_str().unwrap(),
                "-l",
                log.to_str().unwrap(),
                "-o",
                &options,
                "-w",
                "start",
            ],
        );
        pg
    }

    fn command(&self, program: &str) -> Command {
        let path = self.bin.join(program);
        match self.as_user {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        }
    }

    fn run(&self, program: &str, args: &[&str]) {
        let out =
            self.command(program).args(args).output().unwrap_or_else(|e| panic!("{program}: {e}"));
        assert!(
            out.status.success(),
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Every byte of the database, as `pg_dump` writes it (for "no content is stored" checks).
    pub fn dump(&self) -> String {
        let port = self
            .dsn
            .rsplit(':')
            .next()
            .and_then(|p| p.split('/').next())
            .unwrap_or_default()
            .to_string();
        let out = self
            .command("pg_dump")
            .args(["-h", "127.0.0.1", "-p", &port, "-U", "alcove", "postgres"])
            .output()
            .expect("pg_dump");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let _ = self
            .command("pg_ctl")
            .args(["-D", self.data.to_str().unwrap_or_default(), "-m", "immediate", "-w", "stop"])
            .output();
    }
}
