//! The kubelet's table of running pods and their processes, shared with the proxy and log
//! endpoints through `Shared`.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

use crate::config::{CsiDriver, ImageMapping};

/// What the kubelet knows about running pods, shared with the proxy and log endpoints.
pub struct Runtime {
    pub(crate) pods: Mutex<HashMap<String, PodHandle>>,
    pub(crate) state_dir: PathBuf,
    pub(crate) images: Vec<ImageMapping>,
    pub(crate) csi: Vec<CsiDriver>,
    pub(crate) api_port: Mutex<u16>,
}

pub(crate) struct PodHandle {
    pub(crate) namespace: String,
    pub(crate) name: String,
    pub(crate) ports: BTreeMap<i64, u16>,
    pub(crate) dir: PathBuf,
    /// Process group ids of running containers.
    pub(crate) pgids: Arc<Mutex<BTreeMap<String, i32>>>,
    pub(crate) stop: watch::Sender<bool>,
}

impl Runtime {
    pub fn new(state_dir: PathBuf, images: Vec<ImageMapping>, csi: Vec<CsiDriver>) -> Runtime {
        Runtime {
            pods: Mutex::new(HashMap::new()),
            state_dir,
            images,
            csi,
            api_port: Mutex::new(0),
        }
    }

    pub fn set_api_port(&self, port: u16) {
        *self.api_port.lock().unwrap_or_else(|p| p.into_inner()) = port;
    }

    pub(crate) fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, PodHandle>> {
        self.pods.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The host port serving a pod's container port.
    pub fn host_port(&self, pod_uid: &str, container_port: i64) -> Option<u16> {
        self.lock().get(pod_uid).and_then(|p| p.ports.get(&container_port).copied())
    }

    pub fn pod_dir(&self, pod_uid: &str) -> Option<PathBuf> {
        self.lock().get(pod_uid).map(|p| p.dir.clone())
    }

    /// Process ids (process group leaders) of a pod's running containers.
    pub fn pids(&self, pod_uid: &str) -> Vec<i32> {
        self.lock()
            .get(pod_uid)
            .map(|p| p.pgids.lock().unwrap_or_else(|x| x.into_inner()).values().copied().collect())
            .unwrap_or_default()
    }

    /// Kills every container process group (server shutdown).
    pub fn kill_all(&self) {
        for p in self.lock().values() {
            let _ = p.stop.send(true);
            for pgid in p.pgids.lock().unwrap_or_else(|x| x.into_inner()).values() {
                signal_group(*pgid, libc::SIGKILL);
            }
        }
    }

    pub(crate) fn image_executable(&self, image: &str) -> Option<PathBuf> {
        self.images.iter().find_map(|m| {
            let matches = match m.image.strip_suffix('*') {
                Some(prefix) => image.starts_with(prefix),
                None => {
                    image == m.image
                        || image.split(['@', ':']).next() == Some(m.image.as_str())
                            && !m.image.contains(':')
                }
            };
            matches.then(|| m.executable.clone())
        })
    }
}

pub(crate) fn signal_group(pgid: i32, sig: i32) {
    if pgid > 0 {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        #[allow(unsafe_code)]
        unsafe {
            libc::kill(-pgid, sig);
        }
    }
}

pub fn process_alive(pid: i32) -> bool {
    // SAFETY: kill(2) with signal 0 only checks for existence.
    #[allow(unsafe_code)]
    let r = unsafe { libc::kill(pid, 0) };
    if r != 0 {
        return false;
    }
    // A zombie is dead for our purposes.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| s.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
