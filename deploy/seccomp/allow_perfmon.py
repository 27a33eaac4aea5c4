"""Writes a container runtime's default seccomp profile (OCI/containers JSON, argv[1]) to argv[2]
with `perf_event_open` allowed to a container holding CAP_PERFMON, as Docker's and containerd's
defaults have done since 2022 and containers-common's since late 2025 (older ones allowed it
only with CAP_SYS_ADMIN too). Nothing else changes: use it as the agent's `Localhost` profile
on a runtime whose default is older (deploy/README.md, "seccomp")."""

import json
import sys

SYSCALL = "perf_event_open"


def allow_perfmon(profile):
    rules = []
    for rule in profile["syscalls"]:
        names = [n for n in rule["names"] if n != SYSCALL]
        if names:
            rules.append({**rule, "names": names})
    rules.append({"names": [SYSCALL], "action": "SCMP_ACT_ALLOW", "args": [], "includes": {"caps": ["CAP_PERFMON"]}})
    return {**profile, "syscalls": rules}


def main(source, target):
    with open(source) as f:
        profile = json.load(f)
    with open(target, "w") as f:
        json.dump(allow_perfmon(profile), f, indent=1)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
