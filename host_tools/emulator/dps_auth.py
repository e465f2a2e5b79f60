"""Who a device connecting to the emulated DPS is: its user name parsed, then the enrollment whose key signed its
SAS token, or (no password, a client certificate) the X.509 enrollment its certificate belongs to: an individual
enrollment by thumbprint, else the first X.509 group whose CA the presented chain reaches."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from host_tools.emulator import client_tls, x509_auth
from host_tools.emulator import mqtt_codec as mqtt
from host_tools.emulator.connection import MqttSession, parse_query
from host_tools.emulator.sas import SasError, parse_sas_token, signature_matches

if TYPE_CHECKING:
    from host_tools.emulator.dps import DpsClient


@dataclass
class AuthProblem:
    kind: str  # "auth" (known enrollment or scope, bad token) or "unknown" (no enrollment matches)
    reason: str
    status: int = 401


def parse_dps_username(username: str | None) -> tuple[str, str, dict[str, str]]:
    """`{idScope}/registrations/{registrationId}/api-version={v}[&ClientVersion=...]` -> (scope, id, params)."""
    expected = "expected {idScope}/registrations/{registrationId}/api-version=..."
    if not username:
        raise ValueError(f"no user name; {expected}")
    scope, sep, rest = username.partition("/registrations/")
    if not sep or not scope or "/" in scope:
        raise ValueError(f"user name {username!r} malformed; {expected}")
    registration_id, sep, query = rest.partition("/")
    if not sep or not registration_id:
        raise ValueError(f"user name {username!r} malformed; {expected}")
    if query.startswith("?"):
        raise ValueError(f"user name {username!r}: DPS has no '?' before api-version; {expected}")
    params = parse_query(query)
    if not params.get("api-version"):
        raise ValueError(f"user name {username!r} has no api-version")
    return scope, registration_id, params


def identify(client: DpsClient, connect: mqtt.Connect, session: MqttSession):
    """Find the enrollment whose key signed the token, or (no password, a client certificate) the X.509
    enrollment the certificate belongs to; sets client.enrollment or client.problem."""
    enrollments = client.enrollments
    if client.id_scope.lower() != enrollments.id_scope.lower():
        client.problem = AuthProblem("auth", f"ID scope {client.id_scope!r} is not this DPS's")
        return None
    if not connect.password:
        presented = client_tls.peer_certificates(session.writer)
        if presented:
            client.x509, client.password_field = True, connect.password is not None
            identify_x509(client, presented)
            return None
    if connect.password is None:
        client.problem = AuthProblem("auth", "no password (SAS token) and no client certificate")
        return None
    try:
        token = parse_sas_token(connect.password.decode("utf-8"))
    except (SasError, UnicodeDecodeError) as exc:
        client.problem = AuthProblem("auth", f"password is not a valid SAS token: {exc}")
        return None
    registration_id = client.registration_id
    individual = enrollments.individual.get(registration_id)
    if individual is not None:
        if individual.x509:
            client.problem = AuthProblem("auth", "the individual enrollment is X.509: no certificate was presented")
            return None
        if not signature_matches(token, individual.key):
            client.problem = AuthProblem("auth", "token not signed with the individual enrollment's key")
            return None
        client.enrollment = individual
        return token
    for group in enrollments.groups:
        if not group.x509 and signature_matches(token, group.device_key(registration_id)):
            client.enrollment = group
            return token
    client.problem = AuthProblem("unknown", "no individual enrollment, and no group's derived key signed the token")
    return None


def identify_x509(client: DpsClient, presented: list) -> None:
    """Individual enrollment of the registration id first (by certificate thumbprint), else the first X.509
    group whose CA the presented chain reaches. The CN must be the registration id."""
    registration_id = client.registration_id
    try:
        device = x509_auth.check_device_certificate(presented, registration_id, "registration id")
    except x509_auth.CertificateProblem as exc:
        client.problem = AuthProblem("auth", str(exc))
        return
    individual = client.enrollments.individual.get(registration_id)
    if individual is not None:
        if not individual.x509:
            client.problem = AuthProblem("auth", "the individual enrollment uses a symmetric key, not X.509")
        elif x509_auth.thumbprints(device) & individual.thumbprints:
            client.enrollment, client.certificate = individual, device
        else:
            client.problem = AuthProblem("auth", "the certificate is not the individual enrollment's")
        return
    reasons = []
    for group in client.enrollments.groups:
        if not group.x509:
            continue
        try:
            x509_auth.chain_reaches(presented, group.ca_certificate)
        except x509_auth.CertificateProblem as exc:
            reasons.append(f"group {group.name}: {exc}")
            continue
        client.enrollment, client.certificate = group, device
        return
    client.problem = AuthProblem(
        "auth", "no X.509 enrollment accepts the certificate" + (f" ({'; '.join(reasons)})" if reasons else "")
    )
