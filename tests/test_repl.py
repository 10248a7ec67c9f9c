"""The REPL driver against real MicroPython: raw-paste flow control and tracebacks."""

from __future__ import annotations

import pytest

from harness.emulator import device, policy
from harness.emulator.console import RESET_BANNER
from harness.emulator.device import BootOptions
from harness.errors import DeviceError


@pytest.fixture(scope="module")
def dev(qemu, fw, build_image, tmp_path_factory):
    image = build_image(fw("OTA-20250415-v1.25.0"), "4MB")
    with device.boot(
        image,
        BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path_factory.mktemp("repl")),
    ) as d:
        d.repl.wait_prompt(30)
        yield d


def _script(lines: int) -> tuple[str, str]:
    body = ["# a multi-line script, sent in raw-paste mode", "acc = []"]
    expected = []
    for i in range(lines):
        word = f"line-{i:03d}-" + "x" * (i % 17)
        body.append(f"acc.append({word!r})")
        body.append(f"print(len(acc), {word!r})")
        expected.append(f"{i + 1} {word}")
    body += ["def total(items):", "    return sum(len(s) for s in items)", "print(total(acc))"]
    expected.append(str(sum(len(f"line-{i:03d}-" + "x" * (i % 17)) for i in range(lines))))
    return "\n".join(body) + "\n", "\n".join(expected) + "\n"


def test_2kb_script_in_raw_paste_returns_exactly_its_output(dev) -> None:
    code, expected = _script(30)
    assert 2000 <= len(code) <= 2600
    assert dev.repl.exec(code, timeout=30) == expected


def test_32kb_script_is_not_corrupted_by_the_small_stdin_buffer(dev) -> None:
    code, expected = _script(480)
    assert len(code) > 32000
    assert dev.repl.exec(code, timeout=60) == expected


def test_device_exception_carries_the_device_traceback(dev) -> None:
    code = "def inner():\n    raise ValueError('bad slot %d' % 7)\n\nprint('before')\ninner()\n"
    with pytest.raises(DeviceError) as info:
        dev.repl.exec(code)
    err = info.value
    assert err.output == "before\n"
    assert "Traceback (most recent call last):" in err.traceback
    assert "line 2, in inner" in err.traceback
    assert err.traceback.endswith("ValueError: bad slot 7")


def test_friendly_line_and_soft_reset(dev) -> None:
    assert dev.repl.line("x = 6 * 7") == ""
    assert dev.repl.line("print(x)") == "42"
    dev.repl.soft_reset()
    with pytest.raises(DeviceError, match="NameError"):
        dev.repl.exec("print(x)")


def test_waking_a_board_that_is_still_starting_types_nothing_until_micropython_is_up(
    qemu, fw, build_image, tmp_path, monkeypatch
) -> None:
    """A byte on UART0 before MicroPython is up crashes v1.27.0 and v1.28.0 under this QEMU
    (LoadProhibited), and their start-up is silent for longer than wake's 1 s retry: a
    reset board must be left to start, whatever the silence."""
    image = build_image(fw("20260406-v1.28.0"), "4MB")
    options = BootOptions(policy.for_image(image), qemu=qemu, artifacts=tmp_path)
    with device.boot(image, options) as d:
        d.repl.wait_prompt(30)
        sent: list[tuple[bool, bytes]] = []
        send = d.console.send

        def spy(data: bytes | str, during: str = "sending to the device") -> None:
            sent.append((bool(d.console.log.resets_since_up), bytes(data, "latin-1")
                         if isinstance(data, str) else data))  # fmt: skip
            send(data, during)

        monkeypatch.setattr(d.console, "send", spy)
        d.start_reset("hard")
        d.console.expect(RESET_BANNER, 10, during="the reset")
        d.repl.forget_state()
        d.repl.wake()
        assert [data for starting, data in sent if starting] == []
        assert d.running_partition() == "factory"
        assert "Guru Meditation" not in "\n".join(d.console.log.lines)
