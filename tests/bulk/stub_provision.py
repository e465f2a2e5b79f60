# Stands in for azprov.provision (the MQTT shell) inside tests/bulk/driver.py: app.provision() gets the
# registrationState that the real protocol core (azprov.dps.Registration) accepted from the case's messages, so
# everything after the network (log lines, bundle.parse, Store.save, Store.load) runs as on the device.
# The driver copies the real module's other functions (read_text) onto this one.


class Session:
    result = None  # set by the driver before each app.provision() call
    calls = 0

    def __init__(self, config, client_version="azprov/bulk"):
        self.config = config
        self.connections = 0

    def register(self):
        Session.calls += 1
        return Session.result
