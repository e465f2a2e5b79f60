"""`make bench`: every measurement of speed and memory, and its report.

command.py     the `bench` command: runs each measurement, prints one table, writes results.json and the chart
device.py      device runs on the Unix port: heap floor, heap per step and module, cached boot
floors.py      heap floors by runtime and flow (the FLOORS table), import cost and TLS heap per runtime
driven.py      flows the host drives while the device runs (the big messages through the service API)
cpu.py         CPU per registration, firmware vs the official Azure SDK (sdk_child.py is the SDK's side); key
               generation + CSR time
fleet.py       the fleet measurement around fleet_driver.py (N simulated devices in one asyncio loop)
report.py      targets, verdicts and tables
chart.py       bench/chart.png
assets/        MicroPython scripts copied into a device folder for a measurement
"""
