//! Opens cpu-clock sampling events for target threads and drains their ring buffers.
//!
//! The kernel refuses to mmap an inherited event opened with `cpu == -1`, so ember opens one
//! event per (thread, CPU) and redirects every event of a CPU into that CPU's single ring
//! buffer with `PERF_EVENT_IOC_SET_OUTPUT`, the way `perf record` does.

use std::collections::{HashMap, HashSet};
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use perf_event::events::Software;
use perf_event::{Builder, Clock, Counter, SampleFlag, Sampler};

use super::event::{Decoder, PerfEvent, USER_REGS_MASK};
use crate::process::ids::{Pid, Tid};
use crate::process::procfs;

/// How the sampling events are configured.
#[derive(Debug, Clone)]
pub struct SamplingConfig {
    pub rate_hz: u64,
    pub stack_bytes: u32,
    /// Also capture the kernel callchain.
    pub kernel: bool,
    /// Follow forked child processes, not only new threads.
    pub follow_children: bool,
    /// Ring buffer size per CPU in bytes (rounded up to a power of two pages).
    pub ring_bytes: usize,
    /// Read the interpreter's frames from memory for samples the stack copy cut short.
    pub read_interpreter: bool,
    /// Read them for every sample, for the line of each Python frame (`record --lines`).
    pub lines: bool,
    /// Turn the perf trampoline on in attached targets started without it (`activate`).
    pub activate: bool,
    /// Sample by reading the interpreter's frames from memory instead of with perf events
    /// (`--memory-only`); also what ember falls back to when perf events are refused.
    pub memory_only: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum PerfError {
    #[error("no process with PID {0} exists (it may have exited); check the PID with `ps -p {0}`")]
    NoSuchProcess(u32),
    #[error(
        "permission denied opening perf events for PID {pid} ({source}).\n  \
         kernel.perf_event_paranoid is {paranoid}. Fix it with one of:\n  \
         - run ember-agent as root, or as the target's user with perf_event_paranoid <= 2 for user-only sampling;\n  \
         - grant the capabilities: `sudo setcap cap_perfmon,cap_sys_ptrace+ep $(which ember-agent)`\n    \
           (CAP_PERFMON opens the events, CAP_SYS_PTRACE reads another user's process);\n  \
         - lower the setting: `sudo sysctl kernel.perf_event_paranoid=1`"
    )]
    PermissionDenied { pid: u32, paranoid: String, source: io::Error },
    #[error("perf_event_open is not available ({0}); the kernel needs CONFIG_PERF_EVENTS, and containers need it allowed by seccomp")]
    Unsupported(io::Error),
    #[error("perf_event_open failed for thread {tid} on CPU {cpu}: {source}")]
    Open { tid: u32, cpu: usize, source: io::Error },
    #[error("could not map the ring buffer for CPU {cpu}: {source}")]
    Mmap { cpu: usize, source: io::Error },
    #[error("could not redirect thread {tid}'s events on CPU {cpu} into the CPU ring buffer: {source}")]
    SetOutput { tid: u32, cpu: usize, source: io::Error },
    #[error("could not enable sampling: {0}")]
    Enable(io::Error),
    #[error("could not list CPUs or threads: {0}")]
    Procfs(#[from] procfs::ProcfsError),
}

/// Counters of what happened while draining.
#[derive(Debug, Default, Clone, Copy)]
pub struct DrainStats {
    pub decode_errors: u64,
}

struct CpuRing {
    cpu: usize,
    sampler: Sampler,
    /// Events of other threads whose output goes to `sampler`'s buffer.
    followers: Vec<(Tid, Counter)>,
    /// Which event's descriptor is polled for the buffer's wakeups: 0 is the sampler's, i is
    /// follower i - 1's. Once that event's threads have all exited its descriptor reports a
    /// hang-up on every poll, so the wait moves on to the next event of the ring.
    polled: usize,
}

impl CpuRing {
    /// The descriptor of the ring's `index`-th event, the sampler first.
    fn member_fd(&self, index: usize) -> Option<std::os::fd::RawFd> {
        match index {
            0 => Some(self.sampler.as_raw_fd()),
            i => self.followers.get(i - 1).map(|(_, counter)| counter.as_raw_fd()),
        }
    }
}

/// All open events of one recording.
pub struct SamplingSession {
    config: SamplingConfig,
    cpus: Vec<usize>,
    rings: Vec<CpuRing>,
    attached: HashSet<Tid>,
    /// Which process each attached thread belongs to, for detaching.
    owners: HashMap<Tid, Pid>,
    decoder: Option<Decoder>,
    /// Kernel-mode samples are excluded because the kernel refused them.
    pub user_only: bool,
    /// No perf events: threads are sampled by reading their Python frames from memory
    /// (`--memory-only`, or perf events were refused). Attaching only records the threads.
    pub memory_only: bool,
    stats: DrainStats,
}

impl std::fmt::Debug for SamplingSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SamplingSession").field("cpus", &self.cpus).field("threads", &self.attached.len()).finish()
    }
}

impl SamplingSession {
    pub fn new(config: SamplingConfig) -> Result<Self, PerfError> {
        let cpus = procfs::online_cpus()?;
        let memory_only = config.memory_only;
        Ok(Self {
            config,
            cpus,
            rings: Vec::new(),
            attached: HashSet::new(),
            owners: HashMap::new(),
            decoder: None,
            user_only: false,
            memory_only,
            stats: DrainStats::default(),
        })
    }

    pub fn stats(&self) -> DrainStats {
        self.stats
    }

    pub fn thread_count(&self) -> usize {
        self.attached.len()
    }

    fn builder(&self, tid: Tid, cpu: usize, enable_on_exec: bool) -> Builder<'static> {
        event_builder(&self.config, self.user_only, tid, cpu, enable_on_exec)
    }

    fn open(&mut self, tid: Tid, cpu: usize, enable_on_exec: bool) -> Result<Counter, PerfError> {
        match self.builder(tid, cpu, enable_on_exec).build() {
            Ok(counter) => Ok(counter),
            Err(e) if is_permission(&e) && !self.user_only && !self.config.kernel => {
                // The kernel refuses kernel-mode samples to unprivileged users; user-only
                // sampling still works and still gives complete user stacks.
                tracing::warn!("kernel-mode samples not permitted ({e}); sampling user mode only, so time in system calls is not counted");
                self.user_only = true;
                self.builder(tid, cpu, enable_on_exec).build().map_err(|e| self.classify(tid, cpu, e))
            }
            Err(e) => Err(self.classify(tid, cpu, e)),
        }
    }

    fn classify(&self, tid: Tid, cpu: usize, e: io::Error) -> PerfError {
        match e.raw_os_error() {
            Some(libc::ESRCH) => PerfError::NoSuchProcess(tid.0),
            Some(libc::EACCES) | Some(libc::EPERM) => {
                PerfError::PermissionDenied { pid: tid.0, paranoid: procfs::perf_event_paranoid(), source: e }
            }
            Some(libc::ENOSYS) | Some(libc::ENOENT) | Some(libc::EOPNOTSUPP) => PerfError::Unsupported(e),
            _ => PerfError::Open { tid: tid.0, cpu, source: e },
        }
    }

    /// Opens this thread's event on every CPU. Threads it creates later inherit them.
    pub fn attach_thread(&mut self, tid: Tid, enable_on_exec: bool) -> Result<(), PerfError> {
        if self.attached.contains(&tid) {
            return Ok(());
        }
        if self.memory_only {
            self.attached.insert(tid);
            return Ok(());
        }
        let cpus = self.cpus.clone();
        for cpu in cpus {
            let counter = match self.open(tid, cpu, enable_on_exec) {
                // Refused outright (perf_event_paranoid 3+, a seccomp profile, no
                // CAP_PERFMON): the interpreter's memory can still be read.
                Err(refused @ (PerfError::PermissionDenied { .. } | PerfError::Unsupported(_)))
                    if self.rings.is_empty() =>
                {
                    tracing::warn!(
                        "perf_event_open was refused ({refused}); sampling Python frames from the interpreter's \
                         memory instead, {} times a second per running thread: no native frames",
                        self.config.rate_hz
                    );
                    self.memory_only = true;
                    self.attached.insert(tid);
                    return Ok(());
                }
                other => other?,
            };
            if self.decoder.is_none() {
                self.decoder = Some(Decoder::new(counter.config().clone(), self.config.stack_bytes as usize));
            }
            match self.rings.iter_mut().find(|r| r.cpu == cpu) {
                Some(ring) => {
                    // SAFETY: both descriptors are open perf events that we own.
                    let rc = unsafe {
                        perf_event_open_sys::ioctls::SET_OUTPUT(counter.as_raw_fd(), ring.sampler.as_raw_fd())
                    };
                    if rc != 0 {
                        return Err(PerfError::SetOutput { tid: tid.0, cpu, source: io::Error::last_os_error() });
                    }
                    ring.followers.push((tid, counter));
                }
                None => {
                    let sampler =
                        counter.sampled(self.config.ring_bytes).map_err(|source| PerfError::Mmap { cpu, source })?;
                    self.rings.push(CpuRing { cpu, sampler, followers: Vec::new(), polled: 0 });
                }
            }
        }
        self.attached.insert(tid);
        Ok(())
    }

    /// Opens events for every thread of a running process. Threads are listed again until
    /// the list stops changing, so a thread created during attach is not missed.
    pub fn attach_process(&mut self, pid: Pid) -> Result<usize, PerfError> {
        let mut opened = 0;
        loop {
            let tids = procfs::threads(pid).map_err(|_| PerfError::NoSuchProcess(pid.0))?;
            let new: Vec<Tid> = tids.into_iter().filter(|t| !self.attached.contains(t)).collect();
            if new.is_empty() {
                break;
            }
            for tid in new {
                match self.attach_thread(tid, false) {
                    Ok(()) => {
                        self.owners.insert(tid, pid);
                        opened += 1;
                    }
                    // The thread exited between listing and opening: nothing to sample.
                    Err(PerfError::NoSuchProcess(_)) if tid.0 != pid.0 => continue,
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(opened)
    }

    /// Closes the events of an exited process. The per-CPU ring buffers stay: they are shared.
    pub fn detach_process(&mut self, pid: Pid) {
        let tids: HashSet<Tid> = self.owners.iter().filter(|(_, p)| **p == pid).map(|(t, _)| *t).collect();
        for ring in &mut self.rings {
            ring.followers.retain(|(tid, _)| !tids.contains(tid));
            // Indices moved; the wait finds a live event again from the start.
            ring.polled = 0;
        }
        for tid in tids {
            self.owners.remove(&tid);
            self.attached.remove(&tid);
        }
    }

    /// Waits until a ring buffer has data or the timeout passes.
    pub fn wait(&mut self, timeout: Duration) {
        use nix::poll::{ppoll, PollFd, PollFlags};
        use std::os::fd::BorrowedFd;
        let polled: Vec<(usize, std::os::fd::RawFd)> =
            self.rings.iter().enumerate().filter_map(|(i, ring)| Some((i, ring.member_fd(ring.polled)?))).collect();
        if polled.is_empty() {
            std::thread::sleep(timeout);
            return;
        }
        let mut fds: Vec<PollFd> = polled
            .iter()
            // SAFETY: each descriptor belongs to an event the session owns, open for this call.
            .map(|&(_, fd)| PollFd::new(unsafe { BorrowedFd::borrow_raw(fd) }, PollFlags::POLLIN))
            .collect();
        // ppoll: to the nanosecond, where poll rounds down to whole milliseconds.
        let timeout = nix::sys::time::TimeSpec::from_duration(timeout);
        // EINTR (a signal) only ends the wait early, which the caller's loop expects.
        let _ = ppoll(&mut fds, Some(timeout), None);
        for (fd, &(ring, _)) in fds.iter().zip(&polled) {
            if fd.revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)) {
                self.rings[ring].polled += 1;
            }
        }
    }

    /// Moves every pending record into `out`, unsorted.
    pub fn drain(&mut self, out: &mut Vec<PerfEvent>) {
        let Some(decoder) = &self.decoder else { return };
        for ring in &mut self.rings {
            while let Some(record) = ring.sampler.next_record() {
                let body = record.to_contiguous();
                match decoder.decode(record.ty(), record.misc(), &body) {
                    Ok(Some(event)) => out.push(event),
                    Ok(None) => {}
                    Err(e) => {
                        if self.stats.decode_errors == 0 {
                            tracing::warn!("skipping undecodable perf record: {e}");
                        }
                        self.stats.decode_errors += 1;
                    }
                }
            }
        }
    }

    /// Stops sampling so the final drain sees a fixed set of records.
    pub fn disable(&mut self) {
        for ring in &mut self.rings {
            let _ = ring.sampler.disable();
            for (_, follower) in &mut ring.followers {
                let _ = follower.disable();
            }
        }
    }
}

/// The attributes of every sampling event ember opens.
fn event_builder(
    cfg: &SamplingConfig,
    user_only: bool,
    tid: Tid,
    cpu: usize,
    enable_on_exec: bool,
) -> Builder<'static> {
    let mut flags = SampleFlag::IP
        | SampleFlag::TID
        | SampleFlag::TIME
        | SampleFlag::CPU
        | SampleFlag::REGS_USER
        | SampleFlag::STACK_USER;
    if cfg.kernel {
        flags |= SampleFlag::CALLCHAIN;
    }
    let mut builder = Builder::new(Software::CPU_CLOCK);
    builder
        .observe_pid(tid.0 as i32)
        .one_cpu(cpu)
        // cpu-clock counts nanoseconds, so a fixed period gives an exact rate.
        .sample_period(1_000_000_000 / cfg.rate_hz.max(1))
        .sample(flags)
        .sample_regs_user(USER_REGS_MASK)
        .sample_stack_user(cfg.stack_bytes)
        .clockid(Clock::MONOTONIC)
        .sample_id_all(true)
        // `mmap` asks for records of new executable mappings (libraries dlopen'ed after
        // attach: extension modules); `mmap2` alone only chooses their format.
        .mmap(true)
        .mmap2(true)
        .comm(true)
        .comm_exec(true)
        .task(true)
        .inherit(true)
        .inherit_thread(!cfg.follow_children)
        .exclude_hv(true)
        .exclude_kernel(user_only)
        .exclude_callchain_user(true)
        .enabled(!enable_on_exec)
        .enable_on_exec(enable_on_exec);
    if cfg.read_interpreter {
        // Every sample wakes the loop, so the frames a cut-off stack lacks, and the running
        // frame's line, are read while the thread is most likely still where it was sampled.
        builder.wakeup_events(1);
    } else {
        builder.wakeup_watermark(cfg.ring_bytes / 4);
    }
    builder
}

/// A decoder for records of events opened with `config`, without opening any.
pub fn decoder_for(config: &SamplingConfig) -> Decoder {
    let builder = event_builder(config, false, Tid(0), 0, false);
    Decoder::new(perf_event_data::parse::ParseConfig::from(*builder.attrs()), config.stack_bytes as usize)
}

fn is_permission(e: &io::Error) -> bool {
    matches!(e.raw_os_error(), Some(libc::EACCES) | Some(libc::EPERM))
}
