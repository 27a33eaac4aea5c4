//! Where the objects `dump` reads through `sys.modules` (asyncio's tasks, threading's threads)
//! keep their fields, per minor version. The C Task is
//! private to `Modules/_asynciomodule.c`, so no header gives its layout: these were found by
//! `tools/cpython-layouts/asyncio_probe.py` inside each version (pyenv 3.12.1 and 3.13.0,
//! Debian's 3.13, 3.14 and 3.15), and every object read is checked against its type.

/// How a suspended coroutine's frame says where its value stack ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StackTop {
    /// 3.12/3.13: `int stacktop`, counted in slots from `localsplus`.
    Count { at: u64 },
    /// 3.14+: `_PyStackRef *stackpointer`, just past the top; the awaited value sits `below`
    /// slots under it (3.15 keeps a NULL above it).
    Pointer { at: u64, below: u64 },
}

/// Where the tasks are found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskList {
    /// 3.12/3.13: `asyncio.tasks._scheduled_tasks` (a WeakSet) and `_eager_tasks` (a set),
    /// reached from `sys.modules`.
    ModuleSets,
    /// 3.14+: each C task is linked through `task_node` into its thread's list
    /// (`_PyThreadStateImpl.asyncio_tasks_head`).
    PerThread { task_node: u64, thread_head: u64 },
}

/// How an instance keeps its attributes (`Py_TPFLAGS_MANAGED_DICT`, the word three before
/// the object).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagedDict {
    /// 3.12: a dict, or the values array's address less one (so bit 0 tags it).
    DictOrValues,
    /// 3.13+: a dict or NULL; NULL means the values sit inline after the object, behind a
    /// 8-byte header.
    DictOrInline,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModulesLayout {
    pub task_callback0: u64,
    pub task_callbacks: u64,
    pub task_fut_waiter: u64,
    pub task_coro: u64,
    pub task_name: u64,
    /// The `_PyInterpreterFrame` a coroutine embeds.
    pub coro_iframe: u64,
    /// `int8_t gi_frame_state`.
    pub coro_frame_state: u64,
    pub state_created: i8,
    /// Suspended in an `await` (`FRAME_SUSPENDED_YIELD_FROM`; 3.12 has one suspended state).
    pub state_awaiting: i8,
    pub frame_localsplus: u64,
    pub stack_top: StackTop,
    pub tasks: TaskList,
    /// `interp->imports.modules` (`sys.modules`), where ember knows it (3.12 and 3.13).
    pub interp_modules: Option<u64>,
    pub managed_dict: ManagedDict,
    /// Bytes before a split dict's values array (`PyDictValues`' header).
    pub dict_values_header: u64,
    /// `PyHeapTypeObject.ht_cached_keys`: the keys instances' inline values are stored under.
    pub type_cached_keys: u64,
}

/// The layout of Python `3.minor`, if ember knows it.
pub fn for_minor(minor: u32) -> Option<ModulesLayout> {
    let base = ModulesLayout {
        task_callback0: 24,
        task_callbacks: 32,
        task_fut_waiter: 128,
        task_coro: 136,
        task_name: 144,
        coro_iframe: 72,
        coro_frame_state: 67,
        state_created: -2,
        state_awaiting: -1,
        frame_localsplus: 72,
        stack_top: StackTop::Count { at: 64 },
        tasks: TaskList::ModuleSets,
        interp_modules: Some(944),
        managed_dict: ManagedDict::DictOrValues,
        dict_values_header: 0,
        type_cached_keys: 880,
    };
    let from_3_13 = ModulesLayout {
        task_fut_waiter: 112,
        task_coro: 120,
        task_name: 128,
        state_created: -3,
        interp_modules: Some(7656),
        managed_dict: ManagedDict::DictOrInline,
        dict_values_header: 8,
        ..base.clone()
    };
    let from_3_14 = ModulesLayout {
        task_fut_waiter: 120,
        task_coro: 128,
        task_name: 136,
        frame_localsplus: 80,
        stack_top: StackTop::Pointer { at: 64, below: 1 },
        tasks: TaskList::PerThread { task_node: 152, thread_head: 880 },
        interp_modules: None,
        ..from_3_13.clone()
    };
    match minor {
        12 => Some(base),
        13 => Some(from_3_13),
        14 => Some(from_3_14),
        15 => Some(ModulesLayout {
            state_created: 0,
            state_awaiting: 2,
            stack_top: StackTop::Pointer { at: 64, below: 2 },
            tasks: TaskList::PerThread { task_node: 152, thread_head: 1048 },
            type_cached_keys: 888,
            ..from_3_14
        }),
        _ => None,
    }
}
