"""The loguru -> Dagster run log bridge on its own."""

from __future__ import annotations

import threading

from loguru import logger as root_logger

from mdp_core.logs import logger
from mdp_dagster.logging import LoguruBridge


class RecordingLog:
    """Stands in for DagsterLogManager: records (method, message)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    def __getattr__(self, level: str):  # debug/info/warning/error/critical
        return lambda message: self.calls.append((level, message))


def test_records_from_other_threads_reach_the_log_at_their_level() -> None:
    log = RecordingLog()
    with LoguruBridge(log, level="INFO", prefix="tests.dagster") as bridge:

        def worker() -> None:
            logger.info("hello {}", "from a thread")
            logger.warning("careful")
            logger.error("broken: postgresql://u:secret@db/x")
            logger.debug("too chatty")  # under the level

        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert log.calls == []  # queued until drained by the owner of the log
        assert bridge.drain() == 3
    assert log.calls[0] == ("info", f"[{__name__}] hello from a thread")
    assert [level for level, _ in log.calls] == ["info", "warning", "error"]
    assert "secret" not in log.calls[2][1]  # mdp's logger masks passwords first


def test_only_mdp_modules_are_forwarded_and_the_sink_is_removed_on_exit() -> None:
    log = RecordingLog()
    with LoguruBridge(log, level="DEBUG", prefix="mdp_core"):
        root_logger.bind().patch(lambda r: r.update(name="otherlib.mod")).info("not ours")
        root_logger.patch(lambda r: r.update(name="mdp_core.pipeline")).debug("ours")
    assert log.calls == [("debug", "[mdp_core.pipeline] ours")]
    logger.info("after exit")
    assert len(log.calls) == 1


def test_a_flood_is_bounded_and_reported() -> None:
    log = RecordingLog()
    with LoguruBridge(log, level="INFO", prefix="tests.dagster", max_pending=5) as bridge:
        for i in range(12):
            logger.info("line {}", i)
    assert bridge.dropped == 7
    assert [m for _, m in log.calls[:5]] == [f"[{__name__}] line {i}" for i in range(5)]
    assert log.calls[5][0] == "warning" and "7 mdp log records" in log.calls[5][1]
