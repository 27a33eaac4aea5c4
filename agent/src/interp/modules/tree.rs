//! Who waits for whom. A task's parent is the task that will resume when it finishes:
//! - the task whose `fut_waiter` is this task (`await task`);
//! - the `_parent_task` of the TaskGroup this task's done-callback is bound to;
//! - the task whose `fut_waiter` a done-callback closes over (`gather`'s outer future,
//!   `wait`'s waiter), or whose suspended frames hold it.

use std::collections::HashMap;

use super::tasks::TaskRecord;

/// Each record's parent, by address; a tie that would make a loop is dropped.
pub fn parents(records: &[TaskRecord]) -> Vec<Option<u64>> {
    let by_addr: HashMap<u64, usize> = records.iter().enumerate().map(|(i, r)| (r.addr, i)).collect();
    let by_waiter: HashMap<u64, usize> =
        records.iter().enumerate().filter(|(_, r)| r.waiter != 0).map(|(i, r)| (r.waiter, i)).collect();
    let mut holders: HashMap<u64, usize> = HashMap::new();
    for (i, r) in records.iter().enumerate() {
        for &held in &r.held {
            holders.entry(held).or_insert(i);
        }
    }
    let mut parents: Vec<Option<u64>> = records
        .iter()
        .map(|r| {
            let found = by_waiter
                .get(&r.addr)
                .or_else(|| r.group_parent.and_then(|p| by_addr.get(&p)))
                .or_else(|| r.callback_refs.iter().find_map(|o| by_waiter.get(o).or_else(|| holders.get(o))));
            found.map(|&i| records[i].addr).filter(|&p| p != r.addr)
        })
        .collect();
    // Break loops (a target changing under the read, or a hostile one): follow each chain up
    // once, marking what it passed; meeting the chain being followed again closes a loop.
    const NEW: u8 = 0;
    const ON_PATH: u8 = 1;
    const DONE: u8 = 2;
    let mut state = vec![NEW; records.len()];
    let mut path = Vec::new();
    for start in 0..records.len() {
        let mut at = start;
        while state[at] == NEW {
            state[at] = ON_PATH;
            path.push(at);
            match parents[at].and_then(|p| by_addr.get(&p)) {
                Some(&up) if state[up] == ON_PATH => {
                    parents[at] = None;
                    break;
                }
                Some(&up) => at = up,
                None => break,
            }
        }
        for i in path.drain(..) {
            state[i] = DONE;
        }
    }
    parents
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(addr: u64) -> TaskRecord {
        TaskRecord { addr, name: format!("t{addr}"), ..TaskRecord::default() }
    }

    #[test]
    fn a_task_awaited_directly_is_a_child() {
        let parent = TaskRecord { waiter: 2, ..task(1) };
        assert_eq!(parents(&[parent, task(2)]), vec![None, Some(1)]);
    }

    #[test]
    fn taskgroup_and_gather_children_find_their_parents() {
        let main = TaskRecord { held: vec![0x900], ..task(1) };
        let in_group = TaskRecord { group_parent: Some(1), callback_refs: vec![0x900], ..task(2) };
        let gatherer = TaskRecord { waiter: 0x700, ..task(3) };
        let gathered = TaskRecord { callback_refs: vec![0x500, 0x700], ..task(4) };
        let held_only = TaskRecord { callback_refs: vec![0x900], ..task(5) };
        assert_eq!(
            parents(&[main, in_group, gatherer, gathered, held_only]),
            vec![None, Some(1), None, Some(3), Some(1)]
        );
    }

    #[test]
    fn a_loop_of_parents_is_broken() {
        let a = TaskRecord { waiter: 2, ..task(1) };
        let b = TaskRecord { waiter: 1, ..task(2) };
        let found = parents(&[a, b]);
        assert!(found.contains(&None), "{found:?}");
    }
}
