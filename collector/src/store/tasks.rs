//! asyncio tasks as the store keeps them: one record per task, updated in place as the task
//! is renamed or finishes, and run slices in per-bucket blobs like raw samples.

use super::codec::{self, get_str, get_varint, put_str, put_varint, unzigzag, zigzag, CodecError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    Pending,
    Finished,
    Failed,
    Cancelled,
}

/// One task of one process (series). Times are Unix nanoseconds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskRecord {
    /// Unique within its process.
    pub id: u64,
    pub name: String,
    pub coro: String,
    /// The creating task's id; 0 for none.
    pub parent: u64,
    pub created_ns: i64,
    pub done_ns: Option<i64>,
    pub state: TaskState,
    /// The exception type, when the task failed.
    pub exception: String,
    /// Only slices of this task arrived, not its record (the agent dropped that batch), so
    /// nothing but its id is known. Never stored: set on read.
    pub record_lost: bool,
}

impl TaskRecord {
    /// The placeholder for a task whose slices arrived but whose record did not (a batch the
    /// agent had to drop): it still shows, from when it first ran, rather than vanish with
    /// its samples.
    pub fn lost(id: u64, first_ran_ns: i64) -> Self {
        TaskRecord {
            id,
            name: String::new(),
            coro: String::new(),
            parent: 0,
            created_ns: first_ran_ns,
            done_ns: None,
            state: TaskState::Pending,
            exception: String::new(),
            record_lost: true,
        }
    }
}

/// When a task ran, on which thread, and when it had become ready to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TaskSlice {
    pub task: u64,
    pub tid: u32,
    pub start_ns: i64,
    pub end_ns: i64,
    pub ready_ns: Option<i64>,
}

/// The task activity a batch brings for one series.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NewTasks {
    pub tasks: Vec<TaskRecord>,
    pub slices: Vec<TaskSlice>,
    pub lost_records: u64,
}

impl NewTasks {
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty() && self.slices.is_empty()
    }

    /// The first and last time this activity mentions, in nanoseconds.
    pub fn time_span(&self) -> Option<(i64, i64)> {
        let times = self
            .tasks
            .iter()
            .flat_map(|t| std::iter::once(t.created_ns).chain(t.done_ns))
            .chain(self.slices.iter().flat_map(|s| [s.start_ns, s.end_ns]));
        times.fold(None, |span, t| Some(span.map_or((t, t), |(a, b): (i64, i64)| (a.min(t), b.max(t)))))
    }
}

/// The tasks of one series that touch a time range, with their slices in it.
#[derive(Debug, Clone, Default)]
pub struct SeriesTasks {
    pub series: u32,
    pub labels: super::Labels,
    pub tasks: Vec<TaskRecord>,
    /// In start order.
    pub slices: Vec<TaskSlice>,
}

fn state_byte(s: TaskState) -> u8 {
    match s {
        TaskState::Pending => 0,
        TaskState::Finished => 1,
        TaskState::Failed => 2,
        TaskState::Cancelled => 3,
    }
}

fn byte_state(b: u8) -> Result<TaskState, CodecError> {
    Ok(match b {
        0 => TaskState::Pending,
        1 => TaskState::Finished,
        2 => TaskState::Failed,
        3 => TaskState::Cancelled,
        _ => return Err(CodecError("unknown task state")),
    })
}

/// `state, parent, created, done + 1 (0 = not done), name, coro, exception`; the id is the key.
pub fn encode_task(t: &TaskRecord) -> Vec<u8> {
    let mut out = vec![state_byte(t.state)];
    put_varint(&mut out, t.parent);
    put_varint(&mut out, zigzag(t.created_ns));
    put_varint(&mut out, t.done_ns.map_or(0, |d| zigzag(d).saturating_add(1)));
    put_str(&mut out, &t.name);
    put_str(&mut out, &t.coro);
    put_str(&mut out, &t.exception);
    out
}

pub fn decode_task(id: u64, bytes: &[u8]) -> Result<TaskRecord, CodecError> {
    let state = byte_state(*bytes.first().ok_or(CodecError("empty task record"))?)?;
    let mut at = 1;
    let parent = get_varint(bytes, &mut at)?;
    let created_ns = unzigzag(get_varint(bytes, &mut at)?);
    let done = get_varint(bytes, &mut at)?;
    Ok(TaskRecord {
        id,
        parent,
        created_ns,
        done_ns: done.checked_sub(1).map(unzigzag),
        state,
        name: get_str(bytes, &mut at)?,
        coro: get_str(bytes, &mut at)?,
        exception: get_str(bytes, &mut at)?,
        record_lost: false,
    })
}

/// Slices in start order: `count`, then per slice the zigzag start delta from the previous
/// one, the duration, `start - ready + 1` (0 = unknown), task and thread; deflated.
pub fn encode_slices(slices: &[TaskSlice]) -> Vec<u8> {
    let mut sorted: Vec<&TaskSlice> = slices.iter().collect();
    sorted.sort_by_key(|s| s.start_ns);
    let mut plain = Vec::with_capacity(slices.len() * 8);
    put_varint(&mut plain, sorted.len() as u64);
    let mut prev = 0i64;
    for s in sorted {
        put_varint(&mut plain, zigzag(s.start_ns.wrapping_sub(prev)));
        prev = s.start_ns;
        put_varint(&mut plain, zigzag(s.end_ns.wrapping_sub(s.start_ns)));
        put_varint(&mut plain, s.ready_ns.map_or(0, |r| zigzag(s.start_ns.wrapping_sub(r)).saturating_add(1)));
        put_varint(&mut plain, s.task);
        put_varint(&mut plain, u64::from(s.tid));
    }
    codec::deflate(&plain)
}

pub fn decode_slices(bytes: &[u8]) -> Result<Vec<TaskSlice>, CodecError> {
    let plain = codec::inflate(bytes)?;
    let bytes = plain.as_slice();
    let mut at = 0;
    let count = get_varint(bytes, &mut at)?;
    let mut out = Vec::with_capacity(count.min(1 << 20) as usize);
    let mut prev = 0i64;
    for _ in 0..count {
        let start_ns = prev.wrapping_add(unzigzag(get_varint(bytes, &mut at)?));
        prev = start_ns;
        let end_ns = start_ns.wrapping_add(unzigzag(get_varint(bytes, &mut at)?));
        let ready = get_varint(bytes, &mut at)?;
        let task = get_varint(bytes, &mut at)?;
        let tid = u32::try_from(get_varint(bytes, &mut at)?).map_err(|_| CodecError("thread id over 32 bits"))?;
        out.push(TaskSlice {
            task,
            tid,
            start_ns,
            end_ns,
            ready_ns: ready.checked_sub(1).map(|d| start_ns.wrapping_sub(unzigzag(d))),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tasks_round_trip() {
        let t = TaskRecord {
            id: 7,
            name: "worker-1".into(),
            coro: "worker".into(),
            parent: 3,
            created_ns: 1_700_000_000_000_000_000,
            done_ns: Some(1_700_000_000_500_000_000),
            state: TaskState::Failed,
            exception: "ValueError".into(),
            record_lost: false,
        };
        assert_eq!(decode_task(7, &encode_task(&t)), Ok(t.clone()));
        let pending = TaskRecord { done_ns: None, state: TaskState::Pending, exception: String::new(), ..t };
        assert_eq!(decode_task(7, &encode_task(&pending)), Ok(pending));
    }

    #[test]
    fn slices_round_trip_in_start_order() {
        let base = 1_700_000_000_000_000_000;
        let slices = vec![
            TaskSlice { task: 2, tid: 10, start_ns: base + 500, end_ns: base + 900, ready_ns: None },
            TaskSlice { task: 1, tid: 10, start_ns: base, end_ns: base + 400, ready_ns: Some(base - 30) },
        ];
        let decoded = decode_slices(&encode_slices(&slices)).expect("decodes");
        assert_eq!(decoded, vec![slices[1], slices[0]]);
    }

    #[test]
    fn corrupt_bytes_are_errors() {
        assert!(decode_task(1, &[]).is_err());
        assert!(decode_task(1, &[9]).is_err());
        assert!(decode_slices(&[1, 2, 3]).is_err());
        let good = encode_task(&TaskRecord {
            id: 1,
            name: "n".into(),
            coro: "c".into(),
            parent: 0,
            created_ns: 5,
            done_ns: None,
            state: TaskState::Pending,
            exception: String::new(),
            record_lost: false,
        });
        for cut in 0..good.len() {
            assert!(decode_task(1, &good[..cut]).is_err(), "cut at {cut}");
        }
    }
}
