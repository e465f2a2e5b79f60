# Device entry point (ESP32 boot runs it after boot.py; on the Unix port: micropython main.py [provisioning.json]).
import sys

from azprov.app import main

_argv = getattr(sys, "argv", None) or []
_status = main(_argv[1] if len(_argv) > 1 else "provisioning.json")
if sys.platform == "linux":
    sys.exit(_status)
