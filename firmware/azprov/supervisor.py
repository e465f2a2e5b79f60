# The supervisor: the one driver of every run, on a board, on the Unix port and under an application's own loop.
#
#   boot -> config -> link -> clock -> provision -> connect -> serve
#
# It runs the steps in order. After any failure it asks the retry policy (azprov.policy) what to do, logs the answer
# once as `retry_scheduled`, closes what the failure left open and starts again at the step the policy names: the
# same step, `link` when the Wi-Fi is down, `connect` after a gateway failure, `provision` to register again (a
# cached assignment or bundle the gateway refuses, or `max_gateway_failures` in a row). Only the stop rule differs:
# a board never stops (errors that need a person wait at the cap; after `reset_after_failures` the board resets);
# an application (azprov.connect) is handed the errors that need a person; a one-shot run on the Unix port also
# stops once failures have gone on for `registration_timeout_s`. Clock, randomness and the machine are passed in.
import gc
import json
import sys

from micropython import const

from azprov import errors, log, release, watchdog
from azprov.errors import ProvisioningError

STEPS = ("config", "link", "clock", "provision", "connect", "serve")
_CONNECT = const(4)
_SERVE = const(5)
_GATEWAY_STEPS = ("connect", "serve")
_LINK_CHECK_MS = const(1000)
_HEAP_SAMPLE_EVERY = const(100)

# Stop rules.
BOARD = 0  # never stops
APPLICATION = 1  # raises the errors that need a person
ONE_SHOT = 2  # the same, and stops once failures have lasted registration_timeout_s

_RTC_MAGIC = "azprov1"
_RESET_CAUSES = (
    ("PWRON_RESET", "power_on"),
    ("HARD_RESET", "hard"),
    ("WDT_RESET", "watchdog"),
    ("DEEPSLEEP_RESET", "deep_sleep"),
    ("SOFT_RESET", "soft"),
)


def _machine():
    try:
        import machine

        return machine
    except ImportError:
        return None


def reset_cause(machine):
    if machine is None or not hasattr(machine, "reset_cause"):
        return "unknown"
    cause = machine.reset_cause()
    for name, text in _RESET_CAUSES:
        if getattr(machine, name, None) == cause:
            return text
    return str(cause)


def _rtc_memory(machine, data=None):
    # RTC memory survives resets and deep sleep (not power cuts): the backoff carries on where it was.
    try:
        rtc = machine.RTC()
        if data is None:
            return rtc.memory()
        rtc.memory(data)
    except Exception:  # a port without RTC memory: the count starts again after a reset
        return None


def _classified(exc, step):
    if isinstance(exc, ProvisioningError):
        return exc
    if isinstance(exc, MemoryError):
        gc.collect()
        return ProvisioningError(
            errors.OUT_OF_MEMORY, "%s: the heap is too small for this step (%d bytes free)" % (step, gc.mem_free())
        )
    # A bug must not end a field device's life either: report it, wait, try again.
    return ProvisioningError(errors.INTERNAL, "%s: %s: %s" % (step, type(exc).__name__, exc))


def telemetry_count(cfg, looping=False):
    """Messages to send (0: until power-off); unset, a board never stops and a one-shot run sends one."""
    count = cfg["telemetry_count"]
    if count is None:
        return 0 if looping else 1
    return count


def telemetry_payload(cfg, sequence):
    return json.dumps(
        {
            "registrationId": cfg["registration_id"],
            "sequence": sequence,
            "heapFree": gc.mem_free(),
            "uptimeMs": _uptime_ms(),
        }
    )


def _uptime_ms():
    import time

    return time.ticks_ms()


class TelemetryApp:
    """The telemetry-only application: no twin, methods or C2D (and none of their code loaded); for a plain MQTT
    broker, which serves no twin."""

    def __init__(self, supervisor):
        self.supervisor = supervisor

    @property
    def interval_s(self):
        return self.supervisor.config["telemetry_interval_s"]

    def before_send(self):
        pass

    def send(self, payload):
        self.supervisor.gateway.send(payload)

    def wait(self, ms):
        self.supervisor.gateway.wait(ms)


class Supervisor:
    def __init__(self, path="provisioning.json", stop=ONE_SHOT, clock=None, machine=None, config=None):
        if clock is None:
            from azprov.clock import Clock

            clock = Clock()
        self.path = path
        self.stop = stop
        self.clock = clock
        self.machine = machine if machine is not None else _machine()
        self._loaded = config  # a provisioning file main() has already read
        self.config = None
        self.store = None  # azprov.store.Store while the device provisions (see _provisioned)
        self.pem_path = None  # the stored trust bundle, for the gateway's TLS context
        self.flash_writes = 0  # files written by the stores of this run: how tests and the bench see "no write"
        self.link = None
        self.state = None  # the stored assignment and trust bundle (azprov.store)
        self.fresh = False  # the assignment came from DPS and no gateway has refused it yet
        self.reregister = False
        self.provisioner = None
        self.gateway = None
        self.listener = None  # azprov.client.Client, attached to every gateway
        self.index = 0
        self.failures = 0  # in a row since the last useful work; carried over a reset in RTC memory
        self.boot_failures = 0  # the same, since this boot
        self.gateway_failures = 0
        self.since = clock.ticks_ms()  # the last useful work (or boot)
        self.retry_at = None
        self._reset_due = False
        self._watchdog_tried = False
        self.sequence = 0  # telemetry messages acknowledged
        self.dps_connections = 0
        self._interval_done = False
        self._boot_record()

    def _settings(self):
        if self.config is not None:
            return self.config
        from azprov.config import defaults  # the file cannot be read yet: its defaults

        return defaults()

    # --- driving the steps

    def ready(self, budget_ms=None, until=_SERVE):
        """Runs the steps until the gateway connection is up; True when it is. With `budget_ms`, returns False
        instead of waiting longer than that for a retry the policy scheduled. `until` set to the connect step's index
        stops once the device is provisioned: main() loads the hub code only then."""
        while True:
            if self.index >= until and until < _SERVE:
                return True
            if self.index == _SERVE:
                if self._renewal_due():
                    self._renew_identity()
                elif self.gateway is not None and self.gateway.connected:
                    return True
                else:
                    self.index = _CONNECT
            if not self._wait_for_retry(budget_ms):
                return False
            name = STEPS[self.index]
            self._feed_watchdog()
            log.debug("step", ("name", name))
            try:
                getattr(self, "_" + name)()
            except Exception as exc:
                self.failed(exc, name)
                continue
            self.index += 1

    def attempt(self, op, step="serve"):
        """Runs `op` on a connected gateway until it succeeds (its result), asking the policy after each failure."""
        while True:
            self.ready()
            try:
                result = op()
            except Exception as exc:
                self.failed(exc, step)
                continue
            self.progress()
            return result

    def progress(self):
        """Useful work was done: the failure counts start again."""
        if self.failures:
            self._forget()  # RTC memory is written only when a count was carried, not for every message
        self.failures = self.boot_failures = self.gateway_failures = 0
        self.since = self.clock.ticks_ms()
        self.fresh = False  # the gateway accepted this assignment: a later refusal asks DPS again

    def failed(self, exc, step):
        """Asks the policy what to do after `exc` at `step`, and prepares it; raises when the stop rule says so."""
        if getattr(exc, "judged", False):
            raise exc  # already judged final by an inner attempt
        error = _classified(exc, step)
        from azprov import policy  # loaded at the first failure only: a run that never fails never holds it

        self.failures += 1
        self.boot_failures += 1
        gateway_step = step in _GATEWAY_STEPS
        if gateway_step:
            self.gateway_failures += 1
        clock = self.clock
        decision = policy.decide(
            error.kind,
            self.failures,
            error.retry_after,
            self._settings(),
            clock.random(),
            clock.ticks_diff(clock.ticks_ms(), self.since),
            step,
            self.gateway_failures,
            self.fresh,
            self.link is None or self.link.connected(),
            self.boot_failures,
        )
        if gateway_step and error.kind in policy.STALE:
            self.fresh = False  # refused once: a second refusal asks DPS again
        if (self.stop != BOARD and decision.final) or (self.stop == ONE_SHOT and decision.over_budget):
            error.judged = True
            self._drop_connection()
            self._close_dps()
            raise error
        restart = decision.restart if self.config is not None else "config"
        if decision.action == policy.REREGISTER:
            log.warning("reprovisioning", ("reason", error.kind), ("failures", self.gateway_failures))
            self.reregister = True
            self.gateway_failures = 0
        index = STEPS.index(restart)
        if restart != "provision" or decision.action != policy.RETRY:
            # A DPS connection is held across the wait only to resume the same registration on it.
            self._close_dps()
        if index <= _CONNECT:
            self._drop_connection()
        if index < _CONNECT:
            self._close_gateway()
        self.index = index
        self._schedule(error, step, restart, decision)

    def _schedule(self, error, step, restart, decision):
        from azprov import policy

        wait = decision.wait_ms
        action = decision.action
        pairs = [("step", step), ("reason", error.kind), ("in_s", "%d.%d" % (wait // 1000, wait % 1000 // 100))]
        now = self.clock.unix_time()
        from azprov.clock import RELEASED

        if now >= RELEASED:
            pairs.append(("at", now + (wait + 999) // 1000))
        pairs += [
            ("failures", self.boot_failures),
            ("restart", restart),
            ("action", action),
            ("message", error.message),
        ]
        log.warning("retry_scheduled", *pairs)
        machine = self.machine
        if action in (policy.RESET, policy.DEEP_SLEEP):
            self._remember()
        if action == policy.DEEP_SLEEP and machine is not None and hasattr(machine, "deepsleep"):
            # On a board this does not return: the chip wakes through a reset and main.py starts again, with the
            # assignment cached in flash and the backoff carried in RTC memory.
            machine.deepsleep(wait)
        self.retry_at = self.clock.ticks_add(self.clock.ticks_ms(), wait)
        self._reset_due = action == policy.RESET

    def _wait_for_retry(self, budget_ms):
        if self.retry_at is None:
            return True
        clock = self.clock
        early = clock.ticks_diff(self.retry_at, clock.ticks_ms())
        if early > 0:
            if budget_ms is not None and early > budget_ms:
                if budget_ms:
                    self._sleep(budget_ms)
                return False
            self._sleep(early)
        self.retry_at = None
        if self._reset_due:
            self._reset_due = False
            log.error("board_reset", ("failures", self.boot_failures))
            machine = self.machine
            if machine is not None and hasattr(machine, "reset"):
                machine.reset()
            self.boot_failures = 0  # a port that cannot reset: carry on counting from zero
        return True

    def _sleep(self, ms):
        """Sleeps `ms`. A DPS connection held across the wait (the service answered 429/5xx) is pinged whenever its
        keepalive falls due, so the next attempt finds it open."""
        provisioner = self.provisioner
        while provisioner is not None and provisioner.connection is not None:
            due = provisioner.ms_to_ping()
            if due >= ms:
                break
            self.clock.sleep_ms(due)
            ms -= due
            provisioner.keep_alive()
        self.clock.sleep_ms(ms)

    def _feed_watchdog(self):
        if self.config is not None and not self._watchdog_tried:
            self._watchdog_tried = True  # tried once: a port without one says so once
            watchdog.start(self.config["watchdog_timeout_s"])
        watchdog.feed()

    # --- RTC memory: the backoff survives a reset or deep sleep

    def _boot_record(self):
        cause = reset_cause(self.machine)
        carried = 0
        raw = _rtc_memory(self.machine) if self.machine is not None else None
        if raw:
            try:
                record = json.loads(raw)
                if record.get("m") == _RTC_MAGIC:
                    carried = int(record.get("f", 0))
            except (ValueError, TypeError, AttributeError):
                carried = 0
        self.failures = carried
        if self.stop == BOARD:
            log.info("run_loop_started", ("reset_cause", cause), ("carried_failures", carried))

    def _remember(self):
        if self.machine is not None:
            _rtc_memory(self.machine, json.dumps({"m": _RTC_MAGIC, "f": self.failures}).encode())

    def _forget(self):
        if self.machine is not None and self.stop == BOARD:
            _rtc_memory(self.machine, b"")

    # --- the steps

    def _config(self):
        from azprov import config
        from azprov.link import Link

        cfg = self._loaded or config.load(self.path)
        self._loaded = config = None
        release("config")
        log.set_level(cfg["log_level"])
        log.info(
            "config_loaded",
            ("registration_id", cfg["registration_id"]),
            ("dps_host", cfg["dps_host"]),
            ("attestation", cfg["attestation"]),
        )
        if cfg["attestation"] == "x509":
            from azprov import identity

            identity.load(cfg)  # every problem with the certificate or key surfaces here, before any connection
            identity = None
            release("identity", "der")
        self.config = cfg
        self.link = Link(cfg)
        if cfg["force_reprovision"]:
            log.info("reprovision_requested")
            self.reregister = True

    def _link(self):
        self.link.up()

    def _clock(self):
        self.link.sync_clock()
        self.clock.require_set()

    def _storage(self):
        if self.store is None:
            from azprov.store import Store

            self.store = Store(self.config["storage_dir"])
        return self.store

    def _provisioned(self):
        """Leaves the provision step: the store and the DPS leg's code are let go (a board without frozen modules
        holds every imported module's bytecode in RAM, and the hub's code comes next). A Store instance would keep
        its module's code alive, so only the plain values the gateway and the run's summary need are kept."""
        store = self.store
        if store is not None:
            self.pem_path = store.pem_path
            self.flash_writes += store.writes
            self.store = None
        bundle = self.state["trust_bundle"]
        if bundle is not None and "certificates" in bundle:
            # The gateway and the application need only the bundle's id and etag; each certificate's metadata (7
            # strings a root: 4 KB for 10 roots) stays in state.json.
            self.state["trust_bundle"] = {"id": bundle["id"], "etag": bundle["etag"]}
        release("store", "provision", "dps", "bundle")

    def _provision(self):
        if self.state is None and not self.reregister:
            from azprov.provision import cached_state

            state = cached_state(self.config, self._storage())
            if state is not None:
                log.info(
                    "using_cached_assignment",
                    ("hub", state["assignment"]["assigned_hub"]),
                    ("device_id", state["assignment"]["device_id"]),
                )
                self.state = state
                if not self._renewal_due():
                    self._provisioned()
                    return
                self.reregister = True  # no issued certificate yet, or one due for renewal: a new CSR
        if self.state is not None and not self.reregister:
            self._provisioned()
            return
        if self.provisioner is None:
            from azprov.provision import Provisioner

            self.provisioner = Provisioner(self.config, self._storage(), self.clock)
        provisioner = self.provisioner
        self._close_gateway()
        try:
            state = provisioner.attempt(self._registration_budget_ms())
        finally:
            self.dps_connections += provisioner.connections
            provisioner.connections = 0
        self.state = state
        self.fresh = True
        self.reregister = False
        self.provisioner = provisioner = None
        self._provisioned()

    # --- the operational certificate DPS issued (certificate_issuance)

    def _renewal_due(self):
        """True when the issued certificate has lived 80 % of its validity (or has expired): time for a new key pair
        and a new CSR. Also when issuance is on and the stored state has no issued certificate."""
        if self.config is None or not self.config.get("certificate_issuance") or self.state is None:
            return False
        issued = self.state.get("identity")
        if issued is None:
            return True
        start, end = issued["not_before"], issued["not_after"]
        now = self.clock.unix_time()
        if now >= end:
            log.warning("operational_certificate_expired", ("not_after", end))
            return True
        return now >= start + (end - start) * 80 // 100

    def _renew_identity(self):
        issued = self.state.get("identity")
        log.info("certificate_renewal", ("not_after", issued["not_after"] if issued else "-"))
        self.reregister = True
        self._close_gateway()
        self.index = STEPS.index("provision")

    def _registration_budget_ms(self):
        """How long this registration attempt may take: registration_timeout_s, and for a one-shot run no more than
        what is left of it since the device last did useful work."""
        budget = self.config["registration_timeout_s"] * 1000
        if self.stop == ONE_SHOT:
            clock = self.clock
            budget = max(1, budget - clock.ticks_diff(clock.ticks_ms(), self.since))
        return budget

    def trust_gateway(self):
        """Opens the gateway and loads its trust into its TLS context ahead of the connect step. main() calls it
        before it loads the hub code: the heap the DPS leg left still has holes the size of the largest root (an
        RSA-4096 root is one 1.4-1.9 KB block of DER), which the hub code's objects would otherwise take."""
        if self.gateway is None:
            self.gateway = self._open_gateway()
        self.gateway.tls_context()
        release("pem")  # the trust bundle is in the gateway's TLS context now

    def _connect(self):
        if self.gateway is None:
            self.gateway = self._open_gateway()
        self.gateway.listener = self.listener  # the application may have attached it after trust_gateway()
        if not self.gateway.connected:
            self._feed_watchdog()
            self.gateway.connect()  # the client subscribes and reads the twin (Client.after_connect)
            self._feed_watchdog()
            release("pem")  # the trust bundle is in the gateway's TLS context now

    def _open_gateway(self):
        """The Gateway for the state, trusting the stored bundle, or without one the provisioning file's CA file."""
        from azprov.gateway import Gateway

        cfg, state = self.config, self.state
        if state["trust_bundle"] is not None:
            from azprov.pem import PemFile

            # Read line by line while the TLS context loads it: one certificate in heap at a time.
            trust, source = (PemFile(self.pem_path or self._storage().pem_path),), "trust_bundle.pem"
        else:
            if cfg["gateway_host"]:
                log.warning("no_trust_bundle_for_gateway", ("host", cfg["gateway_host"]))
            from azprov.pem import open_ca_file

            trust, source = (open_ca_file(cfg["dps_ca_file"]),), "dps_ca_file"
        identity = None
        issued = state.get("identity")
        if issued is not None:
            from azprov.encoding import b64decode

            identity = ([b64decode(c) for c in issued["chain"]], b64decode(issued["key"]))
        return Gateway(cfg, state["assignment"], trust, source, self.clock, identity)

    def _serve(self):
        pass  # the connection is up: what runs on it is the application's (run(), or the device API)

    def _drop_connection(self):
        if self.gateway is not None:
            self.gateway.drop()

    def _close_gateway(self):
        if self.gateway is not None:
            self.gateway.close()
            self.gateway = None

    def _close_dps(self):
        if self.provisioner is not None:
            self.provisioner.close()

    def close(self):
        self._close_dps()
        self._close_gateway()

    # --- the device's own application: telemetry every interval, handlers served in between

    def run(self, app):
        """Runs `app` (azprov.default_app.DefaultApp or TelemetryApp) until `telemetry_count` messages were
        acknowledged (0: forever); returns 0. Errors reach the caller only as the stop rule says."""
        while True:
            self.ready()
            count = telemetry_count(self.config, self.stop == BOARD)
            if count and self.sequence >= count:
                break
            self.attempt(lambda: self._send_next(app))
        log.info(
            "done",
            ("messages", self.sequence),
            ("dps_connections", self.dps_connections),
            ("gateway_connections", self.gateway.connections),
            ("renewals", self.gateway.renewals),
            ("flash_writes", self.flash_writes),
        )
        self.close()
        return 0

    def _send_next(self, app):
        if self.sequence and not self._interval_done:
            self._serve_for(app.interval_s * 1000, app)  # the interval a desired property may change
        self._interval_done = True
        self._watch()
        self.gateway.renew_if_due()
        app.before_send()
        self._feed_watchdog()
        app.send(telemetry_payload(self.config, self.sequence))
        log.info("telemetry_acknowledged", ("device_id", self.gateway.device_id), ("sequence", self.sequence))
        self.sequence += 1
        self._interval_done = False
        if not self.sequence % _HEAP_SAMPLE_EVERY:
            self._heap_sample()

    def _watch(self):
        """Between messages: the Wi-Fi must still be up; the clock is re-synced when a day has passed."""
        self.link.check()
        if self.link.clock_due():
            self.link.sync_clock()

    def _serve_for(self, ms, app):
        """The telemetry interval: handlers served, the connection kept alive (pings, token renewal), the link
        watched, the watchdog fed. Even a zero interval serves once: what arrived is handled between messages."""
        clock = self.clock
        end = clock.ticks_add(clock.ticks_ms(), ms)
        while True:
            remaining = max(0, clock.ticks_diff(end, clock.ticks_ms()))
            self._feed_watchdog()
            self.link.check()
            self.gateway.renew_if_due()
            app.wait(min(remaining, _LINK_CHECK_MS))
            if clock.ticks_diff(end, clock.ticks_ms()) <= 0:
                return

    def _heap_sample(self):
        gc.collect()
        gateway = self.gateway
        log.info(
            "heap_sample",
            ("free", gc.mem_free()),
            ("allocated", gc.mem_alloc()),
            ("modules", len(sys.modules)),
            ("acknowledged", self.sequence),
            ("connections", gateway.connections),
            ("renewals", gateway.renewals),
        )


def selected(config, platform):
    """Whether main.py runs as a board: `run_loop` from the provisioning file; by default on every port but Unix."""
    choice = config["run_loop"] if config is not None else None
    return (platform != "linux") if choice is None else choice


def default_app(supervisor):
    """The default application on a provisioned supervisor. Its code (client, hub, default_app) is loaded only now,
    and loading it is the start of the connect step: a heap too small for it is that step's fault (backoff, and on a
    board the policy's reset), not a traceback that ends main.py."""
    while True:
        supervisor.ready(until=_CONNECT)
        try:
            supervisor.trust_gateway()  # first: its roots are the largest blocks the device makes
            from azprov.client import Client
            from azprov.default_app import DefaultApp

            return DefaultApp(Client(supervisor))
        except Exception as exc:  # no heap for the hub code, a stored bundle the TLS stack refuses: the connect step's
            supervisor.failed(exc, "connect")
            supervisor._wait_for_retry(None)  # ready() stops short of the connect step, before its wait


def main(path="provisioning.json", hub_features=True):
    """main.py's entry: the default application (or with hub_features=False the telemetry-only one). On a board it
    never returns; a one-shot run returns 0 after `telemetry_count` messages, or 1 after logging the failure that
    needs a person."""
    from azprov import config

    try:
        cfg = config.load(path)
    except ProvisioningError:
        cfg = None  # a board waits at the cap and reads it again; a one-shot run reports it
    config = None
    release("config")
    supervisor = Supervisor(path, BOARD if selected(cfg, sys.platform) else ONE_SHOT, config=cfg)
    try:
        if hub_features:
            # Provisioned first: on a board without frozen modules the hub code (client, hub, default_app: about
            # 16 KB of bytecode in RAM) is not in the heap while the DPS answer streams in.
            app = default_app(supervisor)
        else:
            app = TelemetryApp(supervisor)
        return supervisor.run(app)
    except ProvisioningError as exc:
        supervisor.close()
        log.error("failed", *exc.fields())
        return 1
