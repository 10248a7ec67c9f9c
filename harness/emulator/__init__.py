"""The emulated board: QEMU, its console and REPL, the served serial port, OTA on the device.

`policy` decides how an emulation runs; `qemu` is one QEMU process; `board` is the board
interface (one QEMU, or a board served to the user's tools through `serialport`);
`console` and `repl` talk to UART0; `device` puts them together (`boot()`), and `ota`
performs updates on it. `hostlock`, `hostcommand` and `janitor` keep the host orderly.
"""
