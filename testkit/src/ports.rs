//! Ports for test servers that nothing else on the machine takes in the meantime.
//!
//! Binding port 0 and closing hands back a port from the kernel's ephemeral range, the same
//! range outgoing connections draw from: between the probe and the server's own bind, a
//! client connection (a collector's to ClickHouse, an agent's to a collector) may take it.
//! Ports below that range are only ever taken by listeners, so a probe there stays true.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::net::TcpListener;
use std::sync::Mutex;

/// Lowest port handed out; below it sit well-known and registered services.
const FLOOR: u16 = 10_000;

/// Ports already handed out in this process, so two tests running at once never share one.
static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback port below the ephemeral range that nothing listens on now.
pub fn free_port() -> u16 {
    let ceiling = ephemeral_start().max(FLOOR + 1000);
    let span = u64::from(ceiling - FLOOR);
    let seed = RandomState::new();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    let handed_out = handed_out.get_or_insert_with(HashSet::new);
    for attempt in 0u64..10_000 {
        let port = FLOOR + (seed.hash_one(attempt) % span) as u16;
        if handed_out.contains(&port) || TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue;
        }
        handed_out.insert(port);
        return port;
    }
    panic!("no free loopback port between {FLOOR} and {ceiling}");
}

/// The first port of the kernel's ephemeral range (Linux's default when unreadable).
fn ephemeral_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|range| range.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: HashSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        let ceiling = ephemeral_start().max(FLOOR + 1000);
        assert!(ports.iter().all(|&p| p >= FLOOR && p < ceiling), "{ports:?}");
    }
}
