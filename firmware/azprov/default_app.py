# The default application: what a device with no code of its own does once provisioned. It sends telemetry every
# `telemetryIntervalSeconds` (a writable property, acknowledged the IoT Plug and Play way), reports what it runs,
# answers the direct method `ping`, and logs each cloud-to-device message.
import gc
import json

from micropython import const

import azprov
from azprov import log
from azprov.errors import ProvisioningError

INTERVAL_PROPERTY = "telemetryIntervalSeconds"
_MAX_INTERVAL_S = const(86400)


class DefaultApp:
    """The application the supervisor runs (azprov.supervisor.Supervisor.run) on a Client."""

    def __init__(self, client):
        self.client = client
        self._interval_s = None  # set by the desired property; until then the provisioning file's
        self.pending = {}  # reported properties still to send (acknowledgements of desired ones)
        self.reported_info = False
        self.reported_certificate = None  # the not_after of the issued certificate last reported
        client.on_desired(self.on_desired)
        client.on_method("ping", self.ping)
        client.on_c2d(self.on_c2d)

    @property
    def interval_s(self):
        if self._interval_s is None:
            return self.client.config["telemetry_interval_s"]
        return self._interval_s

    def on_desired(self, patch, version):
        if INTERVAL_PROPERTY not in patch:
            return
        value = patch[INTERVAL_PROPERTY]
        if value is None:
            return  # the property was removed: keep the interval in use
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_INTERVAL_S:
            self._interval_s = value
            status = 200
            log.info("telemetry_interval_changed", ("seconds", value), ("version", version))
        else:
            status = 400
            log.warning("desired_property_rejected", ("name", INTERVAL_PROPERTY), ("version", version))
        self.pending[INTERVAL_PROPERTY] = {"value": value, "ac": status, "av": version}

    def ping(self, payload):
        return 200, {"pong": payload}

    def on_c2d(self, body, properties):
        log.info("c2d_received", ("size", len(body)), ("properties", json.dumps(properties)))

    # --- what the supervisor's telemetry loop calls

    def before_send(self):
        """Reports what the device runs once, and the acknowledgements of desired properties."""
        client = self.client
        if not self.reported_info:
            state = client.supervisor.state
            bundle = state["trust_bundle"] if state else None
            gc.collect()
            info = {"version": azprov.__version__, "heapFree": gc.mem_free(), "bundleEtag": bundle and bundle["etag"]}
            client.report({"azprov": info})
            self.reported_info = True
            log.info("reported", ("name", "azprov"))
        state = client.supervisor.state
        issued = state.get("identity") if state else None
        if issued is not None and issued["not_after"] != self.reported_certificate:
            # As the certificate issuance preview asks devices to report what they authenticate with.
            from azprov.clock import iso_utc

            client.report(
                {
                    "certificate": {
                        "validFrom": iso_utc(issued["not_before"]),
                        "validUntil": iso_utc(issued["not_after"]),
                    }
                }
            )
            self.reported_certificate = issued["not_after"]
            log.info("reported", ("name", "certificate"))
        if self.pending:
            patch = self.pending
            self.pending = {}
            try:
                client.report(patch)
            except ProvisioningError:
                for name in patch:  # sent again after the reconnect, unless a newer value replaced it
                    self.pending.setdefault(name, patch[name])
                raise
            log.info("reported", ("name", ",".join(patch)))

    def send(self, payload):
        self.client.publish_telemetry(payload, None, {"content_type": "application/json", "content_encoding": "utf-8"})

    def wait(self, ms):
        self.client.serve(ms)
