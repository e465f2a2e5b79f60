"""Everything that puts the firmware on a board and runs it there.

build.py         compile firmware/ to .mpy (mpy-cross) in the device image layout, with a size table
umqtt_fetch.py   fetch the pinned umqtt.simple the firmware needs
runtimes.py      the MicroPython binaries: the PyPI wheel and the Unix ports built from source (`make runtimes`)
unix_port.py     the MicroPython Unix port: find the binary, stage a flash folder, `run-unix`
harness.py       the emulator and a Unix-port device driven together (demo, tests, bench)
deploy.py        copy a build and a provisioning file to a board with mpremote (`deploy`)
flash.py         write a MicroPython image to an ESP32 with esptool (`flash`)
monitor.py       the board's serial console (`monitor`)
flash_image.py   littlefs flash image files (`virtual-board image-*`)
virtual_board.py the Unix port behind a pty, driven by the real mpremote (`virtual-board run`)
device_tests.py  run tests/device on a board and tabulate the results (`test-device`)
"""
