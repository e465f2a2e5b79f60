# What the stock ESP32 image from micropython.org freezes and the firmware uses, for the Unix port's plain runtimes
# (unix32, unix64: azprov itself runs from .mpy files there, as on a stock board):
#
#   make -C micropython/ports/unix FROZEN_MANIFEST=/path/to/azprov/boards/unix/manifest_stock.py
#
# The stock image freezes ssl and umqtt.simple 1.8.0 (../shared/reference/micropython-platform.md): on a board they
# take no heap, and a board measured without them would count ~3 KB of umqtt bytecode no stock board holds in RAM.

# Everything the Unix port's standard variant freezes (its ssl wrapper, asyncio).
include("$(PORT_DIR)/variants/standard/manifest.py")

# The MQTT client the firmware uses, from the micropython-lib inside the MicroPython source tree.
require("umqtt.simple")
