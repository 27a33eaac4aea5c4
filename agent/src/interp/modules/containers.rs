//! The few builtin containers the task reader goes through: dicts (`sys.modules`, module and
//! instance dicts), sets, lists, tuples, ints and instance attributes. Each object's type
//! pointer is checked against the exported type object, and every length is bounded.

use super::layout::{ManagedDict, ModulesLayout};
use crate::interp::objects::{word_in, ObjectError, ObjectReader};

/// Longest dict, set or list read: far more entries than `sys.modules` or a program's tasks.
const MAX_ENTRIES: u64 = 1 << 20;

/// The exported type objects that prove what an object is.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinTypes {
    pub coroutine: u64,
    pub generator: u64,
    pub set: u64,
    pub dict: u64,
    pub int: u64,
    pub method: u64,
    pub function: u64,
    pub tuple: u64,
    pub cell: u64,
    pub list: u64,
    pub weakref: u64,
    pub module: u64,
    pub none: u64,
}

/// Object fields that hold in every 3.12-3.15 GIL build.
const OB_TYPE: u64 = 8;
const TP_NAME: u64 = 24;
const TP_BASICSIZE: u64 = 32;
const TP_FLAGS: u64 = 168;
const TP_BASE: u64 = 256;
const MANAGED_DICT_FLAG: u64 = 1 << 4;
const INLINE_VALUES_FLAG: u64 = 1 << 2;
/// `PyVarObject.ob_size`, then a list's `ob_item` pointer or a tuple's first item.
const OB_SIZE: u64 = 16;
const ITEMS: u64 = 24;

/// Reads containers with one target's reader and layout.
pub struct Containers<'a> {
    pub reader: &'a ObjectReader,
    pub layout: &'a ModulesLayout,
    pub types: &'a BuiltinTypes,
}

fn malformed(what: &'static str, addr: u64, why: &'static str) -> ObjectError {
    ObjectError::Malformed { what, addr, why }
}

impl Containers<'_> {
    pub fn type_of(&self, obj: u64) -> Result<u64, ObjectError> {
        self.reader.word(obj.wrapping_add(OB_TYPE))
    }

    pub fn is(&self, obj: u64, ty: u64) -> bool {
        obj != 0 && self.type_of(obj).is_ok_and(|t| t == ty)
    }

    fn expect(&self, obj: u64, ty: u64, expected: &'static str) -> Result<(), ObjectError> {
        let found = self.type_of(obj)?;
        if found == ty {
            Ok(())
        } else {
            Err(ObjectError::WrongType { addr: obj, expected, found })
        }
    }

    /// A type's `tp_name` (a C string: "_asyncio.Future", "_GatheringFuture").
    pub fn type_name(&self, ty: u64) -> Result<String, ObjectError> {
        let at = self.reader.word(ty.wrapping_add(TP_NAME))?;
        let bytes = self.reader.bytes_at(at, 128)?;
        let end = bytes.iter().position(|&b| b == 0).ok_or(malformed("type name", at, "longer than any"))?;
        Ok(String::from_utf8_lossy(&bytes[..end]).into_owned())
    }

    /// Whether `ty` is, or derives from, the type named `name`.
    pub fn derives_from(&self, mut ty: u64, name: &str) -> bool {
        for _ in 0..32 {
            if ty == 0 {
                return false;
            }
            if self.type_name(ty).is_ok_and(|n| n == name) {
                return true;
            }
            ty = self.reader.word(ty.wrapping_add(TP_BASE)).unwrap_or(0);
        }
        false
    }

    /// A small `int`'s value (3.12+ `lv_tag` and 30-bit digits), if it fits in 64 bits.
    pub fn int(&self, obj: u64) -> Result<u64, ObjectError> {
        self.expect(obj, self.types.int, "int")?;
        let tag = self.reader.word(obj.wrapping_add(16))?;
        let (digits, negative) = (tag >> 3, tag & 3 == 2);
        if digits > 2 || negative {
            return Err(malformed("int", obj, "not a small non-negative int"));
        }
        let bytes = self.reader.bytes_at(obj.wrapping_add(24), 4 * digits as usize)?;
        Ok(bytes
            .chunks_exact(4)
            .rev()
            .fold(0, |acc, d| (acc << 30) | u64::from(u32::from_le_bytes([d[0], d[1], d[2], d[3]]) & 0x3fff_ffff)))
    }

    /// The items of a list or tuple.
    pub fn sequence(&self, obj: u64) -> Result<Vec<u64>, ObjectError> {
        let ty = self.type_of(obj)?;
        let len = self.reader.word(obj.wrapping_add(OB_SIZE))?;
        if len > MAX_ENTRIES {
            return Err(malformed("sequence", obj, "longer than any read"));
        }
        let items = if ty == self.types.tuple {
            obj.wrapping_add(ITEMS)
        } else if ty == self.types.list {
            self.reader.word(obj.wrapping_add(ITEMS))?
        } else {
            return Err(ObjectError::WrongType { addr: obj, expected: "list or tuple", found: ty });
        };
        self.words(items, len)
    }

    fn words(&self, at: u64, count: u64) -> Result<Vec<u64>, ObjectError> {
        let bytes = self.reader.bytes_at(at, count as usize * 8)?;
        Ok(bytes.chunks_exact(8).map(|w| word_in(w, 0)).collect())
    }

    /// The keys of a set (`setentry` is key, hash; a removed entry holds a dummy key that is
    /// no object the caller looks for).
    pub fn set_items(&self, set: u64) -> Result<Vec<u64>, ObjectError> {
        self.expect(set, self.types.set, "set")?;
        let head = self.reader.bytes_at(set, 48)?;
        let (used, mask, table) = (word_in(&head, 24), word_in(&head, 32), word_in(&head, 40));
        if mask >= MAX_ENTRIES || used > mask + 1 || !(mask + 1).is_power_of_two() {
            return Err(malformed("set", set, "impossible size"));
        }
        let entries = self.words(table, 2 * (mask + 1))?;
        Ok(entries.chunks_exact(2).map(|e| e[0]).filter(|&k| k != 0).collect())
    }

    /// `dict[name]` for a `str` key.
    pub fn dict_get(&self, dict: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        self.expect(dict, self.types.dict, "dict")?;
        let head = self.reader.bytes_at(dict, 48)?;
        let (keys, values) = (word_in(&head, 32), word_in(&head, 40));
        let Some(index) = self.key_index(keys, name)? else { return Ok(None) };
        let (entry_size, value) = self.entry_shape(keys)?;
        if values != 0 {
            return self.reader.word(values.wrapping_add(self.layout.dict_values_header + 8 * index)).map(Some);
        }
        let entries = self.entries_at(keys)?;
        self.reader.word(entries.wrapping_add(index * entry_size + value)).map(Some)
    }

    /// The values of a dict, in insertion order, without the deleted entries'.
    pub fn dict_values(&self, dict: u64) -> Result<Vec<u64>, ObjectError> {
        self.expect(dict, self.types.dict, "dict")?;
        let head = self.reader.bytes_at(dict, 48)?;
        let (keys, values) = (word_in(&head, 32), word_in(&head, 40));
        let nentries = self.reader.word(keys.wrapping_add(24))?;
        if nentries > MAX_ENTRIES {
            return Err(malformed("dict keys", keys, "more entries than any dict read"));
        }
        let found = if values != 0 {
            self.words(values.wrapping_add(self.layout.dict_values_header), nentries)?
        } else {
            let (entry_size, value_at) = self.entry_shape(keys)?;
            let entries = self.words(self.entries_at(keys)?, nentries * entry_size / 8)?;
            entries.chunks_exact((entry_size / 8) as usize).map(|e| e[(value_at / 8) as usize]).collect()
        };
        Ok(found.into_iter().filter(|&v| v != 0).collect())
    }

    /// Where a keys object's entries start.
    fn entries_at(&self, keys: u64) -> Result<u64, ObjectError> {
        let log2_index_bytes = self.reader.bytes_at(keys.wrapping_add(9), 1)?[0];
        if log2_index_bytes > 34 {
            return Err(malformed("dict keys", keys, "impossible index size"));
        }
        Ok(keys.wrapping_add(32 + (1u64 << log2_index_bytes)))
    }

    /// An entry's size and where its value sits: `{hash, key, value}` for general keys,
    /// `{key, value}` for str-only keys.
    fn entry_shape(&self, keys: u64) -> Result<(u64, u64), ObjectError> {
        Ok(if self.reader.bytes_at(keys.wrapping_add(10), 1)?[0] == 0 { (24, 16) } else { (16, 8) })
    }

    /// The entry index of the `str` key `name` in a `PyDictKeysObject`.
    fn key_index(&self, keys: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        let nentries = self.reader.word(keys.wrapping_add(24))?;
        if nentries > MAX_ENTRIES {
            return Err(malformed("dict keys", keys, "more entries than any dict read"));
        }
        let (entry_size, _) = self.entry_shape(keys)?;
        let key_at = if entry_size == 24 { 1 } else { 0 };
        let entries = self.words(self.entries_at(keys)?, nentries * entry_size / 8)?;
        for (index, entry) in entries.chunks_exact((entry_size / 8) as usize).enumerate() {
            let key = entry[key_at];
            if key != 0 && self.reader.string(key).is_ok_and(|k| k == name) {
                return Ok(Some(index as u64));
            }
        }
        Ok(None)
    }

    /// An instance attribute kept in its managed dict or inline values (a Python class's
    /// instances: WeakSet, TaskGroup).
    pub fn attribute(&self, obj: u64, name: &str) -> Result<Option<u64>, ObjectError> {
        let ty = self.type_of(obj)?;
        let flags = self.reader.word(ty.wrapping_add(TP_FLAGS))?;
        if flags & MANAGED_DICT_FLAG == 0 {
            return Err(malformed("instance", obj, "its class keeps no managed dict"));
        }
        let slot = self.reader.word(obj.wrapping_sub(24))?;
        let values = match self.layout.managed_dict {
            ManagedDict::DictOrValues if slot & 1 == 1 => slot.wrapping_add(1),
            ManagedDict::DictOrInline if slot == 0 && flags & INLINE_VALUES_FLAG != 0 => {
                let values = obj.wrapping_add(self.reader.word(ty.wrapping_add(TP_BASICSIZE))?);
                // PyDictValues: capacity, size, embedded, valid; then the values.
                if self.reader.bytes_at(values.wrapping_add(3), 1)?[0] == 0 {
                    return Ok(None);
                }
                values.wrapping_add(self.layout.dict_values_header)
            }
            _ if slot == 0 => return Ok(None),
            _ => return self.dict_get(slot, name),
        };
        let keys = self.reader.word(ty.wrapping_add(self.layout.type_cached_keys))?;
        match self.key_index(keys, name)? {
            Some(index) => self.reader.word(values.wrapping_add(8 * index)).map(|v| Some(v).filter(|&v| v != 0)),
            None => Ok(None),
        }
    }

    /// What a bound method is bound to.
    pub fn bound_self(&self, method: u64) -> Option<u64> {
        self.is(method, self.types.method).then(|| self.reader.word(method.wrapping_add(24)).ok()).flatten()
    }

    /// The contents of a function's closure cells (`func_closure`, after globals, builtins,
    /// name, qualname, code, defaults and kwdefaults).
    pub fn closure_contents(&self, function: u64) -> Vec<u64> {
        if !self.is(function, self.types.function) {
            return Vec::new();
        }
        let Ok(closure) = self.reader.word(function.wrapping_add(72)) else { return Vec::new() };
        if !self.is(closure, self.types.tuple) {
            return Vec::new();
        }
        let cells = self.sequence(closure).unwrap_or_default();
        cells
            .into_iter()
            .filter(|&c| self.is(c, self.types.cell))
            .filter_map(|c| self.reader.word(c.wrapping_add(16)).ok())
            .collect()
    }
}
