//! Process descriptors: the labels a collector files a process's samples under.

use std::collections::BTreeMap;

use ember_proto::v1;

use crate::process::{procfs, Pid};

/// Labels that are the same for every process of this agent.
#[derive(Debug, Clone, Default)]
pub struct CommonLabels {
    pub host: String,
    pub service: String,
    pub pod: String,
    pub namespace: String,
    pub custom: BTreeMap<String, String>,
}

impl CommonLabels {
    /// Host name from the kernel; pod and namespace from the Kubernetes downward API
    /// (`POD_NAME`, `POD_NAMESPACE`) when the agent runs as a sidecar, and the node's name
    /// (`NODE_NAME`) as label `node` unless `--label node=` says otherwise.
    pub fn from_environment(service: Option<String>, mut custom: BTreeMap<String, String>) -> Self {
        let env = |k: &str| std::env::var(k).unwrap_or_default();
        let node = env("NODE_NAME");
        if !node.is_empty() {
            custom.entry("node".into()).or_insert(node);
        }
        CommonLabels {
            host: procfs::hostname(),
            service: service.unwrap_or_default(),
            pod: env("POD_NAME"),
            namespace: env("POD_NAMESPACE"),
            custom,
        }
    }
}

/// The container a process runs in: the 64-hex-digit id in its cgroup path (Docker,
/// containerd, CRI-O all use one), if any.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .lines()
        .find_map(|line| {
            let path = line.rsplit(':').next()?;
            path.split(['/', '-', '.', ':'])
                .find(|part| part.len() == 64 && part.bytes().all(|b| b.is_ascii_hexdigit()))
        })
        .map(str::to_string)
}

/// Puts what Kubernetes says about a process into its descriptor; false while its pod is not
/// known yet.
pub fn apply_kubernetes(process: &mut v1::Process, lookup: super::kubernetes::Lookup) -> bool {
    use super::kubernetes::Lookup;
    match lookup {
        Lookup::NotInPod => true,
        Lookup::Unknown => false,
        Lookup::Known { pod, namespace, container } => {
            process.pod = pod;
            process.namespace = namespace;
            if let Some(name) = container {
                process.labels.insert("container_name".into(), name);
            }
            true
        }
    }
}

/// Reads what `/proc` says about a process (while it exists).
pub fn describe(pid: Pid, ns_pid: u32, comm: &str, common: &CommonLabels) -> v1::Process {
    v1::Process {
        id: pid.0,
        host: common.host.clone(),
        pid: pid.0,
        ns_pid,
        comm: comm.to_string(),
        exe: procfs::exe(pid).map(|p| p.display().to_string()).unwrap_or_default(),
        cmdline: procfs::cmdline(pid).map(|c| c.join(" ")).unwrap_or_default(),
        service: common.service.clone(),
        container_id: procfs::cgroup(pid).as_deref().and_then(container_id).unwrap_or_default(),
        pod: common.pod.clone(),
        namespace: common.namespace.clone(),
        labels: common.custom.clone().into_iter().collect(),
        threads: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_container_ids() {
        let id = "a".repeat(64);
        assert_eq!(container_id(&format!("0::/system.slice/docker-{id}.scope\n")), Some(id.clone()));
        assert_eq!(container_id(&format!("0::/kubepods/burstable/pod123/{id}\n")), Some(id.clone()));
        assert_eq!(container_id("0::/user.slice/user-0.slice/session-1.scope\n"), None);
    }
}
