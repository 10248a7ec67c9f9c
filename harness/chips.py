"""The chips, one profile each: every fact that differs between an ESP32 and another chip.

A `Chip` says where its ROM finds the second-stage bootloader, which DRAM an app's
segment must not load into (the bootloader's own data and stack), what the words of the
ROM's `rst:` banner mean (a watchdog, a software reset, power-on), MicroPython's generic
board for it, and how Espressif's QEMU runs it: the binary, the machine, the `-global`
drivers that turn its watchdogs off and set its boot strap, or, in one line, why the
harness cannot boot it there. The flash formats, the machine, the console's and the
errors' reading of resets, the QEMU pin and the reports read these here; nothing else
decides them.

Adding a chip: its `Chip` in `CHIPS`, a QEMU pin in harness.sources.downloads when it
boots, and its tests (docs/architecture.md, "Add a chip").
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

# What a reset reason of the ROM's banner means to the harness: the ones the harness did
# not ask for and a starved host causes are the watchdogs'.
ResetKind = Literal["power-on", "software", "watchdog", "other"]


@dataclass(frozen=True)
class Wifi:
    """A QEMU build that emulates the chip's Wi-Fi, found beside Espressif's release.

    esp32-open-mac's tree (espressif/qemu PR #80, not in Espressif's releases) emulates
    an open access point bridged to QEMU's user networking: the guest gets `guest` by
    DHCP and reaches the host's 127.0.0.1 at `host`. Its MAC model answers the register
    reads of ESP-IDF 5.0's Wi-Fi driver only: from 5.2 on, QEMU stops at
    `w.active(True)` (`unmapped peripheral read for 3ff5103c`), so it serves the builds
    whose ESP-IDF is in `serves` (MicroPython v1.21.0 to v1.23.0). Beside the guest's
    PSRAM (`-m 4M`) v1.21.0 SPIRAM panics on core 1 at its first request (Load- or
    StoreProhibited, every boot of 4); without it that build downloads as the others do,
    so a board on the network runs without PSRAM unless told otherwise (`psram`).
    """

    tool: str  # its folder under ~/.espressif/tools: qemu-xtensa-wifi
    device: str  # the NIC model it has, probed with `-device NAME,help`: misc.esp32_wifi
    serves: tuple[str, ...]  # ESP-IDF versions (major.minor) its model answers: ("5.0",)
    env: str  # the variable that names the binary: HARNESS_QEMU_WIFI
    commit: str = ""  # the tree it is built from: esp32-open-mac/qemu's esp-develop commit
    ssid: str = "Open Wifi"  # the access point it emulates (open: no password)
    host: str = "10.0.2.2"  # the host's 127.0.0.1, as the guest reaches it (QEMU user net)
    guest: str = "10.0.2.15"  # the guest's address (QEMU's DHCP)
    psram: bool = False  # its model works beside the guest's PSRAM (-m 4M)

    def nic(self) -> list[str]:
        """The command line that gives the guest its Wi-Fi (replacing `-nic none`)."""
        return ["-nic", f"user,model={self.device}"]

    def why_not(self, release: str, idf_version: str | None) -> str:
        """Why a release gets no network on it, in one line ("" when it does)."""
        numbers = re.findall(r"\d+", idf_version or "")
        if ".".join(numbers[:2]) in self.serves:
            return ""
        built = f"is {idf_version.lstrip('v')}" if idf_version else "does not say its ESP-IDF"
        return (f"this QEMU emulates Wi-Fi for ESP-IDF {' and '.join(self.serves)} builds only; "
                f"{release} {built}")  # fmt: skip


@dataclass(frozen=True)
class Qemu:
    """How Espressif's QEMU runs a chip."""

    tool: str  # ESP-IDF's tool, and its folder under ~/.espressif/tools: qemu-xtensa
    binary: str  # qemu-system-xtensa
    machine: str  # -machine esp32
    watchdogs: tuple[str, ...]  # drivers whose `wdt_disable` turns the watchdogs off
    gpio: str  # the driver whose `strap_mode` is the boot strap
    download_strap: int  # its value for the ROM's download mode (GPIO0 or GPIO9 low)
    cannot_boot: str = ""  # why the harness cannot boot the chip on it; "": it can
    wifi: Wifi | None = None  # a build of it with Wi-Fi, where one exists

    def watchdogs_off(self) -> list[str]:
        """What ESP-IDF's `idf.py qemu` passes to turn the timer-group watchdogs off."""
        off = (f"driver={driver},property=wdt_disable,value=true" for driver in self.watchdogs)
        return [arg for value in off for arg in ("-global", value)]

    def download_mode(self) -> list[str]:
        """The strap that starts the ROM in download mode (fixed when the machine starts)."""
        strap = f"{self.download_strap:#04x}"
        return ["-global", f"driver={self.gpio},property=strap_mode,value={strap}"]


@dataclass(frozen=True, eq=False)  # one instance per chip: compared and hashed by identity
class Chip:
    """One chip's profile."""

    name: str  # as esptool and the image header's chip id name it: esp32, esp32c3
    chip_id: int  # esp_image_header_t.chip_id
    bootloader_offset: int  # where the ROM looks for the bootloader (esptool's)
    board: str = ""  # MicroPython's generic board for it on micropython.org
    dram: tuple[int, int] | None = None  # internal DRAM, as the bootloader sees it
    bootloader_dram: tuple[int, int] | None = None  # the bootloader's data and stack in it
    resets: Mapping[str, ResetKind] = field(default_factory=dict)  # the ROM banner's words
    qemu: Qemu | None = None

    @property
    def wifi(self) -> Wifi | None:
        """The build of its QEMU that emulates its Wi-Fi, if any."""
        return self.qemu.wifi if self.qemu is not None else None

    @property
    def boots(self) -> bool:
        """The harness can boot this chip's images in Espressif's QEMU."""
        return self.qemu is not None and not self.qemu.cannot_boot

    def why_not(self) -> str:
        """Why the harness does not boot this chip, in one line ("" when it does)."""
        if self.qemu is None:
            wanted = " or ".join(f"{c.name} images ({c.board})" for c in CHIPS if c.boots)
            return f"the harness has no QEMU profile for {self.name}; it boots {wanted}"
        return self.qemu.cannot_boot

    def reset_kind(self, word: str) -> ResetKind:
        """What a reset reason of the ROM's banner (`SW_CPU_RESET`) means."""
        return self.resets.get(word, "other")

    def is_watchdog(self, word: str) -> bool:
        return self.reset_kind(word) == "watchdog"

    def overlaps_bootloader(self, start: int, end: int) -> bool:
        """A segment loading at [start, end) lands in the bootloader's own memory, which
        the bootloader refuses ("overlaps bootloader data/stack")."""
        low, high = self.bootloader_dram or (0, 0)
        return start < high and end > low


_ESP32_RESETS: dict[str, ResetKind] = {
    # ESP-IDF components/esp_rom/include/esp32/rom/rtc.h (RESET_REASON), as the ROM prints them
    "POWERON_RESET": "power-on", "SW_RESET": "software", "OWDT_RESET": "watchdog",
    "DEEPSLEEP_RESET": "other", "SDIO_RESET": "other", "TG0WDT_SYS_RESET": "watchdog",
    "TG1WDT_SYS_RESET": "watchdog", "RTCWDT_SYS_RESET": "watchdog", "INTRUSION_RESET": "other",
    "TGWDT_CPU_RESET": "watchdog", "SW_CPU_RESET": "software", "RTCWDT_CPU_RESET": "watchdog",
    "EXT_CPU_RESET": "other", "RTCWDT_BROWN_OUT_RESET": "other",  # a brown-out, not a watchdog
    "RTCWDT_RTC_RESET": "watchdog",
}  # fmt: skip
_ESP32C3_RESETS: dict[str, ResetKind] = {
    # the ESP32-C3 ROM's own words (`rst:0x1 (POWERON)`, `rst:0x7 (TG0WDT_SYS_RST)`)
    "POWERON": "power-on", "RTC_SW_SYS_RST": "software", "DEEPSLEEP_RST": "other",
    "TG0WDT_SYS_RST": "watchdog", "TG1WDT_SYS_RST": "watchdog", "RTCWDT_SYS_RST": "watchdog",
    "INTRUSION_RST": "other", "TG0WDT_CPU_RST": "watchdog", "RTC_SW_CPU_RST": "software",
    "RTCWDT_CPU_RST": "watchdog", "RTCWDT_BROWN_OUT_RST": "other", "RTCWDT_RTC_RST": "watchdog",
    "TG1WDT_CPU_RST": "watchdog", "SUPER_WDT_RST": "watchdog", "GLITCH_RTC_RST": "other",
    "EFUSE_RST": "other", "USB_UART_CHIP_RESET": "other", "USB_JTAG_CHIP_RESET": "other",
    "POWER_GLITCH_RESET": "other",
}  # fmt: skip

ESP32 = Chip(
    "esp32", 0, 0x1000, board="ESP32_GENERIC",
    dram=(0x3FFA_E000, 0x4000_0000),
    # the bootloader keeps its data and the ROM stack at the top of internal DRAM
    bootloader_dram=(0x3FFE_0000, 0x4000_0000),
    resets=_ESP32_RESETS,
    # as ESP-IDF's `idf.py qemu` runs it (tools/idf_py_actions/qemu_ext.py)
    qemu=Qemu("qemu-xtensa", "qemu-system-xtensa", "esp32", ("timer.esp32.timg",), "esp32.gpio",
              0x0F, wifi=Wifi("qemu-xtensa-wifi", "misc.esp32_wifi", ("5.0",),
                              "HARNESS_QEMU_WIFI", "4a5c772afe")),
)  # fmt: skip
ESP32C3 = Chip(
    "esp32c3", 5, 0x0, board="ESP32_GENERIC_C3",
    dram=(0x3FC8_0000, 0x3FCE_0000),
    # ESP-IDF v5 bootloader.ld: dram_seg from 0x3fcd5710 (bootloader_usable_dram_end
    # 0x3fcdc710 less 0x2000 of stack headroom and 0x5000 of segment), then the ROM's
    # startup stack up to 0x3fcde710, both checked by esp_image_format.c
    bootloader_dram=(0x3FCD_5710, 0x3FCD_E710),
    resets=_ESP32C3_RESETS,
    qemu=Qemu("qemu-riscv32", "qemu-system-riscv32", "esp32c3", ("timer.esp32c3.timg",),
              "esp32c3.gpio", 0x02,
              cannot_boot="this QEMU cannot boot it: its esp32c3 machine's USB-Serial/JTAG is a "
              "register stub without a character device (not emulated)"),
)  # fmt: skip
# Chips whose images `inspect` reads (chip id, bootloader offset) and nothing more yet.
# Where the ROM looks for the bootloader is esptool's BOOTLOADER_FLASH_OFFSET.
CHIPS: tuple[Chip, ...] = (
    ESP32, ESP32C3,
    Chip("esp32s2", 2, 0x1000), Chip("esp32s3", 9, 0x0), Chip("esp32c2", 12, 0x0),
    Chip("esp32c6", 13, 0x0), Chip("esp32h2", 16, 0x0), Chip("esp32p4", 18, 0x2000),
    Chip("esp32c61", 20, 0x0), Chip("esp32c5", 23, 0x2000),
)  # fmt: skip
# The chip of a file or a flash summary that does not say which (the one that boots)
DEFAULT = ESP32


def by_id(chip_id: int) -> Chip | None:
    """The chip an image header names (esp_image_header_t.chip_id); None: unknown."""
    return next((c for c in CHIPS if c.chip_id == chip_id), None)


def by_name(name: str | None) -> Chip | None:
    return next((c for c in CHIPS if c.name == name), None)


def bootable() -> tuple[Chip, ...]:
    return tuple(c for c in CHIPS if c.boots)


def bootloader_offsets() -> tuple[int, ...]:
    """Every place a ROM looks for the bootloader, the ESP32's first (0x1000, 0x0, 0x2000)."""
    return tuple(dict.fromkeys(c.bootloader_offset for c in CHIPS))


def names_watchdog_reset(text: str) -> bool:
    """`text` names a watchdog reset of some chip's ROM (`TG1WDT_SYS_RESET`)."""
    return any(word in text for c in CHIPS for word, kind in c.resets.items()
               if kind == "watchdog")  # fmt: skip
