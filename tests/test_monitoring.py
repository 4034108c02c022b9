"""Monitoring over time (issue 23): the store on SQLite and a real PostgreSQL, asd monitor
--once on real clips with the shipped model, the alert rule, notifications received by a
local HTTP server, asd history and asd alerts."""

from __future__ import annotations

import http.server
import json
import shutil
import threading
from datetime import datetime, timezone

import pytest
import soundfile as sf

from asd.layout import versions
from asd.monitoring.alerts import AlertRule, RuleBook, load_rules, next_state, should_clear, should_raise
from asd.monitoring.clips import machine_of, timestamp_in_name
from asd.monitoring.store import StoreError, open_store, upgrade

from .conftest import SHIPPED_MODELS, SUBSET, full_data_or_skip
from .test_cli import asd


# -- the rule, pure ---------------------------------------------------------------------

def test_k_of_n_raises_and_m_normal_in_a_row_clears():
    rule = AlertRule(k=3, n=5, m=3)
    a, n, u = "anomalous", "normal", "unfamiliar"
    assert not should_raise([a, a, n, n, n], rule)
    assert should_raise([a, n, a, n, a], rule)
    assert not should_raise([a, a, n, n, n, n, a], rule)  # only the last 5 count
    assert should_clear([a, a, n, n, n], rule)
    assert not should_clear([n, n, u], rule)  # unfamiliar breaks a normal run
    assert not should_clear([n, n], rule)
    assert next_state(None, [a, a, a], rule) == "raised"
    assert next_state("raised", [a, a, a, n, n], rule) == "raised"
    assert next_state("acknowledged", [a, a, a, n, n, n], rule) == "cleared"
    assert next_state(None, [a, a, n, n, n], rule) is None


def test_rules_file_machine_entries_and_app_overrides(tmp_path):
    path = tmp_path / "rules.yaml"
    path.write_text("default: {k: 2, n: 4}\nmachines:\n  press-07: {k: 1, n: 1, m: 2}\nnotify: [json://x/y]\n")
    book = load_rules(path)
    assert book.rule_for("other") == AlertRule(k=2, n=4, m=5)
    assert book.rule_for("press-07") == AlertRule(k=1, n=1, m=2)
    assert book.rule_for("press-07", {"k": 1, "n": 3, "m": None}) == AlertRule(k=1, n=3, m=2)
    assert book.notify == ["json://x/y"]
    path.write_text("default: {k: 6, n: 5}\n")
    with pytest.raises(ValueError, match="k .6. cannot exceed n .5."):
        load_rules(path)
    path.write_text("default: {kk: 1}\n")
    with pytest.raises(ValueError, match="default.kk"):
        load_rules(path)
    assert RuleBook().rule_for("x") == AlertRule(k=3, n=5, m=5)


def test_recorded_at_from_names_and_machine_from_folders(tmp_path):
    utc = timezone.utc
    assert timestamp_in_name("2026-11-03T10-00-00") == datetime(2026, 11, 3, 10, 0, 0, tzinfo=utc)
    assert timestamp_in_name("press07_20261103_101502") == datetime(2026, 11, 3, 10, 15, 2, tzinfo=utc)
    assert timestamp_in_name("2026-11-03 10:00:00+01:00") == datetime(2026, 11, 3, 9, 0, 0, tzinfo=utc)
    assert timestamp_in_name("section_00_source_test_normal_0001_car_A1") is None
    assert timestamp_in_name("2026-13-03T10-00-00") is None
    root = tmp_path / "incoming"
    assert machine_of(root / "press-07" / "2026" / "a.wav", root) == "press-07"
    assert machine_of(root / "a.wav", root) is None
    assert machine_of(root / "a.wav", root, "pump-1") == "pump-1"


# -- the store --------------------------------------------------------------------------

def test_the_migrations_build_exactly_the_tables_the_code_declares(db_url):
    from alembic.autogenerate import compare_metadata
    from alembic.runtime.migration import MigrationContext

    from asd.monitoring.store import make_engine
    from asd.monitoring.tables import Base

    assert upgrade(db_url) == (None, "0003")
    assert upgrade(db_url) == ("0003", "0003")  # again: nothing to do
    engine = make_engine(db_url)
    with engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []
    engine.dispose()


def test_an_older_schema_is_refused_with_the_command_that_fixes_it_and_upgrading_keeps_the_data(db_url, tmp_path):
    assert upgrade(db_url, "0001") == (None, "0001")
    with pytest.raises(StoreError, match=r"schema 0001, older than this version.s 0003: run asd db upgrade --db"):
        open_store(db_url)
    run = asd("history", "--db", db_url)
    assert run.returncode == 2 and "run asd db upgrade --db" in run.stderr
    status = asd("db", "status", "--db", db_url)
    assert status.returncode == 1 and "schema 0001, this version of asd expects 0003" in status.stdout
    from sqlalchemy import text

    from asd.monitoring.store import make_engine

    engine = make_engine(db_url)
    with engine.begin() as connection:  # a machine stored under the old schema
        connection.execute(text("INSERT INTO machines (name, first_seen_at) VALUES ('press-07', '2026-11-03 10:00:00')"))
    engine.dispose()
    assert asd("db", "upgrade", "--db", db_url).returncode == 0
    store = open_store(db_url)
    assert [m.name for m in store.machines()] == ["press-07"] and store.machines()[0].baseline_clips is None
    store.close()


def test_open_store_refuses_a_schema_it_does_not_know_and_a_foreign_database(db_url):
    from sqlalchemy import text

    from asd.monitoring.store import make_engine

    engine = make_engine(db_url)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE invoices (id INTEGER PRIMARY KEY)"))
    with pytest.raises(StoreError, match="holds tables but no monitoring schema"):
        open_store(db_url)
    upgrade(db_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    with pytest.raises(StoreError, match="schema 9999, which this version of asd does not know"):
        open_store(db_url)
    engine.dispose()


def test_an_unreachable_database_or_a_bad_url_is_one_line():
    from .conftest import free_port

    run = asd("history", "--db", f"postgresql+psycopg://asd@127.0.0.1:{free_port()}/x")
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert run.stderr.startswith("asd: error: cannot reach the database") and len(run.stderr.splitlines()) == 1
    run = asd("db", "upgrade", "--db", "mysqlx://nobody")
    assert run.returncode == 2 and run.stderr.startswith("asd: error: mysqlx://nobody: not a database URL")


# -- asd monitor --once on real clips ---------------------------------------------------

def _four_machine_folders(root, clips):
    """The clips dealt into 4 machine folders (``machine-0`` .. ``machine-3``)."""
    for i, clip in enumerate(clips):
        folder = root / f"machine-{i % 4}"
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy(clip, folder / clip.name)
    return root


@pytest.mark.full_data
def test_monitor_once_stores_each_of_200_real_clips_once(db_url, tmp_path):
    data = full_data_or_skip()
    clips = sorted((data / "test").glob("*.flac")) + sorted((data / "test").glob("*.wav"))
    assert len(clips) == 200
    incoming = _four_machine_folders(tmp_path / "incoming", clips)
    run = asd("monitor", "--model", SHIPPED_MODELS, "--name", "toycar", "--db", db_url, "--once", incoming)
    assert run.returncode == 0, run.stderr
    assert "machine-0: scored 50" in run.stderr and "machine-3: scored 50" in run.stderr
    store = open_store(db_url)
    assert store.counts()["clips"] == 200 and store.counts()["scores"] == 200
    rows = store.history()
    assert {r.machine for r in rows} == {f"machine-{i}" for i in range(4)}
    latest = max(versions(SHIPPED_MODELS / "toycar"))  # what --model without --model-version serves
    assert all(r.model_name == "toycar" and r.model_version == latest and r.verdict in ("normal", "anomalous", "unfamiliar")
               for r in rows)
    with_name = {r.path.rsplit("/", 1)[-1]: r for r in rows}
    first = with_name[clips[0].name]
    assert first.recorded_at.tzinfo is not None and first.scored_at >= first.recorded_at
    again = asd("monitor", "--model", SHIPPED_MODELS, "--name", "toycar", "--db", db_url, "--once", incoming)
    assert again.returncode == 0, again.stderr
    assert "machine-2: scored 0 (none), failed 0, 50 already stored" in again.stderr
    assert store.counts()["clips"] == 200
    store.close()


def test_a_clip_that_cannot_be_used_is_stored_failed_once_and_history_prints_it(db_url, tmp_path):
    folder = tmp_path / "incoming" / "pump-1"
    folder.mkdir(parents=True)
    good = sorted((SUBSET / "test").glob("*normal*.flac"))[0]
    shutil.copy(good, folder / "2026-11-03T10-00-00.flac")
    (folder / "2026-11-03T10-05-00.wav").write_text("not audio at all")
    samples, rate = sf.read(good)
    sf.write(folder / "2026-11-03T10-10-00.wav", samples[: rate // 10] * 0, rate)  # silent: a muted microphone
    for _ in range(2):
        run = asd("monitor", "--model", SHIPPED_MODELS, "--name", "toycar", "--db", db_url, "--once", tmp_path / "incoming")
        assert run.returncode == 0, run.stderr
    assert "pump-1: scored 0 (none), failed 0, 3 already stored" in run.stderr
    history = asd("history", "--db", db_url, "--machine", "pump-1", "--since", "2026-11-03", "--format", "json")
    rows = json.loads(history.stdout)
    assert [r["status"] for r in rows] == ["scored", "failed", "failed"]
    assert rows[0]["recorded_at"] == "2026-11-03T10:00:00Z" and rows[0]["model_version"] == max(versions(SHIPPED_MODELS / "toycar"))
    assert "not a WAV or FLAC" in rows[1]["problem"] or "cannot" in rows[1]["problem"]
    assert "silent" in rows[2]["problem"]
    later = asd("history", "--db", db_url, "--machine", "pump-1", "--since", "2026-11-03T10:06:00Z", "--format", "csv")
    assert later.stdout.splitlines()[0].startswith("machine,clip_id,recorded_at") and len(later.stdout.splitlines()) == 2
    unknown = asd("history", "--db", db_url, "--machine", "press-9")
    assert unknown.returncode == 2 and "no machine 'press-9'" in unknown.stderr


class _Hook(http.server.BaseHTTPRequestHandler):
    received: list = []

    def do_POST(self):
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


@pytest.fixture
def webhook():
    """A local HTTP server that keeps every JSON body POSTed to it: ``(url, bodies)``."""
    handler = type("Hook", (_Hook,), {"received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"json://127.0.0.1:{server.server_address[1]}/hook", handler.received
    server.shutdown()


def _verdicts_of_shipped_model(clips):
    from asd.inference import Detector
    from asd.serving import make_backend

    detector = Detector(make_backend(model_dir=str(SHIPPED_MODELS), name="toycar"))
    return {clip: result.verdict for clip, result in detector.score_files(clips, display=False)}


@pytest.mark.full_data
def test_flagged_anomalies_raise_one_alert_keep_its_clips_and_notify_once_per_state(db_url, tmp_path, webhook):
    data = full_data_or_skip()
    url, received = webhook
    verdicts = _verdicts_of_shipped_model(sorted((data / "test").glob("*target_test_*.flac"))[:100])
    flagged = [c for c, v in verdicts.items() if v == "anomalous" and "anomaly" in c.name][:5]
    normal = [c for c, v in verdicts.items() if v == "normal" and "_normal_" in c.name][:5]
    assert len(flagged) == 5 and len(normal) == 5
    incoming = tmp_path / "incoming"
    (incoming / "press-07").mkdir(parents=True)
    (incoming / "fan-02").mkdir()
    for i, clip in enumerate(flagged):
        shutil.copy(clip, incoming / "press-07" / f"2026-11-03T10-0{i}-00{clip.suffix}")
    for i, clip in enumerate(normal):  # a healthy machine beside it: no alert
        shutil.copy(clip, incoming / "fan-02" / f"2026-11-03T10-0{i}-00{clip.suffix}")
    store_dir = tmp_path / "clip-store"

    def monitor():
        run = asd("monitor", "--model", SHIPPED_MODELS, "--name", "toycar", "--db", db_url, "--once", "--notify", url,
                  "--baseline-clips", "0",
                  "--clip-store", store_dir, incoming)
        assert run.returncode == 0, run.stderr
        return run

    run = monitor()
    assert "press-07: scored 5 (5 anomalous), failed 0; alerts raised 1, cleared 0" in run.stderr
    alerts = json.loads(asd("alerts", "--db", db_url, "--format", "json").stdout)
    assert len(alerts) == 1 and alerts[0]["machine"] == "press-07" and alerts[0]["state"] == "raised"
    assert alerts[0]["clips"] == 5  # 3 raised it, 2 more came while it was open
    kept = sorted(store_dir.glob("press-07/alert-*/*.flac"))
    assert len(kept) == 5
    shutil.rmtree(incoming / "press-07")  # the incoming folder is cleaned: the kept clips stay
    assert all(k.stat().st_size > 0 for k in kept)
    assert len(received) == 1 and "press-07" in received[0]["title"] and "raised" in received[0]["title"]

    ack = asd("alerts", "--db", db_url, "--ack", alerts[0]["id"], "--by", "J. Doe", "--note", "bearing checked")
    assert ack.returncode == 0, ack.stderr
    again = asd("alerts", "--db", db_url, "--ack", alerts[0]["id"], "--by", "J. Doe")
    assert again.returncode == 2 and "is acknowledged, not raised" in again.stderr
    (incoming / "press-07").mkdir()
    for i, clip in enumerate(normal):
        shutil.copy(clip, incoming / "press-07" / f"2026-11-03T11-0{i}-00{clip.suffix}")
    run = monitor()
    assert "press-07: scored 5 (5 normal), failed 0; alerts raised 0, cleared 1" in run.stderr
    monitor()  # nothing new: no alert, no notification
    [alert] = json.loads(asd("alerts", "--db", db_url, "--format", "json").stdout)
    assert alert["state"] == "cleared" and alert["acknowledged_by"] == "J. Doe" and alert["note"] == "bearing checked"
    assert alert["acknowledged_at"] <= alert["cleared_at"]
    assert [b["title"].rsplit(" ", 1)[-1] for b in received] == ["raised", "acknowledged", "cleared"]
    assert "J. Doe: bearing checked" in received[1]["message"]
    [entry] = json.loads(asd("audit", "--db", db_url, "--format", "json").stdout)  # who did what, when
    assert (entry["who"], entry["action"], entry["target"]) == ("J. Doe", "acknowledge alert", f"alert {alert['id']}")
    assert json.loads(entry["detail"]) == {"note": "bearing checked"}
    store = open_store(db_url)
    [row] = store.alerts()
    assert [e.state for e in row.events] == ["raised", "acknowledged", "cleared"]
    assert all(e.notified_at is not None for e in row.events)
    store.close()


def test_bad_input_to_asd_monitor_is_one_line_and_a_flat_folder_needs_machine(tmp_path):
    from .conftest import free_port

    db_url = f"sqlite:///{tmp_path / 'm.db'}"
    base = ["monitor", "--model", SHIPPED_MODELS, "--name", "toycar", "--db", db_url, "--once"]
    cases = {
        "no such folder": base + [tmp_path / "nowhere"],
        "not a notification URL": base + ["--notify", "nonsense-scheme://x", tmp_path],
        "k (4) cannot exceed n (2)": base + ["--rules", _write(tmp_path / "r.yaml", "default: {k: 4, n: 2}\n"), tmp_path],
        "is not reachable": ["monitor", "--server", f"http://127.0.0.1:{free_port()}", "--name", "toycar", "--db", db_url,
                         "--once", tmp_path],
    }
    for expected, args in cases.items():
        run = asd(*args)
        assert run.returncode == 2 and "Traceback" not in run.stderr, (expected, run.stderr)
        assert run.stderr.strip().splitlines()[-1].startswith("asd: error: ") and expected in run.stderr, run.stderr
    flat = tmp_path / "flat"
    flat.mkdir()
    shutil.copy(sorted((SUBSET / "test").glob("*.flac"))[0], flat / "2026-11-03T10-00-00.flac")
    run = asd(*base[:-1], "--once", flat)
    assert run.returncode == 0 and "not in a machine folder" in run.stderr and "give --machine ID" in run.stderr
    run = asd(*base, "--machine", "pump-1", flat)
    assert run.returncode == 0 and "pump-1: scored 1" in run.stderr, run.stderr


def _write(path, text):
    path.write_text(text)
    return path
