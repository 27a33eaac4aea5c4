//! Reading the target's memory, to check that perf-map addresses really hold trampolines.

use std::io::IoSliceMut;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};

use super::ids::Pid;

/// Reads `len` bytes at `addr` of process `pid`, or `None` if the process is gone or the
/// range is not mapped.
pub fn read(pid: Pid, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec { base: usize::try_from(addr).ok()?, len }];
    let n =
        process_vm_readv(nix::unistd::Pid::from_raw(pid.0 as i32), &mut [IoSliceMut::new(&mut buf)], &remote).ok()?;
    buf.truncate(n);
    (n == len).then_some(buf)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_own_memory() {
        let value: [u8; 4] = [1, 2, 3, 4];
        let me = Pid(std::process::id());
        assert_eq!(read(me, value.as_ptr() as u64, 4), Some(vec![1, 2, 3, 4]));
        assert_eq!(read(me, 8, 4), None, "unmapped page");
    }
}
