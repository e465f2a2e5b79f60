# The DPS leg: the thin shell around azprov.dps (which owns no I/O). One call of Provisioner.attempt() sends the
# registration's next request, waits for the answers, polls while DPS is assigning, and on an assignment streams the
# trust bundle to flash and commits it (azprov.store). Any failure is raised, classified; the registration stays
# where it was, so the next attempt (after the wait the retry policy chose) polls the operation DPS already accepted
# instead of starting again. The connection is closed after a failure, except when DPS itself answered 429 or 5xx:
# the connection works and the service only asked for a wait, so it is held across that wait (the supervisor's,
# which pings it through keep_alive()) and the next attempt resumes on it, without a new TLS handshake. Only the
# supervisor calls this.
import gc
import json

from micropython import const

from azprov import __version__, dps, errors, log, sas, transport
from azprov.errors import ProvisioningError
from azprov.pem import open_ca_file

_IO_TIMEOUT_MS = const(15000)
_KEEPALIVE_S = const(60)
# DPS payloads at least this large are parsed as they are read from the socket, a receive buffer at a time (a trust
# bundle's certificates go to flash one at a time and the answer's text is never in heap); smaller ones are read
# whole.
_STREAM_OVER = const(2048)
# Room for what the Extractor keeps of a streamed answer's text at a time, made before the DPS connection (measured
# at its peak: 1.0 KB of a 3-root answer, 1.1 KB of a 10-root one, 1.6 KB with an issued chain, 1.7 KB with the
# x509 section). A longer text (a large custom allocation payload) grows it, if the heap has the room then.
_REST_ROOM = const(1280)
_REST_ROOM_CERTIFICATES = const(2048)  # the answer carries an x509 section or an issued chain


class Provisioner:
    """The registration of one device (a loaded provisioning file, azprov.config) into its Store."""

    def __init__(self, config, store, clock, client_version="azprov/" + __version__):
        self.config = config
        self.store = store
        self.clock = clock
        self.client_version = client_version
        self.connections = 0
        self.registration = None  # the dps.Registration in progress, kept across attempts
        self.connection = None  # held between attempts after DPS answered 429/5xx (see the top of this file)
        self._quiet_since = 0  # when the held connection last carried a packet (ticks_ms)
        self._ctx = None
        self._inbox = []
        self._sink = None
        self._rest = None  # the Extractor's room for an answer's text (see _REST_ROOM), while an attempt runs
        # Issuance: the DER private key and public point of the CSR the registration in progress carries.
        self._key = None

    # --- one connection

    def _on_message(self, topic, body, pid):
        streamed = None
        if isinstance(body, transport.PayloadStream):
            if self._sink is None:
                return  # between attempts (a held connection): no request is waiting, the payload is read past
            body, streamed = self._take(topic, body)
        self._inbox.append((topic, body, streamed))

    def _take(self, topic, stream):
        """Consumes a payload still in the socket: a 200 answer parsed by the bundle Extractor as it arrives
        (certificates to the sink), anything else read whole. Returns (body or parsed answer, streamed sha256 list or
        None)."""
        parsed = dps.parse_topic(topic)
        if parsed is None or parsed[0] != 200:
            return stream.read_all(), None
        from azprov.bundle import Extractor

        self._sink.start()
        try:
            extractor = Extractor(self._sink, self._rest)
            view = stream.scratch  # the connection's receive buffer: free while a payload streams
            while stream.remaining:
                extractor.feed(view[: stream.readinto(view)])
            return extractor.finish(), extractor.found
        except MemoryError:  # the parsed answer, or a long string of it: not the whole answer at once
            extractor = None  # what it parsed goes before the error's message is made, in a heap it just filled
            raise transport.too_large(stream.size, streamed=True)

    def _tls_context(self):
        # Made once, at the start of the first attempt: before the answer's room and the sink take their blocks, the
        # CA file's certificates are decoded in the heap the previous steps left.
        cfg = self.config
        if self._ctx is None:
            self._ctx, _ = transport.tls_context((open_ca_file(cfg["dps_ca_file"]),))
            if cfg["attestation"] == "x509":
                transport.use_client_certificate(self._ctx, cfg["client_certificates"], cfg["client_key"])

    def _connect(self, deadline):
        cfg = self.config
        x509 = cfg["attestation"] == "x509"
        self._tls_context()
        if x509:
            password = None  # the certificate in the TLS handshake is the credential
        else:
            expiry = self.clock.require_set() + cfg["sas_ttl_s"]
            password = sas.dps_token(cfg["id_scope"], cfg["registration_id"], cfg["symmetric_key"], expiry)
        timeout = max(1, min(_IO_TIMEOUT_MS, self._remaining(deadline)))
        log.debug("dps_connecting", ("host", cfg["dps_host"]), ("port", cfg["dps_port"]))
        self.connections += 1
        connection = transport.connect(
            cfg["registration_id"],
            cfg["dps_host"],
            cfg["dps_port"],
            dps.username(cfg["id_scope"], cfg["registration_id"], self.client_version, self._api_version()),
            password,
            self._ctx,
            timeout,
            keepalive=_KEEPALIVE_S,
            on_message=self._on_message,
            max_packet=None,  # a trust bundle may be large: the limit is what the free heap can take
            context="DPS",
        )
        connection.stream_over = _STREAM_OVER
        connection.subscribe(dps.RESPONSE_FILTER)
        log.info("dps_connected", ("host", cfg["dps_host"]), ("api_version", self._api_version()))
        return connection

    def _api_version(self):
        return dps.API_VERSION_ISSUANCE if self.config["certificate_issuance"] else dps.API_VERSION

    def _new_csr(self):
        """A new key pair and its CSR (base64 DER), for a registration that asks DPS for an operational certificate.
        Every registration gets a new key: renewal never reuses one. All the key arithmetic happens here, before the
        DPS connection is set up, and only bytes are kept: the bignum temporaries would fragment the heap the DPS
        answer needs."""
        from azprov import csr, release
        from azprov.encoding import b64encode

        d = csr.new_key()
        request = csr.csr_der(d, self.config["registration_id"])
        key = (csr.private_key_der(d), csr.public_key_bytes(d))
        d = csr = None
        release("csr")
        # The results were made among thousands of big-integer temporaries and sit scattered through the heap: copies
        # made after the collection take the lowest free blocks, and the originals' blocks rejoin the free space
        # above, which the DPS answer needs in pieces of a few KB.
        self._key = (key[0][:], key[1][:])
        key = None
        request = b64encode(request)
        gc.collect()
        log.info("csr_created", ("curve", "P-384"), ("bytes", len(request)))
        return request

    def _issued_identity(self, registration):
        """The operational identity for state.json from the registration result: the key this registration's CSR
        was made with and the chain DPS issued for it (checked: CN and public key are the device's)."""
        from azprov import der
        from azprov.encoding import b64decode, b64encode

        chain = dps.issued_chain(registration)
        if chain is None:
            self.registration = None
            raise ProvisioningError(
                errors.ASSIGNMENT_FAILED,
                "certificate_issuance: DPS issued no certificate (no issuedCertificateChain): the enrollment has no "
                "certificate policy",
            )
        try:
            leaf = der.certificate(b64decode(chain[0]))
        except ValueError as exc:
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "issuedCertificateChain[0]: %s" % exc)
        if leaf["public_key"] != self._key[1] or leaf["common_name"] != self.config["registration_id"]:
            self.registration = None
            raise ProvisioningError(
                errors.MALFORMED_RESPONSE, "issuedCertificateChain[0] is not a certificate for this device's CSR"
            )
        identity = {
            "key": b64encode(self._key[0]),
            "chain": chain,
            "not_before": leaf["not_before"],
            "not_after": leaf["not_after"],
            "subject": leaf["common_name"],
            "issuer": leaf["issuer_common_name"],
        }
        log.info(
            "certificate_issued",
            ("subject", leaf["common_name"]),
            ("issuer", leaf["issuer_common_name"] or "-"),
            ("not_after", leaf["not_after_text"]),
            ("certificates", len(chain)),
        )
        return identity

    def _remaining(self, deadline):
        return self.clock.ticks_diff(deadline, self.clock.ticks_ms())

    def _register(self, budget_ms):
        """One connection's worth of the registration; returns the registrationState of an assignment."""
        cfg = self.config
        deadline = self.clock.ticks_add(self.clock.ticks_ms(), budget_ms)
        reg = self.registration
        if reg is None:
            request_csr = self._new_csr() if cfg["certificate_issuance"] else None
            reg = self.registration = dps.Registration(
                cfg["registration_id"], cfg["payload"], bundle_sink=self._sink, csr=request_csr
            )
            request = reg.start()
        else:
            reg.bundle_sink = self._sink
            request = reg.resume()
        connection = self._held() or self._connect(deadline)
        keep = False
        try:
            while True:
                delay, topic, body = request
                if delay != 0:
                    from azprov import policy

                    wait = policy.decide(policy.PENDING, 0, delay, cfg, 0, 0).wait_ms
                    if wait >= self._remaining(deadline):
                        raise ProvisioningError(
                            errors.TIMEOUT, "DPS asked to wait %d ms, past the registration deadline" % wait
                        )
                    self.clock.sleep_ms(wait)
                log.debug("dps_request", ("topic", topic))
                connection.publish(topic, body, "DPS")
                request = self._await_decision(connection, reg, deadline)
                if request is None:
                    return reg.result
        except ProvisioningError as exc:
            # DPS answered (429 or 5xx, retry-after): the connection is healthy, the service asks for a wait only.
            keep = exc.status is not None and exc.transient and connection.open
            raise
        finally:
            self._inbox = []
            if keep:
                self.connection = connection
                self._quiet_since = self.clock.ticks_ms()
            else:
                connection.disconnect()

    def _held(self):
        """The connection held since the last attempt while it is still open, else None. What arrived meanwhile is
        read first: a server that dropped it (end of stream, reset) shows here, and the attempt connects again."""
        connection = self.connection
        self.connection = None
        if connection is None:
            return None
        try:
            connection.receive(0)
        except ProvisioningError as exc:
            log.info("dps_connection_lost", ("reason", exc.kind))
            return None
        finally:
            self._inbox = []  # nothing is pending between attempts: a stray answer belongs to no request
        if not connection.open:
            return None
        log.debug("dps_connection_reused")
        return connection

    def ms_to_ping(self):
        """Milliseconds until the held connection needs a keepalive ping: MQTT servers drop a client silent for 1.5
        keepalive periods, so it is pinged at half of one. Only meaningful while `connection` is set."""
        quiet = self.clock.ticks_diff(self.clock.ticks_ms(), self._quiet_since)
        return max(0, _KEEPALIVE_S * 500 - quiet)

    def keep_alive(self):
        """Pings the held connection (the supervisor calls this while it waits). A connection the server has dropped
        is let go without an error: the next attempt connects again."""
        connection = self.connection
        if connection is None:
            return
        try:
            connection.ping()
            connection.receive(0)  # sends the ping, reads the answer if it is already there
            self._quiet_since = self.clock.ticks_ms()
            log.debug("dps_ping")
        except ProvisioningError as exc:
            self.connection = None
            log.info("dps_connection_lost", ("reason", exc.kind))
        self._inbox = []

    def close(self):
        """Closes the held connection, if any (the device leaves the provision step, or the run ends)."""
        connection = self.connection
        self.connection = None
        if connection is not None:
            connection.disconnect()

    def _await_decision(self, connection, reg, deadline):
        while True:
            while self._inbox:
                topic, body, streamed = self._inbox.pop(0)
                try:
                    request = reg.on_message(topic, body, streamed)
                except ProvisioningError as exc:
                    if exc.transient and exc.status is not None:
                        log.info("dps_status", ("status", exc.status), ("retry_after", exc.retry_after))
                    raise
                if reg.done:
                    return None
                if request is not None:
                    status = dps.parse_topic(topic)[0]
                    log.info("dps_status", ("status", status), ("next_in_s", request[0]))
                    return request
            remaining = self._remaining(deadline)
            if remaining <= 0:
                raise ProvisioningError(errors.TIMEOUT, "no DPS answer before the registration deadline")
            connection.receive(min(remaining, 1000))

    # --- the step

    def attempt(self, budget_ms):
        """Registers (or continues the registration) within `budget_ms` and commits the assignment and trust bundle
        to the store; returns the stored state. Raises a classified ProvisioningError."""
        from azprov import bundle

        store = self.store
        self._tls_context()
        self._sink = store.incoming()  # the bundle's certificates go straight from the DPS answer to flash
        cfg = self.config
        certificates = cfg["attestation"] == "x509" or cfg["certificate_issuance"]
        self._rest = bytearray(_REST_ROOM_CERTIFICATES if certificates else _REST_ROOM)
        try:
            registration = self._register(budget_ms)
            streamed = self.registration.streamed
            pem_sha256 = self._sink.finish() if streamed else None
            pem_path = self._sink.path
            identity = self._issued_identity(registration) if self.config["certificate_issuance"] else None
        except BaseException as exc:
            self._sink.close()
            store.discard_incoming()
            if isinstance(exc, ProvisioningError) and exc.status is not None and exc.kind not in errors.TRANSIENT:
                self.registration = None  # a final answer: a later attempt registers anew
            raise
        finally:
            self._sink = self._rest = None
        self.registration = None
        self._key = None
        log.info(
            "registered",
            ("hub", registration["assignedHub"]),
            ("device_id", registration["deviceId"]),
            ("substatus", registration.get("substatus") or "-"),
        )
        # The DPS leg is over: the bundle's TLS check loads the certificates into its context (bundle.check_with). No
        # connection uses it again: a later attempt makes a new one.
        bundle.check_with(self._ctx)
        self._ctx = None
        gc.collect()
        try:
            parsed = bundle.parse(registration.get("trustBundle"), streamed, pem_sha256)
            if streamed:
                bundle.check_streamed(pem_path)  # the connection is closed: its heap is free for the TLS stack
        except BaseException:
            store.discard_incoming()
            raise
        finally:
            bundle.check_with(None)
        assignment = {
            "registration_id": self.config["registration_id"],
            "assigned_hub": registration["assignedHub"],
            "device_id": registration["deviceId"],
            "substatus": registration.get("substatus"),
            "payload": registration.get("payload"),
        }
        del registration
        gc.collect()
        written = store.save(assignment, parsed, identity)
        identity = None
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
        parsed = None
        # Read back without decoding every certificate again (the PEM file's sha256 stands for them; the full check
        # runs at the next boot). The read itself matters on FAT: it writes FatFs's cached directory sector back, so
        # a power cut after this step finds the commit whole (tests/test_power_cut.py).
        state = store.load(certificates=False)
        if state is None:
            # What was just written cannot be read back (a file system damaged by an earlier power cut: FAT).
            raise ProvisioningError(errors.STORAGE, "stored state: state.json cannot be read back after writing it")
        return state


def cached_state(cfg, store):
    """The stored assignment when it is usable for this provisioning file, else None (logged)."""
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
