//! The dump as people read it: one block per thread, innermost frame first, each Python frame
//! as `function (file:line)`, the convention py-spy uses.

use std::io::{self, Write};

use super::Dump;

pub fn write(out: &mut impl Write, dump: &Dump) -> io::Result<()> {
    writeln!(out, "Process {}: {}", dump.pid, dump.command)?;
    writeln!(out, "Python {} ({}), read without stopping it", dump.python, dump.interpreter)?;
    if !dump.at_one_moment {
        writeln!(out, "(the threads kept changing while read: a stack may mix two moments)")?;
    }
    for thread in &dump.threads {
        writeln!(out)?;
        let id = match thread.tid {
            Some(tid) if u64::from(tid) == thread.native_id => tid.to_string(),
            Some(tid) => format!("{tid} (in its namespace: {})", thread.native_id),
            None => format!("{} (exited)", thread.native_id),
        };
        let name = thread.name.as_deref().map(|n| format!(" \"{n}\"")).unwrap_or_default();
        let gil = if thread.holds_gil { " (holds the GIL)" } else { "" };
        writeln!(out, "Thread {id}{name}{gil}")?;
        if thread.frames.is_empty() && thread.incomplete.is_none() {
            writeln!(out, "    (no Python frames)")?;
        }
        for frame in &thread.frames {
            match frame.line {
                Some(line) => writeln!(out, "    {} ({}:{line})", frame.function, frame.file)?,
                None => writeln!(out, "    {} ({})", frame.function, frame.file)?,
            }
        }
        if let Some(why) = &thread.incomplete {
            writeln!(out, "    [incomplete: {why}]")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::{FrameDump, ThreadDump};

    #[test]
    fn writes_threads_innermost_first() {
        let frame = |function: &str, line| FrameDump { function: function.into(), file: "/srv/app.py".into(), line };
        let dump = Dump {
            pid: 42,
            command: "python3 app.py".into(),
            python: "3.13.0".into(),
            interpreter: "/usr/bin/python3.13".into(),
            stopped: false,
            at_one_moment: true,
            threads: vec![
                ThreadDump {
                    tid: Some(42),
                    native_id: 42,
                    name: Some("python3".into()),
                    holds_gil: true,
                    frames: vec![frame("spin", Some(12)), frame("<module>", None)],
                    incomplete: None,
                },
                ThreadDump {
                    tid: Some(1043),
                    native_id: 7,
                    name: None,
                    holds_gil: false,
                    frames: vec![],
                    incomplete: Some("deeper than 100000 frames".into()),
                },
            ],
        };
        let mut out = Vec::new();
        write(&mut out, &dump).expect("written");
        let expected = "Process 42: python3 app.py\n\
            Python 3.13.0 (/usr/bin/python3.13), read without stopping it\n\n\
            Thread 42 \"python3\" (holds the GIL)\n    spin (/srv/app.py:12)\n    <module> (/srv/app.py)\n\n\
            Thread 1043 (in its namespace: 7)\n    [incomplete: deeper than 100000 frames]\n";
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
    }
}
