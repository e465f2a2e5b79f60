"""IoT Hub's size limits, as the emulator enforces them (one place: hub.py, control.py and gateway.py import these).

Each constant names IoT Hub's documented figure and where it is stated. "reference" is the project's research notes
`x509-and-hub-mqtt.md` (section C, which names its sources); "quotas doc" is MicrosoftDocs/azure-docs
`articles/iot-hub/iot-hub-devguide-quotas-throttling.md`; "twins doc" is `articles/iot-hub/iot-hub-devguide-device-twins.md`.
KB here means 1024 bytes, as IoT Hub counts them.
"""

from __future__ import annotations

# --- what the service side (control port, CLI, Python API) may send; over the limit -> 413

# Cloud-to-device message body: 64 KB (quotas doc, "Maximum size of cloud-to-device message"). Counted on the body.
C2D_MAX_BODY_BYTES = 64 * 1024

# Direct method request payload: 128 KB (reference C.3, "body JSON or empty, QoS 0, <= 128 KB"; quotas doc). Counted
# on the payload's JSON text, as it goes over the wire to the device.
METHOD_MAX_PAYLOAD_BYTES = 128 * 1024

# Desired properties: 32 KB for the whole desired section (reference C.2, "desired/reported 32 KB each; 413 on
# oversize"; twins doc: "IoT Hub rejects with an error all operations that would increase the size of ... above
# the limit"). A patch over it is refused too. Counted as twin_size() below says.
TWIN_DESIRED_MAX_BYTES = 32 * 1024

# --- what a DEVICE sends through the gateway

# Telemetry (device-to-cloud) message: 256 KB (reference C.1, "Max message 256 KB (MQTT doc)"; edgeHub's
# `MaxInboundMessageSize 262144`, reference C.2). Counted on body + property bag. MQTT 3.1.1 cannot refuse one
# PUBLISH, so an oversize message ends the connection (not recorded, not acknowledged).
TELEMETRY_MAX_BYTES = 256 * 1024

# Reported properties: 32 KB for the reported section, as for desired (reference C.2; twins doc). Answered
# `$iothub/twin/res/413/?$rid=..` and not applied.
TWIN_REPORTED_MAX_BYTES = 32 * 1024

# Method response payload from the device: 128 KB (quotas doc: direct method payload, request and response). The
# caller gets status 413 from the hub instead of the answer (the emulator's choice: IoT Hub's exact answer is not
# documented).
METHOD_MAX_RESPONSE_BYTES = 128 * 1024

# Depth of JSON objects in desired and reported properties: 10 (IoT Hub service SDKs' TwinProperties: "The maximum
# depth of the object is 10"), counted below the section itself: a patch may nest 10 objects (or arrays) deep.
# Deeper -> 400.
TWIN_MAX_DEPTH = 10

# --- the emulator's own bounds (not IoT Hub figures)

# One control-port request line. Large enough for the largest legal request (a 128 KB method payload, escaped
# again inside the request's JSON); a longer line is answered 413 and the connection closed.
CONTROL_MAX_LINE_BYTES = 1024 * 1024
# Seconds a control-port client has to send a whole request line; then it is answered 408 and disconnected.
CONTROL_IDLE_TIMEOUT_S = 5.0


def twin_size(value) -> int:
    """A twin section's size as IoT Hub computes it (twins doc, "Twin size"): the sum of each property's key and value;
    keys and strings as UTF-8 bytes not counting control characters (C0 and C1), numbers 8 bytes, booleans 4; nested
    objects (and, the emulator's reading, arrays) add up what they contain. Members starting with `$` (`$version`)
    are not counted."""
    if isinstance(value, dict):
        return sum(_text_size(k) + twin_size(v) for k, v in value.items() if not str(k).startswith("$"))
    if isinstance(value, list):
        return sum(twin_size(v) for v in value)
    if isinstance(value, bool):
        return 4
    if isinstance(value, (int, float)):
        return 8
    if isinstance(value, str):
        return _text_size(value)
    return 0  # null


def _text_size(text) -> int:
    return len("".join(c for c in str(text) if not _is_control(c)).encode("utf-8", errors="surrogatepass"))


def _is_control(c: str) -> bool:
    code = ord(c)
    return code < 0x20 or 0x7F <= code < 0xA0


def json_depth(value, limit: int) -> int:
    """How deep `value`'s objects and arrays nest (a scalar is 0), counting no further than `limit` + 1 (so a
    document nested thousands deep costs no recursion)."""
    depth, level = 0, [value]
    while level and depth <= limit:
        nested = []
        for item in level:
            if isinstance(item, dict):
                nested.extend(item.values())
            elif isinstance(item, list):
                nested.extend(item)
        if not nested and not any(isinstance(i, (dict, list)) for i in level):
            break
        depth += 1
        level = nested
    return depth
