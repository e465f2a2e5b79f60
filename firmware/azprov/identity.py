# The device's X.509 identity: reads certificate_file and private_key_file (PEM or DER), checks them with the DER
# reader before anything connects, and hands the TLS stack DER only (what every MicroPython build can load). Every
# problem is a `configuration` error naming the field; the key's bytes never appear in any message.
from azprov import der, errors, log
from azprov.encoding import b64decode
from azprov.errors import ProvisioningError

_MAX_FILE_BYTES = 16384
_DAY_S = 86400
_KEY_LABELS = ("PRIVATE KEY", "EC PRIVATE KEY", "RSA PRIVATE KEY")


def _bad(field, message):
    return ProvisioningError(errors.CONFIGURATION, "%s: %s" % (field, message))


def _read(path, field):
    from azprov.store import read_bounded

    try:
        data = read_bounded(path, _MAX_FILE_BYTES)
    except OSError as exc:
        raise _bad(field, "%s %s" % (path, "does not exist" if exc.args and exc.args[0] == 2 else "cannot be read"))
    if data is None:
        raise _bad(field, "%s is larger than %d bytes" % (path, _MAX_FILE_BYTES))
    if not data:
        raise _bad(field, "%s is empty" % path)
    return data


def _pem_blocks(text):
    """(label, headers_present, der) for each PEM block in `text`; ValueError for bad base64 or framing."""
    out = []
    label = None
    body = None
    headers = False
    for raw in text.split("\n"):
        line = raw.strip()
        if not line:
            continue
        if line.startswith("-----BEGIN ") and line.endswith("-----"):
            if label is not None:
                raise ValueError("a PEM block has no END line")
            label = line[11:-5]
            body = []
            headers = False
        elif line.startswith("-----END ") and line.endswith("-----"):
            if label is None or line[9:-5] != label:
                raise ValueError("a PEM END line does not match its BEGIN line")
            out.append((label, headers, b64decode("".join(body)) if not headers else b""))
            label = None
        elif label is not None:
            if ":" in line:  # RFC 1421 headers (Proc-Type: 4,ENCRYPTED / DEK-Info) mark an encrypted key
                headers = True
            else:
                body.append(line)
    if label is not None:
        raise ValueError("a PEM block has no END line")
    return out


def _is_pem(data):
    return data.lstrip()[:11] == b"-----BEGIN "


def read_certificates(path, field="certificate_file"):
    """The DER certificates in a PEM or DER file, in file order (device certificate first)."""
    data = _read(path, field)
    try:
        if _is_pem(data):
            blocks = _pem_blocks(data.decode())
            certificates = [block[2] for block in blocks if block[0] == "CERTIFICATE"]
        else:
            certificates = der.split_concatenated(data)
    except (ValueError, UnicodeError) as exc:
        raise _bad(field, "%s is not a PEM or DER certificate file (%s)" % (path, exc))
    if not certificates:
        raise _bad(field, "%s holds no certificate" % path)
    return certificates


def read_private_key(path, field="private_key_file"):
    """The DER private key in a PEM or DER file."""
    data = _read(path, field)
    if _is_pem(data):
        try:
            blocks = _pem_blocks(data.decode())
        except (ValueError, UnicodeError):
            raise _bad(field, "%s is not a PEM or DER private key" % path)
        for label, headers, body in blocks:
            if label == "ENCRYPTED PRIVATE KEY" or (label in _KEY_LABELS and headers):
                raise _bad(field, "%s is encrypted; the device needs an unencrypted key" % path)
            if label in _KEY_LABELS:
                return body
        raise _bad(field, "%s holds no private key" % path)
    return data


def check(certificates, key, registration_id, now=None, warn_days=30):
    """Checks a loaded identity; returns the device certificate's info (azprov.der.certificate). `now` is unix time
    (None: the clock is not set and the dates cannot be judged)."""
    infos = []
    for index, cert in enumerate(certificates):
        try:
            infos.append(der.certificate(cert))
        except ValueError as exc:
            raise _bad("certificate_file", "certificate %d cannot be parsed (%s)" % (index + 1, exc))
    device = infos[0]
    try:
        key_info = der.private_key(key)
    except ValueError as exc:
        raise _bad("private_key_file", str(exc))
    kind = key_info["key_type"]
    if kind == "encrypted":
        raise _bad("private_key_file", "is encrypted; the device needs an unencrypted key")
    if not (kind == "ec" and key_info["key_bits"] == 256) and not (kind == "rsa" and key_info["key_bits"] == 2048):
        raise _bad("private_key_file", "is a %s key; the device supports EC P-256 and RSA 2048" % _describe(key_info))
    if device["key_type"] != kind or (
        key_info["public_key"] is not None and key_info["public_key"] != device["public_key"]
    ):
        raise _order_problem(infos, key_info) or _bad(
            "private_key_file", "does not belong to the device certificate in certificate_file"
        )
    if device["common_name"] != registration_id:
        raise _bad(
            "registration_id",
            "%r differs from the certificate's CN %r (certificate_file)" % (registration_id, device["common_name"]),
        )
    if now is not None:
        if device["not_after"] <= now:
            raise ProvisioningError(
                errors.AUTHENTICATION,
                "certificate_file: the device certificate expired (not_after %s)" % device["not_after_text"],
            )
        left = device["not_after"] - now
        if left < warn_days * _DAY_S:
            log.warning("certificate_expiring", ("not_after", device["not_after_text"]), ("days_left", left // _DAY_S))
    return device


def _order_problem(infos, key_info):
    """The certificate_file error when the file is out of order (the key belongs to a later certificate than the
    first, or the first is a CA while a later one is not), else None: the same verdict as the host's
    host_tools/provisioning/x509_identity.order_problem."""
    count = len(infos)
    public = key_info["public_key"]
    for index in range(1, count):
        info = infos[index]
        if public is not None and info["key_type"] == key_info["key_type"] and info["public_key"] == public:
            return _bad(
                "certificate_file",
                "the device certificate (the one private_key_file belongs to) is certificate %d of %d; it must come "
                "first, then its intermediates" % (index + 1, count),
            )
    if count > 1 and infos[0]["ca"] and not all(info["ca"] for info in infos[1:]):
        return _bad(
            "certificate_file",
            "the first certificate (CN=%s) is a CA; the device certificate must come first, then its intermediates"
            % infos[0]["common_name"],
        )
    return None


def _describe(info):
    if info["key_type"] == "ec":
        return "EC (not P-256)"
    if info["key_type"] == "rsa":
        return "RSA %d" % info["key_bits"]
    return "non-EC, non-RSA"


def load(cfg):
    """Reads and checks the files named by an X.509 provisioning file; sets cfg["client_certificates"] (DER list,
    device certificate first) and cfg["client_key"] (DER). Logs the identity (never the key)."""
    from azprov.clock import RELEASED, unix_time

    certificates = read_certificates(cfg["certificate_file"])
    key = read_private_key(cfg["private_key_file"])
    now = unix_time()
    device = check(
        certificates,
        key,
        cfg["registration_id"],
        now if now >= RELEASED else None,
        cfg["certificate_expiry_warning_days"],
    )
    log.info(
        "certificate_loaded",
        ("common_name", device["common_name"]),
        ("issuer", device["issuer_common_name"] or "-"),
        ("certificates", len(certificates)),
        ("not_after", device["not_after_text"]),
    )
    cfg["client_certificates"] = certificates
    cfg["client_key"] = key
