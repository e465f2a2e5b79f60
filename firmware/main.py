# Device entry point (ESP32 boot runs it after boot.py; on the Unix port: micropython main.py [provisioning.json]).
# On a board the run loop never gives up (azprov/runloop.py); on the Unix port one pass ends with an exit status
# unless the provisioning file sets "run_loop": true.
import sys

from azprov.runloop import main

_argv = getattr(sys, "argv", None) or []
_status = main(_argv[1] if len(_argv) > 1 else "provisioning.json")
if sys.platform == "linux":
    sys.exit(_status)
