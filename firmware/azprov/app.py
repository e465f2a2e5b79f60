# The device's job from power-on: provisioning file -> (cached assignment | DPS registration) -> stored trust
# bundle -> verified gateway -> acknowledged telemetry. Each step is logged so a person can follow it.
import gc
import json
import time

from azprov import errors, log
from azprov.errors import ProvisioningError
from azprov.store import Store

# DPS connections made by this boot (a list so provision() can add to it without a global statement).
_dps_connections = [0]


def release(*names):
    """Drops modules a finished phase no longer needs, so their bytecode goes back to the heap. A device without
    frozen modules holds every imported module's code in RAM: the DPS leg's code is dead weight at the gateway."""
    import sys

    package = sys.modules["azprov"]
    for name in names:
        sys.modules.pop("azprov." + name, None)
        if name in package.__dict__:
            delattr(package, name)
    gc.collect()


def _log_failure(exc):
    log.error("failed", *exc.fields())


def provision(cfg, store):
    """Registers with DPS, stores assignment and trust bundle, returns the committed state."""
    from azprov import bundle as trust_bundle
    from azprov.provision import Session

    # The bundle's certificates go straight from the DPS answer to flash (trust_bundle.pem.in) as they are parsed.
    sink = store.incoming()
    session = Session(cfg, bundle_sink=sink)
    try:
        registration = session.register()
        streamed = session.streamed
        pem_sha256 = sink.finish() if streamed else None
    except BaseException:
        sink.close()
        store.discard_incoming()
        raise
    finally:
        _dps_connections[0] += session.connections
        session = Session = sink = None
        release("provision", "dps")
    log.info(
        "registered",
        ("hub", registration["assignedHub"]),
        ("device_id", registration["deviceId"]),
        ("substatus", registration.get("substatus") or "-"),
    )
    gc.collect()
    try:
        parsed = trust_bundle.parse(registration.get("trustBundle"), streamed, pem_sha256)
    except BaseException:
        store.discard_incoming()
        raise
    assignment = {
        "registration_id": cfg["registration_id"],
        "assigned_hub": registration["assignedHub"],
        "device_id": registration["deviceId"],
        "substatus": registration.get("substatus"),
        "payload": registration.get("payload"),
    }
    del registration
    gc.collect()
    written = store.save(assignment, parsed)
    if assignment["payload"] is not None:  # after save(), which has checked that it serialises
        log.info("returned_payload", ("json", json.dumps(assignment["payload"])))
    if parsed is None:
        log.info("trust_bundle_absent", ("written", written))
    else:
        log.info(
            "trust_bundle_stored",
            ("certificates", len(parsed["certificates"])),
            ("id", parsed["id"]),
            ("etag", parsed["etag"]),
            ("written", written),
        )
        for cert in parsed["certificates"]:
            log.info(
                "trust_bundle_cert",
                ("sha256", cert["sha256"]),
                ("subject", cert["subject"] or "-"),
                ("not_after", cert["not_after"] or "-"),
            )
    parsed = trust_bundle = None
    release("bundle")
    state = store.load()
    if state is None:
        # What was just written cannot be read back (a file system damaged by an earlier power cut: FAT).
        raise ProvisioningError(errors.STORAGE, "stored state: state.json cannot be read back after writing it")
    return state


def _cached_state(cfg, store):
    if cfg["force_reprovision"]:
        log.info("reprovision_requested")
        return None
    try:
        state = store.load()
    except ProvisioningError as exc:
        log.warning("stored_state_unusable", ("reason", exc.message))
        return None
    if state is None:
        return None
    if state["assignment"].get("registration_id") != cfg["registration_id"]:
        log.info("stored_state_for_other_registration")
        return None
    return state


def _gateway(cfg, store, state):
    """The Gateway for this state, trusting the stored bundle, or without one the provisioning file's CA file."""
    from azprov.gateway import Gateway

    if state["trust_bundle"] is not None:
        from azprov.pem import PemFile

        # Read line by line while the TLS context loads it: one certificate in heap at a time.
        return Gateway(cfg, state["assignment"], (PemFile(store.pem_path),))
    if cfg["gateway_host"]:
        log.warning("no_trust_bundle_for_gateway", ("host", cfg["gateway_host"]))
    from azprov.store import read_text

    return Gateway(cfg, state["assignment"], (read_text(cfg["dps_ca_file"], "dps_ca_file"),), "dps_ca_file")


def assigned_state(cfg, store):
    """(state, fresh): the cached assignment when it is usable, else a new registration (fresh True)."""
    state = _cached_state(cfg, store)
    fresh = state is None
    if fresh:
        state = provision(cfg, store)
    else:
        log.info(
            "using_cached_assignment",
            ("hub", state["assignment"]["assigned_hub"]),
            ("device_id", state["assignment"]["device_id"]),
        )
    log.debug("step", ("name", "gateway"))
    return state, fresh


def open_client(cfg, store):
    """A Client (azprov.client) for this device: the cached assignment, or a new registration; not yet connected.
    A cached assignment the gateway refuses is replaced by a fresh registration, keeping the handlers."""
    from azprov.client import Client

    state, fresh = assigned_state(cfg, store)

    def reprovision():
        client.gateway.close()
        return _gateway(cfg, store, provision(cfg, store))

    client = Client(_gateway(cfg, store, state), None if fresh else reprovision)
    client.config = cfg
    client.store = store
    return client


def load_config(path):
    from azprov import config

    cfg = config.load(path)
    config = None
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
    return cfg


def connect(path="provisioning.json"):
    """azprov.connect(): provisions (or uses the cached assignment), connects to the gateway, returns the Client."""
    cfg = load_config(path)
    client = open_client(cfg, Store(cfg["storage_dir"]))
    client.connect()
    return client


def done(client_or_gateway, messages, store):
    gateway = getattr(client_or_gateway, "gateway", client_or_gateway)
    log.info(
        "done",
        ("messages", messages),
        ("dps_connections", _dps_connections[0]),
        ("gateway_connections", gateway.connections),
        ("renewals", gateway.renewals),
        ("flash_writes", store.writes),
    )


def telemetry_count(cfg, looping=False):
    """Messages to send (0: until power-off); unset, a field device under the run loop never stops."""
    count = cfg["telemetry_count"]
    if count is None:
        return 0 if looping else 1
    return count


def _telemetry_payload(cfg, sequence):
    return json.dumps(
        {
            "registrationId": cfg["registration_id"],
            "sequence": sequence,
            "heapFree": gc.mem_free(),
            "uptimeMs": time.ticks_ms(),
        }
    )


def run(cfg, store, make_payload=_telemetry_payload):
    state, fresh = assigned_state(cfg, store)
    gateway = _gateway(cfg, store, state)
    from azprov.gateway import backoff_s

    count = telemetry_count(cfg)  # 0: run until power-off
    sequence = 0
    failures = 0
    try:
        while not count or sequence < count:
            try:
                if sequence:
                    gateway.idle(cfg["telemetry_interval_s"])
                gateway.send(make_payload(cfg, sequence))
            except ProvisioningError as exc:
                failures += 1
                stale = (
                    exc.kind in (errors.AUTHENTICATION, errors.TLS_VERIFICATION, errors.STORAGE)
                    or failures >= cfg["max_gateway_failures"]
                )
                if stale and not fresh:
                    # The cached assignment or trust bundle may be out of date: DPS knows the current ones.
                    log.warning("reprovisioning", ("reason", exc.kind), ("failures", failures))
                    gateway.close()
                    state = provision(cfg, store)
                    fresh = True
                    failures = 0
                    gateway = _gateway(cfg, store, state)
                    continue
                if not exc.transient or failures >= cfg["max_gateway_failures"]:
                    raise
                delay = backoff_s(failures)
                log.warning("gateway_retry", ("reason", exc.kind), ("in_s", int(delay)), ("failures", failures))
                time.sleep(delay)
                continue
            failures = 0
            log.info("telemetry_acknowledged", ("device_id", gateway.device_id), ("sequence", sequence))
            sequence += 1
    finally:
        gateway.close()
    done(gateway, sequence, store)
    return 0


def main(path="provisioning.json", hub_features=True):
    """Runs the default application (azprov.default_app: telemetry, twin, methods, C2D), or with
    hub_features=False the telemetry-only flow; returns 0 when every step happened, 1 after logging a classified
    error."""
    try:
        cfg = load_config(path)
        store = Store(cfg["storage_dir"])
        if not hub_features:
            return run(cfg, store)
        from azprov import default_app

        return default_app.serve(open_client(cfg, store))
    except ProvisioningError as exc:
        _log_failure(exc)
        return 1
    except MemoryError:
        gc.collect()
        _log_failure(
            ProvisioningError(
                errors.OUT_OF_MEMORY, "the heap is too small for this step (%d bytes free)" % gc.mem_free()
            )
        )
        return 1
