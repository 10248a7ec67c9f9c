"""MicroPython code the tests run on the guest to make it do something on purpose."""

# Arms timer group 1's watchdog (ESP32 TRM: TIMG1 at 0x3ff60000; write key, prescaler,
# stage-0 timeout of 100 ms, stage 0 = reset the system), then spins with interrupts off
# so nothing feeds it: the ROM then reports rst:0x8 (TG1WDT_SYS_RESET), as after a host
# that starved QEMU in the middle of a write.
ARM_TG1_WDT = """import machine
m = machine.mem32
m[0x3FF60064] = 0x50D83AA1
m[0x3FF6004C] = 40000 << 16
m[0x3FF60050] = 200
m[0x3FF60048] = 0xE0000000
m[0x3FF60060] = 1
machine.disable_irq()
while True:
    pass
"""
