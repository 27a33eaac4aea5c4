//! The command line, as clap derive types, and its translation into plain config.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::aggregate::view::ViewOptions;
use crate::export::Format;
use crate::perf::{SamplingConfig, MAX_STACK_COPY};
use crate::process::Pid;
use crate::record::{RecordConfig, Targets};

/// The largest user stack copy the kernel accepts to be asked for. It copies at most
/// [`MAX_STACK_COPY`] of it, which is what ember then asks for.
pub const MAX_STACK_BYTES: u32 = 65528;

#[derive(Debug, Parser)]
#[command(
    name = "ember-agent",
    version,
    about = "Profiles Python 3.12+ processes with complete Python and native stacks"
)]
pub struct Cli {
    /// Log filter, e.g. `info` or `ember_agent=debug` (also EMBER_LOG).
    #[arg(long, global = true, env = "EMBER_LOG", default_value = "info")]
    pub log: String,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sample a running process (--pid) or a command (-- CMD ARGS…) and write one profile.
    Record(RecordArgs),
    /// Sample continuously and send the samples to an ember-collector.
    Stream(StreamArgs),
    /// Print what every thread of a running Python process is executing now: each Python
    /// frame with its line, and which thread holds the GIL. The process is not stopped.
    Dump(DumpArgs),
    /// Write the asyncio task monitor (the ember_monitor package and its native fast path) into a
    /// directory, for programs that start it themselves: put the directory on PYTHONPATH, then
    /// `import ember_monitor; ember_monitor.start()`.
    ExportMonitor(ExportMonitorArgs),
}

#[derive(Debug, Args)]
pub struct DumpArgs {
    /// The process to read.
    #[arg(short, long, value_name = "PID")]
    pub pid: u32,
    /// Write JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Native frames too, with the Python frames in place of the interpreter calls that run
    /// them. Stops the process for a moment (ptrace, a few milliseconds at most) to take each
    /// thread's registers and stack; without it nothing is stopped.
    #[arg(long)]
    pub native: bool,
}

impl DumpArgs {
    pub fn into_config(self) -> crate::dump::DumpConfig {
        crate::dump::DumpConfig { pid: Pid(self.pid), json: self.json, native: self.native }
    }
}

#[derive(Debug, Args)]
pub struct ExportMonitorArgs {
    /// Directory to write into (created if missing).
    pub dir: PathBuf,
}

/// How samples are taken; shared by `record` and `stream`.
#[derive(Debug, Args)]
pub struct SamplingArgs {
    /// Samples per second per thread.
    #[arg(short, long, default_value_t = 99, value_parser = clap::value_parser!(u64).range(1..=10_000))]
    pub rate: u64,
    /// Bytes of user stack copied per sample (8 to 65528, a multiple of 8; more than 65432 is
    /// clamped to 65432, the most a sample can carry). Beyond the copy, the interpreter's
    /// frames and the stack are read from memory.
    #[arg(long, default_value_t = MAX_STACK_COPY, value_parser = parse_stack_bytes)]
    pub stack_bytes: u32,
    /// Add kernel frames.
    #[arg(long)]
    pub kernel: bool,
    /// Follow child processes (fork and exec).
    #[arg(long)]
    pub subprocesses: bool,
    /// Do not read CPython's frames from the target's memory. By default, a stack deeper than
    /// the copy is completed with the frames the interpreter holds, read right after the
    /// sample; without the reads it is completed from the thread's earlier samples.
    #[arg(long)]
    pub no_interpreter_reads: bool,
    /// Leave attached targets as they are. By default ember asks a Python 3.14+ target started
    /// without the perf trampoline to turn it on (PEP 768 remote execution: the target runs
    /// `sys.activate_stack_trampoline("perf")` itself); without it such a target gets native
    /// stacks and the Python frames ember can read from memory.
    #[arg(long)]
    pub no_activate: bool,
    /// Sample by reading each running thread's Python frames from the interpreter's memory
    /// (`process_vm_readv`, as py-spy does) instead of with perf events: no native frames. What
    /// ember does by itself when perf events are refused (perf_event_paranoid 3 or more, a
    /// seccomp profile without perf_event_open, no CAP_PERFMON).
    #[arg(long)]
    pub memory_only: bool,
    /// Ring buffer per CPU, in KiB.
    #[arg(long, default_value_t = 4096, value_parser = clap::value_parser!(u64).range(8..=1_048_576))]
    pub ring_kib: u64,
}

impl SamplingArgs {
    /// `--stack-bytes`, clamped to what a sample can carry, saying so.
    fn stack_bytes(&self) -> u32 {
        if self.stack_bytes > MAX_STACK_COPY {
            tracing::warn!(
                "--stack-bytes {} is more than a perf sample can carry (a record is at most 64 KiB with its \
                 header); copying {MAX_STACK_COPY} bytes per sample, the most there is room for",
                self.stack_bytes
            );
        }
        self.stack_bytes.min(MAX_STACK_COPY)
    }

    fn config(&self) -> SamplingConfig {
        SamplingConfig {
            rate_hz: self.rate,
            stack_bytes: self.stack_bytes(),
            kernel: self.kernel,
            follow_children: self.subprocesses,
            ring_bytes: (self.ring_kib * 1024) as usize,
            read_interpreter: !self.no_interpreter_reads,
            lines: false,
            activate: !self.no_activate,
            memory_only: self.memory_only,
        }
    }
}

#[derive(Debug, Args)]
pub struct TaskArgs {
    /// Record asyncio task activity: the default for a launched command, whose interpreter
    /// gets the monitor without any change to the program.
    #[arg(long, overrides_with = "no_tasks")]
    pub tasks: bool,
    /// Do not run or read the asyncio task monitor.
    #[arg(long)]
    pub no_tasks: bool,
}

impl TaskArgs {
    pub fn mode(&self) -> crate::tasks::TaskMode {
        use crate::tasks::TaskMode;
        match (self.tasks, self.no_tasks) {
            (_, true) => TaskMode::Off,
            (true, false) => TaskMode::Explicit,
            (false, false) => TaskMode::Default,
        }
    }
}

#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The collector's gRPC address: http://host:7070, or https://host:7070 for TLS.
    /// Repeatable: a batch a collector does not take goes to the next one at once (also to
    /// every address an http:// name resolves to); collectors sharing one ClickHouse count it
    /// once.
    #[arg(long = "collector", value_name = "URL", required = true)]
    pub collectors: Vec<String>,
    /// Attach to this running process (repeatable).
    #[arg(short, long = "pid", value_name = "PID", conflicts_with_all = ["command", "all_python"])]
    pub pids: Vec<u32>,
    /// Sample every Python 3.12+ process on the host, including ones that start later.
    #[arg(long, conflicts_with = "command")]
    pub all_python: bool,
    /// The `service` label of everything this agent sends.
    #[arg(long)]
    pub service: Option<String>,
    /// Send each Python frame's line (see `record --lines`); the web view and API show lines
    /// when asked (`lines=1`) and merge them into functions otherwise.
    #[arg(long)]
    pub lines: bool,
    /// An extra label, `key=value` (repeatable).
    #[arg(long = "label", value_name = "KEY=VALUE", value_parser = parse_label)]
    pub labels: Vec<(String, String)>,
    /// Label each process with its pod, namespace and container, from its cgroup and the
    /// Kubernetes API (the pod's ServiceAccount may list pods; NODE_NAME from the downward API):
    /// for a node-wide agent (deploy/kubernetes/daemonset).
    #[arg(long)]
    pub kubernetes: bool,
    /// How often samples are sent.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub flush_interval: Duration,
    /// Memory for batches the collector has not acknowledged yet; when full, the oldest go.
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub buffer_mb: u64,
    /// At exit, how long to keep trying to deliver unacknowledged batches.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub final_flush_timeout: Duration,
    /// CA certificate (PEM) to verify the collector with; implies TLS.
    #[arg(long)]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mTLS.
    #[arg(long, requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client private key (PEM) for mTLS.
    #[arg(long, requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
    /// Bearer token the collector expects (also EMBER_TOKEN).
    #[arg(long, env = "EMBER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
    #[arg(long)]
    pub metrics_listen: Option<String>,
    #[command(flatten)]
    pub tasks: TaskArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The command to launch and profile, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

fn parse_label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').ok_or_else(|| format!("{s:?} is not key=value"))?;
    if !ember_profile::grammar::is_label_name(k) {
        return Err(format!("{k:?} is not a label name (letters, digits and _, not starting with a digit)"));
    }
    if ember_profile::grammar::RESERVED_LABELS.contains(&k) {
        return Err(format!(
            "{k:?} is reserved: the collector sets it from the process (use --service for the service)"
        ));
    }
    Ok((k.to_string(), v.to_string()))
}

impl StreamArgs {
    pub fn into_config(self) -> Result<crate::stream::StreamConfig, CliError> {
        use crate::stream::{ClientOptions, StreamTargets};
        let targets = if self.all_python {
            StreamTargets::AllPython
        } else if !self.pids.is_empty() {
            StreamTargets::Fixed(Targets::Pids(self.pids.iter().map(|&p| Pid(p)).collect()))
        } else if !self.command.is_empty() {
            StreamTargets::Fixed(Targets::Command(self.command))
        } else {
            return Err(CliError::NoStreamTarget);
        };
        if self.lines && self.sampling.no_interpreter_reads {
            return Err(CliError::LinesWithoutReads);
        }
        let mut sampling = self.sampling.config();
        sampling.lines = self.lines;
        Ok(crate::stream::StreamConfig {
            targets,
            sampling,
            collectors: self.collectors,
            client: ClientOptions {
                tls_ca: self.tls_ca,
                tls_cert: self.tls_cert,
                tls_key: self.tls_key,
                token: self.token.filter(|t| !t.is_empty()),
            },
            flush_interval: self.flush_interval,
            buffer_bytes: (self.buffer_mb as usize) << 20,
            final_flush: self.final_flush_timeout,
            metrics_listen: self.metrics_listen,
            tasks: self.tasks.mode(),
            service: self.service,
            labels: self.labels.into_iter().collect(),
            kubernetes: self.kubernetes,
        })
    }
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Attach to this running process (repeatable).
    #[arg(short, long = "pid", value_name = "PID", conflicts_with = "command")]
    pub pids: Vec<u32>,
    /// Stop after this long: `30`, `30s`, `500ms`, `2m`. Default: until the targets exit or Ctrl-C.
    #[arg(short, long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Show every native frame, interleaved with the Python frames.
    #[arg(long)]
    pub native: bool,
    /// Add a root frame per thread.
    #[arg(long)]
    pub threads: bool,
    /// Python frames as `qualname (file:line)`: every sample's frames are read from the
    /// interpreter right after it (callers' lines are exact; the running frame's line is the
    /// one it runs when read, a few milliseconds later). Conflicts with --no-interpreter-reads.
    #[arg(long)]
    pub lines: bool,
    /// Write the profile here; the format follows the extension (.svg, .folded, .json, .pb.gz).
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Output format: svg, collapsed, speedscope, pprof, or trace (Chrome/Perfetto JSON with
    /// a track per asyncio task).
    #[arg(short, long)]
    pub format: Option<Format>,
    /// Keep a replay case for the unwinder's tests: a few samples with what unwinding them
    /// needs, written to DIR/case.json.gz (docs/REPLAY.md).
    #[arg(long, value_name = "DIR", hide = true)]
    pub capture_replay: Option<PathBuf>,
    /// Most samples the replay case keeps.
    #[arg(long, value_name = "N", hide = true, requires = "capture_replay",
          default_value_t = crate::replay::DEFAULT_SAMPLES as u64, value_parser = clap::value_parser!(u64).range(1..=50))]
    pub capture_samples: u64,
    #[command(flatten)]
    pub tasks: TaskArgs,
    #[command(flatten)]
    pub sampling: SamplingArgs,
    /// The command to launch and profile, after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub fn parse_duration(s: &str) -> Result<Duration, String> {
    ember_profile::grammar::parse_duration(s).map_err(|e| e.to_string())
}

fn parse_stack_bytes(s: &str) -> Result<u32, String> {
    let n: u32 = s.parse().map_err(|_| format!("{s:?} is not a number of bytes"))?;
    if n == 0 || n > MAX_STACK_BYTES || n % 8 != 0 {
        return Err(format!("--stack-bytes must be a multiple of 8 between 8 and {MAX_STACK_BYTES}, got {n}"));
    }
    Ok(n)
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(
        "--lines reads every sample's frames from the interpreter, which --no-interpreter-reads turns off; drop one"
    )]
    LinesWithoutReads,
    #[error("nothing to profile: give --pid PID, or a command after `--` (ember-agent record -- python3.12 app.py)")]
    NoTarget,
    #[error("nothing to stream: give --pid PID, --all-python, or a command after `--`")]
    NoStreamTarget,
    #[error("cannot tell the format of {0:?} from its extension; add --format ({formats})", formats = Format::NAMES)]
    UnknownExtension(PathBuf),
}

impl RecordArgs {
    pub fn into_config(self) -> Result<RecordConfig, CliError> {
        let targets = if !self.pids.is_empty() {
            Targets::Pids(self.pids.iter().map(|&p| Pid(p)).collect())
        } else if !self.command.is_empty() {
            Targets::Command(self.command)
        } else {
            return Err(CliError::NoTarget);
        };
        let format = match (self.format, &self.output) {
            (Some(f), _) => f,
            (None, None) => Format::Collapsed,
            (None, Some(path)) => Format::from_path(path).ok_or_else(|| CliError::UnknownExtension(path.clone()))?,
        };
        if self.lines && self.sampling.no_interpreter_reads {
            return Err(CliError::LinesWithoutReads);
        }
        let mut sampling = self.sampling.config();
        sampling.lines = self.lines;
        Ok(RecordConfig {
            targets,
            duration: self.duration,
            sampling,
            view: ViewOptions { native: self.native, threads: self.threads, processes: false },
            output: self.output,
            format,
            tasks: self.tasks.mode(),
            capture_replay: self.capture_replay.map(|dir| (dir, self.capture_samples as usize)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(args: &[&str]) -> Result<RecordConfig, String> {
        let cli = Cli::try_parse_from(args).map_err(|e| e.to_string())?;
        match cli.command {
            Command::Record(r) => r.into_config().map_err(|e| e.to_string()),
            Command::Stream(_) | Command::Dump(_) | Command::ExportMonitor(_) => Err("not record".into()),
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("30"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(parse_duration("-1").is_err());
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn format_follows_the_extension_and_defaults_to_collapsed() {
        let c = record(&["ember-agent", "record", "-o", "cpu.svg", "--", "python3.12", "x.py"]).expect("valid");
        assert_eq!(c.format, Format::Svg);
        assert!(matches!(c.targets, Targets::Command(ref cmd) if cmd == &["python3.12", "x.py"]));
        let c = record(&["ember-agent", "record", "--pid", "1"]).expect("valid");
        assert_eq!(c.format, Format::Collapsed);
        let e = record(&["ember-agent", "record", "--pid", "1", "-o", "x.dat"]).expect_err("unknown ext");
        assert!(e.contains("--format"), "{e}");
    }

    #[test]
    fn stream_arguments() {
        let cli = Cli::try_parse_from([
            "ember-agent",
            "stream",
            "--collector",
            "http://c:7070",
            "--all-python",
            "--service",
            "checkout",
            "--label",
            "team=payments",
            "--flush-interval",
            "2s",
        ])
        .expect("valid");
        let Command::Stream(args) = cli.command else { panic!("stream") };
        let c = args.into_config().expect("config");
        assert!(matches!(c.targets, crate::stream::StreamTargets::AllPython));
        assert_eq!(c.flush_interval, Duration::from_secs(2));
        assert_eq!(c.buffer_bytes, 64 << 20);
        assert_eq!(c.labels.get("team").map(String::as_str), Some("payments"));
        assert!(Cli::try_parse_from(["ember-agent", "stream", "--collector", "x", "--label", "1x=y", "--all-python"])
            .is_err());
        assert!(
            Cli::try_parse_from(["ember-agent", "stream", "--collector", "x", "--all-python", "--pid", "1"]).is_err()
        );
    }

    #[test]
    fn stack_bytes_past_what_a_sample_carries_are_clamped() {
        assert_eq!(MAX_STACK_COPY, 65432, "65535 - 80 bytes before the stack - 16 for its sizes, rounded down to 8");
        let stack = |n: &str| {
            record(&["ember-agent", "record", "--pid", "1", "--stack-bytes", n]).map(|c| c.sampling.stack_bytes)
        };
        assert_eq!(stack("65432"), Ok(65432));
        assert_eq!(stack("65528"), Ok(65432));
        assert_eq!(stack("32768"), Ok(32768));
    }

    #[test]
    fn rejects_bad_arguments() {
        assert!(record(&["ember-agent", "record"]).expect_err("no target").contains("nothing to profile"));
        assert!(record(&["ember-agent", "record", "--pid", "1", "--stack-bytes", "70000"]).is_err());
        assert!(record(&["ember-agent", "record", "--pid", "1", "--rate", "0"]).is_err());
        assert!(record(&["ember-agent", "record", "--pid", "1", "--", "python3"]).is_err(), "pid and command conflict");
        assert!(
            record(&["ember-agent", "record", "--pid", "1", "--capture-samples", "5"]).is_err(),
            "needs a directory"
        );
        assert!(record(&["ember-agent", "record", "--pid", "1", "--capture-replay", "d", "--capture-samples", "51"])
            .is_err());
        let c = record(&["ember-agent", "record", "--pid", "1", "--capture-replay", "d"]).expect("valid");
        assert_eq!(c.capture_replay, Some(("d".into(), crate::replay::DEFAULT_SAMPLES)));
    }
}
