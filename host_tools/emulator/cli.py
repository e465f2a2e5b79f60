"""`python -m host_tools emulator --state-dir DIR ...`: run the DPS + gateway emulator until Ctrl-C / SIGTERM (exit 0).

Subcommands use a running emulator as the IoT Hub service would be used (host_tools/emulator/control.py):
`emulator invoke-method`, `emulator send-c2d`, `emulator twin [--set-desired JSON]`. Their exit status (SERVICE_EXIT
below, docs/emulator.md): 0 done; 1 the hub refused or failed the request (its status leads the `Error:` line);
2 a bad command line; 3 no running emulator to talk to; 4 (invoke-method) the device answered a status outside
200-299 (its answer is printed as on success)."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import logging
import math
import os
import re
import signal
import sys
from pathlib import Path

import click

from host_tools.emulator.enrollment_file import write_demo_enrollments
from host_tools.emulator.enrollments import EnrollmentError
from host_tools.emulator.faults import FaultError, describe, parse_fault_option, validate_faults

_HOST_NAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]*[A-Za-z0-9])?)*$"
)


def _host_name(ctx, param, value: str) -> str:
    if not _HOST_NAME.match(value):
        raise click.BadParameter("must be a host name (letters, digits, dots and dashes)")
    return value


def _ip_addresses(ctx, param, values: tuple[str, ...]) -> tuple[str, ...]:
    for value in values:
        try:
            ipaddress.ip_address(value)
        except ValueError:
            raise click.BadParameter(f"{value[:64]!r} is not an IP address") from None
    return values


def _listen_address(ctx, param, value: str) -> str:
    if value in ("", "localhost"):
        return value
    return _ip_addresses(ctx, param, (value,))[0]


def _rate(ctx, param, value: float | None) -> float | None:
    if value is not None and not (math.isfinite(value) and value > 0):
        raise click.BadParameter("must be a number of registrations per second above 0")
    return value


def _fault_epilog() -> str:
    # "\b" keeps click from re-wrapping the list.
    lines = ['Faults and knobs (--fault NAME=VALUE; per enrollment in the enrollment file\'s "faults"):', "", "\b"]
    lines += [f"  {name:22} {description}" for name, description in describe()]
    return "\n".join(lines)


@click.group("emulator", epilog=_fault_epilog(), invoke_without_command=True)
@click.pass_context
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder for pki/, emulator.json, telemetry.jsonl, registrations.jsonl (created if absent).",
)
@click.option(
    "--enrollments",
    "enrollments",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Enrollment file (JSON). Re-read when it changes.",
)
@click.option(
    "--write-demo-enrollments",
    "demo",
    is_flag=True,
    help="Create the --enrollments file with demo enrollments first if it does not exist.",
)
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    callback=_listen_address,
    help="Address to listen on (0.0.0.0 for a LAN).",
)
@click.option("--dps-port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option(
    "--gateway-port", default=0, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port."
)
@click.option(
    "--dps-hostname",
    default="localhost",
    show_default=True,
    callback=_host_name,
    help="Name devices use for DPS (in the DPS server certificate).",
)
@click.option(
    "--gateway-hostname",
    default="localhost",
    show_default=True,
    callback=_host_name,
    help="Name devices use for the gateway (in the gateway server certificate).",
)
@click.option(
    "--ip",
    "ips",
    multiple=True,
    callback=_ip_addresses,
    help="Extra IP address for both server certificates (repeatable).",
)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="NAME[=VALUE]",
    help="Global fault, VALUE as JSON or a bare word (repeatable), e.g. "
    "--fault 'throttle_register={\"count\":2}' --fault drop_after=connack. Names: see below.",
)
@click.option(
    "--rate-limit",
    type=float,
    callback=_rate,
    help="At most R registrations per second; beyond that DPS answers 429 with retry-after.",
)
@click.option(
    "--record-credentials",
    is_flag=True,
    help="Test mode: write every CONNECT user name and password (SAS token) received to "
    "STATE_DIR/credentials-received.jsonl, so tests can search outputs for what really went over the wire.",
)
@click.option("-v", "--verbose", count=True, help="More logging (-v: debug). Keys and tokens are never logged.")
def emulator(
    ctx: click.Context,
    state_dir: Path | None,
    enrollments: Path | None,
    demo: bool,
    host: str,
    dps_port: int,
    gateway_port: int,
    dps_hostname: str,
    gateway_hostname: str,
    ips: tuple[str, ...],
    faults: tuple[str, ...],
    rate_limit: float | None,
    record_credentials: bool,
    verbose: int,
):
    """Run the local DPS + IoT Edge gateway emulator (see docs/emulator.md); with a subcommand, use a running one
    as the IoT Hub service (direct methods, C2D messages, device twins)."""
    if ctx.invoked_subcommand is not None:
        return
    if state_dir is None:
        raise click.UsageError("Missing option '--state-dir'.")
    from host_tools.emulator.server import EmulatorServer

    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    logging.getLogger("asyncio").setLevel(logging.WARNING)

    if enrollments is None:
        enrollments = state_dir / "enrollments.json"
        if not enrollments.exists() and not demo:
            raise click.UsageError("give --enrollments FILE (or --write-demo-enrollments to create one)")
    if demo and not enrollments.exists():
        try:
            write_demo_enrollments(enrollments)
        except OSError as exc:
            raise click.ClickException(
                f"{exc.filename or enrollments}: cannot write the enrollments ({exc.strerror})"
            ) from None
        click.echo(f"wrote demo enrollments to {enrollments}")

    fault_values = {}
    for text in faults:
        name, value = parse_fault_option(text)
        fault_values[name] = value
    try:
        validate_faults(fault_values, "--fault")
    except FaultError as exc:
        raise click.BadParameter(str(exc), param_hint="--fault") from None

    try:
        server = EmulatorServer(
            state_dir,
            enrollments,
            host=host,
            dps_port=dps_port,
            gateway_port=gateway_port,
            dps_hostname=dps_hostname,
            gateway_hostname=gateway_hostname,
            faults=fault_values,
            rate_limit=rate_limit,
            ip_addresses=ips,
            record_credentials=record_credentials,
        )
    except OSError as exc:
        raise click.ClickException(
            f"{exc.filename or state_dir}: cannot use as the state folder ({exc.strerror})"
        ) from None
    try:
        server.prepare()
    except EnrollmentError as exc:
        raise click.ClickException(f"enrollment file: {exc}") from None
    except OSError as exc:
        raise click.ClickException(f"{exc.filename or state_dir}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise click.ClickException(str(exc)) from None
    try:
        asyncio.run(_serve(server))
    except OSError as exc:  # e.g. the port is in use
        raise click.ClickException(f"cannot listen: {exc}") from None


async def _serve(server) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(signum, stop.set)
        except (NotImplementedError, RuntimeError):  # not on this platform: Ctrl-C still raises KeyboardInterrupt
            pass
    try:
        info = await server.start()
        click.echo(
            f"DPS listening on {info['dps']['host']}:{info['dps']['port']} "
            f"(TLS name {info['dps']['hostname']}, ID scope {info['id_scope']})"
        )
        click.echo(
            f"gateway listening on {info['gateway']['host']}:{info['gateway']['port']} "
            f"(TLS name {info['gateway']['hostname']})"
        )
        click.echo(f"DPS CA file: {info['pki']['dps_root']}")
        click.echo(f"trust root (trust bundle) file: {info['pki']['trust_root']}")
        click.echo(
            f"state: {server.state_dir / 'emulator.json'}; telemetry: {info['telemetry']}; "
            f"registrations: {info['registrations']}"
        )
        sys.stdout.flush()
        await stop.wait()
        click.echo("stopping")
    finally:
        await server.close()


# ---------------------------------------------------------------------------------------- service commands

EXIT_REFUSED = 1  # the hub refused or failed the request: 400, 401, 403, 404, 408, 413, 500, 504 ...
EXIT_UNREACHABLE = 3  # no emulator.json, nothing listening, or an answer that is not the control port's
EXIT_DEVICE_STATUS = 4  # invoke-method: the device answered with a status outside 200-299
# (2, a bad command line, is click's own usage-error status.)


class ServiceFailure(click.ClickException):
    """One `Error:` line and a documented exit status."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


_STATE_DIR = click.option(
    "--state-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="The running emulator's --state-dir (its emulator.json says where to reach it).",
)


def _service(state_dir: Path):
    from host_tools.emulator.control import ServiceClient, ServiceError

    try:
        return ServiceClient.from_state_dir(state_dir)
    except ServiceError as exc:
        raise ServiceFailure(str(exc), EXIT_UNREACHABLE) from None


def _json_option(text: str | None, name: str):
    if text is None:
        return None

    def no_constants(word: str):  # NaN and Infinity are not JSON
        raise ValueError(f"{word} is not a JSON value")

    try:
        return json.loads(text, parse_constant=no_constants)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint=name) from None
    except RecursionError:
        raise click.BadParameter("nested too deeply", param_hint=name) from None


def _call(function, *args, **kwargs):
    from host_tools.emulator.control import ServiceError

    try:
        return function(*args, **kwargs)
    except ServiceError as exc:
        if exc.status is None:
            raise ServiceFailure(str(exc), EXIT_UNREACHABLE) from None
        raise ServiceFailure(f"{exc.status}: {exc}", EXIT_REFUSED) from None


@emulator.command("invoke-method")
@_STATE_DIR
@click.argument("device_id")
@click.argument("method_name")
@click.option("--payload", help="The request payload as JSON (default: none).")
@click.option(
    "--timeout",
    default=30.0,
    show_default=True,
    type=click.FloatRange(0, 300, min_open=True),
    help="Seconds to wait for the device's answer (504 after that; 404 when the device is not online).",
)
def invoke_method(state_dir: Path, device_id: str, method_name: str, payload: str | None, timeout: float):
    """Call direct method METHOD_NAME on DEVICE_ID; prints the device's {"status": ..., "payload": ...}.

    Exit status 0 when the device answered 200-299, 4 when it answered another status, 1 when the hub answered
    instead (404 unknown device or not online, 504 no answer in time, 400 invalid name, 413 payload too large)."""
    if not math.isfinite(timeout):
        raise click.BadParameter("must be a number of seconds", param_hint="--timeout")
    value = _json_option(payload, "--payload")  # the command line first: a bad one is status 2 whatever else
    result = _call(_service(state_dir).invoke_method, device_id, method_name, value, timeout)
    status = result.get("status") if isinstance(result, dict) else None
    if isinstance(result, dict) and result.get("hub_error"):
        message = result.get("payload", {}).get("message", "") if isinstance(result.get("payload"), dict) else ""
        raise ServiceFailure(f"{status}: {message}", EXIT_REFUSED)
    click.echo(json.dumps(result))
    if not (isinstance(status, int) and 200 <= status < 300):
        raise ServiceFailure(
            f"the device answered method {method_name[:64]!r} with status {status}", EXIT_DEVICE_STATUS
        )


@emulator.command("send-c2d")
@_STATE_DIR
@click.argument("device_id")
@click.argument("payload")
@click.option("--property", "properties", multiple=True, metavar="NAME=VALUE", help="Message property (repeatable).")
def send_c2d(state_dir: Path, device_id: str, payload: str, properties: tuple[str, ...]):
    """Queue a cloud-to-device message for DEVICE_ID (delivered now if it listens); prints its message id."""
    bag = {}
    for text in properties:
        name, eq, value = text.partition("=")
        if not name or not eq:
            raise click.BadParameter(f"{text[:64]!r} is not NAME=VALUE", param_hint="--property")
        bag[name] = value
    # The body as given on the command line, byte for byte (a non-UTF-8 argument included).
    click.echo(_call(_service(state_dir).send_c2d, device_id, os.fsencode(payload), bag))


@emulator.command("twin")
@_STATE_DIR
@click.argument("device_id")
@click.option(
    "--set-desired",
    "desired",
    metavar="JSON",
    help="Merge this patch into the desired properties, e.g. '{\"telemetryIntervalSeconds\": 5}'.",
)
def twin(state_dir: Path, device_id: str, desired: str | None):
    """Print DEVICE_ID's twin; with --set-desired, change its desired properties first (the device is notified)."""
    patch = _json_option(desired, "--set-desired")
    if desired is not None and not isinstance(patch, dict):
        raise click.BadParameter("must be a JSON object", param_hint="--set-desired")
    service = _service(state_dir)
    result = _call(service.set_desired, device_id, patch) if patch is not None else _call(service.twin, device_id)
    click.echo(json.dumps(result, indent=2))
