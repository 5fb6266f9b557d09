"""``mdp stream``: run one stream (provider -> channel -> operators -> coordinator ->
PostgreSQL) in the foreground, with a live status line and a clean drain on Ctrl-C/SIGTERM."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import click

from mdp_core.pipeline import Pipeline, PipelineStats
from mdp_core.streams import StreamsConfigError, StreamSpec, load_streams

__all__ = ["stream"]


def _parse_options(values: tuple[str, ...]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as YAML scalars (``rate=5`` -> 5, ``loop=true``)."""
    import yaml

    options: dict[str, Any] = {}
    for raw in values:
        key, sep, value = raw.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{raw!r}: expected key=value", param_hint="--option")
        options[key.strip()] = yaml.safe_load(value) if value else ""
    return options


def _status_line(stats: PipelineStats) -> str:
    c = stats.to_dict()
    return (
        f"{stats.stream}: {c['rate']:>9,.0f}/s  received {c['received']:>10,}  "
        f"committed {c['committed']:>10,}  dead-lettered {c['dead_lettered']:>6,}  "
        f"dropped {c['dropped_total']:>6,}  queue {c['queue_depth']:>6,}  "
        f"circuit {c['circuit']}"
    )


@click.command()
@click.option("--provider", default=None, help="provider name (default: MDP_PROVIDER or ibkr)")
@click.option("--mode", type=click.Choice(["quotes", "bars"]), default="quotes", show_default=True)
@click.option("--symbols", default=None, help="comma-separated symbols, e.g. AAPL,MSFT")
@click.option("--resolution", default="5s", show_default=True, help="bar resolution (bars mode)")
@click.option(
    "--sessions",
    default=None,
    metavar="CALENDAR",
    help="with --resolution 1d: one bar per session of this exchange calendar (e.g. XNYS) "
    "instead of per UTC day",
)
@click.option(
    "--option",
    "options",
    multiple=True,
    metavar="KEY=VALUE",
    help="provider keyword argument, repeatable (e.g. --option rate=50 --option path=x.csv)",
)
@click.option("--channel-capacity", type=int, default=None, help="records the channel holds")
@click.option(
    "--channel-overflow",
    type=click.Choice(["block", "drop_oldest", "conflate"]),
    default=None,
    help="when the channel is full (default: the provider's choice; IBKR quotes: conflate)",
)
@click.option("--throttle", type=float, default=None, help="max records/s (token bucket)")
@click.option("--dedupe-ttl", type=float, default=None, help="drop repeats within N seconds")
@click.option("--workers", type=int, default=None, help="coordinator workers")
@click.option("--batch-size", type=int, default=None, help="coordinator batch size")
@click.option("--seconds", type=float, default=None, help="stop after N seconds (default: run)")
@click.option("--name", default=None, help="stream name (default: <provider>-<mode>)")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="read the stream from a streams.yaml (with --name)",
)
@click.option("--dsn", default=None, help="PostgreSQL DSN (default: MDP_PG_DSN, else embedded)")
@click.option(
    "--summary-json",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="write the final counters as JSON to this file",
)
@click.option(
    "--metrics-port",
    type=click.IntRange(0, 65535),
    default=None,
    help="serve Prometheus metrics on this port (0: any free one; the log says which)",
)
@click.option(
    "--metrics-host",
    default=None,
    help="address the metrics are served on (default 127.0.0.1: this machine only)",
)
@click.option("--quiet", is_flag=True, help="no live status line")
def stream(
    provider: str | None,
    mode: str,
    symbols: str | None,
    resolution: str,
    sessions: str | None,
    options: tuple[str, ...],
    channel_capacity: int | None,
    channel_overflow: str | None,
    throttle: float | None,
    dedupe_ttl: float | None,
    workers: int | None,
    batch_size: int | None,
    seconds: float | None,
    name: str | None,
    config: Path | None,
    dsn: str | None,
    summary_json: Path | None,
    metrics_port: int | None,
    metrics_host: str | None,
    quiet: bool,
) -> None:
    """Stream market data into PostgreSQL until Ctrl-C / SIGTERM / --seconds, then drain.

    \b
    Examples:
      mdp stream --provider synthetic --mode quotes --symbols AAPL,MSFT --seconds 30
      mdp stream --provider replay --mode bars --resolution 1h \\
                 --option path=data/SPY_1min_2011-01.csv --symbols SPY
      mdp stream --provider replay --mode bars --resolution 1d --sessions XNYS \\
                 --option path=data/SPY_1min_2011-01.csv --symbols SPY
      mdp stream --config streams.yaml --name ibkr_bars
      mdp stream --provider synthetic --symbols AAPL --metrics-port 9108

    \b
    Exit status: 0 when every record received was committed, dead-lettered or dropped by a
    named policy; 1 if the stream failed (the provider, or the spool); 3 if the accounting
    does not balance. --summary-json holds the final counters (received, committed,
    dead_lettered, dropped by policy, balanced, ...).
    """
    from mdp_core.settings import get_settings

    try:
        spec = _spec(provider, mode, symbols, resolution, options, throttle, dedupe_ttl,
                     workers, batch_size, name, config, get_settings().provider)  # fmt: skip
        overrides = {
            "channel_capacity": channel_capacity,
            "channel_overflow": channel_overflow,
            "metrics_port": metrics_port,
            "metrics_host": metrics_host,
            "sessions": sessions,
        }
        spec = spec.model_copy(update={k: v for k, v in overrides.items() if v is not None})
        type(spec).model_validate(spec.model_dump())  # the copy is checked like the original
    except (ValueError, StreamsConfigError) as exc:
        raise click.UsageError(str(exc)) from None
    stats = asyncio.run(_run(spec, dsn, seconds, quiet))
    if summary_json is not None:
        summary_json.write_text(json.dumps(stats.to_dict()))
    c = stats.to_dict()
    click.echo(
        f"{spec.name}: {stats.summary()}; {c['new_rows']:,} new rows in {c['elapsed_s']:.1f}s"
    )
    if stats.error is not None:
        click.echo(f"stream failed: {stats.error}", err=True)
        sys.exit(1)
    if not stats.balanced:
        sys.exit(3)


def _spec(
    provider: str | None,
    mode: str,
    symbols: str | None,
    resolution: str,
    options: tuple[str, ...],
    throttle: float | None,
    dedupe_ttl: float | None,
    workers: int | None,
    batch_size: int | None,
    name: str | None,
    config: Path | None,
    default_provider: str,
) -> StreamSpec:
    if config is not None:
        specs = load_streams(config)
        if name is None:
            if len(specs) != 1:
                names = ", ".join(s.name for s in specs)
                raise ValueError(f"{config} has several streams ({names}): choose one with --name")
            return specs[0]
        for spec in specs:
            if spec.name == name:
                return spec
        raise ValueError(f"{config} has no stream named {name!r}")
    if not symbols:
        raise ValueError("--symbols is required (e.g. --symbols AAPL,MSFT), or use --config")
    provider = provider or default_provider
    tuning = {k: v for k, v in {"workers": workers, "batch_size": batch_size}.items() if v}
    return StreamSpec(
        name=name or f"{provider}-{mode}",
        provider=provider,
        mode=mode,
        symbols=symbols,
        resolution=resolution,
        provider_options=_parse_options(options),
        throttle=throttle,
        dedupe_ttl=dedupe_ttl,
        coordinator=tuning,
    )


async def _run(spec: StreamSpec, dsn: str | None, seconds: float | None, quiet: bool) -> Any:
    from mdp_core.store.database import Database

    live = not quiet and sys.stderr.isatty()

    def show(stats: PipelineStats) -> None:
        line = _status_line(stats)
        click.echo(f"\r{line}" if live else line, err=True, nl=not live)

    async with Database.connect(dsn) as db:
        pipeline = Pipeline(
            spec,
            db,
            on_progress=None if quiet else show,
            progress_interval=1.0 if live else 5.0,
        )
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, _stopper(pipeline, sig))
        try:
            stats = await pipeline.run(max_seconds=seconds)
        except Exception:
            stats = pipeline.stats()
        finally:
            if live:
                click.echo(err=True)
        return stats


def _stopper(pipeline: Pipeline, sig: signal.Signals) -> Any:
    def stop() -> None:
        click.echo(f"\n{sig.name}: stopping, draining what is in flight...", err=True)
        pipeline.request_stop()

    return stop
