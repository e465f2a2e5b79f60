# Bench entry, copied into a device folder by host_tools/bench/device.py (MicroPython only, not firmware).
# Registration only, nothing else: load the provisioning file, Session(cfg).register(). No gateway, no flash
# write. This is what the CPU comparison with the official Azure SDK's ProvisioningDeviceClient times.
import sys
import time

from azprov import config, log
from azprov.errors import ProvisioningError
from azprov.provision import Session


def _register(path):
    try:
        cfg = config.load(path)
        log.set_level(cfg["log_level"])
        started = time.ticks_ms()
        state = Session(cfg).register()
        elapsed_ms = time.ticks_diff(time.ticks_ms(), started)
    except ProvisioningError as exc:
        print("azprov-bench register status=failed kind=%s" % exc.kind)
        return 1
    print("azprov-bench register status=assigned device_id=%s wall_ms=%d" % (state["deviceId"], elapsed_ms))
    return 0


sys.exit(_register(sys.argv[1] if len(sys.argv) > 1 else "provisioning.json"))
