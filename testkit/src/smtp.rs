//! A real SMTP server that keeps what it receives: aiosmtpd (PyPI; `./test.sh` installs it into
//! `.venv`) on a free loopback port, writing each message into a maildir. Stopped on drop.

use std::path::PathBuf;
use std::time::Duration;

pub struct Smtp {
    pub port: u16,
    /// The maildir; messages arrive in `new/`.
    pub maildir: PathBuf,
    _child: tokio::process::Child,
}

impl Smtp {
    /// Starts the server and waits until it listens.
    pub async fn start(maildir: PathBuf) -> Smtp {
        let python = crate::workspace_root().join(".venv/bin/python");
        assert!(python.exists(), "run ./test.sh: it installs aiosmtpd into .venv");
        let port = crate::free_port();
        let child = tokio::process::Command::new(python)
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(["-c", "aiosmtpd.handlers.Mailbox", maildir.to_str().unwrap()])
            .kill_on_drop(true)
            .spawn()
            .expect("aiosmtpd");
        crate::eventually("aiosmtpd listens", Duration::from_secs(30), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        Smtp { port, maildir, _child: child }
    }

    /// Every message received so far (in no particular order).
    pub fn received(&self) -> Vec<String> {
        let Ok(entries) = std::fs::read_dir(self.maildir.join("new")) else { return Vec::new() };
        entries.filter_map(|e| std::fs::read_to_string(e.ok()?.path()).ok()).collect()
    }
}
