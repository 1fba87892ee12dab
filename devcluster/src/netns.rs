//! The network-namespace pod network (`PodNetwork::Namespaces`): each pod gets its own network
//! namespace and address, so NetworkPolicies can be enforced for real.
//!
//! Layout, all inside namespaces this module creates (nothing changes in the host's own
//! network):
//! - a router namespace `dvc<pid>_<k>` holds the node address 10.244.0.1 (on its loopback),
//!   one veth per pod with a /32 route to it, IP forwarding, and the nftables table
//!   [`crate::netpol`] writes: Service DNAT and the policies;
//! - each pod namespace `dvc<pid>_<k>-<n>` has `eth0` with 10.244.x.y/32 and a default route via
//!   the node address;
//! - the API server is reachable from pods at 10.244.0.1:443 (forwarded to its loopback port);
//! - the kubelet's probes, the service proxy and logs keep using host ports: each container port
//!   gets a loopback listener that forwards into the pod from the router namespace, as a node
//!   reaches its pods.
//!
//! It needs root, `ip` (iproute2) and `nft` (nftables). Namespaces left by a devcluster that
//! was killed are removed by the next one to start.

use std::collections::BTreeSet;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::process::Command;

use crate::netpol::{self, NODE_IP};
use crate::resources::GroupResource;
use crate::shared::Shared;

/// The API server's port on the node address.
pub const API_PORT: u16 = 443;
const PREFIX: &str = "dvc";

/// One pod's namespace and address.
#[derive(Clone, Debug)]
pub struct PodNet {
    pub namespace: String,
    pub ip: Ipv4Addr,
    index: u32,
}

pub struct Network {
    router: String,
    /// Pod indexes handed out (the address is 10.244.0.0 + index).
    taken: Mutex<BTreeSet<u32>>,
    tasks: Mutex<Vec<tokio::task::AbortHandle>>,
    /// The pod addresses the rules in force were made with: a pod's containers start once its
    /// address is among them, as a CNI plugin answers before the kubelet starts containers.
    covered: tokio::sync::watch::Sender<BTreeSet<Ipv4Addr>>,
    closed: std::sync::atomic::AtomicBool,
}

fn netns_path(name: &str) -> PathBuf {
    PathBuf::from("/var/run/netns").join(name)
}

async fn run(args: &[&str], stdin: Option<&str>) -> Result<(), String> {
    let mut cmd = Command::new(args[0]);
    cmd.args(&args[1..])
        .stdin(if stdin.is_some() {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::null()
        })
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| format!("{}: {e}", args[0]))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await.map_err(|e| format!("{}: {e}", args[0]))?;
    }
    let out = child.wait_with_output().await.map_err(|e| format!("{}: {e}", args[0]))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("`{}` failed: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()))
    }
}

/// Runs `f` on a thread of its own that has entered network namespace `name`: sockets it makes
/// stay in that namespace.
fn in_netns<T: Send>(name: &str, f: impl FnOnce() -> io::Result<T> + Send) -> io::Result<T> {
    let path = netns_path(name);
    std::thread::scope(|s| {
        s.spawn(|| {
            let ns = std::fs::File::open(&path)?;
            // SAFETY: setns(2) switches only this thread, which ends when `f` returns.
            #[allow(unsafe_code)]
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

impl Network {
    /// Makes the router namespace, forwards the API server into it and keeps its rules in step
    /// with the store.
    pub async fn start(shared: Arc<Shared>, api_port: u16) -> Result<Arc<Network>, String> {
        for tool in [["ip", "-V"], ["nft", "--version"]] {
            run(&tool, None).await.map_err(|e| {
                format!(
                    "the namespaces pod network needs root, `ip` (iproute2) and `nft` \
                     (nftables): {e}"
                )
            })?;
        }
        sweep().await;
        // Several clusters may run in one process (tests): a count tells them apart.
        static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let k = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let router = format!("{PREFIX}{}_{k}", std::process::id());
        run(&["ip", "netns", "add", &router], None).await?;
        let network = Arc::new(Network {
            router: router.clone(),
            taken: Mutex::new(BTreeSet::new()),
            tasks: Mutex::new(Vec::new()),
            covered: tokio::sync::watch::channel(BTreeSet::new()).0,
            closed: std::sync::atomic::AtomicBool::new(false),
        });
        if let Err(e) = network.prepare(&shared, api_port).await {
            network.shutdown();
            return Err(e);
        }
        let n = network.clone();
        network.keep(tokio::spawn(async move { n.follow(shared).await }));
        Ok(network)
    }

    async fn prepare(&self, shared: &Shared, api_port: u16) -> Result<(), String> {
        let router = self.router.as_str();
        let node = format!("{NODE_IP}/32");
        run(&["ip", "-n", router, "link", "set", "lo", "up"], None).await?;
        run(&["ip", "-n", router, "addr", "add", &node, "dev", "lo"], None).await?;
        run(
            &["ip", "netns", "exec", router, "sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
            None,
        )
        .await?;
        self.apply(&self.rules(shared).0).await?;

        let listener = in_netns(router, || {
            let l = std::net::TcpListener::bind((NODE_IP, API_PORT))?;
            l.set_nonblocking(true)?;
            Ok(l)
        })
        .and_then(tokio::net::TcpListener::from_std)
        .map_err(|e| format!("the API server's address in the pod network: {e}"))?;
        let api = SocketAddr::from((Ipv4Addr::LOCALHOST, api_port));
        self.keep(tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(api).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        }));
        Ok(())
    }

    fn keep(&self, task: tokio::task::JoinHandle<()>) {
        self.tasks.lock().unwrap_or_else(|p| p.into_inner()).push(task.abort_handle());
    }

    /// The script for the store as it is, and the pod addresses it was made with.
    fn rules(&self, shared: &Shared) -> (String, BTreeSet<Ipv4Addr>) {
        let st = shared.lock();
        let list =
            |group: &str, resource: &str| st.list(&GroupResource::new(group, resource), None);
        let (pods, namespaces, policies, services, endpoints) = (
            list("", "pods"),
            list("", "namespaces"),
            list("networking.k8s.io", "networkpolicies"),
            list("", "services"),
            list("", "endpoints"),
        );
        drop(st);
        let ips = pods
            .iter()
            .filter_map(|p| p.pointer("/status/podIP")?.as_str()?.parse().ok())
            .collect();
        let script = netpol::ruleset(&netpol::Objects {
            pods: &pods,
            namespaces: &namespaces,
            policies: &policies,
            services: &services,
            endpoints: &endpoints,
        });
        (script, ips)
    }

    /// Waits (at most 10 s) until the rules in force were made knowing the pod at `ip`.
    pub async fn covering(&self, ip: Ipv4Addr) {
        let mut rx = self.covered.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), rx.wait_for(|ips| ips.contains(&ip)))
            .await;
    }

    async fn apply(&self, script: &str) -> Result<(), String> {
        run(&["ip", "netns", "exec", &self.router, "nft", "-f", "-"], Some(script)).await
    }

    /// Rewrites the rules after every change of what they are made from, at most every 50 ms.
    async fn follow(&self, shared: Arc<Shared>) {
        let mut rx = shared.lock().subscribe();
        let mut applied = String::new();
        loop {
            let relevant = match rx.recv().await {
                Ok(e) => matches!(
                    (e.gr.group.as_str(), e.gr.resource.as_str()),
                    ("", "pods" | "namespaces" | "services" | "endpoints")
                        | ("networking.k8s.io", "networkpolicies")
                ),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                Err(_) => return,
            };
            if !relevant {
                continue;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
            while rx.try_recv().is_ok() {}
            let (script, ips) = self.rules(&shared);
            if script != applied {
                if let Err(e) = self.apply(&script).await {
                    tracing::warn!(error = %e, "pod network rules not applied");
                    continue;
                }
                applied = script;
            }
            self.covered.send_replace(ips);
        }
    }

    /// A namespace and address for a new pod.
    pub async fn add_pod(&self) -> Result<PodNet, String> {
        let index = {
            let mut taken = self.taken.lock().unwrap_or_else(|p| p.into_inner());
            // .0.1 is the node; the last address of the /16 is its broadcast.
            let i = (2..(1u32 << (32 - netpol::POD_PREFIX)) - 1)
                .find(|i| !taken.contains(i))
                .ok_or("the pod network has no free address")?;
            taken.insert(i);
            i
        };
        let ip = Ipv4Addr::from(u32::from(NODE_IP) - 1 + index);
        let pod = PodNet { namespace: format!("{}-{index}", self.router), ip, index };
        if let Err(e) = self.plumb(&pod).await {
            self.remove_pod(&pod).await;
            return Err(e);
        }
        Ok(pod)
    }

    async fn plumb(&self, pod: &PodNet) -> Result<(), String> {
        let (ns, r) = (pod.namespace.as_str(), self.router.as_str());
        let veth = format!("v{}", pod.index);
        let addr = format!("{}/32", pod.ip);
        let node = NODE_IP.to_string();
        run(&["ip", "netns", "add", ns], None).await?;
        run(
            &[
                "ip", "-n", r, "link", "add", &veth, "type", "veth", "peer", "name", "eth0",
                "netns", ns,
            ],
            None,
        )
        .await?;
        run(&["ip", "-n", r, "link", "set", &veth, "up"], None).await?;
        run(&["ip", "-n", r, "route", "add", &addr, "dev", &veth], None).await?;
        let batch = format!(
            "link set lo up\naddr add {addr} dev eth0\nlink set eth0 up\n\
             route add {node} dev eth0\nroute add default via {node} dev eth0\n"
        );
        run(&["ip", "-n", ns, "-batch", "-"], Some(&batch)).await
    }

    /// Removes a pod's namespace (its veth and route go with it) and frees its address.
    pub async fn remove_pod(&self, pod: &PodNet) {
        let _ = run(&["ip", "netns", "del", &pod.namespace], None).await;
        self.taken.lock().unwrap_or_else(|p| p.into_inner()).remove(&pod.index);
    }

    /// The program line that runs `exe` inside a pod's namespace. `ip netns exec` execs it in
    /// place, so the process is the one the kubelet started.
    pub fn command(&self, pod: &PodNet, exe: &std::path::Path) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &pod.namespace]).arg(exe);
        cmd
    }

    /// A loopback listener on `host_port` whose connections reach `pod:port` from the node.
    pub fn forward(
        &self,
        host_port: u16,
        pod: Ipv4Addr,
        port: u16,
    ) -> io::Result<tokio::task::AbortHandle> {
        let std_listener = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, host_port))?;
        std_listener.set_nonblocking(true)?;
        let listener = tokio::net::TcpListener::from_std(std_listener)?;
        let router = self.router.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                let router = router.clone();
                tokio::spawn(async move {
                    if let Ok(mut outbound) =
                        connect_in(&router, SocketAddr::from((pod, port))).await
                    {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
            }
        });
        Ok(task.abort_handle())
    }

    /// Stops the forwarding and removes every namespace (server shutdown).
    pub fn shutdown(&self) {
        if self.closed.swap(true, std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        for t in self.tasks.lock().unwrap_or_else(|p| p.into_inner()).drain(..) {
            t.abort();
        }
        let pods: Vec<u32> =
            self.taken.lock().unwrap_or_else(|p| p.into_inner()).iter().copied().collect();
        for i in pods {
            let _ = std::process::Command::new("ip")
                .args(["netns", "del", &format!("{}-{i}", self.router)])
                .stderr(std::process::Stdio::null())
                .status();
        }
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &self.router])
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// A TCP connection made from inside network namespace `ns`.
async fn connect_in(ns: &str, addr: SocketAddr) -> io::Result<tokio::net::TcpStream> {
    let fd = in_netns(ns, || {
        // SAFETY: socket(2) returns a new descriptor that OwnedFd then owns.
        #[allow(unsafe_code)]
        let fd = unsafe {
            libc::socket(
                libc::AF_INET,
                libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                0,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just made and is owned by nothing else.
        #[allow(unsafe_code)]
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })?;
    let socket = tokio::net::TcpSocket::from_std_stream(std::net::TcpStream::from(fd));
    tokio::time::timeout(Duration::from_secs(5), socket.connect(addr))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))?
}

/// Removes the namespaces of devclusters that are no longer running.
async fn sweep() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(PREFIX) else { continue };
        let pid = rest.split(['_', '-']).next().and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| !crate::runtime::process_alive(p)) {
            let _ = run(&["ip", "netns", "del", &name], None).await;
        }
    }
}
