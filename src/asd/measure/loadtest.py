"""``asd loadtest``: many concurrent scoring requests per backend; none may be lost or wrong.

For each backend (in-process SavedModel; REST and, where grpcio and tensorflow-serving-api
are installed, gRPC, through stand-in servers that this process starts over the same
models directory, reached through :func:`asd.serving.make_backend`):

1. the clips are decoded once (decoding is not part of a request);
2. each clip is scored alone, one after another, through :meth:`Detector.score_clip`:
   its *reference* answer on that backend (after a warm-up round of each clip);
3. ``n_requests`` requests are fired from ``threads`` threads (closed loop: each thread
   sends its next request when its previous one is answered); request ``i`` scores clip
   ``i % n_clips``, and its wall latency is measured around ``score_clip``;
4. a request is **lost** if it raised (REST, gRPC: including the client's timeout), was
   answered later than ``timeout_s``, or was not answered by the run's deadline; it is
   **wrong** if its clip name, verdict, score or per-patch scores differ from the
   reference of the same clip on the same backend beyond :data:`RTOL` / :data:`ATOL`.

Each backend is compared with its own reference because the REST client rounds its
input (:data:`asd.serving.rest.DECIMALS` for dB, ``WAVEFORM_DECIMALS`` for samples), so
REST scores legitimately differ from in-process ones in the 5th-6th digit (gRPC sends
exact float32 bytes); that difference is reported separately, not counted.

Writes ``load_test.json`` and ``load_test.md`` (p50/p95/p99/max latency, throughput,
lost, wrong per backend, with the machine, versions, model and settings).
"""

from __future__ import annotations

import json
import math
import os
import platform
import time
from concurrent.futures import ThreadPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager, Iterator

import numpy as np

from .. import __version__
from ..audio import AudioClip, load_audio
from ..features import FeatureConfig
from ..layout import resolve_version_dir
from ..provenance import git, package_version

# An answer is right if every number is within RTOL (relative) + ATOL (absolute) of the
# same clip's reference on the same backend. The same input through the same graph gives
# the same float32 result; 1e-6 (about 16 float32 steps) leaves room for a reduction
# summed in another order, while any answer belonging to another clip, or corrupted, is
# off by orders of magnitude more (the report gives the smallest gap between two clips'
# reference scores, so a mix-up of two clips is known to be detectable).
RTOL = 1e-6
ATOL = 1e-9

DEFAULT_CLIPS_GLOB = "production/samples/*/*.wav"
AUDIO_SUFFIXES = (".wav", ".flac")

REQUEST_INCLUDES = (
    "one `Detector.score_clip` call on a decoded clip: log-mel and patches (always computed, "
    "for the display), the model input (waveform cut/padded, or log-mel patches), the "
    "backend's `predict` (REST: rounding and JSON encoding, HTTP to the stand-in, its JSON "
    "decoding, the SavedModel, JSON back; gRPC: float32 bytes in a TensorProto, the call to the "
    "stand-in, the SavedModel, TensorProtos back), and the clip score and verdict; not file decoding"
)


@dataclass(frozen=True)
class ModelRef:
    """Which model version the load test runs, in TF Serving's layout."""

    version_dir: Path

    @property
    def models_dir(self) -> Path:
        return self.version_dir.parent.parent

    @property
    def name(self) -> str:
        return self.version_dir.parent.name

    @property
    def version(self) -> int:
        return int(self.version_dir.name)


# -- backends ---------------------------------------------------------------------------
# Each opener is a context manager: given the model and the per-request timeout, it
# starts whatever the backend needs (a stand-in server) and yields (backend, server
# description). Tests replace entries to wrap a backend.


@contextmanager
def _open_inprocess(model: ModelRef, timeout_s: float) -> Iterator[tuple[object, str]]:
    from ..serving.inprocess import InProcessBackend

    yield InProcessBackend(model.version_dir), "none: SavedModel loaded in the client's process"


@contextmanager
def _open_rest(model: ModelRef, timeout_s: float) -> Iterator[tuple[object, str]]:
    from ..serving import make_backend
    from ..standins.rest import StandInServer

    with StandInServer(model.models_dir) as server:
        backend = make_backend(server_url=server.url, name=model.name, version=model.version, timeout_s=timeout_s)
        yield backend, (
            f"REST stand-in (`asd.standins.rest`: Python ThreadingHTTPServer, a thread per connection) "
            f"at {server.url}, in the client's process"
        )


def _grpc_available() -> bool:
    """Whether this installation has the gRPC client, its stand-in and their modules
    (grpcio, tensorflow-serving-api)."""
    from importlib.util import find_spec

    try:
        return all(find_spec(m) is not None for m in ("grpc", "tensorflow_serving", "asd.standins.grpc"))
    except (ImportError, ValueError):
        return False


GRPC_MISSING = (
    "the gRPC load test needs grpcio, tensorflow-serving-api and asd.standins.grpc; "
    "install the grpc extra or leave grpc out of --backends"
)


@contextmanager
def _open_grpc(model: ModelRef, timeout_s: float) -> Iterator[tuple[object, str]]:
    if not _grpc_available():
        raise ValueError(GRPC_MISSING)
    from ..serving import make_backend
    from ..standins.grpc import GrpcStandInServer

    with GrpcStandInServer(model.models_dir) as server:
        backend = make_backend(
            server_url=f"grpc://{server.target}", name=model.name, version=model.version, timeout_s=timeout_s
        )
        try:
            yield backend, (
                f"gRPC stand-in (`asd.standins.grpc`: grpcio server on TF Serving's protos, a thread pool) "
                f"at {server.target}, in the client's process"
            )
        finally:
            backend.close()


Opener = Callable[[ModelRef, float], ContextManager[tuple[object, str]]]
BACKENDS: dict[str, Opener] = {"inprocess": _open_inprocess, "rest": _open_rest, "grpc": _open_grpc}


def available_backends() -> list[str]:
    """The backends this installation can load-test (gRPC only with its modules)."""
    return [name for name in BACKENDS if name != "grpc" or _grpc_available()]


# -- clips ------------------------------------------------------------------------------


def find_clips(paths: list[str | Path]) -> list[Path]:
    """Files as given, and the WAV/FLAC files under given directories (sorted), without
    repeats.

    Raises
    ------
    FileNotFoundError
        A path that does not exist, or a directory without WAV/FLAC files.
    """
    found: list[Path] = []
    for entry in map(Path, paths):
        if entry.is_dir():
            inside = sorted(p for p in entry.rglob("*") if p.suffix.lower() in AUDIO_SUFFIXES and p.is_file())
            if not inside:
                raise FileNotFoundError(f"{entry}: no WAV or FLAC files in this directory")
            found += inside
        elif entry.is_file():
            found.append(entry)
        else:
            raise FileNotFoundError(f"{entry}: no such file or directory")
    seen: set[Path] = set()
    unique = []
    for path in found:  # the first mention of each file, as given
        if path.resolve() not in seen:
            seen.add(path.resolve())
            unique.append(path)
    return unique


# -- one backend under load -------------------------------------------------------------


def _percentiles(latencies_ms: np.ndarray) -> dict:
    if len(latencies_ms) == 0:
        return {"p50_ms": None, "p95_ms": None, "p99_ms": None, "max_ms": None, "mean_ms": None}
    p50, p95, p99 = np.percentile(latencies_ms, [50, 95, 99])
    return {
        "p50_ms": round(float(p50), 1),
        "p95_ms": round(float(p95), 1),
        "p99_ms": round(float(p99), 1),
        "max_ms": round(float(latencies_ms.max()), 1),
        "mean_ms": round(float(latencies_ms.mean()), 1),
    }


def _deviation(result, reference) -> float:
    """Largest deviation of an answer's numbers from the reference's, in units of the
    tolerance (<= 1 is right)."""
    got = np.append(np.asarray(result.patch_error, float), result.score)
    want = np.append(np.asarray(reference.patch_error, float), reference.score)
    if got.shape != want.shape:
        return math.inf
    return float(np.max(np.abs(got - want) / (ATOL + RTOL * np.abs(want))))


def load_backend(detector, clips: list[AudioClip], n_requests: int, threads: int, timeout_s: float) -> dict:
    """Score each clip alone, then ``n_requests`` from ``threads`` threads; count lost and
    wrong answers and time each request.

    Returns
    -------
    dict
        Latency percentiles (ms), throughput, ``lost``, ``wrong``, the first few problems,
        the reference scores and the sequential ("alone") latencies.
    """
    for clip in clips:  # warm-up: first calls pay one-off costs
        detector.score_clip(clip)
    references, alone_ms = [], []
    for clip in clips:
        t0 = time.perf_counter()
        references.append(detector.score_clip(clip))
        alone_ms.append(1000 * (time.perf_counter() - t0))

    latencies = np.full(n_requests, np.nan)
    finished = np.full(n_requests, np.nan)
    problems: list[str] = []
    lost = wrong = 0
    worst = 0.0

    def request(i: int):
        t0 = time.perf_counter()
        result = detector.score_clip(clips[i % len(clips)])
        t1 = time.perf_counter()
        latencies[i], finished[i] = 1000 * (t1 - t0), t1
        return result

    # Unanswered requests are given up at this deadline: every request's timeout, in
    # as many rounds as each thread has requests, plus one.
    deadline_s = timeout_s * (math.ceil(n_requests / threads) + 1)
    pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="loadtest")
    started = time.perf_counter()
    futures = [pool.submit(request, i) for i in range(n_requests)]
    done, _ = wait(futures, timeout=deadline_s)
    pool.shutdown(wait=False, cancel_futures=True)

    for i, future in enumerate(futures):
        clip = clips[i % len(clips)]
        problem = None
        if future not in done:
            lost += 1
            problem = f"request {i} ({clip.name}): no answer within the run's deadline of {deadline_s:g} s"
        elif future.exception() is not None:
            lost += 1
            exc = future.exception()
            problem = f"request {i} ({clip.name}): {type(exc).__name__}: {exc}"
        elif latencies[i] > 1000 * timeout_s:
            lost += 1
            problem = f"request {i} ({clip.name}): answered after {latencies[i] / 1000:.1f} s (timeout {timeout_s:g} s)"
        else:
            result, reference = future.result(), references[i % len(clips)]
            deviation = _deviation(result, reference)
            worst = max(worst, deviation)
            if result.name != reference.name or result.verdict != reference.verdict or not deviation <= 1:
                wrong += 1
                problem = (
                    f"request {i} ({clip.name}): answer {result.name} score {result.score!r} {result.verdict}, "
                    f"alone {reference.score!r} {reference.verdict}"
                )
        if problem and len(problems) < 10:
            problems.append(problem)

    answered = np.isfinite(latencies)
    elapsed = (np.nanmax(finished) if answered.any() else time.perf_counter()) - started
    scores = sorted(r.score for r in references)
    gap = float(np.min(np.diff(scores))) if len(scores) > 1 else None
    return {
        "description": detector.backend.describe(),
        "requests": n_requests,
        "threads": threads,
        "answered": int(answered.sum()),
        "lost": lost,
        "wrong": wrong,
        **_percentiles(latencies[answered]),
        "duration_s": round(float(elapsed), 2),
        "throughput_rps": round(float(answered.sum() / elapsed), 2) if elapsed > 0 else None,
        "alone_ms": [round(v, 1) for v in alone_ms],
        "alone_p50_ms": round(float(np.median(alone_ms)), 1),
        "max_deviation_in_tolerances": worst,
        "references": [{"clip": r.name, "score": r.score, "verdict": r.verdict} for r in references],
        "min_gap_between_clip_scores": gap,
        # an answer carrying another clip's score is caught unless two clips score alike
        "mixups_detectable": gap is None or gap > ATOL + RTOL * max(abs(x) for x in scores),
        "problems": problems,
    }


# -- the whole run ----------------------------------------------------------------------


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def _load_average() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _environment() -> tuple[dict, dict]:
    import tensorflow as tf

    machine = {
        "cpus": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu_model": _cpu_model(),
        "platform": platform.platform(),
    }
    changed = git("status", "--porcelain", "--untracked-files=no", "--", "src")
    versions = {
        "python": platform.python_version(),
        "tensorflow": tf.__version__,
        "numpy": np.__version__,
        "requests": package_version("requests"),
        **{package: package_version(package) for package in ("grpcio", "tensorflow-serving-api")},
        "asd": __version__,
        "asd_git_commit": git("rev-parse", "HEAD"),
        "asd_src_uncommitted_changes": None if changed is None else bool(changed),
    }
    return machine, versions


def run_loadtest(
    model_path: str | Path,
    clip_paths: list[str | Path],
    backends: list[str],
    n_requests: int = 1000,
    threads: int = 16,
    out_dir: str | Path | None = None,
    name: str | None = None,
    version: int | None = None,
    timeout_s: float = 30.0,
    log=print,
) -> dict:
    """Load-test ``backends`` on one model version and write the report.

    Parameters
    ----------
    model_path : path
        A models directory, model directory or version directory (TF Serving's layout).
    clip_paths : list of paths
        WAV/FLAC files or directories holding them.
    backends : list of str
        Names in :data:`BACKENDS`.
    out_dir : path, optional
        Where ``load_test.json`` and ``load_test.md`` go (not written if None).
    timeout_s : float
        Seconds a request may take before it counts as lost (also the REST client's timeout).

    Returns
    -------
    dict
        The report; ``report["ok"]`` is False if any request was lost or wrong.

    Raises
    ------
    ValueError
        Bad counts or an unknown backend.
    FileNotFoundError, asd.layout.ModelNotFoundError, asd.audio.AudioError,
    asd.metadata.ModelMismatchError, asd.serving.ServingError
        From the model, the clips or a backend that cannot start.
    """
    from ..inference import Detector

    if n_requests < 1 or threads < 1:
        raise ValueError("--requests and --threads must be at least 1")
    if timeout_s <= 0:
        raise ValueError("--timeout must be positive")
    unknown = [b for b in backends if b not in BACKENDS]
    if unknown or not backends:
        raise ValueError(f"unknown backend(s) {', '.join(unknown) or '(none given)'}; known: {', '.join(BACKENDS)}")
    if "grpc" in backends and not _grpc_available():
        raise ValueError(GRPC_MISSING)  # before anything is loaded
    model = ModelRef(resolve_version_dir(model_path, name=name, version=version))
    paths = find_clips(clip_paths)
    if not paths:
        raise FileNotFoundError("no clips to score: give WAV/FLAC files or directories with --clips")
    sample_rate = FeatureConfig().sample_rate
    clips = [load_audio(p, sample_rate) for p in paths]
    load_at_start = _load_average()
    machine, versions = _environment()

    results: dict[str, dict] = {}
    metadata = None
    for label in backends:
        log(f"[{label}] starting ...")
        with BACKENDS[label](model, timeout_s) as (backend, server):
            detector = Detector(backend)
            metadata = metadata or detector.metadata
            result = load_backend(detector, clips, n_requests, threads, timeout_s)
        result["server"] = server
        results[label] = result
        log(
            f"[{label}] {result['answered']}/{n_requests} answered, lost {result['lost']}, wrong {result['wrong']}; "
            f"p50 {_ms(result['p50_ms'])}, p95 {_ms(result['p95_ms'])}, {result['throughput_rps']} requests/s"
        )

    if "inprocess" in results:
        base = [r["score"] for r in results["inprocess"]["references"]]
        for result in results.values():
            result["reference_vs_inprocess_rel"] = max(
                abs(r["score"] - b) / abs(b) for r, b in zip(result["references"], base)
            )

    report = {
        "ok": all(r["lost"] == 0 and r["wrong"] == 0 for r in results.values()),
        "model": {
            "path": str(model.version_dir),
            "name": metadata.name,
            "version": metadata.version,
            "detector": metadata.detector,
            "input": metadata.input,
            "input_samples": metadata.input_samples,
            "threshold": metadata.threshold_value,
        },
        "settings": {
            "requests": n_requests,
            "threads": threads,
            "timeout_s": timeout_s,
            "clips": [{"file": str(p), "seconds": round(c.duration_s, 2)} for p, c in zip(paths, clips)],
            "rtol": RTOL,
            "atol": ATOL,
            "load_average_at_start": load_at_start,
            "load_average_at_end": _load_average(),
            "request_includes": REQUEST_INCLUDES,
        },
        "machine": machine,
        "versions": versions,
        "backends": results,
    }
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "load_test.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "load_test.md").write_text(markdown_report(report))
    return report


def _ms(value) -> str:
    return "n/a" if value is None else f"{value:.1f} ms"


def _cell(value, fmt: str = "{:.1f}") -> str:
    return "n/a" if value is None else fmt.format(value)


def markdown_report(report: dict) -> str:
    """The load test report (Markdown): one table row per backend, then how it was run."""
    s, m, v, model = report["settings"], report["machine"], report["versions"], report["model"]
    lines = [
        f"# Load test: {s['requests']} scoring requests from {s['threads']} threads per backend",
        "",
        f"Result: **{'passed' if report['ok'] else 'FAILED'}**: "
        + "; ".join(f"{k} {r['lost']} lost, {r['wrong']} wrong" for k, r in report["backends"].items())
        + ".",
        "",
        "| backend | requests | threads | lost | wrong | p50 (ms) | p95 (ms) | p99 (ms) | max (ms) "
        "| throughput (requests/s) | alone, median (ms) | reference vs in-process (rel.) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, r in report["backends"].items():
        lines.append(
            f"| `{label}` | {r['requests']} | {r['threads']} | {r['lost']} | {r['wrong']} | {_cell(r['p50_ms'])} | "
            f"{_cell(r['p95_ms'])} | {_cell(r['p99_ms'])} | {_cell(r['max_ms'])} | {_cell(r['throughput_rps'])} | "
            f"{_cell(r['alone_p50_ms'])} | {_cell(r.get('reference_vs_inprocess_rel'), '{:.1e}')} |"
        )
    clips = ", ".join(f"`{Path(c['file']).name}` ({c['seconds']:g} s)" for c in s["clips"])
    load = lambda values: "n/a" if values is None else " / ".join(f"{x:g}" for x in values)  # noqa: E731
    lines += [
        "",
        f"- **Model**: `{model['name']}` version {model['version']} (`{model['path']}`), detector "
        f"`{model['detector']}`, input `{model['input']}`"
        + (f" ({model['input_samples']} samples)" if model["input_samples"] else "")
        + ".",
        f"- **Clips**: {len(s['clips'])}, decoded once: {clips}. Request *i* scores clip *i* mod {len(s['clips'])}.",
        f"- **A request** is {s['request_includes']}. Latency is its wall time in the client thread; "
        f"the {s['threads']} threads are closed-loop clients (each sends its next request when its previous "
        "one is answered); throughput is answered requests over the time from the first request to the last answer; "
        "*alone* is the median latency of the sequential reference requests (one at a time, after a warm-up round).",
        f"- **Lost**: raised an error (REST, gRPC: including the client's {s['timeout_s']:g} s timeout), answered after "
        f"{s['timeout_s']:g} s, or unanswered at the run's deadline. **Wrong**: clip name, verdict, score or "
        "per-patch scores differ from the same clip scored alone (sequentially, before the load) on the same "
        f"backend by more than {s['rtol']:g} relative + {s['atol']:g} absolute. Each backend is compared with its "
        "own reference because the REST client rounds its input (`DECIMALS` / `WAVEFORM_DECIMALS` in "
        "`asd.serving.rest`; gRPC sends the exact float32 bytes); the last column shows how far each backend's "
        "references are from in-process ones (not counted as wrong).",
        "- **Servers**: "
        + "; ".join(f"`{k}`: {r['server']}" for k, r in report["backends"].items())
        + ". The stand-ins share the client's CPU and Python's GIL; TF Serving itself would run in its own "
        "(C++) process, so the REST and gRPC figures measure the client path and the stand-ins, not TF Serving.",
        "- **Answers checked**: largest deviation from the reference, in tolerances: "
        + ", ".join(f"`{k}` {r['max_deviation_in_tolerances']:.2g}" for k, r in report["backends"].items())
        + "; smallest gap between two clips' reference scores: "
        + ", ".join(f"`{k}` {_cell(r['min_gap_between_clip_scores'], '{:.3g}')}" for k, r in report["backends"].items())
        + (
            " (above the tolerance, so an answer for another clip counts as wrong)."
            if all(r["mixups_detectable"] for r in report["backends"].values())
            else ": two clips score alike within the tolerance, so a mix-up between them would go unseen."
        ),
        f"- **Machine**: {m['cpus']} CPUs ({m['cpus_usable']} usable), {m['cpu_model']}, {m['platform']}; "
        f"load average (1/5/15 min) {load(s['load_average_at_start'])} at the start, "
        f"{load(s['load_average_at_end'])} at the end (the machine is shared with other work).",
        f"- **Versions**: Python {v['python']}, TensorFlow {v['tensorflow']}, NumPy {v['numpy']}, "
        f"requests {v['requests']}"
        + "".join(f", {k} {v[k]}" for k in ("grpcio", "tensorflow-serving-api") if v.get(k))
        + f", asd {v['asd']} at commit `{v['asd_git_commit']}`"
        + (" (with uncommitted changes under src/)" if v["asd_src_uncommitted_changes"] else "")
        + ".",
    ]
    problems = [p for r in report["backends"].values() for p in r["problems"]]
    if problems:
        lines += ["", "First problems:", ""] + [f"- {p}" for p in problems]
    return "\n".join(lines) + "\n"
