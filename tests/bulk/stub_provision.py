# Stands in for azprov.provision (the MQTT shell) inside tests/bulk/driver.py: app.provision() gets the
# registrationState that the real protocol core (azprov.dps.Registration) accepted from the case's messages, so
# everything after the network (log lines, bundle.parse, Store.save, Store.load) runs as on the device.
# The driver copies the real module's other functions (read_text) onto this one. The stand-in never streams: the
# certificates come from the accepted registrationState as they do for answers below the streaming threshold (the
# streamed path has its own tests: tests/test_large_bundle.py and tests/device/test_bundle.py).


class Session:
    result = None  # set by the driver before each app.provision() call
    calls = 0

    def __init__(self, config, client_version="azprov/bulk", bundle_sink=None):
        self.config = config
        self.connections = 0
        self.streamed = None

    def register(self):
        Session.calls += 1
        return Session.result
