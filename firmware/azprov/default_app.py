# The default application: what a device with no code of its own does once provisioned. It sends telemetry every
# `telemetryIntervalSeconds` (a writable property, acknowledged the IoT Plug and Play way), reports what it runs,
# answers the direct method `ping`, and logs each cloud-to-device message.
import gc
import json
import time

from micropython import const

import azprov
from azprov import log
from azprov.errors import ProvisioningError

INTERVAL_PROPERTY = "telemetryIntervalSeconds"
_MAX_INTERVAL_S = const(86400)


class DefaultApp:
    def __init__(self, client):
        self.client = client
        self.interval_s = client.config["telemetry_interval_s"]
        self.pending = {}  # reported properties still to send (acknowledgements of desired ones)
        self.reported_info = False
        client.on_desired(self.on_desired)
        client.on_method("ping", self.ping)
        client.on_c2d(self.on_c2d)

    def on_desired(self, patch, version):
        if INTERVAL_PROPERTY not in patch:
            return
        value = patch[INTERVAL_PROPERTY]
        if value is None:
            return  # the property was removed: keep the interval in use
        if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= _MAX_INTERVAL_S:
            self.interval_s = value
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

    def flush_reports(self):
        client = self.client
        if not self.reported_info:
            state = client.store.load()
            bundle = state["trust_bundle"] if state else None
            gc.collect()
            info = {"version": azprov.__version__, "heapFree": gc.mem_free(), "bundleEtag": bundle and bundle["etag"]}
            client.report({"azprov": info})
            self.reported_info = True
            log.info("reported", ("name", "azprov"))
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


def serve(client):
    """Runs the default application until `telemetry_count` messages were sent (0: forever); returns 0."""
    from azprov.app import _telemetry_payload, done, telemetry_count

    app = DefaultApp(client)
    cfg = client.config
    count = telemetry_count(cfg)
    sequence = 0
    last_sent = None
    client.connect()
    try:
        while not count or sequence < count:
            now = time.ticks_ms()
            due_in = 0 if last_sent is None else time.ticks_diff(time.ticks_add(last_sent, app.interval_s * 1000), now)
            client.poll(max(0, min(due_in, 1000)))  # handlers run here (a new interval applies at once)
            try:
                if client.connected or due_in <= 0:
                    app.flush_reports()
                if due_in > 0:
                    continue
                client.send(
                    _telemetry_payload(cfg, sequence), content_type="application/json", content_encoding="utf-8"
                )
            except ProvisioningError as exc:
                client.recover(exc)
                continue
            last_sent = time.ticks_ms()
            client.failures = 0
            log.info("telemetry_acknowledged", ("device_id", client.device_id), ("sequence", sequence))
            sequence += 1
    finally:
        client.close()
    done(client, sequence, client.store)
    return 0
