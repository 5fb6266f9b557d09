"""TWS wire framing: length-prefixed frames of NUL-terminated text fields.

Every message after the 4-byte ``API\\0`` greeting is ``struct.pack(">I", len(payload))``
followed by ``payload``, and ``payload`` is each field as text followed by ``\\0``
(so a payload always ends with ``\\0``). The first field is the message id.
"""

from __future__ import annotations

import asyncio
import math
import struct

__all__ = [
    "API_PREFIX",
    "MAX_FRAME_BYTES",
    "FrameError",
    "decode_payload",
    "encode",
    "format_field",
    "frame",
    "read_frame",
]

#: The raw greeting a client sends before its version frame (not length-prefixed).
API_PREFIX = b"API\0"
#: Largest frame the gateway accepts; a bigger length prefix closes the session.
MAX_FRAME_BYTES = 16 * 1024 * 1024

_LENGTH = struct.Struct(">I")
_pack_length = _LENGTH.pack

Field = str | int | float | bool | None


class FrameError(ValueError):
    """A frame that cannot be a TWS message (too big, not NUL-terminated, bad text)."""


def format_field(value: Field) -> str:
    """Render one field as TWS text: bools as 1/0, None as empty, floats without noise.

    Floats use ``repr`` (shortest text that round-trips), so ``float(text) == value``.
    """
    if value is None:
        return ""
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        if math.isinf(value):
            return "Infinite"
        return repr(value)
    return str(value)


def frame(payload: bytes) -> bytes:
    """``payload`` (its NUL-terminated fields) behind its length prefix: a complete frame."""
    return _pack_length(len(payload)) + payload


def encode(*fields: Field) -> bytes:
    """One complete frame (length prefix included) holding ``fields``."""
    return frame("".join(format_field(f) + "\0" for f in fields).encode())


def decode_payload(payload: bytes) -> list[str]:
    """Split a frame payload into its text fields.

    Raises ``FrameError`` when the payload is empty, does not end with ``\\0`` or is not
    UTF-8, which no well-behaved client sends.
    """
    if not payload:
        raise FrameError("empty frame")
    if not payload.endswith(b"\0"):
        raise FrameError(f"frame does not end with NUL: {payload[:40]!r}")
    try:
        text = payload.decode()
    except UnicodeDecodeError as exc:
        raise FrameError(f"frame is not UTF-8 text: {exc}") from exc
    return text.split("\0")[:-1]


async def read_frame(reader: asyncio.StreamReader, max_bytes: int = MAX_FRAME_BYTES) -> bytes:
    """Read one frame's payload.

    Raises ``asyncio.IncompleteReadError`` at end of stream and ``FrameError`` when the
    length prefix exceeds ``max_bytes`` (the payload is then not read).
    """
    header = await reader.readexactly(_LENGTH.size)
    (length,) = _LENGTH.unpack(header)
    if length > max_bytes:
        raise FrameError(f"frame length {length} exceeds the limit of {max_bytes} bytes")
    return await reader.readexactly(length)
