use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use ember_agent::cli::{Cli, Command};
use ember_agent::record;

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_new(&cli.log).unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .without_time()
        .init();
    match run(cli) {
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
        Err(e) => {
            eprintln!("ember: error: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<i32> {
    match cli.command {
        Command::Record(args) => {
            let outcome = record::run(args.into_config()?)?;
            Ok(outcome.exit_code())
        }
        Command::Stream(args) => Ok(ember_agent::stream::run(args.into_config()?)?),
        Command::Dump(args) => {
            ember_agent::dump::run(args.into_config())?;
            Ok(0)
        }
        Command::ExportMonitor(args) => {
            let written = ember_agent::tasks::bootstrap::export_monitor(&args.dir)?;
            for path in written {
                println!("{}", path.display());
            }
            Ok(0)
        }
    }
}
