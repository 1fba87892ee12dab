//! A network namespace of the test's own, with addresses on its loopback: servers there can
//! stand at addresses that are not 127.0.0.1 (a "public" host, a private one), and a program run
//! inside reaches them, while nothing leaves the namespace. Needs root and `ip`.

use std::net::{SocketAddr, TcpListener};
use std::os::fd::AsRawFd;
use std::process::Command;

pub struct TestNetns {
    pub name: String,
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("the `ip` program (iproute2)");
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl TestNetns {
    /// A new namespace whose loopback is up and also holds `addresses` (IPv4, each a /32).
    pub fn new(addresses: &[&str]) -> TestNetns {
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("alcove-test-{}-{k}", std::process::id());
        ip(&["netns", "add", &name]);
        let ns = TestNetns { name };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]);
        for a in addresses {
            ip(&["-n", &ns.name, "addr", "add", &format!("{a}/32"), "dev", "lo"]);
        }
        ns
    }

    /// A listener at `addr` inside the namespace.
    pub fn listen(&self, addr: SocketAddr) -> TcpListener {
        let path = format!("/var/run/netns/{}", self.name);
        std::thread::scope(|s| {
            s.spawn(|| {
                let ns = std::fs::File::open(&path).expect("the namespace");
                // SAFETY: setns(2) moves only this thread, which ends once the socket is bound;
                // the socket stays in the namespace.
                #[allow(unsafe_code)]
                let entered = unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) };
                assert_eq!(entered, 0, "setns: {}", std::io::Error::last_os_error());
                TcpListener::bind(addr).expect("bind inside the namespace")
            })
            .join()
            .expect("the namespace thread")
        })
    }

    /// `program` run inside the namespace.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name]).arg(program);
        cmd
    }
}

impl Drop for TestNetns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.name]).status();
    }
}
