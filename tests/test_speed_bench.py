"""`asd bench --quick`, as CI runs it: every part of the speed benchmark still works on the
real subset and the shipped models. No timing is asserted (the figures of a shared CI
machine judge nothing); what is checked is that each figure was measured and is sane, and
the one behaviour the benchmark exists to show that is not a time: the app that talks to
a server runs without TensorFlow."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from asd.layout import versions as versions_of
from asd.measure.postgres_server import postgres_bin

from .conftest import REPO, SHIPPED_MODELS, SUBSET

OUT = REPO / "test-artifacts" / "speed" / "report.md"


@pytest.fixture(scope="module")
def report():
    OUT.parent.mkdir(parents=True, exist_ok=True)
    run = subprocess.run(
        [sys.executable, "-m", "asd.cli", "bench", "--quick", "--data", str(SUBSET), "--out", str(OUT)],
        cwd=REPO, capture_output=True, text=True, timeout=900,
        env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert f"report: {OUT}" in run.stdout
    return json.loads(OUT.with_suffix(".json").read_text()), OUT.read_text()


def test_every_part_is_measured_for_every_shipped_version(report):
    data, markdown = report
    versions = [s["version"] for s in data["scoring"]]
    assert versions == versions_of(SHIPPED_MODELS / "toycar")  # every version in production/models/toycar
    for s in data["scoring"]:
        assert s["n_clips"] == 8
        assert s["warm_clips_per_s"]["n"] == 2 and s["warm_clips_per_s"]["min"] > 0
        assert s["cold"]["peak_rss_mb"]["median"] > 100  # a process that imported TensorFlow
        assert s["cold"]["startup_s"] > 0
        assert all(s["stage_ms"][k] > 0 for k in ("decode", "logmel", "model"))
    for r in data["rest"]:
        assert r["request_ms"]["n"] == 10 and r["request_ms"]["p50"] > 0
        assert r["model_ms"]["p50"] > 0 and r["round_trip_ms"]["p50"] > 0 and r["client_encode_ms"]["p50"] > 0
        assert "payload_ms" in r and "server_ms" not in r  # split on the client's side: no timing header
        assert r["request_mb"] < r["naive_full_precision"]["request_mb"]  # rounding and orjson shrink it
    rest = {r["version"]: r for r in data["rest"]}
    waveform_model = max(versions)  # the shipped default takes the clip's samples
    assert rest[1]["naive_per_patch"]["requests_per_clip"] == 44 and rest[waveform_model]["naive_per_patch"] is None
    assert rest[waveform_model]["input_shape"] == [1, 192000] and rest[1]["input_shape"] == [44, 128, 32]
    assert [g["version"] for g in data["grpc"]] == versions
    assert data["training"]["epochs_run"] == 2 and data["training"]["total_s"] > data["training"]["first_epoch_s"]
    caching = data["feature_caching"]
    assert caching["cached_epoch_s"]["median"] > 0 and caching["recomputed_epoch_s"]["median"] > 0
    # the Markdown report carries each section and one target row per version and figure
    for heading in ("## Targets", "## Scoring", "## One 12 s clip through a server", "## Training",
                    "## Memory (peak RSS)", "## Ingest", "## The naive way, side by side"):
        assert heading in markdown
    assert len(data["headline"]) == 2 * len(versions) + 1 + 2 + 1  # and ingest into SQLite and PostgreSQL, baseline cost
    assert "quick mode" in markdown


def _check_ingest(ingest: dict, n_clips: int, n_machines: int) -> None:
    """The ingest section's fields exist and are sane: every clip given was counted
    (printed by asd score, stored by asd monitor), rates positive; no time judged."""
    assert (ingest["n_clips"], ingest["n_machines"]) == (n_clips, n_machines)
    assert ingest["version"] == max(versions_of(SHIPPED_MODELS / "toycar"))
    assert 0 < ingest["n_small"] < n_clips
    measured = ["score", "sqlite"]
    if "skipped" in ingest["postgresql"]:
        assert postgres_bin() is None and os.environ.get("ASD_REQUIRE_POSTGRES") != "1", ingest["postgresql"]
        assert "PostgreSQL is not installed" in ingest["postgresql"]["skipped"]
    else:
        measured.append("postgresql")
    for key in measured:
        r = ingest[key]
        assert r["clips"] == [n_clips] * ingest["repeats"], key
        assert r["with_startup_clips_per_s"]["min"] > 0 and r["seconds"]["min"] > 0 and r["small_seconds"]["min"] > 0
        assert r["peak_rss_mb"]["median"] > 100  # TensorFlow and the model loaded
        # a few clips: start-up noise may outweigh them (then no start-up-free rate)
        assert r["clips_per_s"] is None or r["clips_per_s"]["min"] > 0
        if key != "score":
            assert r["scored"] == n_clips  # every clip scored, none failed
            rate = ingest["ratio"][key]
            assert rate is None or rate > 0


def _check_baseline_cost(baseline: dict) -> None:
    """The baseline-cost fields exist and are sane (the quick run: 2 machines, a baseline
    of 4 clips, 4 more clips each, timed with and without their baselines)."""
    assert (baseline["baseline_clips"], baseline["n_machines"], baseline["n_clips"]) == (4, 2, 8)
    assert baseline["version"] == max(versions_of(SHIPPED_MODELS / "toycar"))
    assert baseline["with_s"]["min"] > 0 and baseline["without_s"]["min"] > 0
    assert baseline["overhead"]["n"] == baseline["cost_ms_per_clip"]["n"] == baseline["repeats"]
    for w, o, cost in zip(baseline["with_s"]["values"], baseline["without_s"]["values"],
                          baseline["cost_ms_per_clip"]["values"]):
        assert cost == pytest.approx((w - o) / 8 * 1000, abs=0.05)  # the seconds are kept to 0.1 ms


def test_ingest_is_measured_against_asd_score(report):
    data, markdown = report
    _check_ingest(data["ingest"], 16, 2)  # quick: the 8 subset clips twice, in 2 machine folders
    _check_baseline_cost(data["ingest"]["baseline"])
    [row] = [r for r in data["headline"] if "machine baseline" in r["what"]]
    assert row["target"] == "<= 10 % more time a clip" and row["met"] in (True, False)
    assert "**A machine baseline of 4 clips**" in markdown
    rows = [r for r in data["headline"] if "asd monitor --once" in r["what"]]
    assert [("SQLite" in r["what"], "PostgreSQL" in r["what"]) for r in rows] == [(True, False), (False, True)]
    for row in rows:
        assert row["target"].startswith(">= 80 % of `asd score`'s clips/s")
        assert row["met"] in (True, False, None)
    assert "| `asd monitor --once`, SQLite |" in markdown


def test_sections_update_an_existing_report(tmp_path):
    """``--sections ingest`` measures ingest only and keeps the report's other sections."""
    committed = REPO / "benchmarks" / "speed" / "report.json"
    out = tmp_path / "report.md"
    shutil.copy(committed, out.with_suffix(".json"))
    run = subprocess.run(
        [sys.executable, "-m", "asd.cli", "bench", "--quick", "--sections", "ingest", "--data", str(SUBSET),
         "--max-clips", "4", "--ingest-clips", "8", "--ingest-machines", "2", "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=600, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    before, after = json.loads(committed.read_text()), json.loads(out.with_suffix(".json").read_text())
    for key in ("scoring", "rest", "grpc", "app", "training", "feature_caching", "date", "git_commit", "settings"):
        assert after[key] == before[key], key
    assert after["updates"][-1]["sections"] == ["ingest"] and after["updates"][-1]["settings"]["quick"]
    _check_ingest(after["ingest"], 8, 2)
    assert ([r for r in after["headline"] if "monitor" not in r["what"]]
            == [r for r in before["headline"] if "monitor" not in r["what"]])  # the other rows as they were
    text = out.read_text()
    assert "## Scoring" in text and "## Ingest" in text and "Re-measured since: ingest" in text


@pytest.mark.skipif(not shutil.which("chromium") and os.environ.get("ASD_REQUIRE_BROWSER") != "1",
                    reason="needs Debian's chromium (apt-get install -y chromium); .ci/run installs it")
def test_the_app_talking_to_a_server_runs_without_tensorflow(report):
    data, _ = report
    app = data["app"]
    assert not app["rest"]["tensorflow_loaded"] and app["in_process"]["tensorflow_loaded"]
    assert 0 < app["rest"]["peak_rss_mb"] < app["in_process"]["peak_rss_mb"]


def test_readme_quotes_the_committed_report():
    """The Speed page's figures (docs/benchmarks/speed.md) are those of benchmarks/speed/report.json."""
    committed = json.loads((REPO / "benchmarks" / "speed" / "report.json").read_text())
    readme = (REPO / "docs" / "benchmarks" / "speed.md").read_text()  # the docs page "Speed"
    scoring = {s["version"]: s for s in committed["scoring"]}
    rest = {r["version"]: r for r in committed["rest"]}
    grpc = {g["version"]: g for g in committed["grpc"]}
    training = committed["training"]
    shipped = max(scoring)  # the default version: the newest

    def missed(ok: bool) -> str:
        return "" if ok else " (**missed**)"

    warm = {v: scoring[v]["warm_clips_per_s"]["median"] for v in (1, shipped)}
    p50_p95 = {v: (rest[v]["request_ms"]["p50"], rest[v]["request_ms"]["p95"]) for v in (1, shipped)}
    rest_ok = {v: p50 <= 20 and p95 <= 40 for v, (p50, p95) in p50_p95.items()}
    quoted = [
        f"**{warm[shipped]:g} clips/s**{missed(warm[shipped] >= 100)}",
        f"| {warm[1]:g} clips/s{missed(warm[1] >= 100)} |",
        f"{scoring[shipped]['cold']['clips_per_s']['median']:g} clips/s ({scoring[shipped]['cold']['startup_s']:g} s start-up)",
        f"**{p50_p95[shipped][0]:g} / {p50_p95[shipped][1]:g} ms**{missed(rest_ok[shipped])}",
        f"{p50_p95[1][0]:g} / {p50_p95[1][1]:g} ms{missed(rest_ok[1])}",
        f"{grpc[shipped]['request_ms']['p50']:g} / {grpc[shipped]['request_ms']['p95']:g} ms",
        f"**{training['epoch_s']['median']:g} s**",
        f"takes {training['total_s']:g} s",
        f"**{round(committed['app']['rest']['peak_rss_mb']):g} MB**",
        f"model {scoring[shipped]['stage_ms']['model']:g} ms (v{shipped})",
        "[`benchmarks/speed/report.md`](../../benchmarks/speed/report.md)",
    ]
    for text in quoted:
        assert text in readme, text
    assert not committed["settings"]["quick"]
    assert committed["app"]["rest"]["tensorflow_loaded"] is False
