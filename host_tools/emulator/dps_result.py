"""The registration result of the emulated DPS: registrationState as the service shapes it (assigned or failed;
its x509 section, payload and trust bundle), bent by faults, and the assignment the gateway later checks."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import uuid
from typing import TYPE_CHECKING

from cryptography.hazmat.primitives.serialization import Encoding

from host_tools.emulator import issuance, x509_auth
from host_tools.emulator.context import Assignment
from host_tools.emulator.enrollments import ALLOCATION_ERRORS, Enrollment
from host_tools.emulator.trust_bundle import dotnet_datetime

if TYPE_CHECKING:
    from host_tools.emulator.dps import DpsClient, Operation


def utc_now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def registration_etag() -> str:
    return base64.b64encode(f'"{uuid.uuid4()}"'.encode("ascii")).decode("ascii")


def _x509_state(certificate, enrollment: Enrollment) -> dict:
    """registrationState.x509 as the service shapes it: the device certificate's details, and the group's id."""
    der = certificate.public_bytes(Encoding.DER)
    info = {
        "subjectName": certificate.subject.rfc4514_string(),
        "sha1Thumbprint": hashlib.sha1(der).hexdigest().upper(),
        "sha256Thumbprint": hashlib.sha256(der).hexdigest().upper(),
        "issuerName": certificate.issuer.rfc4514_string(),
        "notBeforeUtc": dotnet_datetime(certificate.not_valid_before_utc, "Z"),
        "notAfterUtc": dotnet_datetime(certificate.not_valid_after_utc, "Z"),
        "serialNumber": format(certificate.serial_number, "X"),
        "version": 3,
    }
    if enrollment.kind == "group":
        return {"enrollmentGroupId": enrollment.name, "signingCertificateInfo": None, "certificateInfo": info}
    return {"certificateInfo": info}


def remove_path(document: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    node = document
    for name in parents:
        node = node.get(name) if isinstance(node, dict) else None
        if node is None:
            return
    if isinstance(node, dict):
        node.pop(last, None)


def final_result(ctx, client: DpsClient, operation: Operation) -> tuple[dict, dict]:
    """The result a poll answers with once the operation is done: registrationState (assigned, or failed when the
    enrollment's allocation fails) shaped as the service does and bent by faults; an assignment is recorded in
    `ctx` for the gateway. Returns (response body, what the registration record notes)."""
    now = utc_now()
    enrollment = operation.enrollment
    registration_id = operation.registration_id
    device_id = enrollment.device_id_for(registration_id)
    with ctx.lock:
        previous = ctx.assignments.get(device_id)
    created = previous.created if previous else now
    if enrollment.allocation_error is not None:
        code = enrollment.allocation_error
        state = {
            "registrationId": registration_id,
            "createdDateTimeUtc": dotnet_datetime(created, "Z"),
            "status": "failed",
            "errorCode": code,
            "errorMessage": ALLOCATION_ERRORS[code],
            "lastUpdatedDateTimeUtc": dotnet_datetime(now, "Z"),
            "etag": registration_etag(),
        }
        body = {"operationId": operation.operation_id, "status": "failed", "registrationState": state}
        return body, {"status": "failed", "error_code": code}

    generation_id = previous.generation_id if previous else str(uuid.uuid4())
    state = {
        "registrationId": registration_id,
        "createdDateTimeUtc": dotnet_datetime(created, "Z"),
        "assignedHub": enrollment.assigned_hub,
        "deviceId": device_id,
        "status": "assigned",
        "substatus": enrollment.substatus,
        "generationId": generation_id,
        "lastUpdatedDateTimeUtc": dotnet_datetime(now, "Z"),
        "etag": registration_etag(),
    }
    if client.certificate is not None:
        state["x509"] = _x509_state(client.certificate, enrollment)
    if enrollment.has_payload:
        state["payload"] = enrollment.payload
    issued = _issue(ctx, operation, device_id, now)
    if issued is not None:
        state["issuedCertificateChain"] = issuance.chain_field(issued, enrollment.issuance)
    bundle_summary = None
    if client.preview:
        if enrollment.trust_bundle is None or client.faults.get("trust_bundle_null"):
            state["trustBundle"] = None
        else:
            certs = operation.enrollments.bundle_certificates(enrollment.trust_bundle, ctx.pki)
            pem_format = client.faults.get("pem_format", {})
            bundle = ctx.bundles.build(
                enrollment.trust_bundle,
                certs,
                line_length=pem_format.get("line_length", 64),
                newline="\n" if pem_format.get("newline") == "lf" else "\r\n",
            )
            state["trustBundle"] = bundle
            bundle_summary = {"id": bundle["id"], "etag": bundle["etag"], "certificates": len(certs)}
    state.update(client.faults.get("extra_fields", {}))
    for dotted in client.faults.get("omit_fields", []):
        remove_path(state, dotted)
    with ctx.lock:
        ctx.assignments[device_id] = Assignment(
            registration_id=registration_id,
            device_id=device_id,
            assigned_hub=enrollment.assigned_hub,
            device_key=enrollment.device_key(registration_id),
            thumbprints=frozenset(x509_auth.thumbprints(client.certificate)) if client.certificate else frozenset(),
            enrollment=enrollment,
            created=created,
            last_updated=now,
            generation_id=generation_id,
        )
    body = {"operationId": operation.operation_id, "status": "assigned", "registrationState": state}
    record = {
        "status": "assigned",
        "device_id": device_id,
        "assigned_hub": enrollment.assigned_hub,
        "trust_bundle": bundle_summary,
    }
    if issued is not None:
        record["issued_certificate"] = {
            "serial": format(issued.serial_number, "X"),
            "not_after": issued.not_valid_after_utc.isoformat(),
        }
    return body, record


def _issue(ctx, operation: Operation, device_id: str, now):
    """The operational certificate of this operation (signed at its first final answer, the same one on later polls):
    only when the device sent a CSR and its enrollment has an issuance policy; None otherwise."""
    policy = operation.enrollment.issuance
    if operation.csr is None or policy is None:
        return None
    if operation.issued is None:
        operation.issued = issuance.issue(policy, operation.csr, operation.registration_id, now)
        record = issuance.issued_record(operation.issued, policy, operation.registration_id, device_id)
        if ctx.issued_certificates is not None:
            ctx.issued_certificates.append({"time": now.isoformat(timespec="milliseconds"), **record})
    return operation.issued
