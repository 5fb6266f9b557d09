"""ProviderRegistry: built-ins, registration, argument errors, the lazy ibkr factory and
entry-point discovery (a real dist-info on sys.path)."""

from __future__ import annotations

import sys
import textwrap
import types
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest

from mdp_core.models import Quote, Record
from mdp_core.providers.base import ProviderError, ProviderSource
from mdp_core.providers.registry import ProviderRegistry
from mdp_core.providers.replay import ReplaySource
from mdp_core.providers.synthetic import SyntheticSource


class EchoSource(ProviderSource):
    """A provider with an explicit signature, to check argument errors."""

    name = "echo"

    def __init__(self, symbols: list[str], mode: str = "quotes", *, greeting: str = "hi") -> None:
        super().__init__(symbols, mode)
        self.greeting = greeting

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        pass

    async def stream(self) -> AsyncIterator[Record]:
        for symbol in self.symbols:
            yield Quote(symbol, datetime(2024, 1, 2, tzinfo=UTC), bid=1.0, ask=2.0)


def test_new_registry_has_the_builtins() -> None:
    assert {"ibkr", "replay", "synthetic"} <= set(ProviderRegistry().names())


def test_builtins_build_their_sources() -> None:
    registry = ProviderRegistry()
    src = registry.build("synthetic", symbols=["aapl"], mode="bars", bar_resolution="1m")
    assert isinstance(src, SyntheticSource)
    assert (src.symbols, src.mode, src.resolution) == (["AAPL"], "bars", "1m")
    data = Path(__file__).resolve().parents[2] / "data" / "SPY_1min_2011-01.csv"
    assert isinstance(registry.build("replay", symbols=["SPY"], path=data), ReplaySource)


def test_names_are_case_insensitive() -> None:
    assert isinstance(ProviderRegistry().build("SYNTHETIC", symbols="A"), SyntheticSource)


def test_register_and_build_a_custom_provider() -> None:
    registry = ProviderRegistry()
    registry.register("echo", EchoSource)
    src = registry.build("echo", symbols=["x"], greeting="hello")
    assert isinstance(src, EchoSource) and src.greeting == "hello" and src.symbols == ["X"]
    assert "echo" in registry.names() and "echo" in registry


def test_duplicate_registration_is_refused_unless_replace() -> None:
    registry = ProviderRegistry()
    registry.register("echo", EchoSource)
    with pytest.raises(ValueError, match=r"'echo' is already registered.*replace=True"):
        registry.register("echo", EchoSource)
    with pytest.raises(ValueError, match="'synthetic' is already registered"):
        registry.register("synthetic", EchoSource)
    registry.register("synthetic", EchoSource, replace=True)
    assert isinstance(registry.build("synthetic", symbols=["A"]), EchoSource)
    # a registry is its own world: a new one still has the real built-in
    assert isinstance(ProviderRegistry().build("synthetic", symbols=["A"]), SyntheticSource)


def test_register_checks_name_and_factory() -> None:
    registry = ProviderRegistry()
    with pytest.raises(ValueError, match="invalid provider name ''"):
        registry.register("", EchoSource)
    with pytest.raises(TypeError, match="not callable"):
        registry.register("thing", 42)  # type: ignore[arg-type]


def test_unknown_provider_lists_the_known_ones() -> None:
    with pytest.raises(
        ValueError, match=r"unknown provider 'nope': expected one of .*ibkr.*synthetic"
    ):
        ProviderRegistry().build("nope", symbols=["A"])


def test_a_wrong_keyword_names_the_provider_and_the_argument() -> None:
    registry = ProviderRegistry()
    registry.register("echo", EchoSource)
    with pytest.raises(TypeError, match=r"provider 'echo' does not accept argument 'colour'") as e:
        registry.build("echo", symbols=["A"], colour="red")
    assert "greeting" in str(e.value)  # the accepted arguments are listed
    # a lazily imported built-in: the class's own TypeError is translated too
    with pytest.raises(TypeError, match=r"provider 'synthetic' does not accept argument 'speed'"):
        registry.build("synthetic", symbols=["A"], speed=2)
    with pytest.raises(TypeError, match=r"provider 'replay' needs argument 'path'"):
        registry.build("replay", symbols=["A"])


def test_the_providers_own_validation_errors_pass_through() -> None:
    with pytest.raises(ValueError, match="invalid mode 'trades'"):
        ProviderRegistry().build("synthetic", symbols=["A"], mode="trades")


def test_a_factory_must_return_a_provider_source() -> None:
    registry = ProviderRegistry()
    registry.register("bad", lambda **kw: object())
    with pytest.raises(ProviderError, match="returned object, expected a ProviderSource"):
        registry.build("bad")


def test_ibkr_without_its_module_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mdp_core.providers.ibkr", None)  # import fails
    with pytest.raises(ProviderError) as e:
        ProviderRegistry().build("ibkr", symbols=["AAPL"], mode="quotes")
    message = str(e.value)
    assert "pip install 'mdp[ibkr]'" in message
    assert "'synthetic'" in message and "'replay'" in message


def test_ibkr_module_is_imported_only_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    built: list[dict[str, object]] = []

    class IBKRStreamSource(EchoSource):
        def __init__(self, **kwargs: object) -> None:
            built.append(kwargs)
            super().__init__(kwargs["symbols"])  # type: ignore[arg-type]

        @classmethod
        def from_config(cls, **kwargs: object) -> IBKRStreamSource:  # what the registry calls
            return cls(**kwargs)

    module = types.ModuleType("mdp_core.providers.ibkr")
    module.IBKRStreamSource = IBKRStreamSource  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "mdp_core.providers.ibkr", module)
    registry = ProviderRegistry()
    assert built == []
    src = registry.build("ibkr", symbols=["AAPL"], mode="quotes", client_id=7)
    assert isinstance(src, IBKRStreamSource)
    assert built == [{"symbols": ["AAPL"], "mode": "quotes", "client_id": 7}]


# -- entry points ----------------------------------------------------------------------------

PLUGIN = """
from datetime import UTC, datetime
from mdp_core.models import Quote
from mdp_core.providers.base import ProviderSource


class TinySource(ProviderSource):
    name = "tinyfeed"

    async def start(self):
        pass

    async def stop(self):
        pass

    async def stream(self):
        for symbol in self.symbols:
            yield Quote(symbol, datetime(2024, 1, 2, tzinfo=UTC), bid=1.0, ask=1.5)
"""


@pytest.fixture
def plugin_dist(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An installed distribution (dist-info on sys.path) declaring mdp.providers entry points."""
    name = f"mdp_plugin_{tmp_path.name[-8:].replace('-', '_')}"
    (tmp_path / f"{name}.py").write_text(PLUGIN)
    dist = tmp_path / "mdp_plugin_test-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mdp-plugin-test\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        textwrap.dedent(f"""\
            [mdp.providers]
            tinyfeed = {name}:TinySource
            brokenfeed = mdp_no_such_module_xyz:Factory
            notcallable = {name}:__name__
            synthetic = {name}:TinySource
            """)
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path / f"{name}.py"
    sys.modules.pop(name, None)


async def test_entry_point_providers_are_discovered_and_loaded_lazily(plugin_dist: Path) -> None:
    registry = ProviderRegistry()
    assert {"tinyfeed", "brokenfeed"} <= set(registry.names())
    assert plugin_dist.stem not in sys.modules  # listed, not imported
    src = registry.build("tinyfeed", symbols=["x", "y"])
    assert plugin_dist.stem in sys.modules
    await src.start()
    assert [q.symbol async for q in src.stream()] == ["X", "Y"]


def test_a_broken_entry_point_gives_a_clear_error_not_a_broken_registry(
    plugin_dist: Path,
) -> None:
    registry = ProviderRegistry()
    with pytest.raises(ProviderError, match=r"'brokenfeed = mdp_no_such_module_xyz:Factory'"):
        registry.build("brokenfeed", symbols=["A"])
    with pytest.raises(ProviderError, match="expected a ProviderSource class or a factory"):
        registry.build("notcallable", symbols=["A"])
    assert registry.build("tinyfeed", symbols=["A"]).symbols == ["A"]


def test_builtins_and_registered_names_win_over_entry_points(plugin_dist: Path) -> None:
    registry = ProviderRegistry()
    assert isinstance(registry.build("synthetic", symbols=["A"]), SyntheticSource)
    registry.register("tinyfeed", EchoSource)
    assert isinstance(registry.build("tinyfeed", symbols=["A"]), EchoSource)


def test_entry_points_can_be_ignored(plugin_dist: Path) -> None:
    registry = ProviderRegistry(entry_points=False)
    assert "tinyfeed" not in registry.names()
    with pytest.raises(ValueError, match="unknown provider 'tinyfeed'"):
        registry.build("tinyfeed", symbols=["A"])
