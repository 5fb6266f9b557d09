"""Logging: library modules use ``from mdp_core.logs import logger``.

That logger is loguru's, patched so every message has DSN passwords masked, whoever
configured the handlers; an exception logged with it (``logger.exception``,
``logger.opt(exception=...)``) becomes a masked plain-text traceback in the message.
``configure_logging()`` is the one configuration point for applications (CLI, examples,
Dagster): level and format from ``MdpSettings`` (``MDP_LOG_LEVEL``, ``MDP_LOG_FORMAT``)
unless given.
"""

from __future__ import annotations

import sys
import traceback
from typing import TYPE_CHECKING, Any, TextIO

from loguru import logger as _loguru_logger

from mdp_core.dsn import mask_secrets
from mdp_core.settings import MdpSettings

if TYPE_CHECKING:
    from loguru import Record

__all__ = ["configure_logging", "logger"]

TEXT_FORMAT = (
    "<green>{time:HH:mm:ss.SSS}</green> <level>{level: <7}</level> <cyan>{name}</cyan> {message}"
)


def _mask(record: Record) -> None:
    record["message"] = mask_secrets(record["message"])
    exception = record["exception"]
    if exception is not None and exception.type is not None:
        # Handlers would format an attached exception themselves, past this patch (its
        # message, chained causes and, with diagnose, local variables such as a DSN): render
        # it here as a plain traceback, masked, and detach it.
        text = "".join(
            traceback.format_exception(exception.type, exception.value, exception.traceback)
        )
        record["message"] += "\n" + mask_secrets(text).rstrip()
        record["exception"] = None


logger = _loguru_logger.patch(_mask)


def configure_logging(
    level: str | None = None, fmt: str | None = None, sink: TextIO | Any = None
) -> None:
    """Replace loguru's handlers with one on ``sink`` (default stderr) at ``level``."""
    settings = MdpSettings()
    level = (level or settings.log_level).upper()
    fmt = fmt or settings.log_format
    _loguru_logger.remove()
    _loguru_logger.add(
        sink or sys.stderr,
        level=level,
        format=TEXT_FORMAT if fmt == "text" else "{message}",
        serialize=fmt == "json",
        backtrace=False,
        diagnose=False,
    )
