# Bench wrapper, copied into a device folder by host_tools/bench/device.py (MicroPython only, not firmware).
# Runs the telemetry-only flow (provision or cached assignment -> gateway -> telemetry; no twin, methods or C2D:
# azprov.hub and azprov.client are never imported), so the bench can put its heap floor beside the default
# application's (main.py, every hub feature on).
import sys

from azprov.supervisor import main

sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "provisioning.json", hub_features=False))
