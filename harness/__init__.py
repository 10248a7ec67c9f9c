"""esp32-ota-harness: ESP32 MicroPython OTA and boot failures, reproduced in Espressif's QEMU.

The parts, each a folder (docs/architecture.md reads them in order, from a scenario file
to the QEMU process):

- `scenario`: the scenario file format, one plan per cell, the runner, the steps, results;
- `emulator`: the run policy, the board (QEMU, console, REPL, served serial port), OTA;
- `flash`: the ESP32 flash formats, a user's files, firmware facts, images and recipes;
- `sources`: where firmware and QEMU come from (the manifest, downloads);
- `frontends`: the `harness` command line, the pytest plugin, repro, reports, inspect.
"""
