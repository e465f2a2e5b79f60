# Stand-in for a board's `machine` module on the Unix port (tests only). The host test harness plays the hardware
# around it (tests/runloop_board.py): it watches the watchdog's heartbeat file and kills and restarts the process
# when the heartbeat stops, as a hardware watchdog resets the chip; reset() and deepsleep() end the process at once
# (nothing after them runs, as on a board) and the harness powers it on again with the reset cause set.
import os
import time

PWRON_RESET = 1
HARD_RESET = 2
WDT_RESET = 3
DEEPSLEEP_RESET = 4
SOFT_RESET = 5
# An ESP32 reports machine.reset() (esp_restart) as a soft reset.
_CAUSES = {"power_on": PWRON_RESET, "reset": SOFT_RESET, "watchdog": WDT_RESET, "deep_sleep": DEEPSLEEP_RESET}
_HEARTBEAT_EVERY_MS = 100


def _write(name, text):
    with open(name, "w") as f:
        f.write(text)


def _halt(marker):
    print(marker)
    os.system("kill -9 $PPID")  # the shell's parent is this process: a hard stop, no finally blocks run
    while True:
        time.sleep(1)


def reset_cause():
    try:
        with open("machine.reset_cause") as f:
            return _CAUSES.get(f.read().strip(), PWRON_RESET)
    except OSError:
        return PWRON_RESET


class WDT:
    def __init__(self, id=0, timeout=5000):
        self.timeout = timeout
        self._last = time.ticks_ms()
        _write("machine.wdt", str(timeout))
        print("STANDIN machine.WDT timeout=%d" % timeout)

    def feed(self):
        now = time.ticks_ms()
        if time.ticks_diff(now, self._last) >= _HEARTBEAT_EVERY_MS:
            self._last = now
            _write("machine.wdt", str(self.timeout))


def reset():
    _halt("STANDIN machine.reset")


def deepsleep(ms=0):
    _halt("STANDIN machine.deepsleep ms=%d" % ms)


class RTC:
    # RTC memory survives resets and deep sleep (the harness keeps the file; a power-on clears it).
    def memory(self, data=None):
        if data is None:
            try:
                with open("machine.rtc", "rb") as f:
                    return f.read()
            except OSError:
                return b""
        with open("machine.rtc", "wb") as f:
            f.write(data)


def idle():
    time.sleep_ms(1)
