# Every failure the firmware reports is a ProvisioningError with a kind from this list, so callers (and people
# reading logs) can tell a wrong key from a dead network without parsing messages.
CONFIGURATION = "configuration"
AUTHENTICATION = "authentication"
NOT_FOUND = "not_found"
DISABLED = "disabled"
ASSIGNMENT_FAILED = "assignment_failed"
BAD_REQUEST = "bad_request"
THROTTLED = "throttled"
SERVICE_UNAVAILABLE = "service_unavailable"
NETWORK = "network"
TLS_VERIFICATION = "tls_verification"
TIMEOUT = "timeout"
MALFORMED_RESPONSE = "malformed_response"
STORAGE = "storage"
CLOCK = "clock"
OUT_OF_MEMORY = "out_of_memory"
# An exception the firmware did not expect (a bug): the run loop reports it and tries again like any other.
INTERNAL = "internal"

# Kinds worth trying again after a pause; the rest need a person or a new configuration.
TRANSIENT = (THROTTLED, SERVICE_UNAVAILABLE, NETWORK, TIMEOUT)


class ProvisioningError(Exception):
    def __init__(self, kind, message, status=None, error_code=None, tracking_id=None, retry_after=None):
        super().__init__(message)
        self.kind = kind
        self.message = message
        self.status = status
        self.error_code = error_code
        self.tracking_id = tracking_id
        self.retry_after = retry_after
        # True when this is the service's answer (judged final by the protocol core), not a transport failure.
        self.answered = False

    @property
    def transient(self):
        return self.kind in TRANSIENT

    def fields(self):
        # Ordered (name, value) pairs for a log line; only what the service or the firmware said, never secrets.
        out = [("kind", self.kind)]
        if self.status is not None:
            out.append(("status", self.status))
        if self.error_code is not None:
            out.append(("error_code", self.error_code))
        if self.tracking_id:
            out.append(("tracking_id", self.tracking_id))
        out.append(("message", self.message))
        return out

    def __str__(self):
        return " ".join("%s=%s" % kv for kv in self.fields())
