"""A small asyncio TCP chaos proxy (we have no toxiproxy): accepts TCP on 127.0.0.1 and
forwards to a unix socket (the embedded PostgreSQL listens on one only).

Modes, switchable at any time:
- ``pass``: forward both ways;
- ``blackhole``: hold every byte (nothing forwarded either way, sockets stay open);
- ``close_after``: forward ``n`` more client->server bytes in total, then abort the
  connection that crosses the limit (mid-message: e.g. in the middle of a COPY), and go back
  to ``pass``;
- ``reset()`` aborts every open connection now.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path


class ChaosProxy:
    def __init__(self, unix_path: str | Path) -> None:
        self.unix_path = str(unix_path)
        self.mode = "pass"
        self.budget = 0  # close_after: client->server bytes still allowed
        self.cuts = 0  # connections aborted by close_after
        self.connections = 0
        self._changed = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        self._links: set[tuple[asyncio.StreamWriter, asyncio.StreamWriter]] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self.port = 0

    # -- control ------------------------------------------------------------------------

    def set_mode(self, mode: str, *, n: int = 0) -> None:
        if mode not in ("pass", "blackhole", "close_after"):
            raise ValueError(f"unknown proxy mode {mode!r}")
        self.mode, self.budget = mode, n
        self._changed.set()
        self._changed = asyncio.Event()

    def reset(self) -> None:
        """Abort every open connection now."""
        for client, upstream in list(self._links):
            client.transport.abort()
            upstream.transport.abort()

    def dsn(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    async def start(self) -> ChaosProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
        self.reset()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    # -- forwarding ---------------------------------------------------------------------

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            up_reader, up_writer = await asyncio.open_unix_connection(self.unix_path)
        except OSError:
            writer.transport.abort()
            return
        link = (writer, up_writer)
        self._links.add(link)
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer, link, upstream=True)),
            asyncio.create_task(self._pump(up_reader, writer, link, upstream=False)),
        ]
        self._tasks.update(pumps)
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            self._links.discard(link)
            writer.transport.abort()
            up_writer.transport.abort()

    async def _pump(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        link: tuple[asyncio.StreamWriter, asyncio.StreamWriter],
        *,
        upstream: bool,
    ) -> None:
        with contextlib.suppress(OSError, ConnectionError):
            while True:
                data = await reader.read(65536)
                if not data:
                    return
                while self.mode == "blackhole":
                    await self._changed.wait()
                if self.mode == "close_after" and upstream:
                    if len(data) >= self.budget:
                        writer.write(data[: self.budget])
                        with contextlib.suppress(OSError, ConnectionError):
                            await writer.drain()
                        self.cuts += 1
                        self.set_mode("pass")
                        link[0].transport.abort()
                        link[1].transport.abort()
                        return
                    self.budget -= len(data)
                writer.write(data)
                await writer.drain()


@contextlib.asynccontextmanager
async def chaos_proxy(unix_path: str | Path) -> AsyncIterator[ChaosProxy]:
    proxy = await ChaosProxy(unix_path).start()
    try:
        yield proxy
    finally:
        await proxy.stop()


def unix_socket_path(socket_dir: str) -> Path:
    """The PostgreSQL socket in ``socket_dir`` (its name carries the port)."""
    found = [p for p in Path(socket_dir).glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
    if len(found) != 1:
        raise RuntimeError(f"expected one PostgreSQL socket in {socket_dir}, found {found}")
    return found[0]
