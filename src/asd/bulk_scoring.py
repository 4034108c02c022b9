"""Scoring a plant's recordings at scale: folders walked recursively, N requests in flight,
results written as they come (CSV or JSON Lines), resumable, and every clip accounted for.

``asd score --server URL --concurrency N PATH... [--output FILE [--resume]]`` runs
:func:`score_concurrently`; :class:`ResultFile` writes and resumes its output. A clip
whose request fails with a transient server error (:attr:`asd.serving.ServingError.retryable`:
gRPC UNAVAILABLE or DEADLINE_EXCEEDED, REST connection failures, timeouts, 503/504) is
retried with exponential backoff; a clip that still fails, or cannot be read, is reported
as failed, never dropped.
"""

from __future__ import annotations

import csv
import io
import json
import random
import sys
import threading
import time
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from .audio import AudioError, clip_problem, load_audio
from .data import AUDIO_SUFFIXES
from .features import ClipTooShortError
from .inference import MAX_CLIP_SECONDS, ClipResult, Detector
from .serving import ServingError

#: Output columns (CSV header, and JSON Lines keys besides ``model``).
RESULT_COLUMNS = ("file", "anomaly_score", "threshold", "verdict", "unfamiliarity", "unfamiliar_threshold", "notes",
                  "model_name", "model_version")


def expand_paths(paths: Iterable[str | Path]) -> list[Path]:
    """Files as given, and the audio files (``.wav``, ``.flac``, any case) under each
    folder, recursively, in sorted order; duplicates dropped, first occurrence kept.

    A path that does not exist is kept as it is, so that scoring reports it as failed
    (missing) rather than skipping it silently.
    """
    found: dict[Path, None] = {}
    for path in map(Path, paths):
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in AUDIO_SUFFIXES):
                found.setdefault(file, None)
        else:
            found.setdefault(path, None)
    return list(found)


@dataclass
class Outcome:
    """One clip's end: a result, or the reason it failed (after ``attempts`` tries)."""

    file: str
    result: ClipResult | None = None
    error: str | None = None
    attempts: int = 1


def score_one(detector: Detector, file: Path, channel: int | None = None, retries: int = 4,
              backoff_s: float = 0.5, sleep=time.sleep) -> Outcome:
    """Decode, compute the model's input and score one clip, retrying transient server
    errors ``retries`` times after ``backoff_s`` x 2^k seconds (k = 0, 1, ...; +-25 %
    jitter, so that clients that failed together do not retry together).

    Never raises for a clip: an unreadable, too short or failing clip gives an
    :class:`Outcome` with ``error`` set.
    """
    try:
        clip = load_audio(file, detector.features.sample_rate, name=str(file), channel=channel,
                          max_seconds=MAX_CLIP_SECONDS)
        prepared = detector.prepare(clip, display=False)
    except (AudioError, ClipTooShortError, OSError) as exc:
        return Outcome(str(file), error=clip_problem(file, exc))
    for attempt in range(1, retries + 2):
        try:
            return Outcome(str(file), result=detector.score_features(prepared), attempts=attempt)
        except ServingError as exc:
            if not exc.retryable or attempt > retries:
                return Outcome(str(file), error=f"{file}: {exc}", attempts=attempt)
            sleep(backoff_s * 2 ** (attempt - 1) * random.uniform(0.75, 1.25))
    raise AssertionError("unreachable")


def score_concurrently(detector: Detector, files: Iterable[Path], concurrency: int = 8, channel: int | None = None,
                       retries: int = 4, backoff_s: float = 0.5) -> Iterator[Outcome]:
    """Score ``files`` with ``concurrency`` clips in flight (each decoded, featured and
    sent by its own thread); yields each :class:`Outcome` as it completes (not in
    input order). At most ``2 * concurrency`` clips are queued at once, so memory stays
    flat however many files there are.

    Raises
    ------
    ValueError
        ``concurrency`` below 1.
    """
    if concurrency < 1:
        raise ValueError("--concurrency must be at least 1")
    files = iter(files)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="asd-score") as pool:
        pending = set()
        while True:
            while len(pending) < 2 * concurrency:
                file = next(files, None)
                if file is None:
                    break
                pending.add(pool.submit(score_one, detector, file, channel, retries, backoff_s))
            if not pending:
                return
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                yield future.result()


def result_record(result: ClipResult, file: str, model_name: str, model_version: int) -> dict:
    """One scored clip as a flat record of :data:`RESULT_COLUMNS`."""
    return {"file": file, "anomaly_score": result.score, "threshold": result.threshold, "verdict": result.verdict,
            "unfamiliarity": result.unfamiliarity, "unfamiliar_threshold": result.unfamiliar_threshold,
            "notes": "; ".join(result.notes), "model_name": model_name, "model_version": model_version}


class ResultFile:
    """The output of a bulk run: CSV (``.csv``) or JSON Lines (anything else, e.g.
    ``.jsonl``), one row per scored clip, flushed as each comes.

    With ``resume``, an existing file's rows are kept and their clips skipped
    (:attr:`done`); a last line cut short by a crash is dropped so that its clip is
    scored again. Failed clips are not written (they are reported), so a resumed run
    tries them again.

    Raises
    ------
    ValueError
        Resuming a file written by another model or version, or one that is not this
        format's output.
    FileExistsError
        The file exists and ``resume`` is not set (nothing is overwritten).
    """

    def __init__(self, path: str | Path, model_name: str, model_version: int, resume: bool = False):
        self.path = Path(path)
        self.csv = self.path.suffix.lower() == ".csv"
        self.model_name, self.model_version = model_name, int(model_version)
        self.done: set[str] = set()
        self._lock = threading.Lock()
        if self.path.exists() and not resume:
            raise FileExistsError(f"{self.path} exists: add --resume to go on with it, or choose another --output")
        if self.path.exists():
            self._load_existing()
        new = not self.path.exists() or self.path.stat().st_size == 0
        self._file = self.path.open("a", encoding="utf-8", newline="")
        self._csv = csv.DictWriter(self._file, RESULT_COLUMNS) if self.csv else None
        if new and self._csv:
            self._csv.writeheader()
            self._file.flush()

    def _load_existing(self) -> None:
        text = self.path.read_text(encoding="utf-8")
        if text and not text.endswith("\n"):  # a row cut short: drop it, its clip is scored again
            text = text[: text.rfind("\n") + 1]
            self.path.write_text(text, encoding="utf-8")
        if self.csv:
            reader = csv.DictReader(io.StringIO(text))
            if text and reader.fieldnames != list(RESULT_COLUMNS):
                raise ValueError(f"{self.path} is not an asd score CSV (columns {reader.fieldnames})")
            rows = list(reader)
        else:
            try:
                rows = [json.loads(line) for line in text.splitlines() if line.strip()]
            except json.JSONDecodeError as exc:
                raise ValueError(f"{self.path} is not asd score JSON Lines: {exc}") from None
        for row in rows:
            model = (row.get("model_name"), int(row.get("model_version") or 0))
            if model != (self.model_name, self.model_version):
                raise ValueError(f"{self.path} holds scores of {model[0]} v{model[1]}, not of "
                                 f"{self.model_name} v{self.model_version}: resume with that model, or choose another --output")
            self.done.add(row["file"])

    def write(self, record: dict) -> None:
        with self._lock:
            if self._csv:
                self._csv.writerow(record)
            else:
                self._file.write(json.dumps(record) + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


@dataclass
class Progress:
    """A one-line progress display on a terminal (nothing elsewhere): clips done of all,
    failed, clips per second; redrawn at most 5 times a second."""

    total: int
    stream: object = field(default_factory=lambda: sys.stderr)
    done: int = 0
    failed: int = 0
    started: float = field(default_factory=time.monotonic)
    _drawn: float = 0.0

    @property
    def active(self) -> bool:
        return bool(getattr(self.stream, "isatty", lambda: False)())

    def update(self, failed: bool) -> None:
        self.done += 1
        self.failed += failed
        now = time.monotonic()
        if self.active and (now - self._drawn >= 0.2 or self.done == self.total):
            self._drawn = now
            width = 30
            filled = int(width * self.done / max(self.total, 1))
            rate = self.done / max(now - self.started, 1e-9)
            print(f"\r[{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} clips, {self.failed} failed, "
                  f"{rate:.1f} clips/s", end="", file=self.stream, flush=True)

    def finish(self) -> None:
        if self.active and self.done:
            print(file=self.stream, flush=True)


def summary(verdicts: Counter, failed: list[Outcome], skipped: int) -> str:
    """The end-of-run lines: counts per verdict, clips skipped by ``--resume``, and
    every failed clip with its reason."""
    scored = sum(verdicts.values())
    counts = ", ".join(f"{verdict} {n}" for verdict, n in sorted(verdicts.items())) or "none"
    lines = [f"asd: scored {scored} clip(s) ({counts}); failed {len(failed)}"
             + (f"; {skipped} already in the output (--resume)" if skipped else "")]
    lines += [f"asd: failed: {o.error}" + (f" (after {o.attempts} attempts)" if o.attempts > 1 else "") for o in failed]
    return "\n".join(lines)
