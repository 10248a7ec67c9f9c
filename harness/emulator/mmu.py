"""Where the CPU runs its code from, read from the ESP32's cache MMU, not asked of the firmware.

The bootloader hands over to an app by pointing the instruction cache's MMU at the app's
flash (the IROM pages from 0x400D0000, 64 KB each) and jumping; the ROM, download mode
and the bootloader itself run from internal memory with no app page mapped. So the MMU
table says which flash the code comes from, whatever the app says of itself.

Espressif's QEMU keeps the table in its DPORT model (hw/misc/esp32_dport.c): a read of
the PRO CPU's table (DR_REG_FLASH_MMU_TABLE_PRO) returns each entry (`& 0x1ff`: the
64 KB flash page, 0x100 set for an invalid entry), 64 entries for DROM0 (0x3F400000),
then 64 for the IRAM0/IROM region (0x40000000). A `look` reads that region over the
monitor (`xp`, which goes through the device's read op) and the CPUs' PCs; a `watch`
is a few looks and the resets the guest made meanwhile. Every call is a diagnosis: when
QEMU cannot say, the look says nothing rather than fail.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Protocol

from .qemu import CpuState

CHIP = "esp32"  # whose MMU this reads (the S3's differs)
PRO_TABLE = 0x3FF10000  # DR_REG_FLASH_MMU_TABLE_PRO
REGION_ENTRIES = 64  # ESP32_CACHE_PAGES_PER_REGION
IRAM0_TABLE = PRO_TABLE + REGION_ENTRIES * 4  # the IRAM0 region's entries follow DROM0's
IRAM0_BASE = 0x40000000  # the region's first virtual address
PAGE = 0x10000  # ESP32_CACHE_PAGE_SIZE
IROM_FIRST = 13  # entry of 0x400D0000, where ESP-IDF maps an app's code (SOC_IROM_LOW)
INVALID = 0x100  # ESP32_CACHE_MMU_INVALID_VAL
PAGE_MASK = 0xFF  # the flash page of an entry (0x1ff with the invalid bit)
LOOKS = 3  # a watch's looks, GAP apart: a guest that resets meanwhile is not running
GAP = 0.1


class Looked(Protocol):
    """What a look asks of a board (harness.emulator.board.Board has it all)."""

    def read_words(self, address: int, count: int) -> list[int] | None: ...

    def cpu_states(self) -> list[CpuState]: ...

    def guest_resets(self) -> int: ...


@dataclass(frozen=True)
class CodeMap:
    """The IRAM0/IROM region's MMU entries, as the PRO CPU's table holds them."""

    entries: tuple[int, ...]

    def flash_at(self, address: int) -> int | None:
        """The flash offset the virtual `address` reads from (None: no app page there)."""
        index = (address - IRAM0_BASE) // PAGE
        if not IROM_FIRST <= index < len(self.entries):
            return None
        entry = self.entries[index]
        if entry & INVALID:
            return None
        return (entry & PAGE_MASK) * PAGE + (address - IRAM0_BASE) % PAGE

    @property
    def code(self) -> int | None:
        """The flash offset of the first app page mapped (from 0x400D0000), if any."""
        return next((self.flash_at(IRAM0_BASE + i * PAGE) for i in range(IROM_FIRST,
                     len(self.entries)) if not self.entries[i] & INVALID), None)  # fmt: skip


@dataclass(frozen=True)
class Look:
    """One look at a running board: its code map (None: QEMU did not say) and its CPUs."""

    code: CodeMap | None
    cpus: tuple[CpuState, ...]

    def in_flash(self) -> list[int]:
        """The flash offsets the CPUs' PCs execute from ([]: every PC in ROM or RAM)."""
        if self.code is None:
            return []
        found = (self.code.flash_at(c.pc) for c in self.cpus)
        return [offset for offset in found if offset is not None]


def look(board: Looked) -> Look:
    """The PRO CPU's IROM MMU entries and where each CPU is, now."""
    words = board.read_words(IRAM0_TABLE, REGION_ENTRIES)
    code = CodeMap(tuple(w & (INVALID | PAGE_MASK) for w in words)) if words else None
    return Look(code, tuple(board.cpu_states()))


@dataclass(frozen=True)
class Watch:
    """A few looks, GAP apart, and the resets the guest made during them."""

    looks: tuple[Look, ...]
    resets: int


def watch(board: Looked, looks: int = LOOKS, gap: float = GAP) -> Watch:
    """Look `looks` times, `gap` apart; count the guest's own resets over that span."""
    board.guest_resets()  # those before the watch are not its business
    seen = []
    for n in range(looks):
        if n:
            time.sleep(gap)
        seen.append(look(board))
    return Watch(tuple(seen), board.guest_resets())
