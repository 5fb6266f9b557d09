"""The ``mdp`` command. Each sub-command lives in its own module, imported only when used."""

from __future__ import annotations

import importlib

import click

__all__ = ["main"]

# name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "db": "mdp_core.cli.db:db",
    "dlq": "mdp_core.cli.dlq:dlq",
    "stream": "mdp_core.cli.stream:stream",
    "gateway": "mdp_core.cli.gateway:gateway",
    "up": "mdp_core.cli.up:up",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = COMMANDS.get(cmd_name)
        if target is None:
            return None
        module_name, attr = target.split(":")
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as exc:
            if exc.name != module_name:
                raise
            return None
        command: click.Command = getattr(module, attr)
        return command


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mdp")
def main() -> None:
    """mdp: market data from Interactive Brokers and other providers into PostgreSQL."""
    from mdp_core.logs import configure_logging

    configure_logging()
