"""Scoring at scale: `asd score --concurrency N --output FILE [--resume]` over folders,
against two TF Serving stand-in processes behind one round-robin gRPC target, one of
them killed midway: every clip scored or listed as failed, none lost, scores equal to
in-process ones."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from asd.bulk_scoring import ResultFile, expand_paths, score_concurrently
from asd.processes import free_port, start_process, stop_process

from .conftest import REPO, SHIPPED_MODELS, SUBSET, full_data_or_skip

ASD = [sys.executable, "-m", "asd.cli"]


def _env() -> dict:
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONUNBUFFERED": "1"}


def _stand_in(tmp_path: Path, label: str) -> tuple[subprocess.Popen, int]:
    """`python -m asd.standins` serving the shipped models over REST and gRPC: (process, gRPC port)."""
    rest_port, grpc_port = free_port(), free_port()
    process = start_process(
        [sys.executable, "-m", "asd.standins", "--models", str(SHIPPED_MODELS), "--port", str(rest_port),
         "--grpc-port", str(grpc_port)],
        _env(), tmp_path / f"standin-{label}.log", f"http://127.0.0.1:{rest_port}/v1/models/toycar", cwd=REPO,
    )
    return process, grpc_port


def _in_process_scores(files: list[Path]) -> dict[str, float]:
    """Each clip scored alone (one request, as the concurrent client sends it), in-process."""
    from asd.inference import Detector
    from asd.serving import make_backend

    detector = Detector(make_backend(model_dir=str(SHIPPED_MODELS), name="toycar"))
    return {o.file: o.result.score for o in score_concurrently(detector, files, concurrency=1)}


def _lines(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.exists() else []


def test_folders_are_walked_recursively_for_audio_files(tmp_path):
    files = expand_paths([SUBSET])
    assert files == sorted(files) and len(files) == len(list(SUBSET.rglob("*.flac")))
    assert {f.parent.name for f in files} == {"train", "test"}
    (tmp_path / "notes.txt").write_text("not audio")
    missing = tmp_path / "gone.wav"
    assert expand_paths([tmp_path, missing, files[0], files[0]]) == [missing, files[0]]  # kept: reported as failed


def test_two_replicas_one_killed_midway_no_clip_lost(tmp_path):
    data = full_data_or_skip()
    clips = expand_paths([data / "test"])
    assert len(clips) == 200
    (first, first_port), (second, second_port) = _stand_in(tmp_path, "a"), _stand_in(tmp_path, "b")
    output = tmp_path / "scores.jsonl"
    try:
        run = subprocess.Popen(
            ASD + ["score", "--server", f"grpc://ipv4:127.0.0.1:{first_port},127.0.0.1:{second_port}", "--name", "toycar",
                   "--concurrency", "8", "--timeout", "30", "--output", str(output), str(data / "test")],
            cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        deadline = time.monotonic() + 600
        while len(_lines(output)) < 50 and run.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        killed_after = len(_lines(output))
        first.kill()  # a replica dies with requests in flight
        first.wait()
        _, stderr = run.communicate(timeout=600)
    finally:
        stop_process(first)
        stop_process(second)
    assert 0 < killed_after < 200, f"the replica was killed after {killed_after} clips: not midway"
    rows = _lines(output)
    failed = [line for line in stderr.splitlines() if line.startswith("asd: failed: ")]
    scored = [r["file"] for r in rows]
    assert len(scored) == len(set(scored))  # none twice
    assert len(scored) + len(failed) == 200, stderr[-2000:]  # none lost
    assert {str(c) for c in clips} == set(scored) | {f.split(": ")[2] for f in failed}
    assert f"scored {len(scored)} clip(s)" in stderr and f"failed {len(failed)}" in stderr
    assert run.returncode == (2 if failed else 0)
    assert len(scored) >= 190, stderr[-2000:]  # the retries moved the killed replica's clips to the other
    expected = _in_process_scores([Path(f) for f in scored])
    got = {r["file"]: r["anomaly_score"] for r in rows}
    np.testing.assert_allclose([got[f] for f in scored], [expected[f] for f in scored], rtol=1e-5, atol=1e-6)
    assert {r["model_name"] for r in rows} == {"toycar"} and len({r["model_version"] for r in rows}) == 1


def test_resume_skips_what_is_written_and_redoes_a_cut_row(tmp_path):
    output = tmp_path / "scores.csv"
    args = ASD + ["score", "--model", str(SHIPPED_MODELS), "--name", "toycar", "--concurrency", "2",
                  "--output", str(output), str(SUBSET / "test")]
    first = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    header, *rows = output.read_text().splitlines()
    assert len(rows) == 8 and header.startswith("file,anomaly_score,threshold,verdict")
    # a crash: two rows never written, the last one cut short
    output.write_text("\n".join([header] + rows[:5]) + "\n" + rows[5][:20])
    again = subprocess.run(args, cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert again.returncode == 2 and "exists: add --resume" in again.stderr
    resumed = subprocess.run(args + ["--resume"], cwd=REPO, env=_env(), capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "scored 3 clip(s)" in resumed.stderr and "5 already in the output (--resume)" in resumed.stderr
    header2, *rows2 = output.read_text().splitlines()
    assert header2 == header and sorted(rows2) == sorted(rows)  # each clip once, the same scores


def test_resume_refuses_another_models_output(tmp_path):
    output = tmp_path / "scores.jsonl"
    output.write_text(json.dumps({"file": "x.wav", "model_name": "toycar", "model_version": 1}) + "\n")
    with pytest.raises(ValueError, match="holds scores of toycar v1, not of toycar v4"):
        ResultFile(output, "toycar", 4, resume=True)


def test_a_server_that_comes_up_late_is_waited_for(tmp_path):
    """Connection refused is retried with backoff: the stand-in starts after the client."""
    from asd.serving.grpc import GrpcBackend
    from asd.inference import Detector

    process, port = _stand_in(tmp_path, "early")
    detector = Detector(GrpcBackend(f"127.0.0.1:{port}", "toycar", timeout_s=5))
    stop_process(process)
    # the same address brought back a few seconds later, while the client retries
    late = subprocess.Popen(
        [sys.executable, "-m", "asd.standins", "--models", str(SHIPPED_MODELS), "--port", str(free_port()),
         "--grpc-port", str(port)], cwd=REPO, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        files = expand_paths([SUBSET / "test"])[:2]
        outcomes = list(score_concurrently(detector, files, concurrency=2, retries=6, backoff_s=1.0))
    finally:
        stop_process(late)
    assert all(o.error is None for o in outcomes), [o.error for o in outcomes]
    assert max(o.attempts for o in outcomes) > 1  # it did fail first, then succeeded
