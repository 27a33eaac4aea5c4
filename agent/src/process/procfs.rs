//! The few `/proc` and `/sys` reads ember needs. Parsers take text so they can be tested
//! without a live process.

use std::fs;
use std::io;
use std::path::PathBuf;

use super::ids::{NsPid, Pid, Tid};

#[derive(Debug, thiserror::Error)]
pub enum ProcfsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: io::Error },
    #[error("cannot parse {path}: {what}")]
    Parse { path: PathBuf, what: &'static str },
}

fn read(path: PathBuf) -> Result<String, ProcfsError> {
    fs::read_to_string(&path).map_err(|source| ProcfsError::Read { path, source })
}

/// CPUs that are online, from `/sys/devices/system/cpu/online` ("0-3,6").
pub fn online_cpus() -> Result<Vec<usize>, ProcfsError> {
    let path = PathBuf::from("/sys/devices/system/cpu/online");
    let text = read(path.clone())?;
    parse_cpu_list(&text).ok_or(ProcfsError::Parse { path, what: "CPU list" })
}

pub fn parse_cpu_list(text: &str) -> Option<Vec<usize>> {
    let mut cpus = Vec::new();
    for part in text.trim().split(',').filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => cpus.extend(a.parse::<usize>().ok()?..=b.parse::<usize>().ok()?),
            None => cpus.push(part.parse().ok()?),
        }
    }
    (!cpus.is_empty()).then_some(cpus)
}

pub fn process_exists(pid: Pid) -> bool {
    match fs::read_to_string(format!("/proc/{pid}/stat")) {
        // A zombie has exited; only its exit status is left.
        Ok(stat) => stat_state(&stat).is_some_and(|s| s != 'Z' && s != 'X'),
        Err(_) => false,
    }
}

/// The fields of `/proc/PID/stat` after the command name, from the state on. The name may
/// contain spaces and ')', and is the only field that may, so the last ')' ends it.
fn stat_after_comm(stat: &str) -> Option<&str> {
    stat.get(stat.rfind(')')? + 1..).map(str::trim_start)
}

/// The state letter from `/proc/PID/stat`.
/// The scheduler state of one thread (`R` running or runnable, `S` sleeping, ...).
pub fn thread_state(pid: Pid, tid: Tid) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    stat_state(&stat)
}

pub fn stat_state(stat: &str) -> Option<char> {
    stat_after_comm(stat)?.chars().next()
}

/// When the process started, in clock ticks since boot (field 22 of `/proc/PID/stat`), which
/// tells a reused PID from the process that had it before.
pub fn start_time(pid: Pid) -> Option<u64> {
    parse_start_time(&fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
}

pub fn parse_start_time(stat: &str) -> Option<u64> {
    stat_after_comm(stat)?.split_whitespace().nth(19)?.parse().ok()
}

/// When the process started, on the wall clock: its start in ticks since boot, plus when the
/// system booted by the wall clock now (CLOCK_REALTIME − CLOCK_BOOTTIME). Good to a tick, less
/// any step of the wall clock since the process started.
pub fn started_at(pid: Pid) -> Option<std::time::SystemTime> {
    use nix::time::{clock_gettime, ClockId};
    use std::time::{Duration, UNIX_EPOCH};
    let ticks_per_second = nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK).ok()??;
    let ticks_per_second = u64::try_from(ticks_per_second).ok().filter(|&t| t > 0)?;
    let ticks = start_time(pid)?;
    let since_boot = Duration::from_secs(ticks / ticks_per_second)
        + Duration::from_nanos((ticks % ticks_per_second) * 1_000_000_000 / ticks_per_second);
    let duration = |clock| clock_gettime(clock).ok().map(Duration::from);
    let booted = duration(ClockId::CLOCK_REALTIME)?.checked_sub(duration(ClockId::CLOCK_BOOTTIME)?)?;
    UNIX_EPOCH.checked_add(booted + since_boot)
}

/// The parent's PID (`PPid:` of the status).
pub fn ppid(pid: Pid) -> Option<Pid> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status.lines().find_map(|l| l.strip_prefix("PPid:")).and_then(|v| v.trim().parse().ok()).map(Pid)
}

/// The children of every thread of `pid` (`/proc/PID/task/TID/children`), in no order.
pub fn children(pid: Pid) -> Vec<Pid> {
    let mut children = Vec::new();
    for tid in threads(pid).unwrap_or_default() {
        let text = fs::read_to_string(format!("/proc/{pid}/task/{tid}/children")).unwrap_or_default();
        children.extend(text.split_whitespace().filter_map(|c| c.parse().ok()).map(Pid));
    }
    children
}

/// Every process below `pid` in the process tree (children, their children…), at most
/// `limit` of them, parents before their children.
pub fn descendants(pid: Pid, limit: usize) -> Vec<Pid> {
    let mut found: Vec<Pid> = Vec::new();
    let mut next = 0;
    let mut parent = pid;
    loop {
        for child in children(parent) {
            if found.len() < limit && child != pid && !found.contains(&child) {
                found.push(child);
            }
        }
        let Some(&p) = found.get(next) else { return found };
        parent = p;
        next += 1;
    }
}

/// The process's cgroup membership, as `/proc/PID/cgroup` lists it.
pub fn cgroup(pid: Pid) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()
}

/// The host name, as the kernel has it for this UTS namespace.
pub fn hostname() -> String {
    fs::read_to_string("/proc/sys/kernel/hostname").map(|h| h.trim().to_string()).unwrap_or_default()
}

pub fn threads(pid: Pid) -> Result<Vec<Tid>, ProcfsError> {
    let path = PathBuf::from(format!("/proc/{pid}/task"));
    let entries = fs::read_dir(&path).map_err(|source| ProcfsError::Read { path, source })?;
    let mut tids: Vec<Tid> = entries.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok().map(Tid)).collect();
    tids.sort();
    Ok(tids)
}

pub fn comm(pid: Pid, tid: Tid) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm")).ok().map(|s| s.trim_end().to_string())
}

/// A thread's id in its process's own PID namespace, which is what the interpreter records.
pub fn task_ns_tid(pid: Pid, tid: Tid) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    parse_ns_pid(&status).map(|n| n.0)
}

/// Each thread of `pid` with its id in the process's own PID namespace.
pub fn ns_tids(pid: Pid) -> Vec<(u32, Tid)> {
    let tids = threads(pid).unwrap_or_default();
    tids.into_iter().filter_map(|tid| Some((task_ns_tid(pid, tid)?, tid))).collect()
}

/// CLOCK_MONOTONIC in nanoseconds, the clock perf samples are stamped with.
pub fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map_or(0, |t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
}

pub fn exe(pid: Pid) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/exe")).ok()
}

pub fn cmdline(pid: Pid) -> Option<Vec<String>> {
    let raw = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(raw.split(|&b| b == 0).filter(|a| !a.is_empty()).map(|a| String::from_utf8_lossy(a).into_owned()).collect())
}

/// Who a process is, from one read of its status: its pid in its own namespace (`NSpid:`)
/// and its real, effective, saved and file-system uids (`Uid:`).
pub fn identity(pid: Pid) -> Result<(NsPid, Vec<u32>), ProcfsError> {
    let path = PathBuf::from(format!("/proc/{pid}/status"));
    let text = read(path.clone())?;
    let ns_pid = parse_ns_pid(&text).ok_or_else(|| ProcfsError::Parse { path: path.clone(), what: "NSpid line" })?;
    let uids = parse_uids(&text).ok_or(ProcfsError::Parse { path, what: "Uid line" })?;
    Ok((ns_pid, uids))
}

/// The PID as the process sees itself: the last `NSpid:` field of a status file.
pub fn parse_ns_pid(status: &str) -> Option<NsPid> {
    let line = status.lines().find(|l| l.starts_with("NSpid:"))?;
    line.split_whitespace().last()?.parse().ok().map(NsPid)
}

/// The real, effective, saved and file-system uids of a process (`Uid:` of its status).
pub fn parse_uids(status: &str) -> Option<Vec<u32>> {
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    let mut uids: Vec<u32> = line.split_whitespace().skip(1).map(str::parse).collect::<Result<_, _>>().ok()?;
    uids.sort_unstable();
    uids.dedup();
    (!uids.is_empty()).then_some(uids)
}

pub fn perf_event_paranoid() -> String {
    fs::read_to_string("/proc/sys/kernel/perf_event_paranoid")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// One line of `/proc/PID/maps`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MapsLine {
    pub start: u64,
    pub end: u64,
    pub readable: bool,
    pub executable: bool,
    pub offset: u64,
    pub dev_inode: Option<(u32, u32, u64)>,
    pub path: String,
}

pub fn maps(pid: Pid) -> Result<Vec<MapsLine>, ProcfsError> {
    Ok(parse_maps(&read(PathBuf::from(format!("/proc/{pid}/maps")))?))
}

pub fn parse_maps(text: &str) -> Vec<MapsLine> {
    text.lines().filter_map(parse_maps_line).collect()
}

fn parse_maps_line(line: &str) -> Option<MapsLine> {
    let mut fields = line.splitn(6, ' ');
    let (start, end) = fields.next()?.split_once('-')?;
    let perms = fields.next()?.as_bytes();
    let offset = u64::from_str_radix(fields.next()?, 16).ok()?;
    let (maj, min) = fields.next()?.split_once(':')?;
    let inode: u64 = fields.next()?.parse().ok()?;
    let path = fields.next().unwrap_or("").trim_start().to_string();
    let dev_inode = (inode != 0)
        .then(|| Some((u32::from_str_radix(maj, 16).ok()?, u32::from_str_radix(min, 16).ok()?, inode)))
        .flatten();
    Some(MapsLine {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        readable: perms.first() == Some(&b'r'),
        executable: perms.get(2) == Some(&b'x'),
        offset,
        dev_inode,
        path,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_started_between_two_readings_of_the_wall_clock() {
        use std::time::{Duration, SystemTime};
        let before = SystemTime::now();
        let mut child = std::process::Command::new("sleep").arg("10").spawn().expect("sleep");
        let after = SystemTime::now();
        let started = started_at(Pid(child.id()));
        let _ = child.kill();
        let _ = child.wait();
        let started = started.expect("start time");
        // A tick of /proc's resolution either side.
        let tick = Duration::from_millis(20);
        assert!(started + tick >= before && started <= after + tick, "{started:?} not in {before:?}..{after:?}");
    }

    #[test]
    fn cpu_lists() {
        assert_eq!(parse_cpu_list("0-1\n"), Some(vec![0, 1]));
        assert_eq!(parse_cpu_list("0,2-3,7"), Some(vec![0, 2, 3, 7]));
        assert_eq!(parse_cpu_list("x"), None);
    }

    #[test]
    fn uids_are_the_distinct_ones_of_the_uid_line() {
        assert_eq!(parse_uids("Name:\tx\nUid:\t1000\t0\t0\t1000\nGid:\t1\t1\t1\t1\n"), Some(vec![0, 1000]));
        assert_eq!(parse_uids("Uid:\tx\n"), None);
    }

    #[test]
    fn ns_pid_is_last_field() {
        assert_eq!(parse_ns_pid("Name:\tpython\nNSpid:\t4242\t7\n"), Some(NsPid(7)));
        assert_eq!(parse_ns_pid("NSpid:\t4242\n"), Some(NsPid(4242)));
        assert_eq!(parse_ns_pid("Name: x\n"), None);
    }

    #[test]
    fn stat_state_survives_odd_comm() {
        assert_eq!(stat_state("12 (a) b) R 1 2"), Some('R'));
        assert_eq!(stat_state("12 (x) Z 1"), Some('Z'));
        // A stat cut right after a name ending in ')' used to panic the discovery's parser.
        assert_eq!(stat_state("12 (a))"), None);
        assert_eq!(parse_start_time("12 (a))"), None);
        let stat = "7 (we) ird) S 1 7 7 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 4242 1 2";
        assert_eq!(parse_start_time(stat), Some(4242));
    }

    #[test]
    fn maps_lines() {
        let text = "7f0e00000000-7f0e00001000 r-xp 00002000 fd:01 1234   /usr/lib/libpython3.12.so.1.0\n\
                    7f0e00002000-7f0e00012000 r-xp 00000000 00:00 0 \n\
                    7ffd0000-7ffe0000 rw-p 00000000 00:00 0                          [stack]\n";
        let maps = parse_maps(text);
        assert_eq!(maps.len(), 3);
        assert_eq!(maps[0].offset, 0x2000);
        assert_eq!(maps[0].dev_inode, Some((0xfd, 1, 1234)));
        assert!(maps[0].executable);
        assert_eq!(maps[0].path, "/usr/lib/libpython3.12.so.1.0");
        assert_eq!(maps[1].path, "");
        assert_eq!(maps[1].dev_inode, None);
        assert_eq!(maps[2].path, "[stack]");
        assert!(!maps[2].executable);
    }
}
