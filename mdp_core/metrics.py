"""Prometheus metrics of a running stream, served over HTTP (``mdp stream --metrics-port``,
``metrics_port`` of a stream in ``streams.yaml``).

Every metric carries the labels ``stream``, ``provider`` and ``mode``. The counters are the
stream's own accounting, read from ``Pipeline.stats()`` when scraped (nothing is counted
twice, and the scrape equals the summary the stream prints when it ends):

- ``mdp_stream_received_total``, ``mdp_stream_committed_total``,
  ``mdp_stream_dead_lettered_total``, ``mdp_stream_dropped_total{policy}``; the gauges
  ``mdp_stream_pending`` (received, not yet settled: the stream's lag) and
  ``mdp_stream_unpersisted``; ``mdp_stream_up`` (1 while it runs);
- ``mdp_channel_depth`` / ``_capacity``, ``mdp_queue_depth`` / ``_capacity``,
  ``mdp_in_flight``, ``mdp_write_retries_total``, ``mdp_circuit_state{state}`` (1 for the
  current one), ``mdp_circuit_opened_total``;
- ``mdp_write_batches_total{path}`` / ``mdp_write_rows_total{path}``: committed batches and
  their rows per write path (``fast``: direct COPY; ``fallback``: refused there for a
  conflict, then written idempotently; ``idempotent``: written idempotently from the start);
- ``mdp_commit_latency_seconds``: a histogram, per committed record, of the time from its
  event (a quote's ``ts``; a bar's end, ``ts + resolution``) to its commit;
- ``mdp_provider_reconnects_total``, ``_resubscribes_total``, ``_backfilled_bars_total``
  (and the provider's other connection counters) when the provider keeps them (IBKR);
- ``mdp_dlq_records`` / ``mdp_dlq_quarantined_records``: the dead-letter spool's depth.

The server is a small asyncio one on the stream's own event loop, so a scrape reads the
counters where they live, without threads; it binds to 127.0.0.1 unless told otherwise.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import TYPE_CHECKING, Any, Protocol

from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4, generate_latest
from prometheus_client.registry import CollectorRegistry

from mdp_core.logs import logger
from mdp_core.models import resolution_timedelta

if TYPE_CHECKING:
    from mdp_core.accounting import PipelineStats
    from mdp_core.dlq import DeadLetterQueue
    from mdp_core.sink import Sink
    from mdp_core.streams import StreamSpec

__all__ = ["CommitLatency", "LatencySink", "MetricsServer", "StreamMetrics"]

#: Seconds from an event to its commit: a live stream sits in the first buckets; history
#: backfilled after an outage lands in the last ones.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                   300.0, 3600.0)  # fmt: skip
#: Provider counters exported as ``mdp_provider_<name>_total`` when the provider has them.
PROVIDER_COUNTERS = ("connects", "connect_failures", "disconnects", "reconnects",
                     "resubscribes", "backfilled_bars", "backfill_failures", "pauses")  # fmt: skip
CIRCUIT_STATES = ("closed", "open", "half_open")
WRITE_PATHS = ("fast", "fallback", "idempotent")
_MAX_REQUEST = 8192  # bytes of request head read before hanging up
_REQUEST_TIMEOUT = 5.0


class _Timed(Protocol):
    ts: Any


class Observed(Protocol):
    """What the metrics read: a ``Pipeline``."""

    @property
    def spec(self) -> StreamSpec: ...

    def stats(self) -> PipelineStats: ...

    def provider_counters(self) -> dict[str, int]: ...


class CommitLatency:
    """A histogram of event-to-commit seconds, filled a committed batch at a time.

    ``clock`` gives the wall time in seconds since the epoch (injectable for tests)."""

    def __init__(
        self, buckets: Sequence[float] = LATENCY_BUCKETS, clock: Callable[[], float] = time.time
    ) -> None:
        self.buckets = tuple(buckets)
        self.counts = [0] * (len(self.buckets) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0
        self.clock = clock

    def observe(self, records: Sequence[_Timed]) -> None:
        """Count each record's delay from its event's end to now."""
        now = self.clock()
        width = _width_of(records[0]) if records else 0.0
        for record in records:
            delay = max(0.0, now - record.ts.timestamp() - width)
            self.counts[bisect_left(self.buckets, delay)] += 1
            self.sum += delay
        self.count += len(records)

    def cumulative(self) -> list[tuple[str, int]]:
        """``(upper bound, cumulative count)`` pairs, as Prometheus exposes them."""
        out, total = [], 0
        for bound, n in zip((*self.buckets, math.inf), self.counts, strict=True):
            total += n
            out.append(("+Inf" if bound == math.inf else repr(bound), total))
        return out


def _width_of(record: _Timed) -> float:
    """A bar's event ends with its window (``ts`` is its start); a quote is an instant."""
    resolution = getattr(record, "resolution", None)
    if not isinstance(resolution, str):
        return 0.0
    try:
        return resolution_timedelta(resolution) / timedelta(seconds=1)
    except ValueError:
        return 0.0


class LatencySink:
    """A sink that notes each committed batch in a ``CommitLatency``; otherwise ``sink``."""

    def __init__(self, sink: Sink[Any], latency: CommitLatency) -> None:
        self.sink = sink
        self.latency = latency

    @property
    def kind(self) -> str:
        return self.sink.kind

    @property
    def paths(self) -> object:
        """The wrapped sink's write path counts (``None`` if it keeps none)."""
        return getattr(self.sink, "paths", None)

    async def write(self, batch: Sequence[Any], /) -> int:
        new_rows = await self.sink.write(batch)
        self.latency.observe(batch)
        return new_rows


class StreamMetrics:
    """The metrics of one pipeline: a Prometheus collector over its live counters."""

    def __init__(
        self, pipeline: Observed, latency: CommitLatency, dlq: DeadLetterQueue | None = None
    ) -> None:
        self.pipeline = pipeline
        self.latency = latency
        self.dlq = dlq
        self._spool = (0, 0)  # records, quarantined: refreshed by ``render``
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)

    async def render(self) -> bytes:
        """The exposition text (the spool is counted in a thread: it reads files)."""
        if self.dlq is not None:
            dlq = self.dlq
            with contextlib.suppress(OSError):
                self._spool = await asyncio.to_thread(
                    lambda: (dlq.count(), dlq.count(quarantined=True))
                )
        return generate_latest(self.registry)

    def collect(self) -> Iterator[Metric]:
        spec = self.pipeline.spec
        names = ["stream", "provider", "mode"]
        labels = [spec.name, spec.provider, spec.mode]
        s = self.pipeline.stats()
        h = s.coordinator

        def counter(name: str, doc: str, value: float) -> CounterMetricFamily:
            family = CounterMetricFamily(name, doc, labels=names)
            family.add_metric(labels, value)
            return family

        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            family = GaugeMetricFamily(name, doc, labels=names)
            family.add_metric(labels, value)
            return family

        yield gauge("mdp_stream_up", "1 while the stream runs or drains", float(
            s.state in ("running", "draining")))  # fmt: skip
        yield counter("mdp_stream_received", "records the provider handed over", s.received)
        yield counter("mdp_stream_committed", "records committed to PostgreSQL", h.committed)
        yield counter("mdp_stream_dead_lettered", "records in the dead-letter spool",
                      h.dead_lettered)  # fmt: skip
        dropped = CounterMetricFamily(
            "mdp_stream_dropped", "received records that left by a named policy",
            labels=[*names, "policy"],
        )  # fmt: skip
        for policy, n in sorted(s.dropped.items()):
            dropped.add_metric([*labels, policy], n)
        yield dropped
        yield gauge("mdp_stream_pending", "received, not yet committed, spooled or dropped",
                    s.pending)  # fmt: skip
        yield gauge("mdp_stream_unpersisted", "records the spool could not take",
                    h.unpersisted)  # fmt: skip
        yield gauge("mdp_channel_depth", "records in the stream's channel", s.channel.depth)
        yield gauge("mdp_channel_capacity", "the channel's capacity", s.channel.capacity)
        yield gauge("mdp_queue_depth", "records in the write queue", h.queue_depth)
        yield gauge("mdp_queue_capacity", "the write queue's capacity", h.capacity)
        yield gauge("mdp_in_flight", "records being written", h.in_flight)
        yield counter("mdp_write_retries", "batch writes retried", h.retries)
        yield counter("mdp_circuit_opened", "times the circuit breaker opened", h.circuit_opened)
        circuit = GaugeMetricFamily(
            "mdp_circuit_state", "1 for the breaker's current state", labels=[*names, "state"]
        )
        for state in CIRCUIT_STATES:
            circuit.add_metric([*labels, state], float(h.circuit == state))
        yield circuit
        yield from self._write_paths(names, labels, h.write_paths)
        yield self._latency(names, labels)
        for key, value in sorted(self.pipeline.provider_counters().items()):
            if key in PROVIDER_COUNTERS:
                yield counter(f"mdp_provider_{key}", f"the provider's {key}", value)
        records, quarantined = self._spool
        yield gauge("mdp_dlq_records", "records in the dead-letter spool", records)
        yield gauge("mdp_dlq_quarantined_records", "records quarantined by replay", quarantined)

    @staticmethod
    def _write_paths(
        names: list[str], labels: list[str], counts: dict[str, int]
    ) -> Iterator[CounterMetricFamily]:
        """Committed batches and rows per write path (nothing for a sink without them)."""
        if not counts:
            return
        for unit in ("batches", "rows"):
            family = CounterMetricFamily(
                f"mdp_write_{unit}", f"{unit} committed, per write path", labels=[*names, "path"]
            )
            for path in WRITE_PATHS:
                family.add_metric([*labels, path], counts.get(f"{path}_{unit}", 0))
            yield family

    def _latency(self, names: list[str], labels: list[str]) -> HistogramMetricFamily:
        family = HistogramMetricFamily(
            "mdp_commit_latency_seconds",
            "seconds from a record's event (a bar's end) to its commit",
            labels=names,
        )
        family.add_metric(labels, self.latency.cumulative(), self.latency.sum)
        return family


class MetricsServer:
    """``GET /metrics`` on ``host:port`` (port 0: any free one, see ``port``), served from
    ``render`` on the running event loop. Anything else gets 404; a request head over 8 KiB
    or slower than 5 s is dropped. ``async with`` starts and closes it."""

    def __init__(self, render: Callable[[], Any], host: str = "127.0.0.1", port: int = 0) -> None:
        self.render = render
        self.host = host
        self.requested_port = port
        self.port = port
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    async def start(self) -> None:
        """Listen; raises ``OSError`` naming the address when it cannot."""
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.requested_port, limit=_MAX_REQUEST
            )
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"cannot serve metrics on {self.host}:{self.requested_port}: "
                f"{exc.strerror or exc} (expected a free port)",
            ) from None
        self.port = self._server.sockets[0].getsockname()[1]
        logger.info("metrics on {}", self.url)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def __aenter__(self) -> MetricsServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(_REQUEST_TIMEOUT):
                head = await reader.readuntil(b"\r\n\r\n")
            method, _, rest = head.partition(b" ")
            path = rest.partition(b" ")[0].partition(b"?")[0]
            if method == b"GET" and path in (b"/metrics", b"/"):
                body = await self.render()
                self._reply(writer, b"200 OK", CONTENT_TYPE_PLAIN_0_0_4.encode(), body)
            else:
                self._reply(writer, b"404 Not Found", b"text/plain", b"GET /metrics\n")
            await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass  # a client that sends no complete request within the limits: hang up
        except ConnectionError:
            pass
        except Exception as exc:  # a scrape must never take the stream down
            logger.opt(exception=exc).warning("metrics: serving a scrape failed")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    def _reply(writer: asyncio.StreamWriter, status: bytes, ctype: bytes, body: bytes) -> None:
        writer.write(
            b"HTTP/1.1 " + status + b"\r\nContent-Type: " + ctype
            + b"\r\nContent-Length: " + str(len(body)).encode()
            + b"\r\nConnection: close\r\n\r\n" + body
        )  # fmt: skip
