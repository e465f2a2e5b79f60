# The IoT Hub leg's messages without any I/O: topic builders for telemetry, twin requests and method answers, and
# one parser for everything the hub sends (twin answers, desired patches, method requests, cloud-to-device messages).
# The shell (azprov.client) owns the socket; this module only takes topic and body bytes and returns decisions.
import json

from micropython import const

from azprov import errors
from azprov.encoding import check_utf8, url_encode
from azprov.errors import ProvisioningError

# What a device subscribes to after every connect (IoT Hub keeps at most 5 subscriptions per device).
TWIN_RESPONSES = "$iothub/twin/res/#"
DESIRED_PATCHES = "$iothub/twin/PATCH/properties/desired/#"
METHOD_REQUESTS = "$iothub/methods/POST/#"


def c2d_filter(device_id):
    return "devices/%s/messages/devicebound/#" % device_id


# What parse() returns in Message.kind
TWIN_RESPONSE = "twin_response"
DESIRED = "desired"
METHOD = "method"
C2D = "c2d"

# System properties by the names an application uses (the property bag spells them with "$.").
SYSTEM_PROPERTIES = {
    "content_type": "$.ct",
    "content_encoding": "$.ce",
    "message_id": "$.mid",
    "correlation_id": "$.cid",
}
_RID_LIMIT = const(64)
_HEX_DIGITS = "0123456789ABCDEF"

_TWIN_RES = "$iothub/twin/res/"
_DESIRED = "$iothub/twin/PATCH/properties/desired/"
_METHOD = "$iothub/methods/POST/"

# What the client does with a message it cannot hold (Message.too_large), by kind: MQTT gives a device no way to
# refuse a message, so a C2D message is acknowledged (else the hub sends it again on every connect), a method is
# answered 413, a desired patch or twin answer is read past and logged.
ACKNOWLEDGED = "acknowledged"
ANSWERED_413 = "answered_413"
SKIPPED = "skipped"


class TooLarge:
    """Stands for a payload of `size` bytes the device read past without holding (too large for its free heap)."""

    def __init__(self, size):
        self.size = size

    def __len__(self):
        return 0  # holds nothing


def kind_of(topic):
    """The kind of message a topic (bytes or str) announces, read before its payload: TWIN_RESPONSE, DESIRED, METHOD,
    or C2D for anything else (parse() checks the device id and says what is wrong)."""
    if isinstance(topic, str):
        topic = topic.encode()
    if topic.startswith(b"$iothub/twin/res/"):
        return TWIN_RESPONSE
    if topic.startswith(b"$iothub/twin/PATCH/properties/desired/"):
        return DESIRED
    if topic.startswith(b"$iothub/methods/POST/"):
        return METHOD
    return C2D


def handling_bytes(kind, size):
    """Heap a `size`-byte payload of `kind` needs besides itself to be handled: a C2D body is handed over as it is
    (a little for its property bag), a JSON one is parsed (its parsed form is about its own size again)."""
    if kind == C2D:
        return 1024
    return size + 2048


def too_large_action(kind):
    """What the client does with a message of `kind` it cannot hold (ACKNOWLEDGED, ANSWERED_413 or SKIPPED)."""
    if kind == C2D:
        return ACKNOWLEDGED
    if kind == METHOD:
        return ANSWERED_413
    return SKIPPED


def _encode_name(name):
    # "$.ct" keeps its "$." (IoT Hub accepts it raw and edgeHub matches it so); the rest is percent-encoded.
    if name.startswith("$."):
        return "$." + url_encode(name[2:])
    return url_encode(name)


def property_bag(properties):
    """`k=v&k2=v2` with every name and value percent-encoded; `properties` is a dict or (name, value) pairs.
    A value of None gives the name alone (as IoT Hub sends a property without a value)."""
    if not properties:
        return ""
    items = properties.items() if isinstance(properties, dict) else properties
    parts = []
    for name, value in items:
        if not isinstance(name, str) or not name:
            raise ProvisioningError(errors.CONFIGURATION, "property names must be non-empty strings")
        if value is None:
            parts.append(_encode_name(name))
        else:
            parts.append(_encode_name(name) + "=" + url_encode(str(value)))
    return "&".join(parts)


def telemetry_topic(device_id, properties=None, **system):
    """devices/{id}/messages/events/ plus the property bag: system properties first (content_type=...,
    content_encoding=..., message_id=..., correlation_id=...), then the application's `properties`."""
    pairs = []
    for word in ("message_id", "correlation_id", "content_type", "content_encoding"):
        value = system.pop(word, None)
        if value is not None:
            pairs.append((SYSTEM_PROPERTIES[word], value))
    if system:
        raise ProvisioningError(errors.CONFIGURATION, "unknown system property %s" % sorted(system)[0])
    if properties:
        pairs.extend(properties.items() if isinstance(properties, dict) else properties)
    return "devices/%s/messages/events/%s" % (device_id, property_bag(pairs))


def twin_get_topic(rid):
    return "$iothub/twin/GET/?$rid=%s" % rid


def reported_patch_topic(rid):
    return "$iothub/twin/PATCH/properties/reported/?$rid=%s" % rid


def method_response_topic(status, rid):
    return "$iothub/methods/res/%d/?$rid=%s" % (status, rid)


def reported_body(patch):
    if not isinstance(patch, dict):
        raise ProvisioningError(errors.CONFIGURATION, "a reported patch must be a JSON object")
    return json.dumps(patch)


def method_response_body(payload):
    return b"" if payload is None else json.dumps(payload)


def _malformed(what):
    return ProvisioningError(errors.MALFORMED_RESPONSE, what)


def url_decode(text):
    """Percent-decoding as IoT Hub encodes (`+` stays `+`); a malformed escape or non-UTF-8 result raises."""
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    raw = text.encode()
    n = len(raw)
    while i < n:
        byte = raw[i]
        if byte == 37:  # "%"
            if i + 2 >= n:
                raise _malformed("bad percent-encoding in %r" % text[:40])
            high = _HEX_DIGITS.find(chr(raw[i + 1]).upper())
            low = _HEX_DIGITS.find(chr(raw[i + 2]).upper())
            if high < 0 or low < 0:
                raise _malformed("bad percent-encoding in %r" % text[:40])
            out.append(high * 16 + low)
            i += 3
        else:
            out.append(byte)
            i += 1
    try:
        check_utf8(out)
        return bytes(out).decode()
    except UnicodeError:
        raise _malformed("percent-encoded text is not UTF-8")


def parse_property_bag(bag):
    """`k=v&%24.ct=application%2Fjson&flag` -> {"k": "v", "$.ct": "application/json", "flag": None}."""
    properties = {}
    for part in bag.split("&"):
        if not part:
            continue
        name, eq, value = part.partition("=")
        name = url_decode(name)
        if not name:
            raise _malformed("property without a name")
        properties[name] = url_decode(value) if eq else None
    return properties


def _query(text):
    # "?$rid=1&$version=4" or "$rid=1..." -> dict of raw values (keys lower-cased: IoT Hub's case varies).
    if text.startswith("?"):
        text = text[1:]
    out = {}
    for part in text.split("&"):
        if part:
            name, _, value = part.partition("=")
            out[name.lower()] = value
    return out


def _int(text, what):
    try:
        value = int(text)
    except (TypeError, ValueError):
        raise _malformed("%s is not a whole number" % what)
    return value


def _rid(query, what):
    rid = query.get("$rid")
    if not rid or len(rid) > _RID_LIMIT:
        raise _malformed("%s has no usable $rid" % what)
    return rid


def _json(body, what, want_object=True):
    if not body or body == b" ":
        return None
    try:
        if not isinstance(body, str):
            check_utf8(body)
        value = json.loads(body)
    except (ValueError, UnicodeError):
        raise _malformed(what + " is not valid JSON")
    if want_object and not isinstance(value, dict):
        raise _malformed(what + " is not a JSON object")
    return value


class Message:
    """One message from the hub: `kind` (TWIN_RESPONSE, DESIRED, METHOD, C2D) and what goes with it.

    twin_response: status, rid, version (reported $version on 204, or None), body (dict or None)
    desired: version, body (the patch without "$version")
    method: name, rid, body (the request's JSON value or None)
    c2d: properties (dict, "$." names for system properties), body (bytes as received; a bytearray when it was
         received in pieces, from 1 KB on: not copied again)
    `error` is a ProvisioningError when the message was recognised but is unusable (the shell still answers
    or acknowledges it); then `body` is None. `too_large` is the payload's size when it could not be held (read
    past, or too large to parse in the free heap): then `error` is an out_of_memory one and what the topic says
    (rid, method name, $version, properties) is still there."""

    def __init__(self, kind):
        self.kind = kind
        self.status = None
        self.rid = None
        self.version = None
        self.name = None
        self.properties = None
        self.body = None
        self.error = None
        self.too_large = None


def _too_large(message, size):
    message.too_large = size
    message.error = ProvisioningError(
        errors.OUT_OF_MEMORY, "a %d-byte %s does not fit the free heap" % (size, message.kind.replace("_", " "))
    )
    message.body = None
    return message


def parse(device_id, topic, body):
    """The Message for one PUBLISH from the hub (`body` bytes, or a TooLarge for a payload read past). A topic this
    device does not expect (or that is not UTF-8) raises a ProvisioningError (malformed_response) naming what is
    wrong."""
    message = _parse_topic(device_id, topic)
    if isinstance(body, TooLarge):
        return _too_large(message, body.size)
    try:
        _parse_body(message, body, topic)
    except ProvisioningError as exc:
        message.error = exc
        message.body = None
        if message.kind == DESIRED:
            message.version = None
    except MemoryError:  # held, but its parsed form does not fit
        _too_large(message, len(body))
    return message


def _parse_topic(device_id, topic):
    # Everything the topic says, before the payload is looked at.
    if not isinstance(topic, str):
        try:
            check_utf8(topic)
            topic = bytes(topic).decode()
        except UnicodeError:
            raise _malformed("topic is not UTF-8")
    if topic.startswith(_TWIN_RES):
        status_text, _, query = topic[len(_TWIN_RES) :].partition("/")
        message = Message(TWIN_RESPONSE)
        message.status = _int(status_text, "twin response status")
        params = _query(query)
        message.rid = _rid(params, "twin response")
        if "$version" in params:
            message.version = _int(params["$version"], "twin response $version")
        return message
    if topic.startswith(_DESIRED):
        message = Message(DESIRED)
        params = _query(topic[len(_DESIRED) :])
        if "$version" in params:
            try:
                message.version = _int(params["$version"], "desired $version")
            except ProvisioningError as exc:
                message.error = exc
        return message
    if topic.startswith(_METHOD):
        name, _, query = topic[len(_METHOD) :].partition("/")
        message = Message(METHOD)
        message.rid = _rid(_query(query), "method request")
        message.name = url_decode(name)
        if not message.name:
            raise _malformed("method request has no method name")
        return message
    prefix = "devices/%s/messages/devicebound" % device_id
    if topic == prefix or topic.startswith(prefix + "/"):
        message = Message(C2D)
        try:
            message.properties = parse_property_bag(topic[len(prefix) + 1 :])
            message.properties.pop("$.to", None)  # the hub's own address for the message: nothing to act on
        except ProvisioningError as exc:
            message.error = exc
        return message
    raise _malformed("unexpected topic %r" % topic[:60])


def _parse_body(message, body, topic):
    kind = message.kind
    if kind == TWIN_RESPONSE:
        message.body = _json(body, "twin response body")
    elif kind == DESIRED:
        topic_error, message.error = message.error, None
        patch = _json(body, "desired patch")
        if patch is None:
            raise _malformed("desired patch is empty")
        version = patch.pop("$version", None)
        if version is None:
            if topic_error is not None:
                raise topic_error
            version = message.version
        if not isinstance(version, int) or isinstance(version, bool):
            raise _malformed("desired patch has no whole-number $version")
        message.version = version
        message.body = patch
    elif kind == METHOD:
        message.body = _json(body, "method request body", want_object=False)
    elif message.error is None:
        message.body = body if isinstance(body, bytearray) and len(body) >= 1024 else bytes(body)


def twin_response_error(message, what):
    """The classified error for a twin answer other than 200/204."""
    status = message.status
    if status == 429:
        kind = errors.THROTTLED
    elif status >= 500:
        kind = errors.SERVICE_UNAVAILABLE
    elif status in (401, 403):
        kind = errors.AUTHENTICATION
    elif status == 404:
        kind = errors.NOT_FOUND
    else:
        kind = errors.BAD_REQUEST
    return ProvisioningError(kind, "%s answered status %d" % (what, status), status=status)


def twin_document(message):
    """{"desired": {...}, "reported": {...}} from a twin GET answer, each with its "$version"; or raises."""
    if message.error is not None:
        raise message.error
    if message.status != 200:
        raise twin_response_error(message, "twin GET")
    twin = message.body
    if twin is None:
        raise _malformed("twin GET answer is empty")
    for section in ("desired", "reported"):
        part = twin.get(section)
        if not isinstance(part, dict):
            raise _malformed("twin GET answer has no %s object" % section)
        version = part.get("$version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise _malformed("twin GET answer's %s has no whole-number $version" % section)
    return twin


class DesiredSync:
    """Which desired properties the application has already been given. A twin GET after each connect hands over
    the full desired section when it is newer than the last version given; a patch is handed over only when its
    $version is newer, so nothing is applied twice and nothing missed while offline is lost."""

    def __init__(self):
        self.version = None

    def on_twin(self, desired):
        """The (patch, version) to hand the application after a twin GET, or None when it has nothing new."""
        version = desired["$version"]
        if self.version is not None and version <= self.version:
            return None
        self.version = version
        patch = {}
        for name in desired:
            if name != "$version":
                patch[name] = desired[name]
        return patch, version

    def on_patch(self, version):
        """True when a patch with this $version is new (and is now the last given)."""
        if self.version is not None and version <= self.version:
            return False
        self.version = version
        return True
