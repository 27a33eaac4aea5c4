//! Runs a command with a Debian 18.16 `clickhouse-server` of its own on loopback, named to it
//! in `EMBER_TEST_STORE`, and stops the server after; exits as the command did. CI runs the
//! collector's API and end-to-end tests this way, on the ClickHouse store.
//!
//!     cargo run -p ember-testkit --example with-clickhouse -- cargo test --workspace --test it -- api::

use std::process::{Command, ExitCode};

use ember_testkit::clickhouse::{ClickHouse, TEST_STORE_VAR};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((program, rest)) = args.split_first() else {
        eprintln!("usage: with-clickhouse COMMAND [ARGS…]");
        return ExitCode::from(2);
    };
    let server = ClickHouse::start();
    let status = Command::new(program)
        .args(rest)
        .env(TEST_STORE_VAR, format!("clickhouse://127.0.0.1:{}", server.http_port))
        .status();
    // A pass that never reached ClickHouse (a test starting its collector some other way) would
    // pass on the embedded store and prove nothing.
    let databases = server.query("SELECT count() FROM system.databases WHERE name LIKE 'test\\_%'");
    drop(server);
    match status {
        Ok(s) if s.success() && databases.trim() == "0" => {
            eprintln!("with-clickhouse: {program} succeeded but no collector used ClickHouse");
            ExitCode::from(1)
        }
        Ok(s) if s.success() => {
            eprintln!("with-clickhouse: collectors used {} ClickHouse databases", databases.trim());
            ExitCode::SUCCESS
        }
        Ok(s) => {
            eprintln!("with-clickhouse: {program} exited with {s}");
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("with-clickhouse: cannot run {program}: {e}");
            ExitCode::from(1)
        }
    }
}
