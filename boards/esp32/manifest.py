# Freeze azprov and umqtt.simple into a custom MicroPython firmware for ESP32 boards.
#
#   cd micropython/ports/esp32
#   make BOARD=ESP32_GENERIC FROZEN_MANIFEST=/path/to/azprov/boards/esp32/manifest.py
#
# Frozen modules run from flash: their bytecode and constants take no heap. Relative paths are relative to this file.

# Everything the official build freezes (including umqtt.simple, umqtt.robust, ntptime).
include("$(PORT_DIR)/boards/manifest.py")

# The firmware package, from this repository's firmware/ folder.
package("azprov", base_path="../../firmware")

# Named again so a port manifest without it still gets it (a manifest already included is not read twice).
require("umqtt.simple")
