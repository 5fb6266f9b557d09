"""The ``mdp`` command. Each sub-command lives in its own module, imported only when used."""

from __future__ import annotations

import importlib

import click

__all__ = ["main"]

# name -> "module:attribute" of a click command or group
COMMANDS: dict[str, str] = {
    "backfill": "mdp_core.cli.backfill:backfill",
    "db": "mdp_core.cli.db:db",
    "dlq": "mdp_core.cli.dlq:dlq",
    "export": "mdp_core.cli.export:export",
    "stream": "mdp_core.cli.stream:stream",
    "gateway": "mdp_core.cli.gateway:gateway",
    "read": "mdp_core.cli.read:read",
    "up": "mdp_core.cli.up:up",
    "import": "mdp_core.cli.imports:import_files",
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

    def invoke(self, ctx: click.Context) -> object:
        """Run the command; a user error (a bad ``MDP_*`` value, a database that cannot be
        reached) ends it with its message and exit code 1, not a traceback."""
        try:
            return super().invoke(ctx)
        except Exception as exc:
            message = _user_error(exc)
            if message is None:
                raise
            raise click.ClickException(message) from None


def _user_error(exc: Exception) -> str | None:
    """The message for an error caused by the user's settings, else ``None``."""
    from pydantic import ValidationError

    if isinstance(exc, ValidationError):
        from mdp_core.settings import describe_settings_error

        return describe_settings_error(exc)
    from mdp_core.store.database import StoreError

    return str(exc) if isinstance(exc, StoreError) else None


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="mdp")
def main() -> None:
    """mdp: market data from Interactive Brokers and other providers into PostgreSQL."""
    from mdp_core.logs import configure_logging

    configure_logging()
