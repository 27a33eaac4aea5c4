//! asyncio task activity, recorded inside the target by `agent/python/ember_monitor.py`
//! (sys.monitoring) and read here from its shared-memory ring. See ARCHITECTURE.md.
//!
//! The module is embedded in the agent ([`MONITOR_SOURCE`]) so nothing has to be installed in
//! the target's environment.

pub mod ring;
pub mod timeline;

/// The monitor's Python source, as shipped inside the agent binary.
pub const MONITOR_SOURCE: &str = include_str!("../../python/ember_monitor.py");
