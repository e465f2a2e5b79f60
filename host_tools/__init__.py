"""Host-side tools for azprov (CPython): `python -m host_tools` / `azprov`. One package per concern:

cli.py          the one place that maps command names to commands
demo.py         `make run`: the whole product end to end on this machine
secret_files.py write files that hold a secret: mode 0600, in a folder others cannot write to
emulator/       the local DPS + IoT Edge gateway emulator (`emulator`)
provisioning/   provisioning files, their schema, fleets of them, PKI (`provision-file`, `fleet`, `pki`)
board/          build, the MicroPython runtimes, deploy, flash, monitor, the virtual board, on-board tests
bench/          `make bench`: every measurement, its drivers, report and chart
"""

__version__ = "0.1.0"
