# Bad-input driver for tests/test_bad_input_bulk.py, run on the MicroPython Unix port in a staged device root:
#
#   micropython tests/bulk/driver.py WORKDIR CASEFILE
#
# WORKDIR holds provisioning.json (valid; its storage_dir is where DPS cases commit) and ca.pem. CASEFILE is a
# sequence of records, each a header line `CASE <kind> <id> <category> <nparts>` followed by nparts items written as
# `<length>\n<bytes>`:
#   D  DPS responses: topic, body, topic, body ... fed to a fresh azprov.dps.Registration after start(); on an
#      assignment the real azprov.app.provision() runs (bundle.parse, Store.save, Store.load) on a store that holds a
#      valid committed state, then everything the gateway leg does before opening a socket.
#   P  provisioning files: the bytes are written to a file and read with azprov.config.load(), then everything the
#      DPS leg does with the result before opening a socket.
#   S  stored files: name, content, name, content ... written into an empty storage folder, then Store.load() and
#      what a cached boot does with the result before opening a socket.
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
import os
import sys
import time

_HERE = sys.path[0]
sys.path[:] = ["", ".frozen", "lib", _HERE]

import stub_provision  # noqa: E402

import azprov.provision as real_provision  # noqa: E402
from azprov import app, config, dps, errors, gateway, log, sas, store, transport  # noqa: E402
from azprov.errors import ProvisioningError  # noqa: E402

stub_provision.read_text = real_provision.read_text
sys.modules["azprov.provision"] = stub_provision

_FILES = ("state.json", "trust_bundle.pem", "trust_bundle.pem.new", "state.json.tmp")
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


def _pre_gateway(cfg, st, state):
    """What a boot does with a state before the gateway socket: trust texts, TLS context, user name, topic, SAS."""
    gw = app._gateway(cfg, st, state)
    gw.tls_context()
    gateway.username(gw.hub, gw.device_id)
    gateway.telemetry_topic(gw.device_id, gateway.JSON_PROPERTIES)
    sas.hub_token(gw.hub, gw.device_id, cfg["symmetric_key"], _EXPIRY)


def _half():
    return 0.5


# --- DPS responses -----------------------------------------------------------------------------------------------


class DpsBench:
    def __init__(self, cfg):
        self.cfg = cfg
        self.folder = cfg["storage_dir"]
        empty_folder(self.folder)
        # The committed state every case starts from, written by the firmware itself.
        from azprov import bundle

        pem = real_provision.read_text(cfg["dps_ca_file"], "ca")
        first = pem[: pem.index("-----END CERTIFICATE-----") + 25] + "\n"
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

    def restore(self):
        empty_folder(self.folder)
        for name, data in self.baseline.items():
            _write(self.folder + "/" + name, data)
        self.dirty = False

    def run(self, cid, category, items):
        if self.dirty:
            self.restore()
        before = self.baseline_snapshot
        stage = "transport"
        try:
            for item in items:
                if len(item) > transport.DEFAULT_MAX_PACKET:  # DeadlineSocket.read refuses it before umqtt sees it
                    raise ProvisioningError(
                        errors.MALFORMED_RESPONSE,
                        "a %d-byte packet exceeds the %d-byte limit" % (len(item), transport.DEFAULT_MAX_PACKET),
                    )
            stage = "dps"
            reg = dps.Registration(self.cfg["registration_id"], self.cfg["payload"], random=_half)
            reg.start()
            request = None
            for i in range(0, len(items), 2):
                request = reg.on_message(items[i], items[i + 1])
                if reg.done:
                    break
                if request is not None:
                    stage = "shell"
                    self.check_request(request, items[i])
                    stage = "dps"
            if not reg.done:
                if snapshot(self.folder) != before:
                    raise Bad("the store changed without an assignment")
                print("OK %s %s %s" % (cid, category, "request" if request is not None else "ignored"))
                return
            stage = "provision"
            stub_provision.Session.result = reg.result
            # app.provision() imports azprov.provision afresh each time (and drops it again after the DPS leg).
            sys.modules["azprov.provision"] = stub_provision
            registered = stub_provision.Session.calls
            self.dirty = True
            state = app.provision(self.cfg, store.Store(self.folder))
            stage = "check"
            if stub_provision.Session.calls != registered + 1:
                raise Bad("app.provision did not take the registration from the stand-in session")
            self.check_state(state, reg.result)
            stage = "gateway"
            _pre_gateway(self.cfg, store.Store(self.folder), state)
            print("OK %s %s stored" % (cid, category))
        except ProvisioningError as exc:
            if snapshot(self.folder) != before:
                self.dirty = True
                print(
                    "BAD %s %s %s rejected (%s: %s) but the stored state changed"
                    % (cid, category, stage, exc.kind, _one_line(exc.message))
                )
            else:
                print("ERR %s %s %s %s" % (cid, category, exc.kind, stage))
        except Bad as exc:
            self.dirty = True
            print("BAD %s %s %s %s" % (cid, category, stage, _one_line(exc)))
        except Exception as exc:
            self.dirty = True
            _crash(cid, category, stage, exc)

    def check_request(self, request, topic):
        """The next request is well formed and the shell can act on it (log it, wait or give up on time)."""
        if not isinstance(request, tuple) or len(request) != 3:
            raise Bad("request is not (delay, topic, body)")
        delay, req_topic, body = request
        if not isinstance(delay, (int, float)) or not delay >= 0:
            raise Bad("request delay %r" % (delay,))
        if not isinstance(req_topic, str) or not req_topic.startswith("$dps/registrations/"):
            raise Bad("request topic %r" % (req_topic,))
        if not isinstance(body, bytes):
            raise Bad("request body is not bytes")
        log.info("dps_status", ("status", dps.parse_topic(topic)[0]), ("next_in_s", delay))
        try:
            # With no time left, any wait must end in the shell's classified timeout, whatever the delay.
            real_provision._sleep_within(delay, time.ticks_ms())
        except ProvisioningError as exc:
            if exc.kind != errors.TIMEOUT:
                raise Bad("waiting %r gave %s" % (delay, exc.kind)) from None

    def check_state(self, state, result):
        """What app.provision committed is what DPS sent, and the files agree with it."""
        if state is None:
            raise Bad("nothing committed")
        assignment = state["assignment"]
        if assignment["assigned_hub"] != result["assignedHub"] or assignment["device_id"] != result["deviceId"]:
            raise Bad("committed assignment differs from the result")
        tb = state["trust_bundle"]
        names = snapshot(self.folder)
        if tb is None:
            if result.get("trustBundle") is not None:
                raise Bad("trust bundle lost")
            if "trust_bundle.pem" in names or "trust_bundle.pem.new" in names:
                raise Bad("PEM left behind for a null bundle")
        else:
            if tb["etag"] != result["trustBundle"]["etag"]:
                raise Bad("committed etag differs")
            if names.get("trust_bundle.pem") != tb["pem_sha256"] or "trust_bundle.pem.new" in names:
                raise Bad("trust_bundle.pem does not match state.json")


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
        reg = dps.Registration(cfg["registration_id"], cfg["payload"], random=_half)
        reg.start()
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

_PEM = "trust_bundle.pem"
_STAGED = "trust_bundle.pem.new"


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

        pem = real_provision.read_text(cfg["dps_ca_file"], "ca")
        blocks = [b + "-----END CERTIFICATE-----\n" for b in pem.split("-----END CERTIFICATE-----\n") if b.strip()]
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
        cached = app._cached_state(cfg, st)
        if cached is None:
            return "OK %s %s other-registration" % (cid, category)
        stage = "gateway"
        _pre_gateway(cfg, st, cached)
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
