"""The `python -m host_tools` command line. Subcommands live in their own modules and load on first use,
so `--help` stays fast and one broken optional dependency does not take every command down."""

import importlib
import importlib.util

import click

# name -> "module:attribute" of a click command
_COMMANDS = {
    "bench": "host_tools.bench.command:bench",
    "build": "host_tools.board.build:build",
    "demo": "host_tools.demo:demo",
    "deploy": "host_tools.board.deploy:deploy",
    "emulator": "host_tools.emulator.cli:emulator",
    "fetch-umqtt": "host_tools.board.umqtt_fetch:fetch_umqtt",
    "fleet": "host_tools.provisioning.fleet:fleet",
    "flash": "host_tools.board.flash:flash",
    "monitor": "host_tools.board.monitor:monitor",
    "mutants": "host_tools.mutation.runner:mutants_command",
    "pki": "host_tools.provisioning.pki:pki_command",
    "provision-file": "host_tools.provisioning.provision_file:provision_file",
    "run-unix": "host_tools.board.unix_port:run_unix",
    "test-device": "host_tools.board.device_tests:test_device",
    "virtual-board": "host_tools.board.virtual_board:virtual_board",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(name for name in _COMMANDS if _available(name))

    def get_command(self, ctx, cmd_name):
        target = _COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name == module_name:
                return None
            raise
        return getattr(module, attr)


def _available(name):
    module_name = _COMMANDS[name].split(":")[0]
    return importlib.util.find_spec(module_name) is not None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version=__import__("host_tools").__version__, prog_name="azprov")
def main():
    """azprov host tools: provision MicroPython devices into Azure IoT through DPS."""
