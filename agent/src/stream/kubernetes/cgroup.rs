//! Which pod and container a process runs in, from its cgroup path as the kubelet lays it out:
//!
//! - cgroupfs driver: `/kubepods[/burstable|/besteffort]/pod<uid>/<container id>`;
//! - systemd driver: `/kubepods.slice[/kubepods-<qos>.slice]/kubepods[-<qos>]-pod<uid with _ for
//!   ->.slice/<runtime>-<container id>.scope` (`cri-containerd-`, `crio-`, `docker-`);
//!
//! on cgroup v1 (a line per hierarchy) and v2 (the one `0::` line), under any prefix (a node
//! whose kubelet runs in a container nests it deeper).

/// A process's place in Kubernetes, as its cgroup says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodRef {
    /// The pod's UID, with dashes (as the API gives it).
    pub uid: String,
    /// The container's id (64 hex digits), when the process is in a container's own cgroup.
    pub container_id: Option<String>,
}

/// Reads `/proc/PID/cgroup`'s text: the first line whose path is under `kubepods`.
pub fn pod_of(cgroup: &str) -> Option<PodRef> {
    cgroup.lines().find_map(|line| {
        // hierarchy-id:controllers:path, and the path may itself hold colons.
        let path = line.splitn(3, ':').nth(2)?;
        pod_in_path(path)
    })
}

fn pod_in_path(path: &str) -> Option<PodRef> {
    let parts: Vec<&str> = path.split('/').collect();
    let kubepods = parts.iter().position(|p| *p == "kubepods" || *p == "kubepods.slice")?;
    let (index, uid) = parts.iter().enumerate().skip(kubepods + 1).find_map(|(i, part)| Some((i, pod_uid(part)?)))?;
    let container_id = parts.get(index + 1).and_then(|part| container_id(part));
    Some(PodRef { uid, container_id })
}

/// `pod<uid>` (cgroupfs) or `kubepods[-<qos>]-pod<uid_with_underscores>.slice` (systemd).
fn pod_uid(part: &str) -> Option<String> {
    let raw = match part.strip_suffix(".slice") {
        Some(slice) => &slice[slice.rfind("-pod")? + 4..],
        None => part.strip_prefix("pod")?,
    };
    let uid = raw.replace('_', "-");
    let groups: Vec<&str> = uid.split('-').collect();
    let shape = [8, 4, 4, 4, 12];
    let is_uuid = groups.len() == 5
        && groups.iter().zip(shape).all(|(g, n)| g.len() == n && g.bytes().all(|b| b.is_ascii_hexdigit()));
    is_uuid.then(|| uid.to_ascii_lowercase())
}

/// `<id>` (cgroupfs) or `<runtime>-<id>.scope` (systemd): 64 hex digits.
fn container_id(part: &str) -> Option<String> {
    let id = part.strip_suffix(".scope").map_or(part, |scope| scope.rsplit('-').next().unwrap_or(scope));
    (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_ascii_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0a1b2c3d-4e5f-6789-abcd-ef0123456789";

    fn id() -> String {
        "c0ffee".repeat(10) + "abcd"
    }

    #[test]
    fn reads_the_cgroupfs_driver_s_paths_on_v1_and_v2() {
        let want = PodRef { uid: UID.into(), container_id: Some(id()) };
        for qos in ["", "/burstable", "/besteffort"] {
            let v1 = format!("12:pids:/kubepods{qos}/pod{UID}/{}\n11:cpu:/\n0::/\n", id());
            assert_eq!(pod_of(&v1), Some(want.clone()), "{v1}");
            let v2 = format!("0::/kubepods{qos}/pod{UID}/{}\n", id());
            assert_eq!(pod_of(&v2), Some(want.clone()), "{v2}");
        }
    }

    #[test]
    fn reads_the_systemd_driver_s_paths() {
        let underscored = UID.replace('-', "_");
        let want = PodRef { uid: UID.into(), container_id: Some(id()) };
        for (qos_slice, pod_slice) in [
            ("", format!("kubepods-pod{underscored}.slice")),
            ("kubepods-burstable.slice/", format!("kubepods-burstable-pod{underscored}.slice")),
        ] {
            for runtime in ["cri-containerd", "crio", "docker"] {
                let path = format!("0::/kubepods.slice/{qos_slice}{pod_slice}/{runtime}-{}.scope\n", id());
                assert_eq!(pod_of(&path), Some(want.clone()), "{path}");
            }
        }
    }

    #[test]
    fn a_pod_s_own_cgroup_has_no_container_and_nesting_is_allowed() {
        let nested = format!("0::/kubelet.slice/kubepods/burstable/pod{UID}\n");
        assert_eq!(pod_of(&nested), Some(PodRef { uid: UID.into(), container_id: None }));
    }

    #[test]
    fn other_paths_are_no_pod() {
        for text in [
            "0::/user.slice/user-0.slice/session-1.scope\n",
            "0::/system.slice/docker-abc.scope\n",
            "0::/kubepods/burstable/podnot-a-uid/x\n",
            "0::/kubepods\n",
            "garbage",
            "",
        ] {
            assert_eq!(pod_of(text), None, "{text:?}");
        }
    }
}
