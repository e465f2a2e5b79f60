"""State shared by the DPS and gateway endpoints: enrollments, faults, assignments, records and counters."""

from __future__ import annotations

import datetime as dt
import itertools
import threading
from dataclasses import dataclass, field
from typing import Any

from host_tools.emulator.enrollment_file import EnrollmentStore
from host_tools.emulator.enrollments import Enrollment
from host_tools.emulator.faults import FaultBook, FaultSet, RateLimiter, validate_faults
from host_tools.emulator.records import JsonlLog, Stats
from host_tools.emulator.trust_bundle import TrustBundleRegistry


@dataclass
class Assignment:
    """What DPS assigned a device (kept in memory only: a restarted emulator starts with none)."""

    registration_id: str
    device_id: str
    assigned_hub: str
    device_key: str | None = field(repr=False)  # None for an X.509 device
    enrollment: Enrollment = field(repr=False)
    created: dt.datetime
    last_updated: dt.datetime
    generation_id: str
    thumbprints: frozenset = frozenset()  # X.509: the certificate it registered with (IoT Hub's thumbprint identity)


@dataclass
class DeviceCredential:
    """A way a device may authenticate at the gateway: its key, the hub it belongs to, its enrollment."""

    device_id: str
    assigned_hub: str
    key: str | None = field(repr=False)  # None for an X.509 device
    enrollment: Enrollment | None = field(repr=False)
    source: str  # "registration" or "enrollment"
    thumbprints: frozenset = frozenset()  # X.509 thumbprint authentication (SHA-1 or SHA-256)
    ca_certificate: Any = field(default=None, repr=False)  # X.509 CA authentication (CN must be the device id)

    @property
    def x509(self) -> bool:
        return self.key is None

    @property
    def issuing_ca(self):
        """Certificate issuance: the CA of the enrollment's policy, whose certificates (CN = device id) the gateway
        takes from this device whatever its onboarding credential; None without a policy."""
        policy = self.enrollment.issuance if self.enrollment is not None else None
        return policy.ca_certificate if policy is not None else None


class EmulatorContext:
    def __init__(
        self,
        *,
        store: EnrollmentStore,
        pki,
        stats: Stats,
        registrations: JsonlLog,
        telemetry: JsonlLog,
        dps_hostname: str,
        gateway_hostname: str,
        faults: dict | None = None,
        rate_limit: float | None = None,
        issued_certificates: JsonlLog | None = None,
    ):
        self.store = store
        self.pki = pki
        self.stats = stats
        self.registrations = registrations
        self.telemetry = telemetry
        self.issued_certificates = issued_certificates  # certificate issuance: one record per certificate signed
        self.dps_hostname = dps_hostname
        self.gateway_hostname = gateway_hostname
        self.bundles = TrustBundleRegistry()
        self.fault_book = FaultBook()
        self._fault_generation = itertools.count(1)
        self.global_faults: dict = {}
        self.global_tag = "global:0"
        self.set_faults(faults or {})
        self.rate_limiter = RateLimiter(rate_limit) if rate_limit else None
        self.assignments: dict[str, Assignment] = {}  # by device id
        self.operations: dict[str, Any] = {}  # DPS operation id -> operation
        self.register_attempts: dict[str, int] = {}  # registration id -> register requests seen
        self.hub = None  # the HubService (twins, C2D, methods), set by the server once it knows the state folder
        self.lock = threading.Lock()

    # --- faults

    def set_faults(self, faults: dict) -> None:
        """Replace the global faults (validated); counters of the previous global set no longer apply."""
        normalised = validate_faults(faults, "faults")
        self.global_tag = f"global:{next(self._fault_generation)}"
        self.global_faults = normalised

    def faults_for(self, enrollment: Enrollment | None) -> FaultSet:
        """Defaults < enrollment file's top-level faults < CLI/API faults < the enrollment's own faults."""
        file_faults = self.store.current().faults
        merged = {**file_faults, **self.global_faults}
        origins_tag = self.global_tag
        faults = FaultSet.combine(
            merged,
            origins_tag,
            enrollment.faults if enrollment else None,
            f"enrollment:{enrollment.label}" if enrollment else "enrollment",
        )
        for name in file_faults:
            if name not in self.global_faults and faults.origins.get(name) == origins_tag:
                faults.origins[name] = "file"
        return faults

    # --- gateway identities

    def gateway_credentials(self, device_id: str) -> list[DeviceCredential]:
        """Every key/hub pair a device may present at the gateway.

        A device DPS assigned in this run authenticates with the key and hub of that assignment. Otherwise, in
        the default "enrolled" mode, any device its enrollments would assign is known too (so a device that
        cached its assignment and skips DPS still reaches the gateway after an emulator restart)."""
        assignment = self.assignments.get(device_id)
        if assignment is not None:
            # DPS-provisioned X.509 devices are thumbprint identities in IoT Hub (reference A.4).
            return [
                DeviceCredential(
                    device_id,
                    assignment.assigned_hub,
                    assignment.device_key,
                    assignment.enrollment,
                    "registration",
                    thumbprints=assignment.thumbprints,
                )
            ]
        enrollments = self.store.current()
        if enrollments.gateway_devices != "enrolled":
            return []
        found = []
        for enrollment in enrollments.individual.values():
            if (
                enrollment.device_id_for(enrollment.name) == device_id
                and not enrollment.disabled
                and enrollment.allocation_error is None
            ):
                found.append(
                    DeviceCredential(
                        device_id,
                        enrollment.assigned_hub,
                        None if enrollment.x509 else enrollment.key,
                        enrollment,
                        "enrollment",
                        thumbprints=enrollment.thumbprints,
                    )
                )
        if device_id not in enrollments.individual:  # an individual enrollment shadows groups for its id
            for group in enrollments.groups:
                if not group.disabled and group.allocation_error is None:
                    found.append(
                        DeviceCredential(
                            device_id,
                            group.assigned_hub,
                            group.device_key(device_id),
                            group,
                            "enrollment",
                            ca_certificate=group.ca_certificate,
                        )
                    )
        return found
