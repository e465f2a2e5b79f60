"""X.509 devices: their certificate and key files (given, or issued by an enrollment-group CA from `pki`), checked
with the device's rules before they are written beside the provisioning file."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from host_tools.provisioning.validation import ProvisioningFileError, check_config, file_text
from host_tools.provisioning.writing import (
    DeviceSettings,
    as_file_error,
    check_writable,
    plan_ca_file,
    refuse_existing,
    write_atomic,
    write_private,
)
from host_tools.secret_files import write_secret

X509_FILE_LIMIT = 16 * 1024  # what the device reads into its heap (azprov.identity)


@dataclass
class IdentityPlan:
    """A device's certificate file and key file as they will be written beside its provisioning file."""

    cert_name: str
    key_name: str
    cert_bytes: bytes = field(repr=False)
    key_bytes: bytes = field(repr=False)  # private key: mode 0600, never shown


def x509_config(settings: DeviceSettings, registration_id: str, ca_name: str, cert_name: str, key_name: str) -> dict:
    config = {}
    for name, value in settings.config(registration_id, "", ca_name).items():
        if name == "symmetric_key":
            config.update(attestation="x509", certificate_file=cert_name, private_key_file=key_name)
        elif name != "sas_ttl_s":  # no token is signed with X.509
            config[name] = value
    return config


def plan_identity(
    registration_id: str,
    certificate_file: Path | None = None,
    private_key_file: Path | None = None,
    group_ca: Path | None = None,
    group_ca_key: Path | None = None,
    key_type: str = "ec",
) -> IdentityPlan:
    """The files of an X.509 device: given ones (copied to certs/), or a new device certificate (CN = registration id,
    EC P-256 or RSA 2048) issued by the group CA. When that CA is an intermediate, it (and any chain after it in its
    file) follows the device certificate, as the device must send it."""
    from host_tools.provisioning.certificates import PkiError
    from host_tools.provisioning.device_rules import RuleError, read_bounded
    from host_tools.provisioning.pki_files import load_issued
    from host_tools.provisioning.x509_group_ca import make_device_cert, private_key_bytes

    if certificate_file is not None or private_key_file is not None:
        if certificate_file is None or private_key_file is None or group_ca is not None:
            raise ProvisioningFileError("give --certificate-file with --private-key-file, or --group-ca with its key")
        try:
            cert_bytes = read_bounded(certificate_file, X509_FILE_LIMIT, "certificate file")
        except RuleError as exc:
            raise ProvisioningFileError(f"certificate_file (--certificate-file): {exc}") from None
        try:
            key_bytes = read_bounded(private_key_file, X509_FILE_LIMIT, "private key file")
        except RuleError as exc:
            raise ProvisioningFileError(f"private_key_file (--private-key-file): {exc}") from None
        return IdentityPlan(
            f"certs/{Path(certificate_file).name}", f"certs/{Path(private_key_file).name}", cert_bytes, key_bytes
        )
    if group_ca is None or group_ca_key is None:
        raise ProvisioningFileError(
            "X.509 needs the device's files (--certificate-file, --private-key-file) or a group CA to issue them "
            "(--group-ca, --group-ca-key)"
        )
    try:
        ca = load_issued(group_ca, group_ca_key)
        issued = make_device_cert(ca, registration_id, key_type)
    except PkiError as exc:
        raise ProvisioningFileError(str(exc)) from None
    cert_bytes = issued.cert_pem(with_chain=True)
    return IdentityPlan(
        f"certs/{registration_id}.pem",
        f"certs/{registration_id}-key.pem",
        cert_bytes,
        private_key_bytes(issued.key, "pkcs8", "pem"),
    )


def order_problem(cert_bytes: bytes, key_bytes: bytes) -> str | None:
    """'certificate_file: ...' when the certificate file is in the wrong order: the key belongs to a later
    certificate than the first, or the first is a CA (basicConstraints CA:true) while a later one is not. The device
    would only say the key does not belong to the first certificate; the host names the real fault. None when the
    order is right, or when the files do not parse (the device's rules then say what is wrong)."""
    import warnings

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    try:
        with warnings.catch_warnings():  # a diagnosis only: cryptography's deprecation notes do not matter here
            warnings.simplefilter("ignore")
            if b"-----BEGIN" in cert_bytes:
                certificates = x509.load_pem_x509_certificates(cert_bytes)
            else:
                certificates = [x509.load_der_x509_certificate(cert_bytes)]
            if b"-----BEGIN" in key_bytes:
                key = serialization.load_pem_private_key(key_bytes, password=None)
            else:
                key = serialization.load_der_private_key(key_bytes, password=None)
        public = key.public_key().public_numbers()
        owners = [i for i, cert in enumerate(certificates) if cert.public_key().public_numbers() == public]
    except (ValueError, TypeError, AttributeError):
        return None

    def is_ca(cert) -> bool:
        try:
            return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
        except x509.ExtensionNotFound:
            return False

    count = len(certificates)
    if owners and owners[0] > 0:
        return (
            f"certificate_file: the device certificate (the one private_key_file belongs to) is certificate "
            f"{owners[0] + 1} of {count}; it must come first, then its intermediates"
        )
    if not owners and count > 1 and is_ca(certificates[0]) and not all(is_ca(c) for c in certificates[1:]):
        return (
            f"certificate_file: the first certificate ({certificates[0].subject.rfc4514_string()}) is a CA; "
            "the device certificate must come first, then its intermediates"
        )
    return None


def judge_planned_identity(config: dict, plan: IdentityPlan, where: str, ca: Path | None = None) -> dict:
    """Run the device's identity checks (and the host's chain checks) on planned files before anything is written."""
    import tempfile

    from host_tools.provisioning.device_rules import RuleError, judge_identity

    problem = order_problem(plan.cert_bytes, plan.key_bytes)
    if problem:
        raise ProvisioningFileError(f"{where}: {problem} ({plan.cert_name})")
    with tempfile.TemporaryDirectory(prefix="azprov-identity-") as tmp:
        cert, key = Path(tmp) / "certificate", Path(tmp) / "key"
        cert.write_bytes(plan.cert_bytes)
        fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(plan.key_bytes)
        trial = dict(config, certificate_file=str(cert), private_key_file=str(key))
        try:
            return judge_identity(trial, where, ca)
        except RuleError as exc:
            # Name the user's files, not the temporary ones.
            text = str(exc).replace(str(cert), plan.cert_name).replace(str(key), plan.key_name)
            raise ProvisioningFileError(text) from None


def write_identity(out_dir: Path, plan: IdentityPlan) -> None:
    as_file_error(out_dir / plan.cert_name, lambda: write_atomic(out_dir / plan.cert_name, plan.cert_bytes, 0o644))
    as_file_error(out_dir / plan.key_name, lambda: write_secret(out_dir / plan.key_name, plan.key_bytes))


def create_x509_provisioning_file(
    path: Path,
    settings: DeviceSettings,
    registration_id: str,
    identity: IdentityPlan,
    ca_file: Path | None = None,
    overwrite: bool = False,
    group_ca: Path | None = None,
) -> dict:
    """Write an X.509 provisioning file with its certificate and key files (certs/ beside it), after checking all of
    it with the device's rules; nothing is written unless everything will be."""
    path = Path(path)
    refuse_existing(path, overwrite)
    for name in (identity.cert_name, identity.key_name):
        target = path.parent / name
        if (
            target.exists()
            and not overwrite
            and target.read_bytes() != (identity.cert_bytes if name == identity.cert_name else identity.key_bytes)
        ):
            raise ProvisioningFileError(f"{target}: already exists (use --force to replace it)")
    plan = plan_ca_file(path.parent, ca_file, overwrite)
    config = x509_config(settings, registration_id, plan.name, identity.cert_name, identity.key_name)
    problems = check_config(config, str(path))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    judge_planned_identity(config, identity, str(path), group_ca)
    check_writable(path.parent)
    if plan.content is not None:
        as_file_error(plan.target, lambda: write_atomic(plan.target, plan.content, 0o644))
    write_identity(path.parent, identity)
    as_file_error(path, lambda: write_private(path, file_text(config)))
    return config
