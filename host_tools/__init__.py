"""Host-side tools for azprov: emulator, build, deploy, flash and test helpers (CPython)."""

__version__ = "0.1.0"
