"""Helpers for the security tests: the secret, where it must never appear, and `mdp` runs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import traceback
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import asyncpg

#: The password of the test role. It must never appear in anything mdp shows.
PASSWORD = "S3cr3t-pw"
MDP = [sys.executable, "-m", "mdp_core.cli"]
CLI_TIMEOUT = 90  # seconds; every `mdp` subprocess is bounded


def assert_no_secret(*texts: object, secret: str = PASSWORD) -> None:
    """Fail, showing where, if ``secret`` appears in any of ``texts`` (each ``str()``-ed)."""
    for text in texts:
        shown = str(text)
        at = shown.find(secret)
        if at >= 0:
            raise AssertionError(
                f"the password is visible: ...{shown[max(0, at - 200) : at + 80]}..."
            )


def shown_exceptions(exc: BaseException) -> list[BaseException]:
    """``exc`` and every exception a traceback of it shows (causes, unsuppressed contexts)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and current not in seen:
        seen.append(current)
        if current.__cause__ is not None:
            current = current.__cause__
        elif current.__context__ is not None and not current.__suppress_context__:
            current = current.__context__
        else:
            current = None
    return seen


def exception_texts(exc: BaseException) -> list[str]:
    """Everything that prints ``exc``: str and repr of each shown exception, and the
    full traceback as ``traceback`` (and loguru, Dagster) render it."""
    texts = ["".join(traceback.format_exception(exc))]
    for shown in shown_exceptions(exc):
        texts += [str(shown), repr(shown)]
    return texts


def mdp_env(**extra: str) -> dict[str, str]:
    """This process's environment (MDP_* already isolated by the autouse fixture) plus
    ``extra``."""
    return {**os.environ, **extra}


def start_mdp(args: Sequence[str], env: dict[str, str], **kw: Any) -> subprocess.Popen[str]:
    """Start ``mdp <args>`` (stdin closed, stdout and stderr captured as text)."""
    return subprocess.Popen(
        [*MDP, *args],
        env=env,
        stdin=kw.pop("stdin", subprocess.DEVNULL),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,
    )


def run_all(
    commands: Iterable[tuple[Sequence[str], dict[str, str]]],
) -> list[subprocess.CompletedProcess[str]]:
    """Run several ``mdp`` commands at once (they are independent); wait for all, bounded."""
    procs = [(list(args), start_mdp(args, env)) for args, env in commands]
    done = []
    try:
        for args, proc in procs:
            out, err = proc.communicate(timeout=CLI_TIMEOUT)
            done.append(subprocess.CompletedProcess([*MDP, *args], proc.returncode, out, err))
    finally:
        for _, proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return done


def sql(dsn: str, query: str, *args: Any) -> list[asyncpg.Record]:
    """The rows of one query on ``dsn`` (its own connection)."""

    async def run() -> list[asyncpg.Record]:
        conn = await asyncpg.connect(dsn)
        try:
            return list(await conn.fetch(query, *args))
        finally:
            await conn.close()

    return asyncio.run(run())


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path
