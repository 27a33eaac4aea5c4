//! The dump as people read it: one block per thread, innermost frame first, each Python frame
//! as `function (file:line)`, the convention py-spy uses.

use std::io::{self, Write};

use super::tasks::TaskDump;
use super::{Dump, FrameDump};

pub fn write(out: &mut impl Write, dump: &Dump) -> io::Result<()> {
    writeln!(out, "Process {}: {}", dump.pid, dump.command)?;
    let how = match dump.stopped_for_us {
        Some(us) => format!("stopped for {us} µs to take its native stacks"),
        None => "read without stopping it".into(),
    };
    writeln!(out, "Python {} ({}), {how}", dump.python, dump.interpreter)?;
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
        let native = if thread.python { "" } else { " (native: no Python state)" };
        writeln!(out, "Thread {id}{name}{gil}{native}")?;
        if thread.frames.is_empty() && thread.incomplete.is_none() && thread.python {
            writeln!(out, "    (no Python frames)")?;
        }
        for frame in &thread.frames {
            write_frame(out, "    ", frame)?;
        }
        if let Some(why) = &thread.incomplete {
            writeln!(out, "    [incomplete: {why}]")?;
        }
    }
    if let Some(why) = &dump.tasks_error {
        writeln!(out, "\nasyncio tasks: not read: {why}")?;
    } else if !dump.tasks.is_empty() {
        writeln!(out, "\nasyncio tasks (each under the task that waits for it):")?;
        for task in &dump.tasks {
            write_task(out, task, 1)?;
        }
    }
    Ok(())
}

fn write_task(out: &mut impl Write, task: &TaskDump, depth: usize) -> io::Result<()> {
    let indent = "    ".repeat(depth);
    writeln!(out, "{indent}Task \"{}\" ({:#x}): {}", task.name, task.id, awaiting(&task.awaiting))?;
    for frame in &task.coroutine_stack {
        write_frame(out, &format!("{indent}  | "), frame)?;
    }
    for child in &task.children {
        write_task(out, child, depth + 1)?;
    }
    Ok(())
}

fn awaiting(what: &str) -> String {
    match what {
        "running" | "not started" => what.to_string(),
        _ => format!("awaiting {what}"),
    }
}

fn write_frame(out: &mut impl Write, indent: &str, frame: &FrameDump) -> io::Result<()> {
    if frame.native {
        let image = frame.file.rsplit('/').next().unwrap_or(&frame.file);
        return match frame.line {
            Some(line) => writeln!(out, "{indent}{} [{image}:{line}]", frame.function),
            None => writeln!(out, "{indent}{} [{image}]", frame.function),
        };
    }
    if frame.file.is_empty() {
        return writeln!(out, "{indent}{}", frame.function);
    }
    match frame.line {
        Some(line) => writeln!(out, "{indent}{} ({}:{line})", frame.function, frame.file),
        None => writeln!(out, "{indent}{} ({})", frame.function, frame.file),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dump::ThreadDump;

    #[test]
    fn writes_threads_innermost_first() {
        let frame = |function: &str, line| FrameDump {
            function: function.into(),
            file: "/srv/app.py".into(),
            line,
            native: false,
        };
        let dump = Dump {
            pid: 42,
            command: "python3 app.py".into(),
            python: "3.13.0".into(),
            interpreter: "/usr/bin/python3.13".into(),
            stopped: false,
            stopped_for_us: None,
            at_one_moment: true,
            threads: vec![
                ThreadDump {
                    tid: Some(42),
                    native_id: 42,
                    name: Some("python3".into()),
                    python: true,
                    holds_gil: true,
                    frames: vec![frame("spin", Some(12)), frame("<module>", None)],
                    incomplete: None,
                },
                ThreadDump {
                    tid: Some(1043),
                    native_id: 7,
                    name: None,
                    python: true,
                    holds_gil: false,
                    frames: vec![],
                    incomplete: Some("deeper than 100000 frames".into()),
                },
            ],
            tasks: vec![TaskDump {
                id: 0x10,
                name: "main".into(),
                awaiting: "task worker".into(),
                awaiting_task: Some(0x20),
                coroutine_stack: vec![frame("main", Some(30))],
                children: vec![TaskDump {
                    id: 0x20,
                    name: "worker".into(),
                    awaiting: "_asyncio.Future".into(),
                    awaiting_task: None,
                    coroutine_stack: vec![frame("Event.wait", Some(9)), frame("work", Some(20))],
                    children: vec![],
                }],
            }],
            tasks_error: None,
        };
        let mut out = Vec::new();
        write(&mut out, &dump).expect("written");
        let expected = "Process 42: python3 app.py\n\
            Python 3.13.0 (/usr/bin/python3.13), read without stopping it\n\n\
            Thread 42 \"python3\" (holds the GIL)\n    spin (/srv/app.py:12)\n    <module> (/srv/app.py)\n\n\
            Thread 1043 (in its namespace: 7)\n    [incomplete: deeper than 100000 frames]\n\n\
            asyncio tasks (each under the task that waits for it):\n\
            \x20   Task \"main\" (0x10): awaiting task worker\n\
            \x20     | main (/srv/app.py:30)\n\
            \x20       Task \"worker\" (0x20): awaiting _asyncio.Future\n\
            \x20         | Event.wait (/srv/app.py:9)\n\
            \x20         | work (/srv/app.py:20)\n";
        assert_eq!(String::from_utf8(out).expect("utf-8"), expected);
    }
}
