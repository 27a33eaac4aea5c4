//! Reading the target's memory (trampolines, the interpreter's frames) and, for PEP 768's
//! remote-execution request only, writing it.

use std::io::IoSliceMut;

use std::os::unix::fs::FileExt;

use nix::sys::uio::{process_vm_readv, RemoteIoVec};

use super::ids::Pid;

/// Reads `len` bytes at `addr` of process `pid`, or `None` if the process is gone or the
/// range is not mapped.
pub fn read(pid: Pid, addr: u64, len: usize) -> Option<Vec<u8>> {
    read_up_to(pid, addr, len).filter(|buf| buf.len() == len)
}

/// Up to `len` bytes at `addr`: the kernel stops at the first page that is not mapped, so a
/// read running off the top of a stack returns the stack. `None` if not one byte was read.
pub fn read_up_to(pid: Pid, addr: u64, len: usize) -> Option<Vec<u8>> {
    let mut buf = vec![0u8; len];
    let remote = [RemoteIoVec { base: usize::try_from(addr).ok()?, len }];
    let n =
        process_vm_readv(nix::unistd::Pid::from_raw(pid.0 as i32), &mut [IoSliceMut::new(&mut buf)], &remote).ok()?;
    buf.truncate(n);
    (n > 0).then_some(buf)
}

/// A process's address space through `/proc/PID/mem`, bound to the one it had when opened:
/// after an exec, or once the PID names another process, reads and writes fail instead of
/// reaching another program. What activation writes through.
///
/// Opening it for writing also takes file permission (the target's uid, or
/// `CAP_DAC_OVERRIDE`), which an agent holding only `CAP_SYS_PTRACE` and `CAP_PERFMON` lacks
/// for another user's process. Then `process_vm_writev` writes instead, each write only while
/// the process still runs the program it ran when opened: the same executable (device and
/// inode) and the same vDSO address, which every exec places anew.
#[derive(Debug)]
pub struct ProcMem(Access);

#[derive(Debug)]
enum Access {
    File(std::fs::File),
    Calls { pid: Pid, program: Program },
}

/// What tells one exec of a process from the next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Program {
    exe: (u64, u64),
    vdso: u64,
}

fn program(pid: Pid) -> Option<Program> {
    use std::os::unix::fs::MetadataExt;
    let exe = std::fs::metadata(format!("/proc/{pid}/exe")).ok()?;
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).ok()?;
    let vdso = maps.lines().find(|l| l.ends_with("[vdso]"))?.split('-').next()?;
    Some(Program { exe: (exe.dev(), exe.ino()), vdso: u64::from_str_radix(vdso, 16).ok()? })
}

impl ProcMem {
    pub fn open(pid: Pid) -> std::io::Result<Self> {
        match std::fs::OpenOptions::new().read(true).write(true).open(format!("/proc/{pid}/mem")) {
            Ok(file) => Ok(ProcMem(Access::File(file))),
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                let program = program(pid).ok_or(e)?;
                Ok(ProcMem(Access::Calls { pid, program }))
            }
            Err(e) => Err(e),
        }
    }
}

impl crate::interp::AddressSpace for ProcMem {
    fn read(&self, addr: u64, len: usize) -> Option<Vec<u8>> {
        match &self.0 {
            Access::File(file) => {
                let mut buf = vec![0u8; len];
                file.read_exact_at(&mut buf, addr).ok()?;
                Some(buf)
            }
            Access::Calls { pid, program: at_open } => {
                let bytes = read(*pid, addr, len)?;
                (program(*pid) == Some(*at_open)).then_some(bytes)
            }
        }
    }

    fn write(&self, addr: u64, bytes: &[u8]) -> bool {
        match &self.0 {
            Access::File(file) => file.write_all_at(bytes, addr).is_ok(),
            Access::Calls { pid, program: at_open } => {
                if program(*pid) != Some(*at_open) {
                    return false;
                }
                let Ok(base) = usize::try_from(addr) else { return false };
                let remote = [RemoteIoVec { base, len: bytes.len() }];
                let local = [std::io::IoSlice::new(bytes)];
                nix::sys::uio::process_vm_writev(nix::unistd::Pid::from_raw(pid.0 as i32), &local, &remote)
                    .is_ok_and(|n| n == bytes.len())
            }
        }
    }
}

/// Most ranges in one `process_vm_readv` (the kernel's `UIO_MAXIOV`).
const MAX_IOVECS: usize = 1024;

/// Reads every range, in as few `process_vm_readv` calls as the kernel allows. The call stops at
/// the first range it cannot read; the ranges after it are read again one by one.
pub fn read_many(pid: Pid, ranges: &[(u64, usize)]) -> Vec<Option<Vec<u8>>> {
    let mut out: Vec<Option<Vec<u8>>> = Vec::with_capacity(ranges.len());
    for batch in ranges.chunks(MAX_IOVECS) {
        let mut bufs: Vec<Vec<u8>> = batch.iter().map(|&(_, len)| vec![0u8; len]).collect();
        let remote: Option<Vec<RemoteIoVec>> =
            batch.iter().map(|&(addr, len)| Some(RemoteIoVec { base: usize::try_from(addr).ok()?, len })).collect();
        let mut copied = 0;
        if let Some(remote) = remote {
            let mut local: Vec<IoSliceMut> = bufs.iter_mut().map(|b| IoSliceMut::new(b)).collect();
            copied = process_vm_readv(nix::unistd::Pid::from_raw(pid.0 as i32), &mut local, &remote).unwrap_or(0);
        }
        for (&(addr, len), buf) in batch.iter().zip(bufs) {
            if copied >= len {
                copied -= len;
                out.push(Some(buf));
            } else {
                copied = 0;
                out.push(read(pid, addr, len));
            }
        }
    }
    out
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

    #[test]
    fn a_read_running_off_the_mapped_memory_returns_what_is_mapped() {
        // Two pages, the second unmapped: a read across them gives the first.
        let mut two = memmap2::MmapMut::map_anon(2 * 4096).expect("anonymous map");
        two[4095] = 7;
        let start = two.as_ptr() as u64;
        let second = unsafe { libc::munmap(two.as_mut_ptr().add(4096).cast(), 4096) };
        assert_eq!(second, 0, "munmap");
        let me = Pid(std::process::id());
        let first = read_up_to(me, start, 8192).expect("the first page");
        assert_eq!((first.len(), first[4095]), (4096, 7));
        assert_eq!(read_up_to(me, start + 4096, 16), None);
        assert_eq!(read(me, start, 8192), None, "a whole read needs all of it");
        // `two` unmaps both pages on drop; munmap of the already unmapped half is harmless.
    }

    #[test]
    fn reads_and_writes_own_address_space_through_proc_mem() {
        use crate::interp::AddressSpace;
        let mut value = [0u8; 4];
        let mem = ProcMem::open(Pid(std::process::id())).expect("/proc/self/mem");
        assert!(mem.write(value.as_mut_ptr() as u64, &[5, 6, 7, 8]));
        assert_eq!(std::hint::black_box(value), [5, 6, 7, 8]);
        assert_eq!(mem.read(value.as_ptr() as u64, 2), Some(vec![5, 6]));
        assert!(!mem.write(8, &[1]), "unmapped page");
    }

    #[test]
    fn reads_many_ranges_at_once_and_the_readable_ones_past_a_hole() {
        let (a, b): ([u8; 3], [u8; 2]) = ([1, 2, 3], [9, 8]);
        let me = Pid(std::process::id());
        let ranges = [(a.as_ptr() as u64, 3), (8, 4), (b.as_ptr() as u64, 2)];
        assert_eq!(read_many(me, &ranges), [Some(vec![1, 2, 3]), None, Some(vec![9, 8])]);
    }
}
