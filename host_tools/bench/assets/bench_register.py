# Bench entry, copied into a device folder by host_tools/bench/device.py (MicroPython only, not firmware).
# Registration only: the supervisor's steps of a one-shot run up to and including `provision` (config, link, clock,
# provision: one DPS connection per attempt, azprov.policy deciding every wait), then stop. No gateway connection.
# This is what the CPU comparison with the official Azure SDK's ProvisioningDeviceClient times, and what the
# fleet-driver check runs on real devices.
import sys
import time

from azprov import config, log
from azprov.errors import ProvisioningError
from azprov.supervisor import ONE_SHOT, STEPS, Supervisor

_PROVISION = STEPS.index("provision")


def _register(path):
    try:
        cfg = config.load(path)
        log.set_level(cfg["log_level"])
        started = time.ticks_ms()
        supervisor = Supervisor(path, ONE_SHOT, config=cfg)
        # Supervisor.ready(), stopped after the provision step.
        while supervisor.index <= _PROVISION:
            supervisor._wait_for_retry(None)
            name = STEPS[supervisor.index]
            try:
                getattr(supervisor, "_" + name)()
            except Exception as exc:
                supervisor.failed(exc, name)  # raises when the one-shot stop rule says so
                continue
            supervisor.index += 1
        elapsed_ms = time.ticks_diff(time.ticks_ms(), started)
    except ProvisioningError as exc:
        print("azprov-bench register status=failed kind=%s" % exc.kind)
        return 1
    device_id = supervisor.state["assignment"]["device_id"]
    print("azprov-bench register status=assigned device_id=%s wall_ms=%d" % (device_id, elapsed_ms))
    return 0


sys.exit(_register(sys.argv[1] if len(sys.argv) > 1 else "provisioning.json"))
