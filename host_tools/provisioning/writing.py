"""Write provisioning files: the device settings, the DPS CA file beside them, all checked before anything is
written, each file written whole (temporary file and rename; mode 0600 where it holds a key)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from host_tools.provisioning.device_keys import derive_device_key
from host_tools.provisioning.dps_roots import public_dps_roots_pem
from host_tools.provisioning.validation import ProvisioningFileError, check_config, file_text
from host_tools.secret_files import write_secret

GLOBAL_DPS_HOST = "global.azure-devices-provisioning.net"
DEFAULT_CA_NAME = "certs/dps-root.pem"


@dataclass
class DeviceSettings:
    """Everything of a provisioning file except the registration id and key."""

    id_scope: str
    dps_host: str = GLOBAL_DPS_HOST
    dps_port: int = 8883
    payload: object = None
    gateway_host: str | None = None
    gateway_port: int = 8883
    storage_dir: str = "azprov_state"
    log_level: str = "info"
    sas_ttl_s: int = 3600
    force_reprovision: bool = False
    wifi_ssid: str | None = None
    wifi_password: str | None = None
    certificate_issuance: bool = False

    def config(self, registration_id: str, symmetric_key: str, dps_ca_file: str) -> dict:
        config = {
            "dps_host": self.dps_host,
            "dps_port": self.dps_port,
            "id_scope": self.id_scope,
            "registration_id": registration_id,
            "symmetric_key": symmetric_key,
            "dps_ca_file": dps_ca_file,
            "payload": self.payload,
            "gateway_host": self.gateway_host,
            "gateway_port": self.gateway_port,
            "storage_dir": self.storage_dir,
            "log_level": self.log_level,
            "sas_ttl_s": self.sas_ttl_s,
        }
        if self.force_reprovision:
            config["force_reprovision"] = True
        if self.certificate_issuance:
            config["certificate_issuance"] = True
        if self.wifi_ssid:
            config["wifi"] = {"ssid": self.wifi_ssid, "password": self.wifi_password or ""}
        return config


def write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write through a temporary file and a rename: the path holds the old content or the new, never half.
    For public files (certificates, indexes); a file that holds a secret goes through write_private."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_private(path: Path, text: str) -> None:
    """Readable by the owner only (host_tools/secret_files.py): the file holds a device key."""
    write_secret(path, text)


@dataclass
class CaPlan:
    """Where a provisioning file's CA file will be: its name relative to the provisioning file, and what to write
    (nothing when the file is already there with that content)."""

    name: str
    target: Path
    content: bytes | None


def plan_ca_file(out_dir: Path, ca_file: Path | None, overwrite: bool = False) -> CaPlan:
    """Decide (without writing) where the DPS CA file goes, and check it with the device's own PEM reader.

    No ca_file: the public DPS roots from certifi go to certs/dps-root.pem. A ca_file already under out_dir is named
    in place; one elsewhere is copied to certs/<its name>. An existing different file is replaced only with
    `overwrite`."""
    from host_tools.provisioning.device_rules import RuleError, ca_file_limit, judge_ca_bytes, read_bounded

    out_dir = Path(out_dir)
    if ca_file is None:
        name, content = DEFAULT_CA_NAME, public_dps_roots_pem().encode("ascii")
        where = f"{out_dir / name} (the public DPS roots)"
    else:
        ca_file = Path(ca_file)
        try:
            content = read_bounded(ca_file, ca_file_limit(), "CA file")
        except RuleError as exc:
            raise ProvisioningFileError(f"dps_ca_file (--ca-file): {exc}") from None
        where = str(ca_file)
        try:
            name = ca_file.resolve().relative_to(out_dir.resolve()).as_posix()
            in_place = True
        except ValueError:
            name, in_place = f"certs/{ca_file.name}", False
    try:
        judge_ca_bytes(content, where)
    except RuleError as exc:
        raise ProvisioningFileError(f"{exc} (the device would refuse it)") from None
    target = out_dir / name
    if ca_file is not None and in_place:
        return CaPlan(name, target, None)
    if target.is_dir():
        raise ProvisioningFileError(f"{target}: is a folder, the CA file cannot go there")
    if target.exists() or target.is_symlink():
        try:
            same = target.read_bytes() == content
        except OSError:
            same = False
        if same:
            return CaPlan(name, target, None)
        if not overwrite:
            raise ProvisioningFileError(f"{target}: already exists with other certificates (use --force to replace it)")
    return CaPlan(name, target, content)


def place_ca_file(out_dir: Path, ca_file: Path | None, overwrite: bool = False) -> str:
    """plan_ca_file, then write it; returns the name relative to out_dir."""
    plan = plan_ca_file(out_dir, ca_file, overwrite)
    if plan.content is not None:
        write_atomic(plan.target, plan.content, 0o644)
    return plan.name


def refuse_existing(path: Path, overwrite: bool) -> None:
    if path.is_dir():
        raise ProvisioningFileError(f"{path}: is a folder, not a file")
    if (path.exists() or path.is_symlink()) and not overwrite:
        raise ProvisioningFileError(f"{path}: already exists (use --force to replace it)")


def write_provisioning_file(path: Path, config: dict, overwrite: bool = False) -> Path:
    """Check config with the device's rules, then write it to path (mode 0600). Its CA file must be in place."""
    path = Path(path)
    refuse_existing(path, overwrite)
    problems = check_config(config, str(path))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    write_private(path, file_text(config))
    return path


def as_file_error(what: Path, action):
    try:
        return action()
    except OSError as exc:
        raise ProvisioningFileError(f"{exc.filename or what}: cannot be written ({exc.strerror})") from None


def create_provisioning_file(
    path: Path,
    settings: DeviceSettings,
    registration_id: str,
    symmetric_key: str | None = None,
    group_key: str | None = None,
    ca_file: Path | None = None,
    overwrite: bool = False,
) -> dict:
    """Write one provisioning file from an individual key, or from a group key (the device key is derived).

    Everything is checked first (the fields with the device's rules, the CA file with its PEM reader, what already
    exists); nothing is written unless all of it will be."""
    if (symmetric_key is None) == (group_key is None):
        raise ProvisioningFileError("give exactly one of an individual symmetric key or a group enrollment key")
    path = Path(path)
    key = derive_device_key(group_key, registration_id) if group_key is not None else symmetric_key
    refuse_existing(path, overwrite)
    plan = plan_ca_file(path.parent, ca_file, overwrite)
    config = settings.config(registration_id, key, plan.name)
    problems = check_config(config, str(path))
    if problems:
        raise ProvisioningFileError("\n".join(problems))
    check_writable(path.parent)
    if plan.content is not None:
        as_file_error(plan.target, lambda: write_atomic(plan.target, plan.content, 0o644))
    as_file_error(path, lambda: write_private(path, file_text(config)))
    return config


def check_writable(folder: Path) -> None:
    """The folder exists or can be made, and takes files; checked before the first file is written."""
    folder = Path(folder)
    existing = folder
    while not existing.exists():
        if existing.parent == existing:
            break
        existing = existing.parent
    if not existing.is_dir():
        raise ProvisioningFileError(f"{existing}: is not a folder, {folder} cannot be made")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ProvisioningFileError(f"{existing}: folder is not writable")
