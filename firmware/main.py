# Device entry point (ESP32 boot runs it after boot.py; on the Unix port: micropython main.py [provisioning.json]).
# The supervisor (azprov/supervisor.py) drives the default application. On a board it never gives up; on the Unix
# port one run ends with an exit status (0: telemetry_count messages sent, 1: a failure that needs a person) unless
# the provisioning file sets "run_loop": true.
import sys

from azprov.supervisor import main

_argv = getattr(sys, "argv", None) or []
_status = main(_argv[1] if len(_argv) > 1 else "provisioning.json")
if sys.platform == "linux":
    sys.exit(_status)
