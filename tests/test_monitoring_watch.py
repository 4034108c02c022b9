"""asd monitor watching folders while real clips keep arriving: killed with SIGKILL and
restarted, and its PostgreSQL killed and brought back; every clip stored exactly once,
and SIGTERM ends it with exit 0 (issue 23 acceptance)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from asd.monitoring.store import open_store

from .conftest import SHIPPED_MODELS, SUBSET

CLIPS = sorted((SUBSET / "train").glob("*.flac")) + sorted((SUBSET / "test").glob("*.flac"))


def _start_monitor(db_url: str, incoming: Path, log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "asd.cli", "monitor", "--model", str(SHIPPED_MODELS), "--name", "toycar", "--db", db_url,
         "--settle", "0.5", str(incoming)], stdout=subprocess.DEVNULL, stderr=log.open("a"), env={**os.environ})


class Feeder(threading.Thread):
    """Writes ``clips`` into three machine folders, one every ``gap_s`` seconds, each in
    two halves with a pause between (a recorder still writing)."""

    def __init__(self, clips: list[Path], incoming: Path, gap_s: float = 0.3):
        super().__init__(daemon=True)
        self.clips, self.incoming, self.gap_s = clips, incoming, gap_s
        self.written: list[Path] = []

    def run(self):
        for i, clip in enumerate(self.clips):
            target = self.incoming / f"machine-{i % 3}" / clip.name
            target.parent.mkdir(parents=True, exist_ok=True)
            data = clip.read_bytes()
            with target.open("wb") as out:
                out.write(data[: len(data) // 2])
                out.flush()
                time.sleep(0.15)
                out.write(data[len(data) // 2:])
            self.written.append(target)
            time.sleep(self.gap_s)


def _wait_for(condition, timeout_s: float, what: str, log: Path):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.25)
    raise AssertionError(f"timed out waiting for {what}; monitor log:\n{log.read_text()[-3000:]}")


def _stored(db_url: str) -> list[tuple[str, str]]:
    store = open_store(db_url)
    try:
        return [(row.path, row.status) for row in store.history()]
    finally:
        store.close()


def _stop(process: subprocess.Popen, log: Path) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0, log.read_text()[-3000:]


def test_killed_with_sigkill_and_restarted_while_clips_arrive_every_clip_is_stored_once(db_url, tmp_path):
    incoming, log = tmp_path / "incoming", tmp_path / "monitor.log"
    incoming.mkdir()
    open_store(db_url).close()  # the schema, so that counting works from the start
    monitor = _start_monitor(db_url, incoming, log)
    feeder = Feeder(CLIPS, incoming)
    feeder.start()
    try:
        _wait_for(lambda: len(_stored(db_url)) >= 3, 180, "the first clips", log)
        monitor.send_signal(signal.SIGKILL)  # no chance to finish anything
        monitor.wait(timeout=30)
        time.sleep(1.0)  # clips go on arriving while no monitor runs
        monitor = _start_monitor(db_url, incoming, log)
        feeder.join(timeout=120)
        _wait_for(lambda: len(_stored(db_url)) >= len(CLIPS), 240, "every clip", log)
        time.sleep(2.0)  # a duplicate would show up now
    finally:
        if monitor.poll() is None:
            _stop(monitor, log)
    stored = _stored(db_url)
    assert sorted(path for path, _ in stored) == sorted(map(str, feeder.written))  # each once, none missing
    assert all(status == "scored" for _, status in stored), stored  # no half-written clip was scored
    assert "machine-0: scored" in log.read_text(), log.read_text()[-3000:]  # the summary at exit


def test_a_killed_postgresql_comes_back_and_the_monitor_goes_on(postgres, tmp_path):
    db_url = postgres.new_database()
    incoming, log = tmp_path / "incoming", tmp_path / "monitor.log"
    incoming.mkdir()
    open_store(db_url).close()
    monitor = _start_monitor(db_url, incoming, log)
    first, rest = CLIPS[:4], CLIPS[4:12]
    try:
        Feeder(first, incoming, gap_s=0.05).run()
        _wait_for(lambda: len(_stored(db_url)) == len(first), 180, "the first clips", log)
        postgres.stop("immediate")  # a crash: no clean shutdown
        try:
            feeder = Feeder(rest, incoming, gap_s=0.05)
            feeder.run()
            time.sleep(3.0)  # the monitor meets the dead database and retries
            assert monitor.poll() is None, log.read_text()[-3000:]
        finally:
            postgres.start()
        _wait_for(lambda: len(_stored(db_url)) == len(first) + len(rest), 180, "the clips after the restart", log)
        assert monitor.poll() is None
    finally:
        if monitor.poll() is None:
            _stop(monitor, log)
    text = log.read_text()
    assert "is unavailable" in text and "retrying" in text and "Traceback" not in text
    stored = _stored(db_url)
    assert len({path for path, _ in stored}) == len(stored) == 12


@pytest.mark.parametrize("poll", [None, "0.5"])
def test_sigterm_while_watching_exits_0_with_a_summary(tmp_path, poll):
    db_url = f"sqlite:///{tmp_path / 'm.db'}"
    incoming, log = tmp_path / "incoming", tmp_path / "monitor.log"
    (incoming / "press-07").mkdir(parents=True)
    args = [sys.executable, "-m", "asd.cli", "monitor", "--model", str(SHIPPED_MODELS), "--name", "toycar", "--db",
            db_url, "--settle", "0.3", str(incoming)] + (["--poll", poll] if poll else [])
    monitor = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=log.open("w"))
    try:
        _wait_for(lambda: "watching" in log.read_text(), 180, "the monitor to start", log)
        Feeder(CLIPS[:2], incoming, gap_s=0.0).run()  # machine-0 and machine-1
        _wait_for(lambda: len(_stored(db_url)) == 2, 60, "two clips", log)
    finally:
        _stop(monitor, log)
    assert "asd: machine-0: scored 1" in log.read_text() and "asd: machine-1: scored 1" in log.read_text()


def test_a_model_server_that_is_down_is_waited_for_and_the_clips_wait(tmp_path):
    from asd.processes import free_port, start_process, stop_process

    port = free_port()
    db_url = f"sqlite:///{tmp_path / 'm.db'}"
    incoming, log = tmp_path / "incoming", tmp_path / "monitor.log"
    incoming.mkdir()
    Feeder(CLIPS[:2], incoming, gap_s=0.0).run()
    monitor = subprocess.Popen(
        [sys.executable, "-m", "asd.cli", "monitor", "--server", f"http://127.0.0.1:{port}", "--name", "toycar",
         "--db", db_url, "--settle", "0.3", str(incoming)], stdout=subprocess.DEVNULL, stderr=log.open("w"))
    server = None
    try:
        _wait_for(lambda: "asking again" in log.read_text(), 60, "the monitor to find the server down", log)
        assert monitor.poll() is None and _stored(db_url) == []
        server = start_process([sys.executable, "-m", "asd.standins", "--models", str(SHIPPED_MODELS), "--port",
                                str(port)], {**os.environ}, tmp_path / "serving.log",
                               f"http://127.0.0.1:{port}/v1/models/toycar")
        _wait_for(lambda: len(_stored(db_url)) == 2, 120, "the clips once the server is up", log)
    finally:
        if monitor.poll() is None:
            _stop(monitor, log)
        if server is not None:
            stop_process(server)
    assert {status for _, status in _stored(db_url)} == {"scored"}
