# Freeze azprov and umqtt.simple into a MicroPython Unix port (the ESP32 proxy the tests and the bench run on).
#
#   make -C micropython/ports/unix FROZEN_MANIFEST=/path/to/azprov/boards/unix/manifest.py
#
# The same shape as boards/esp32/manifest.py. Frozen modules run from the binary's read-only data: their bytecode and
# constants take no heap, as on a board's flash. Relative paths are relative to this file.

# What the stock ESP32 image freezes (ssl, umqtt.simple) on top of the Unix port's standard variant.
include("manifest_stock.py")

# The firmware package, from this repository's firmware/ folder (main.py stays on the filesystem, as on a board).
package("azprov", base_path="../../firmware")
