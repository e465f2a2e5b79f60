# The DPS registration exchange over MQTT, without any I/O: topic and payload builders, a response parser and a
# state machine. The shell (azprov.provision) owns the socket and the clock; this module only takes bytes and
# returns decisions, so every branch is testable in milliseconds.
import json

from micropython import const

from azprov import errors
from azprov.encoding import check_utf8, url_encode
from azprov.errors import ProvisioningError

API_VERSION = "2021-11-01-preview"
# With certificate issuance: the request carries a CSR, the result an issuedCertificateChain.
API_VERSION_ISSUANCE = "2025-07-01-preview"
_MAX_ISSUED_CHAIN = const(4)  # leaf and issuing CA(s); the C SDK keeps three
RESPONSE_FILTER = "$dps/registrations/res/#"
_RESPONSE_PREFIX = "$dps/registrations/res/"
_REGISTER_TOPIC = "$dps/registrations/PUT/iotdps-register/?$rid="
_POLL_TOPIC = "$dps/registrations/GET/iotdps-get-operationstatus/?$rid="

# 429/5xx end the exchange with a classified error carrying the service's retry-after: the retry policy
# (azprov.policy) decides the wait, and resume() continues where the registration was.
DEFAULT_MAX_POLLS = const(60)


def username(id_scope, registration_id, client_version=None, api_version=API_VERSION):
    name = "%s/registrations/%s/api-version=%s" % (id_scope, registration_id, api_version)
    if client_version:
        name += "&ClientVersion=" + url_encode(client_version)  # as the SDKs send it: "/" becomes %2F
    return name


def register_body(registration_id, payload=None, csr=None):
    """The register request; `csr` (base64 DER PKCS#10) asks DPS to issue an operational certificate."""
    body = {"registrationId": registration_id, "payload": payload}
    if csr is not None:
        body["csr"] = csr
    return json.dumps(body).encode()


def issued_chain(state):
    """registrationState.issuedCertificateChain: a list of base64 DER certificates, leaf first, or None when DPS
    issued none (absent or null). Anything else is a malformed answer."""
    chain = state.get("issuedCertificateChain")
    if chain is None:
        return None
    if not isinstance(chain, list) or not 0 < len(chain) <= _MAX_ISSUED_CHAIN:
        raise ProvisioningError(
            errors.MALFORMED_RESPONSE, "issuedCertificateChain is not a list of 1 to 4 certificates"
        )
    for item in chain:
        if not isinstance(item, str) or not item:
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "issuedCertificateChain holds a non-string entry")
    return chain


def parse_topic(topic):
    """Returns (status, rid, retry_after) for a DPS response topic, None for any other topic.
    Query parameters may come in any order; retry-after in any case."""
    if not isinstance(topic, str):
        try:
            check_utf8(topic)
            topic = bytes(topic).decode()
        except UnicodeError:
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "response topic is not UTF-8")
    if not topic.startswith(_RESPONSE_PREFIX):
        return None
    rest = topic[len(_RESPONSE_PREFIX) :]
    status_text, _, query = rest.partition("/")
    try:
        status = int(status_text)
    except ValueError:
        raise ProvisioningError(errors.MALFORMED_RESPONSE, "response topic has no status code")
    if query.startswith("?"):
        query = query[1:]
    rid = None
    retry_after = None
    for part in query.split("&"):
        key, _, value = part.partition("=")
        key = key.lower()
        if key == "$rid":
            rid = value
        elif key == "retry-after":
            try:
                retry_after = int(value)
            except ValueError:
                raise ProvisioningError(errors.MALFORMED_RESPONSE, "retry-after is not a whole number")
            if retry_after < 0:
                raise ProvisioningError(errors.MALFORMED_RESPONSE, "retry-after is negative")
    return status, rid, retry_after


def _json_object(body, what):
    if not isinstance(body, (bytes, bytearray, str)):
        value = body  # parsed as it streamed in (azprov.bundle.Extractor)
    elif not body:
        return None
    else:
        try:
            # json.loads takes the received bytes as they are: decoding to str first would hold the body twice.
            if not isinstance(body, str):
                check_utf8(body)
            value = json.loads(body)
        except (ValueError, UnicodeError):
            raise ProvisioningError(errors.MALFORMED_RESPONSE, what + " is not valid JSON")
    if not isinstance(value, dict):
        raise ProvisioningError(errors.MALFORMED_RESPONSE, what + " is not a JSON object")
    return value


def _string_field(obj, name, where, required=True):
    value = obj.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or (required and not value):
        raise ProvisioningError(errors.MALFORMED_RESPONSE, "%s.%s is missing or not a string" % (where, name))
    return value


def service_error(status, body, retry_after=None):
    """The classified error for a status >= 400, carrying the service's errorCode, trackingId and message."""
    try:
        info = _json_object(body, "error body") or {}
    except ProvisioningError:
        info = {}
    code = info.get("errorCode")
    tracking = info.get("trackingId")
    message = info.get("message")
    if not isinstance(message, str) or not message:
        message = "DPS answered status %d" % status
    if status == 401:
        kind = errors.AUTHENTICATION
    elif status == 404:
        kind = errors.NOT_FOUND
    elif status == 429:
        kind = errors.THROTTLED
    elif status >= 500:
        kind = errors.SERVICE_UNAVAILABLE
    else:
        kind = errors.BAD_REQUEST
    return ProvisioningError(
        kind,
        message,
        status=status,
        error_code=code if isinstance(code, int) else None,
        tracking_id=tracking if isinstance(tracking, str) else None,
        retry_after=retry_after,
    )


class Registration:
    """One registration, from the register request to an assignment or a classified error.

    start() gives the first request; each response goes to on_message(), which returns None (keep waiting) or the
    next request as (delay_s, topic, body), delay_s None for the policy's default wait; when `done` is true, `result` holds the registrationState (a dict) with
    `operation_id`. Final errors are raised as ProvisioningError. A request is (delay_s, topic, body)."""

    def __init__(self, registration_id, payload=None, max_polls=DEFAULT_MAX_POLLS, bundle_sink=None, csr=None):
        self.registration_id = registration_id
        # Given a sink (azprov.store.Incoming), a 200 answer's trust bundle certificates are streamed into it while
        # the body is parsed (azprov.bundle.extract); `streamed` then holds their sha256 values.
        self.bundle_sink = bundle_sink
        self.streamed = []
        self.payload = payload
        self.csr = csr  # base64 DER CSR sent with every register request (certificate issuance), or None
        self.max_polls = max_polls
        self._next_rid = 0
        self.rid = None
        self.operation_id = None
        self.polls = 0
        self.done = False
        self.result = None
        self._last = None

    def _request(self, delay_s, operation_id=None):
        self._next_rid += 1
        self.rid = str(self._next_rid)
        if operation_id is None:
            request = (delay_s, _REGISTER_TOPIC + self.rid, register_body(self.registration_id, self.payload, self.csr))
        else:
            request = (delay_s, "%s%s&operationId=%s" % (_POLL_TOPIC, self.rid, operation_id), b"")
        self._last = operation_id
        return request

    def start(self):
        return self._request(0)

    def resume(self):
        """The request to send on a new connection after the old one dropped: poll the operation DPS already
        accepted, or register again (registering twice is safe: DPS returns the same assignment)."""
        return self._request(0, self.operation_id)

    def on_message(self, topic, body, streamed=None):
        """`streamed`: the certificates' sha256 list when the shell already parsed `body` as it arrived
        (azprov.bundle.Extractor: `body` is then the parsed answer, its certificates streamed to the sink)."""
        parsed = parse_topic(topic)
        if parsed is None or self.done:
            return None
        status, rid, retry_after = parsed
        if rid != self.rid:
            return None  # a late answer to a request we already gave up on
        if status >= 400:
            raise service_error(status, body, retry_after)
        if status not in (200, 202):
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "unexpected status %d" % status, status=status)
        if self.bundle_sink is not None and status == 200 and body:
            if streamed is None:
                from azprov.bundle import extract

                self.bundle_sink.start()
                body, streamed = extract(body, self.bundle_sink)
            self.streamed = streamed
        reply = _json_object(body, "response body")
        if reply is None:
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "response body is empty", status=status)
        state = reply.get("registrationState")
        if state is not None and not isinstance(state, dict):
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "registrationState is not an object", status=status)
        op_status = reply.get("status")
        if op_status is None and state is not None:
            op_status = state.get("status")
        if not isinstance(op_status, str):
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "response has no status", status=status)
        operation_id = reply.get("operationId")
        if operation_id is not None and not isinstance(operation_id, str):
            raise ProvisioningError(errors.MALFORMED_RESPONSE, "operationId is not a string", status=status)
        if operation_id:
            self.operation_id = operation_id
        if status == 202 or op_status in ("assigning", "unassigned"):
            if not self.operation_id:
                raise ProvisioningError(errors.MALFORMED_RESPONSE, "202 without operationId", status=status)
            self.polls += 1
            if self.polls > self.max_polls:
                raise ProvisioningError(errors.TIMEOUT, "still assigning after %d polls" % self.max_polls)
            # The wait before polling: the service's retry-after, or None for the policy's default.
            return self._request(retry_after, self.operation_id)
        state = state or {}
        if op_status == "assigned":
            where = "registrationState"
            _string_field(state, "assignedHub", where)
            _string_field(state, "deviceId", where)
            _string_field(state, "substatus", where, required=False)
            issued_chain(state)
            self.done = True
            self.result = state
            return None
        if op_status == "failed":
            code = state.get("errorCode")
            message = state.get("errorMessage")
            raise ProvisioningError(
                errors.ASSIGNMENT_FAILED,
                message if isinstance(message, str) and message else "assignment failed",
                status=status,
                error_code=code if isinstance(code, int) else None,
                tracking_id=reply.get("trackingId") if isinstance(reply.get("trackingId"), str) else None,
            )
        if op_status == "disabled":
            raise ProvisioningError(errors.DISABLED, "enrollment is disabled", status=status)
        raise ProvisioningError(errors.MALFORMED_RESPONSE, "unknown registration status", status=status)
