//! `stream --kubernetes`: each process labelled with its pod's name and namespace and its
//! container's name, for a node-wide agent (`--all-python`, `hostPID`). Which pod and container
//! a process is in comes from its cgroup path (`cgroup`); their names from the API server's
//! list of this node's pods (`api`), which a thread of its own keeps fresh: every minute, and
//! when a process turns up in a pod it does not know yet (at most every 5 s).

mod api;
mod cgroup;

use std::collections::HashMap;
use std::sync::mpsc::{channel, RecvTimeoutError, Sender};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use api::Pod;
pub use api::{ApiConfig, ApiError};

use crate::process::{procfs, Pid};

/// Pods are listed again this often...
const REFRESH: Duration = Duration::from_secs(60);
/// ...and when asked, but never more often than this.
const MIN_GAP: Duration = Duration::from_secs(5);

/// What Kubernetes says about one process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    /// Its cgroup is no pod's.
    NotInPod,
    /// A pod the last list did not have (yet): asked for again.
    Unknown,
    Known {
        pod: String,
        namespace: String,
        container: Option<String>,
    },
}

#[derive(Debug, Default)]
struct Known {
    pods: HashMap<String, Pod>,
    /// Bumped by every list that arrived.
    generation: u64,
}

/// This node's pods, as last listed.
#[derive(Debug)]
pub struct PodDirectory {
    known: Arc<Mutex<Known>>,
    nudge: Sender<()>,
}

impl PodDirectory {
    /// Starts the thread that lists pods, and asks for the first list at once.
    pub fn start(config: ApiConfig) -> std::io::Result<Self> {
        let known = Arc::new(Mutex::new(Known::default()));
        let (nudge, nudged) = channel();
        let shared = known.clone();
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
        std::thread::Builder::new().name("ember-kubernetes".into()).spawn(move || {
            let mut last: Option<Instant> = None;
            let mut last_error = String::new();
            loop {
                match nudged.recv_timeout(REFRESH) {
                    Ok(()) | Err(RecvTimeoutError::Timeout) => {}
                    Err(RecvTimeoutError::Disconnected) => return,
                }
                if let Some(wait) = last.map(|t| MIN_GAP.saturating_sub(t.elapsed())) {
                    std::thread::sleep(wait);
                }
                while nudged.try_recv().is_ok() {}
                last = Some(Instant::now());
                match runtime.block_on(api::list_pods(&config)) {
                    Ok(pods) => {
                        if !last_error.is_empty() || shared.lock().is_ok_and(|k| k.generation == 0) {
                            tracing::info!("kubernetes: {} pods on node {}", pods.len(), config.node);
                        }
                        last_error.clear();
                        if let Ok(mut known) = shared.lock() {
                            known.pods = pods;
                            known.generation += 1;
                        }
                    }
                    Err(e) => {
                        let text = e.to_string();
                        if text != last_error {
                            tracing::warn!("kubernetes: cannot list the node's pods: {text}; processes keep their cgroup's pod uid only");
                            last_error = text;
                        }
                    }
                }
            }
        })?;
        let _ = nudge.send(());
        Ok(PodDirectory { known, nudge })
    }

    /// Which list the lookups answer from: a change means an `Unknown` may be known now.
    pub fn generation(&self) -> u64 {
        self.known.lock().map_or(0, |k| k.generation)
    }

    /// What Kubernetes says about process `pid` (host PID), from its cgroup and the last list.
    pub fn lookup(&self, pid: Pid) -> Lookup {
        let Some(place) = procfs::cgroup(pid).as_deref().and_then(cgroup::pod_of) else { return Lookup::NotInPod };
        let Ok(known) = self.known.lock() else { return Lookup::Unknown };
        match known.pods.get(&place.uid) {
            Some(pod) => Lookup::Known {
                pod: pod.name.clone(),
                namespace: pod.namespace.clone(),
                container: place.container_id.and_then(|id| pod.containers.get(&id).cloned()),
            },
            None => {
                let _ = self.nudge.send(());
                Lookup::Unknown
            }
        }
    }
}
