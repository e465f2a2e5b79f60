# Bad-input driver for tests/test_bad_input_bulk.py, run on the MicroPython Unix port in a staged device root:
#
#   micropython tests/bulk/driver.py WORKDIR CASEFILE
#
# WORKDIR holds provisioning.json (valid; its storage_dir is where DPS cases commit) and ca.pem. CASEFILE is a
# sequence of records, each a header line `CASE <kind> <id> <category> <nparts>` followed by nparts items written as
# `<length>\n<bytes>`:
#   D  DPS responses: topic, body, topic, body ... are what DPS answers, one message for each request the device
#      publishes. Only the network is a stand-in: transport.connect is replaced by ScriptedDps, whose connections
#      hand each answer to the Provisioner's message callback as transport.Connection does (the body whole, or from
#      2 KB on as a transport.PayloadStream the bundle streams out of). The rest is the firmware's: the supervisor's
#      provision step (supervisor.Supervisor with the one-shot stop rule and a fake clock, registering although a
#      valid state is stored, as force_reprovision does) runs provision.Provisioner.attempt(): dps.Registration,
#      the trust bundle streamed into store.incoming(), bundle.parse, Store.save, Store.load. A 429/5xx (or any
#      failure worth retrying) goes through Supervisor.failed() and policy.decide(), and the next attempt resumes
#      the registration on a new connection with the case's next answer. An assignment must commit exactly what DPS
#      sent; it then goes through everything the gateway leg does before its socket (Supervisor._open_gateway(),
#      trust loaded into an SSL context, user name, topic, SAS). When the answers run out before the registration
#      ends, the case is `request` (the device asked again) or `ignored` (nothing the device acted on).
#   P  provisioning files: the bytes are written to a file and read with azprov.config.load(), then everything the
#      DPS leg does with the result before opening a socket.
#   S  stored files: name, content, name, content ... written into an empty storage folder, then Store.load() and
#      what a cached boot does with the result before opening a socket (provision.cached_state(),
#      Supervisor._open_gateway()).
#
# One line per case:
#   OK <id> <category> <outcome>
#   ERR <id> <category> <kind> <stage>            a ProvisioningError (the classified failure the device logs)
#   BAD <id> <category> <stage> <what>            an accepted or rejected input broke a promise (state changed, ...)
#   CRASH <id> <category> <stage> <Type>: <msg>   any other exception; the traceback follows ("  | " lines)
# and at the end `DONE <cases>`.
import binascii
import gc
import hashlib
import io
import json
import os
import sys

sys.path[:] = ["", ".frozen", "lib"]

from azprov import config, dps, gateway, log, pem, provision, sas, store, supervisor, transport  # noqa: E402
from azprov.errors import ProvisioningError  # noqa: E402

_PEM = "trust_bundle.pem"
_STAGED = "trust_bundle.pem.new"
_INCOMING = "trust_bundle.pem.in"
_EXPIRY = 2000000000


class Bad(Exception):
    pass


def _one_line(text):
    return " ".join(str(text).split())[:300]


def _sha(data):
    return binascii.hexlify(hashlib.sha256(data).digest()).decode()


def _read(path):
    with open(path, "rb") as f:
        return f.read()


def _write(path, data):
    with open(path, "wb") as f:
        f.write(data)


def snapshot(folder):
    """{name: sha256} of every file in folder ({} when it does not exist)."""
    try:
        names = [entry[0] for entry in os.ilistdir(folder)]
    except OSError:
        return {}
    return {name: _sha(_read(folder + "/" + name)) for name in names}


def empty_folder(folder):
    try:
        names = [entry[0] for entry in os.ilistdir(folder)]
    except OSError:
        os.mkdir(folder)
        return
    for name in names:
        os.remove(folder + "/" + name)


def _crash(cid, category, stage, exc):
    print("CRASH %s %s %s %s: %s" % (cid, category, stage, type(exc).__name__, _one_line(exc)))
    buf = io.StringIO()
    sys.print_exception(exc, buf)
    for line in buf.getvalue().splitlines():
        print("  | " + line)


class FakeClock:
    """Milliseconds that pass only when the firmware sleeps (a retry-after costs nothing); Unix time follows them
    from a set clock; the jitter is fixed."""

    def __init__(self):
        self.now = 0

    def ticks_ms(self):
        return self.now

    def ticks_add(self, ticks, delta):
        return ticks + delta

    def ticks_diff(self, end, start):
        return end - start

    def sleep_ms(self, ms):
        self.now += ms

    def unix_time(self):
        return 1800000000 + self.now // 1000

    def require_set(self):
        return self.unix_time()

    def random(self):
        return 0.5


class _NoMachine:
    pass  # no reset cause, RTC memory, reset or deep sleep


def _supervisor(cfg, st):
    """A one-shot supervisor past its config, link and clock steps (no Link: the Wi-Fi counts as up)."""
    sup = supervisor.Supervisor("provisioning.json", supervisor.ONE_SHOT, FakeClock(), _NoMachine(), cfg)
    sup.config = cfg
    sup.store = st
    return sup


def _pre_gateway(sup):
    """What a boot does with sup.state before the gateway socket: trust texts, TLS context, user name, topic, SAS."""
    gw = sup._open_gateway()
    gw.tls_context()
    gateway.username(gw.hub, gw.device_id)
    gateway.telemetry_topic(gw.device_id, gateway.JSON_PROPERTIES)
    sas.hub_token(gw.hub, gw.device_id, sup.config["symmetric_key"], _EXPIRY)


# --- DPS responses -----------------------------------------------------------------------------------------------


class Exhausted(Exception):
    """The case's answers ran out while the device waited for the next one."""


class _Rest:
    """The socket under a transport.PayloadStream: the rest of one answer."""

    def __init__(self, data):
        self._data = memoryview(data)
        self._pos = 0

    def fill(self, view):
        end = self._pos + len(view)
        if end > len(self._data):
            raise OSError(104)
        view[:] = self._data[self._pos : end]
        self._pos = end


class ScriptedDps:
    """Stands in for transport.connect on the DPS leg: its connections answer each publish with the case's next
    message. `asked` tells whether the device published since the last answer; `last` is the last answer's body."""

    def __init__(self):
        self.load([])

    def load(self, items):
        self.items = items
        self.next = 0
        self.asked = False
        self.last = None
        self.open = 0

    def connect(self, client_id, host, port, user, password, ctx, timeout_ms, **options):
        if options.get("context") != "DPS" or options.get("on_message") is None:
            raise Bad("a connection other than the DPS leg's: %r" % (options,))
        self.open += 1
        return ScriptedConnection(self, options["on_message"])


class ScriptedConnection:
    """transport.Connection's interface. A message is handed over as Connection.read_packet does: the topic read
    whole as bytes, a body below `stream_over` whole (a bytearray), a larger one as a PayloadStream still in the
    socket; a whole read from 1 KB on must fit the free heap (transport.packet_fits, as DeadlineSocket.read with
    max_packet None). Unlike Connection.receive, an exception is not turned into a classified error here: a bug
    in the message callback (the bundle Extractor) shows as a CRASH instead of a malformed_response."""

    def __init__(self, script, on_message):
        self._script = script
        self.on_message = on_message
        self.stream_over = None
        self.open = True
        self._subscribed = False

    def subscribe(self, topic_filter):
        if topic_filter != dps.RESPONSE_FILTER:
            raise Bad("subscribed to %r" % (topic_filter,))
        self._subscribed = True

    def publish(self, topic, body, what=None):
        if not self.open or not self._subscribed:
            raise Bad("published on a connection that is closed or not subscribed")
        if not isinstance(topic, str) or not topic.startswith("$dps/registrations/"):
            raise Bad("request topic %r" % (topic,))
        if not isinstance(body, bytes):
            raise Bad("request body is not bytes")
        self._script.asked = True

    def receive(self, wait_ms):
        script = self._script
        if not self.open:
            raise Bad("received on a closed connection")
        if not script.asked and not wait_ms:
            # A look without waiting while no request is out (a held connection between attempts): a server answers
            # requests, so nothing is there.
            return False
        if script.next >= len(script.items):
            raise Exhausted()
        topic, body = script.items[script.next], script.items[script.next + 1]
        script.next += 2
        script.asked = False
        script.last = body
        if len(topic) >= 1024:
            _fits(len(topic))
        if self.stream_over is not None and len(body) >= self.stream_over:
            stream = transport.PayloadStream(_Rest(body), len(body), memoryview(bytearray(512)))
            self.on_message(topic, stream, None)
            if stream.remaining:
                stream.skip()
        else:
            if len(body) >= 1024:
                _fits(len(body))
            self.on_message(topic, bytearray(body) if body else b"", None)
        return True

    def ping(self):
        if not self.open:
            raise Bad("pinged a closed connection")

    def close(self):
        if self.open:
            self.open = False
            self._script.open -= 1

    def disconnect(self):
        self.close()


def _fits(n):
    error = transport.packet_fits(n)
    if error is not None:
        raise error


def _register(sup):
    """The supervisor's provision step until it succeeds or the one-shot stop rule ends the run (as ready() drives
    it): the committed state, or the ProvisioningError the run ends with."""
    while True:
        try:
            sup._provision()
            # What was committed, read back (once provisioned, the supervisor keeps only what the gateway needs).
            return store.Store(sup.config["storage_dir"]).load()
        except ProvisioningError as exc:
            sup.failed(exc, "provision")  # raises when the stop rule says so
            sup._wait_for_retry(None)


def _read_ca(path):
    with open(path) as f:
        return f.read()


class DpsBench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.folder = cfg["storage_dir"]
        empty_folder(self.folder)
        # The committed state every case starts from, written by the firmware itself.
        from azprov import bundle

        text = _read_ca(cfg["dps_ca_file"])
        first = text[: text.index("-----END CERTIFICATE-----") + 25] + "\n"
        base = bundle.parse({"id": "base-bundle", "etag": "base-etag", "certificates": [{"certificate": first}]})
        assignment = {
            "registration_id": cfg["registration_id"],
            "assigned_hub": "base-hub.azure-devices.net",
            "device_id": "base-device",
            "substatus": "initialAssignment",
            "payload": None,
        }
        assert store.Store(self.folder).save(assignment, base)
        self.baseline = {name: _read(self.folder + "/" + name) for name in os.listdir(self.folder)}
        self.baseline_snapshot = snapshot(self.folder)
        self.dirty = False
        self.dps = ScriptedDps()
        transport.connect = self.dps.connect

    def restore(self):
        empty_folder(self.folder)
        for name, data in self.baseline.items():
            _write(self.folder + "/" + name, data)
        self.dirty = False

    def run(self, cid, category, items):
        if self.dirty:
            self.restore()
        before = self.baseline_snapshot
        script = self.dps
        script.load(items)
        stage = "provision"
        try:
            sup = _supervisor(self.cfg, store.Store(self.folder))
            sup.reregister = True  # as force_reprovision: register although a valid state is stored
            try:
                state = _register(sup)
            except Exhausted:
                state = None
                sup.close()  # the run ends here (the answers ran out): a connection held for a retry is let go
            stage = "check"
            if script.open:
                self.dirty = True
                raise Bad("a DPS connection was left open")
            if state is None:  # the answers ran out
                if snapshot(self.folder) != before:
                    self.dirty = True
                    raise Bad("the store changed without an assignment")
                print("OK %s %s %s" % (cid, category, "request" if script.asked else "ignored"))
                return
            self.dirty = True
            self.check_state(state, script.last)
            stage = "gateway"
            _pre_gateway(sup)
            print("OK %s %s stored" % (cid, category))
        except ProvisioningError as exc:
            if snapshot(self.folder) != before:
                self.dirty = True
                print(
                    "BAD %s %s %s rejected (%s: %s) but the stored state changed"
                    % (cid, category, stage, exc.kind, _one_line(exc.message))
                )
            elif script.open:
                print("BAD %s %s %s rejected (%s) with a DPS connection left open" % (cid, category, stage, exc.kind))
            else:
                print("ERR %s %s %s %s" % (cid, category, exc.kind, stage))
        except Bad as exc:
            self.dirty = True
            print("BAD %s %s %s %s" % (cid, category, stage, _one_line(exc)))
        except Exception as exc:
            self.dirty = True
            _crash(cid, category, stage, exc)

    def check_state(self, state, body):
        """What was committed is what the answer that ended the registration says (assignment, payload, bundle and
        each of its certificates), and the files agree with it."""
        if state is None:
            raise Bad("nothing committed")
        result = json.loads(body)["registrationState"]
        expected = {
            "registration_id": self.cfg["registration_id"],
            "assigned_hub": result["assignedHub"],
            "device_id": result["deviceId"],
            "substatus": result.get("substatus"),
            # As state.json holds it (a float's text need not give back the same bits).
            "payload": json.loads(json.dumps(result.get("payload"))),
        }
        if state["assignment"] != expected:
            raise Bad("committed assignment differs from the answer")
        sent = result.get("trustBundle")
        tb = state["trust_bundle"]
        names = snapshot(self.folder)
        if _STAGED in names or _INCOMING in names:
            raise Bad("a staged or incoming PEM left behind")
        if sent is None:
            if tb is not None:
                raise Bad("a bundle committed for an answer without one")
            if _PEM in names:
                raise Bad("PEM left behind for a null bundle")
            return
        if tb is None:
            raise Bad("trust bundle lost")
        if tb["etag"] != sent["etag"] or tb["id"] != sent["id"]:
            raise Bad("committed id or etag differs")
        if names.get(_PEM) != tb["pem_sha256"]:
            raise Bad("trust_bundle.pem does not match state.json")
        want = [der for entry in sent["certificates"] for der in pem.der_certificates(entry["certificate"])]
        got = list(pem.der_certificates(pem.PemFile(self.folder + "/" + _PEM)))
        if got != want or len(tb["certificates"]) != len(want):
            raise Bad("trust_bundle.pem does not hold the certificates DPS sent")


# --- provisioning files --------------------------------------------------------------------------------------------

_TYPES = {
    "dps_host": str,
    "dps_port": int,
    "id_scope": str,
    "registration_id": str,
    "symmetric_key": str,
    "dps_ca_file": str,
    "gateway_port": int,
    "storage_dir": str,
    "log_level": str,
    "sas_ttl_s": int,
    "force_reprovision": bool,
}


def check_config(cfg):
    for name, kind in _TYPES.items():
        value = cfg.get(name)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise Bad("%s accepted as %r" % (name, type(value).__name__))
    for name in ("dps_host", "id_scope", "registration_id", "symmetric_key", "dps_ca_file", "storage_dir"):
        if not cfg[name].strip():
            raise Bad(name + " accepted empty")
    for name in ("dps_port", "gateway_port"):
        if not 0 < cfg[name] < 65536:
            raise Bad(name + " accepted out of range")
    if cfg["gateway_host"] is not None and (
        not isinstance(cfg["gateway_host"], str) or not cfg["gateway_host"].strip()
    ):
        raise Bad("gateway_host accepted as %r" % (cfg["gateway_host"],))
    if cfg["log_level"] not in config.LOG_LEVELS:
        raise Bad("log_level accepted as %r" % cfg["log_level"])


def run_provisioning(cid, category, items, folder):
    path = folder + "/provisioning.json"
    _write(path, items[0])
    stage = "config"
    try:
        cfg = config.load(path)
        stage = "check"
        check_config(cfg)
        # What the DPS leg does with the file before its socket: register body, user name, SAS token.
        stage = "dps-prepare"
        dps.Registration(cfg["registration_id"], cfg["payload"]).start()
        dps.username(cfg["id_scope"], cfg["registration_id"], "azprov/bulk")
        sas.dps_token(cfg["id_scope"], cfg["registration_id"], cfg["symmetric_key"], _EXPIRY)
        print("OK %s %s config" % (cid, category))
    except ProvisioningError as exc:
        print("ERR %s %s %s %s" % (cid, category, exc.kind, stage))
    except Bad as exc:
        print("BAD %s %s %s %s" % (cid, category, stage, _one_line(exc)))
    except Exception as exc:
        _crash(cid, category, stage, exc)


# --- stored files --------------------------------------------------------------------------------------------------


def _finishing_only(before, after, null_bundle=False):
    """Whether after differs from before by nothing but the documented finishing of an interrupted commit: the
    staged PEM dropped, or renamed over trust_bundle.pem, or (for a state without a bundle) both PEM files dropped."""
    if after == before:
        return True
    rest_before = {k: v for k, v in before.items() if k not in (_PEM, _STAGED)}
    rest_after = {k: v for k, v in after.items() if k not in (_PEM, _STAGED)}
    if rest_before != rest_after or _STAGED in after:
        return False
    if after.get(_PEM) == before.get(_PEM):  # staged dropped
        return True
    if _STAGED in before and after.get(_PEM) == before[_STAGED]:  # staged rolled forward
        return True
    return null_bundle and _PEM not in after


class Recommit:
    """What a re-registration commits over whatever the stored files were (the device registers again when they are
    unusable): the bundle of the stored-file templates' PEM (certificates 1 and 2 of ca.pem) under a new etag."""

    def __init__(self, cfg):
        from azprov import bundle

        text = _read_ca(cfg["dps_ca_file"])
        blocks = [b + "-----END CERTIFICATE-----\n" for b in text.split("-----END CERTIFICATE-----\n") if b.strip()]
        self.bundle = bundle.parse(
            {"id": "bulk-bundle", "etag": "recommit-etag", "certificates": [{"certificate": b} for b in blocks[:2]]}
        )
        self.assignment = {
            "registration_id": cfg["registration_id"],
            "assigned_hub": "recommit-hub.example",
            "device_id": cfg["registration_id"],
            "substatus": "reprovisionedToInitialAssignment",
            "payload": None,
        }

    def check(self, folder):
        store.Store(folder).save(dict(self.assignment), self.bundle)
        state = store.Store(folder).load()
        if state is None or state["assignment"] != self.assignment or state["trust_bundle"]["etag"] != "recommit-etag":
            raise Bad("the re-registration's commit did not load back")
        files = snapshot(folder)
        if files.get(_PEM) != self.bundle["pem_sha256"] or _STAGED in files:
            raise Bad(
                "after the re-registration's commit trust_bundle.pem is not its bundle (files %s)"
                % (", ".join(sorted(files)))
            )


def run_stored(cid, category, items, cfg, recommit):
    line = _stored_verdict(cid, category, items, cfg)
    if line == "CRASHED":
        return
    if not line.startswith("OK") and not line.startswith("ERR"):
        print(line)
        return
    # Whatever the files were, registering again must leave a clean commit behind.
    try:
        recommit.check(cfg["storage_dir"])
        print(line)
    except ProvisioningError as exc:
        print("BAD %s %s recommit %s: %s" % (cid, category, exc.kind, _one_line(exc.message)))
    except Bad as exc:
        print("BAD %s %s recommit %s" % (cid, category, _one_line(exc)))
    except Exception as exc:
        _crash(cid, category, "recommit", exc)


def _stored_verdict(cid, category, items, cfg):
    """The verdict line for one set of stored files (CRASH lines are printed here, with their traceback)."""
    folder = cfg["storage_dir"]
    empty_folder(folder)
    for i in range(0, len(items), 2):
        _write(folder + "/" + items[i].decode(), items[i + 1])
    before = snapshot(folder)
    st = store.Store(folder)
    stage = "load"
    try:
        state = st.load()
        stage = "check"
        after = snapshot(folder)
        if state is None:
            if "state.json" in before:
                raise Bad("state.json ignored")
            if after != before:
                raise Bad("files changed on a fresh device")
            return "OK %s %s fresh" % (cid, category)
        tb = state["trust_bundle"]
        if not _finishing_only(before, after, tb is None):
            raise Bad("load changed files beyond finishing the commit")
        if "trust_bundle.pem.new" in after:
            raise Bad("staged PEM left after a successful load")
        if tb is None:
            if "trust_bundle.pem" in after:
                raise Bad("PEM kept for a state without a bundle")
        elif after.get("trust_bundle.pem") != tb["pem_sha256"]:
            raise Bad("loaded a state whose PEM does not match")
        stage = "cached"
        cached = provision.cached_state(cfg, st)
        if cached is None:
            return "OK %s %s other-registration" % (cid, category)
        stage = "gateway"
        sup = _supervisor(cfg, st)
        sup.state = cached
        _pre_gateway(sup)
        return "OK %s %s loaded" % (cid, category)
    except ProvisioningError as exc:
        # A rejection leaves the files as they were, except that the commit may have been finished first (the
        # files agreed with state.json; what was wrong was found after).
        if stage == "load" and not _finishing_only(before, snapshot(folder)):
            return "BAD %s %s %s rejected (%s) but the files changed" % (cid, category, stage, exc.kind)
        return "ERR %s %s %s %s" % (cid, category, exc.kind, stage)
    except Bad as exc:
        return "BAD %s %s %s %s" % (cid, category, stage, _one_line(exc))
    except Exception as exc:
        _crash(cid, category, stage, exc)
        return "CRASHED"


# --- main ----------------------------------------------------------------------------------------------------------


def cases(path):
    with open(path, "rb") as f:
        while True:
            header = f.readline()
            if not header:
                return
            parts = header.decode().split()
            if parts[0] != "CASE":
                raise ValueError("bad case file at " + repr(header[:40]))
            items = []
            for _ in range(int(parts[4])):
                size = int(f.readline())
                items.append(f.read(size))
            yield parts[1], parts[2], parts[3], items


def main(workdir, case_file):
    cfg = config.load(workdir + "/provisioning.json")
    log.set_level("error")
    dps_bench = None
    stored_cfg = dict(cfg, storage_dir=workdir + "/stored")
    recommit = Recommit(cfg)
    prov_folder = workdir + "/prov"
    empty_folder(prov_folder)
    count = 0
    for kind, cid, category, items in cases(case_file):
        if kind == "D":
            if dps_bench is None:
                dps_bench = DpsBench(cfg)
            dps_bench.run(cid, category, items)
        elif kind == "P":
            run_provisioning(cid, category, items, prov_folder)
        elif kind == "S":
            run_stored(cid, category, items, stored_cfg, recommit)
        else:
            raise ValueError("unknown case kind " + kind)
        count += 1
        if not count % 64:
            gc.collect()
    print("DONE %d" % count)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
