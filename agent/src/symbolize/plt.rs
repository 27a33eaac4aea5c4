//! Names of PLT stubs, `symbol@plt` as perf shows them, and the lazy-binding header `.plt`.
//! No symbol covers a stub, so a symbolizer answers with the nearest symbol before it (`_init`)
//! or nothing.
//!
//! Each stub jumps through a GOT slot that a dynamic relocation names (`jmp *slot(%rip)`), or,
//! in the lazy `.plt` of an IBT build, pushes its index into `.rela.plt` (`push $n`). The stub's
//! own bytes say which, so `.plt`, `.plt.sec` and `.plt.got` all decode the same way (x86-64).

use std::collections::HashMap;

use object::elf::{R_X86_64_GLOB_DAT, R_X86_64_IRELATIVE, R_X86_64_JUMP_SLOT};
use object::{Object, ObjectSection, ObjectSymbol, ObjectSymbolTable};

/// The PLT stubs of one image, by file offset.
#[derive(Debug, Default)]
pub struct PltStubs {
    /// (first file offset, end, name) in offset order.
    stubs: Vec<(u64, u64, String)>,
}

/// Most stubs read from one image: a PLT is a few thousand entries; more is not a real one.
const MAX_STUBS: usize = 1 << 16;
const ELF64_RELA_SIZE: usize = 24;

impl PltStubs {
    /// The stubs of an image; none if it has no PLT or is not x86-64.
    pub fn parse<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> Self {
        if obj.architecture() != object::Architecture::X86_64 {
            return Self::default();
        }
        let (by_slot, by_index) = jump_targets(obj);
        let mut stubs = Vec::new();
        for name in [".plt", ".plt.sec", ".plt.got"] {
            let Some(section) = obj.section_by_name(name) else { continue };
            let (Some((file_offset, size)), Ok(bytes)) = (section.file_range(), section.data()) else { continue };
            let entry = match section_entry_size(obj, name) {
                8 => 8,
                _ => 16,
            };
            for (i, stub) in bytes.chunks_exact(entry as usize).enumerate().take(MAX_STUBS) {
                let at = i as u64 * entry;
                let target = match decode(stub, section.address() + at) {
                    Some(Jump::Slot(slot)) => by_slot.get(&slot),
                    Some(Jump::Index(n)) => by_index.get(n as usize),
                    None => None,
                };
                let label = match target {
                    Some(target) => format!("{target}@plt"),
                    // The lazy-binding header every first call goes through: `.plt`, as objdump
                    // labels it, never the symbol before it (`_init`).
                    None if i == 0 && name == ".plt" => ".plt".to_string(),
                    None => continue,
                };
                if at + entry <= size {
                    stubs.push((file_offset + at, file_offset + at + entry, label));
                }
            }
        }
        stubs.sort_unstable_by_key(|s| s.0);
        Self { stubs }
    }

    /// The stub at `file_offset`, as `symbol@plt`.
    pub fn name_at(&self, file_offset: u64) -> Option<&str> {
        let i = self.stubs.partition_point(|s| s.0 <= file_offset).checked_sub(1)?;
        let (_, end, name) = &self.stubs[i];
        (file_offset < *end).then_some(name.as_str())
    }

    pub fn len(&self) -> usize {
        self.stubs.len()
    }
}

enum Jump {
    /// `jmp *slot(%rip)`: the GOT slot's address.
    Slot(u64),
    /// `push $n`: entry `n` of `.rela.plt`.
    Index(u32),
}

/// The jump of one stub at `address`, past an `endbr64` and a `bnd` prefix.
fn decode(stub: &[u8], address: u64) -> Option<Jump> {
    let mut at = if stub.starts_with(&[0xf3, 0x0f, 0x1e, 0xfa]) { 4 } else { 0 };
    if stub.get(at) == Some(&0xf2) {
        at += 1;
    }
    let imm = |from: usize| Some(u32::from_le_bytes(stub.get(from..from + 4)?.try_into().ok()?));
    match stub.get(at..at + 2)? {
        [0xff, 0x25] => {
            let displacement = imm(at + 2)? as i32;
            let next = address.checked_add(at as u64 + 6)?;
            Some(Jump::Slot(next.wrapping_add_signed(i64::from(displacement))))
        }
        [0x68, _] => Some(Jump::Index(imm(at + 1)?)),
        _ => None,
    }
}

/// `sh_entsize` of a section, 0 when the file does not say.
fn section_entry_size<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>, name: &str) -> u64 {
    use object::read::elf::{ElfFile64, SectionHeader};
    let object::File::Elf64(elf) = obj else { return 0 };
    let elf: &ElfFile64<'_, object::Endianness, R> = elf;
    let endian = elf.endian();
    elf.elf_section_table()
        .iter()
        .find(|h| elf.elf_section_table().section_name(endian, h).ok() == Some(name.as_bytes()))
        .map_or(0, |h| h.sh_entsize(endian))
}

/// Dynamic symbol names by the GOT slot their relocation fills, and `.rela.plt` in order. An
/// IFUNC called inside its own library (libc's `memcpy`) has an IRELATIVE slot whose addend is
/// the resolver, which a symbol of that value names.
fn jump_targets<'d, R: object::ReadRef<'d>>(obj: &object::File<'d, R>) -> (HashMap<u64, String>, Vec<String>) {
    let Some(symbols) = obj.dynamic_symbol_table() else { return Default::default() };
    let name_of = |index: u64| -> Option<String> {
        let symbol = symbols.symbol_by_index(object::SymbolIndex(usize::try_from(index).ok()?)).ok()?;
        symbol.name().ok().filter(|n| !n.is_empty()).map(str::to_string)
    };
    let mut by_value: HashMap<u64, String> = HashMap::new();
    for symbol in symbols.symbols().filter(|s| s.kind() == object::SymbolKind::Text && s.address() != 0) {
        if let Ok(name) = symbol.name() {
            // Of aliases, the shortest name is the public one (`memcpy`, not `__memcpy`).
            let slot = by_value.entry(symbol.address()).or_insert_with(|| name.to_string());
            if name.len() < slot.len() {
                *slot = name.to_string();
            }
        }
    }
    let mut by_slot = HashMap::new();
    let mut by_index = Vec::new();
    for section in [".rela.plt", ".rela.dyn"] {
        let Some(bytes) = obj.section_by_name(section).and_then(|s| s.data().ok()) else { continue };
        for rela in bytes.chunks_exact(ELF64_RELA_SIZE).take(MAX_STUBS * 4) {
            let word = |i: usize| rela.get(i * 8..i * 8 + 8).and_then(|b| b.try_into().ok()).map(u64::from_le_bytes);
            let (Some(slot), Some(info), Some(addend)) = (word(0), word(1), word(2)) else { continue };
            let (symbol, kind) = (info >> 32, (info & 0xffff_ffff) as u32);
            let name = match kind {
                R_X86_64_JUMP_SLOT | R_X86_64_GLOB_DAT => name_of(symbol),
                R_X86_64_IRELATIVE => by_value.get(&addend).cloned(),
                _ => None,
            };
            if section == ".rela.plt" {
                by_index.push(name.clone().unwrap_or_default());
            }
            if let Some(name) = name {
                by_slot.insert(slot, name);
            }
        }
    }
    (by_slot, by_index)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_every_stub_form() {
        // jmp *0x2fe2(%rip) at 0x1030: the slot is 0x1030 + 6 + 0x2fe2.
        let lazy = [0xff, 0x25, 0xe2, 0x2f, 0, 0, 0x68, 0, 0, 0, 0, 0xe9, 0xe0, 0xff, 0xff, 0xff];
        assert!(matches!(decode(&lazy, 0x1030), Some(Jump::Slot(0x4018))));
        let ibt_sec = [0xf3, 0x0f, 0x1e, 0xfa, 0xf2, 0xff, 0x25, 0x10, 0, 0, 0, 0x0f, 0x1f, 0x44, 0, 0];
        assert!(matches!(decode(&ibt_sec, 0x2000), Some(Jump::Slot(0x201b))));
        let ibt_lazy = [0xf3, 0x0f, 0x1e, 0xfa, 0x68, 7, 0, 0, 0, 0xf2, 0xe9, 0, 0, 0, 0, 0x90];
        assert!(matches!(decode(&ibt_lazy, 0x3000), Some(Jump::Index(7))));
        let plt0 = [0xff, 0x35, 2, 0, 0, 0, 0xff, 0x25, 4, 0, 0, 0, 0x0f, 0x1f, 0x40, 0];
        assert!(decode(&plt0, 0x1000).is_none(), "the resolver stub names no symbol");
        assert!(decode(&[0xff], 0).is_none() && decode(&[], 0).is_none(), "short input");
    }

    /// The libc this test runs with, and its PLT labels as binutils' objdump prints them.
    fn libc_and_objdump_labels() -> (String, Vec<(u64, String)>) {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("own maps");
        let libc = maps
            .lines()
            .filter_map(|l| l.split_whitespace().nth(5))
            .find(|p| p.rsplit('/').next().is_some_and(|b| b.starts_with("libc.so")))
            .expect("linked against glibc")
            .to_string();
        let out = std::process::Command::new("objdump")
            .args(["-d", "-j", ".plt", "-j", ".plt.sec", "-j", ".plt.got", &libc])
            .output()
            .expect("objdump (binutils) installed");
        let text = String::from_utf8_lossy(&out.stdout);
        let labels = text
            .lines()
            .filter_map(|l| {
                let (address, rest) = l.split_once(" <")?;
                let label = rest.strip_suffix(">:")?;
                Some((u64::from_str_radix(address.trim(), 16).ok()?, label.to_string()))
            })
            .collect();
        (libc, labels)
    }

    #[test]
    fn names_agree_with_objdump_on_the_real_libc() {
        let (libc, labels) = libc_and_objdump_labels();
        let bytes = std::fs::read(&libc).expect("read libc");
        let obj = object::File::parse(&*bytes).expect("ELF");
        let stubs = PltStubs::parse(&obj);
        // libc is linked at address 0 with its text at file offset = address.
        let offset_of = |address: u64| {
            obj.sections()
                .find(|s| s.address() <= address && address < s.address() + s.size())
                .and_then(|s| Some(s.file_range()?.0 + (address - s.address())))
                .expect("in a section")
        };
        let (stubs_labels, others): (Vec<_>, Vec<_>) = labels.iter().partition(|(_, l)| l.ends_with("@plt"));
        // objdump labels the resolver header `.plt`, or relative to the first stub
        // (`…@plt-0x10`); it is no one's stub, and never `_init`.
        for (address, label) in others {
            assert_eq!(stubs.name_at(offset_of(*address)), Some(".plt"), "the resolver stub ({label})");
        }
        let named: Vec<_> = stubs_labels.iter().filter(|(_, l)| !l.starts_with("*ABS*")).collect();
        assert!(!named.is_empty(), "libc calls ld.so through named PLT stubs: {labels:?}");
        for (address, label) in &named {
            assert_eq!(stubs.name_at(offset_of(*address) + 4), Some(label.as_str()), "inside the stub at {address:#x}");
        }
        // IFUNC stubs, `*ABS*+0xVALUE@plt` to objdump, are named by the symbol at VALUE.
        let symbols = obj.dynamic_symbol_table().expect("dynsym");
        let mut ifuncs = 0;
        for (address, label) in stubs_labels.iter().filter(|(_, l)| l.starts_with("*ABS*")) {
            let value = u64::from_str_radix(&label["*ABS*+0x".len()..label.len() - "@plt".len()], 16).expect("hex");
            let name = stubs.name_at(offset_of(*address)).expect("an IFUNC stub is named");
            let function = name.strip_suffix("@plt").expect("@plt");
            assert!(
                symbols.symbols().any(|s| s.address() == value && s.name() == Ok(function)),
                "{name} at {address:#x} is not the symbol at {value:#x}"
            );
            ifuncs += 1;
        }
        assert!(ifuncs > 0, "glibc calls its own IFUNCs (memcpy, strlen) through the PLT");
    }
}
