# The device's flow as steps for the run loop (azprov.runloop): provisioning file -> Wi-Fi -> clock -> (cached
# assignment | DPS registration) -> gateway -> telemetry for ever (or `telemetry_count` messages). A failure names
# the step to start again from: the one that failed, the Wi-Fi when the link is down, DPS when the gateway refuses
# the cached credentials or certificate. Nothing is re-registered for a network outage. The application is the
# default one (azprov.default_app) on an azprov.client.Client, as in a one-shot run.
import gc
import sys
import time

from micropython import const

from azprov import errors, log, watchdog

# Re-registration fixes these gateway failures when the assignment or trust bundle came from the cache.
_STALE_KINDS = (errors.AUTHENTICATION, errors.TLS_VERIFICATION, errors.STORAGE)
_NETWORK_KINDS = (errors.NETWORK, errors.TIMEOUT)
_LINK_CHECK_MS = const(1000)
_HEAP_SAMPLE_EVERY = const(100)


class Flow:
    steps = ("config", "link", "clock", "provision", "connect", "telemetry")

    def __init__(self, path, config=None, make_payload=None):
        self.path = path
        self._loaded = config  # a provisioning file main() has already read
        self.config = None
        self.store = None
        self.link = None
        self.state = None
        self.fresh = False
        self.reprovision = False
        self.client = None  # azprov.client.Client over the gateway connection
        self.app = None  # azprov.default_app.DefaultApp: the handlers
        self.sequence = 0
        self.acknowledged = 0
        self._interval_done = False  # the telemetry interval before `sequence` has passed (not again on a retry)
        self._make_payload = make_payload

    def run_step(self, name):
        log.debug("step", ("name", name))
        return getattr(self, "_" + name)()

    # --- steps

    def _config(self):
        if self.config is not None:
            return False
        from azprov import config
        from azprov.app import release
        from azprov.link import Link
        from azprov.store import Store

        cfg = self._loaded or config.load(self.path)
        self._loaded = config = None
        release("config")
        log.set_level(cfg["log_level"])
        log.info("config_loaded", ("registration_id", cfg["registration_id"]), ("dps_host", cfg["dps_host"]))
        self.config = cfg
        self.store = Store(cfg["storage_dir"])
        self.link = Link(cfg)
        self.reprovision = cfg["force_reprovision"]
        return False

    def _link(self):
        self.link.up()
        return False

    def _clock(self):
        from azprov.clock import require_set_clock

        self.link.sync_clock()
        require_set_clock()
        return False

    def _provision(self):
        from azprov import app

        if self.state is not None and not self.reprovision:
            return False
        if self.reprovision:
            log.info("reprovision_requested")
            state, fresh = app.provision(self.config, self.store), True
        else:
            state, fresh = app.assigned_state(self.config, self.store)
        if fresh:
            self.fresh = True
        self.state = state
        self.reprovision = False
        self._close_gateway()
        return False

    def _connect(self):
        if self.client is None:
            from azprov import app
            from azprov.client import Client
            from azprov.default_app import DefaultApp

            # No reprovision callback: a refused cached assignment comes back here through recover().
            client = Client(app._gateway(self.config, self.store, self.state))
            client.config = self.config
            client.store = self.store
            self.app = DefaultApp(client)  # telemetry, twin, the `ping` method, C2D
            self.client = client
        gateway = self.client.gateway
        if gateway.client is None:
            watchdog.feed()
            gateway.connect()  # subscribes and reads the twin (Client.after_connect)
            watchdog.feed()
        return False

    def _telemetry(self):
        from azprov.app import _telemetry_payload, telemetry_count

        cfg = self.config
        client, application = self.client, self.app
        count = telemetry_count(cfg, looping=True)  # 0: until power-off
        payload = self._make_payload or _telemetry_payload
        while not count or self.sequence < count:
            self._watch()
            if self.sequence and not self._interval_done:
                self._serve(application.interval_s * 1000)  # the interval a desired property may change
            self._interval_done = True
            if client.connected:
                client.gateway.renew_if_due()
            application.flush_reports()
            watchdog.feed()
            client.send(payload(cfg, self.sequence), content_type="application/json", content_encoding="utf-8")
            log.info("telemetry_acknowledged", ("device_id", client.device_id), ("sequence", self.sequence))
            self.sequence += 1
            self.acknowledged += 1
            self._interval_done = False
            self.fresh = False  # the gateway accepted this assignment: a later refusal asks DPS again
            if not self.acknowledged % _HEAP_SAMPLE_EVERY:
                self._heap_sample()
        from azprov.app import done

        done(client, self.sequence, self.store)
        self._close_gateway()
        return True

    def _heap_sample(self):
        gc.collect()
        gateway = self.client.gateway
        log.info(
            "heap_sample",
            ("free", gc.mem_free()),
            ("allocated", gc.mem_alloc()),
            ("modules", len(sys.modules)),
            ("acknowledged", self.acknowledged),
            ("connections", gateway.connections),
            ("renewals", gateway.renewals),
        )

    def _watch(self):
        """Between messages: the Wi-Fi must still be up; the clock is re-synced when a day has passed."""
        watchdog.feed()
        self.link.check()
        if self.link.clock_due():
            self.link.sync_clock()

    def _serve(self, ms):
        """The telemetry interval: handlers served, the connection kept alive (pings, token renewal), the link
        watched."""
        end = time.ticks_add(time.ticks_ms(), ms)
        while True:
            remaining = time.ticks_diff(end, time.ticks_ms())
            if remaining <= 0:
                return
            watchdog.feed()
            self.link.check()
            self.client.poll(min(remaining, _LINK_CHECK_MS))

    # --- failures

    def _close_gateway(self):
        if self.client is not None:
            self.client.close()
            self.client = self.app = None

    def recover(self, exc, step):
        """Cleans up after a failed step and returns the step to start again from."""
        if step in ("connect", "telemetry"):
            if exc.kind in _STALE_KINDS:
                if self.fresh:
                    # Just assigned by DPS and refused anyway: asking DPS at once would get the same answer. Try
                    # the gateway once more after the wait; a second refusal asks DPS again.
                    self.fresh = False
                else:
                    # The cached assignment or trust bundle may be out of date: DPS knows the current ones.
                    log.warning("reprovisioning", ("reason", exc.kind))
                    self._close_gateway()
                    self.reprovision = True
                    return "provision"
            if self.client is not None and self.client.connected:
                from azprov import transport

                transport.close(self.client.gateway.client)
                self.client.gateway.client = None
        if self.config is None:
            return "config"
        if exc.kind in _NETWORK_KINDS and step not in ("config", "link") and not self.link.connected():
            self._close_gateway()
            return "link"
        if step == "telemetry":
            return "connect"
        return step


def _payload(cfg, sequence):
    from azprov.app import _telemetry_payload

    return _telemetry_payload(cfg, sequence)
