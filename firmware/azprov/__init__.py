# azprov: provision a MicroPython device into Azure IoT through DPS over MQTT, store the trust bundle,
# and talk to the IoT Edge gateway it vouches for. Submodules import lazily: import only what you use.
__version__ = "0.1.0"
