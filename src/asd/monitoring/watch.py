"""``asd monitor``: find each machine's clips, score each exactly once, store it, and run
the alert rule.

:class:`Monitor` does one pass over the folders (:meth:`Monitor.run_once`, for cron and
tests) or watches them with watchdog (:meth:`Monitor.watch`), scoring a file once it has
stopped changing for ``settle`` seconds. A clip's identity is its path plus the SHA-256 of
its PCM; the store's unique constraint, not this process's memory, decides whether it
was seen, so a restarted or second monitor never stores a clip twice. A clip that cannot
be used is stored as failed with :func:`asd.audio.clip_problem`'s reason and not tried
again; a server or database that is down is retried with backoff while the clip waits.
"""

from __future__ import annotations

import hashlib
import random
import sys
import threading
import time
import itertools
from collections import Counter, defaultdict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import AudioError, clip_problem, load_audio, pcm_sha256
from ..features import ClipTooShortError
from ..inference import MAX_CLIP_SECONDS, ClipFeatures, Detector
from ..scoring import UNFAMILIAR
from ..serving import ServingError
from . import baselines, notify
from .alerts import ANOMALOUS, NORMAL, RuleBook, next_state
from .clips import audio_files, keep_in_store, machine_of, recorded_at
from .store import Store, StoreError
from .tables import CLEARED, RAISED, Clip, embedding_array, embedding_bytes


class MonitorError(RuntimeError):
    """The monitor cannot go on (the server stayed down in a ``--once`` run; the model
    refused a request)."""


@dataclass
class Candidate:
    """A file found under a watched folder, and its machine."""

    path: Path
    machine: str


@dataclass
class Prepared:
    """A candidate decoded: its identity, file facts, and the model's input or the reason
    it cannot be used."""

    candidate: Candidate
    pcm_sha256: str
    recorded_at: object
    duration_s: float | None
    sample_rate: int | None
    features: ClipFeatures | None = None
    problem: str | None = None


@dataclass
class MachineSummary:
    """What one run did for one machine."""

    verdicts: Counter = field(default_factory=Counter)
    failed: int = 0
    already: int = 0
    raised: int = 0
    cleared: int = 0
    baseline: int = 0
    reembedded: int = 0

    def line(self, machine: str) -> str:
        counts = ", ".join(f"{n} {v}" for v, n in sorted(self.verdicts.items())) or "none"
        text = f"{machine}: scored {sum(self.verdicts.values())} ({counts}), failed {self.failed}"
        if self.baseline:
            text += f", {self.baseline} taken into its baseline (commissioning)"
        if self.reembedded:
            text += f", {self.reembedded} baseline clip(s) embedded again"
        if self.already:
            text += f", {self.already} already stored"
        if self.raised or self.cleared:
            text += f"; alerts raised {self.raised}, cleared {self.cleared}"
        return text


class Monitor:
    """Scores the clips under ``folders`` into ``store`` and keeps each machine's alerts.

    Parameters
    ----------
    detector : asd.inference.Detector
        The model (in-process or behind TF Serving).
    store : asd.monitoring.store.Store
    folders : list of Path
        Watched folders; each holds one sub-folder per machine, or is one machine's when
        ``machine`` is given.
    machine : str, optional
        The machine id of every clip (``--machine``, for a flat folder).
    rules : asd.monitoring.alerts.RuleBook
        Alert rules and notification URLs.
    clip_store : Path
        Where the clips behind an alert are copied.
    batch_size : int
        Clips per model request.
    server_attempts : int, optional
        Tries of a model request while the server is unavailable (None: until stopped).
    baseline_clips : int
        N: a machine's first N usable clips are its healthy baseline (commissioning); 0:
        no baselines (each clip judged by the model's threshold).
    window : int
        Clips a window score averages.
    """

    def __init__(self, detector: Detector, store: Store, folders: list[Path], machine: str | None = None,
                 rules: RuleBook | None = None, clip_store: Path | None = None, batch_size: int = 8,
                 server_attempts: int | None = None, baseline_clips: int = baselines.DEFAULT_BASELINE_CLIPS,
                 window: int = baselines.DEFAULT_WINDOW, log=None):
        self.detector = detector
        self.store = store
        self.folders = [Path(f) for f in folders]
        self.machine = machine
        self.rules = rules or RuleBook()
        self.clip_store = Path(clip_store) if clip_store else None
        self.batch_size = max(1, batch_size)
        self.server_attempts = server_attempts
        if baseline_clips < 0 or (baseline_clips and baseline_clips < 2) or window < 1:
            raise ValueError("--baseline-clips is 0 (no baseline) or at least 2 (a threshold needs a spread); "
                             "--window at least 1")
        self.baseline_clips, self.window = baseline_clips, window
        self._thresholds: dict = {}
        self.stop = threading.Event()
        self.summary: dict[str, MachineSummary] = defaultdict(MachineSummary)
        self.log = log or (lambda message: print(message, file=sys.stderr, flush=True))
        self._unassigned: set[Path] = set()
        meta = detector.metadata
        self.model_name, self.model_version = meta.name, int(meta.version)

    # -- finding clips --------------------------------------------------------------------

    def candidate(self, path: Path) -> Candidate | None:
        """``path`` with its machine, or None when it is in no machine folder (said once)."""
        for folder in self.folders:
            try:
                machine = machine_of(path, folder, self.machine)
            except ValueError:  # not under this folder
                continue
            if machine is None:
                if path not in self._unassigned:
                    self._unassigned.add(path)
                    self.log(f"asd: {path}: not in a machine folder (put it in {folder}/<machine id>/, "
                             "or give --machine ID); skipped")
                return None
            return Candidate(path, machine)
        return None

    def scan(self) -> list[Candidate]:
        """Every audio file under the folders now, with its machine."""
        found = [self.candidate(path) for folder in self.folders for path in audio_files(folder)]
        return [c for c in found if c is not None]

    # -- one clip -------------------------------------------------------------------------

    def _prepare(self, candidate: Candidate) -> Prepared | None:
        """Decode, hash and compute the model input of one file (in a worker thread);
        None when it vanished meanwhile."""
        path = candidate.path
        try:
            when = recorded_at(path)
        except OSError:
            return None
        try:
            info = sf.info(str(path))
            duration, rate = float(info.duration), int(info.samplerate)
        except (sf.LibsndfileError, RuntimeError, OSError, TypeError):
            duration, rate = None, None
        try:
            clip = load_audio(path, self.detector.features.sample_rate, name=str(path), max_seconds=MAX_CLIP_SECONDS)
        except (AudioError, OSError) as exc:
            if isinstance(exc, FileNotFoundError):
                return None
            try:  # no PCM to hash: the file's bytes identify it
                digest = hashlib.sha256(path.read_bytes()).hexdigest()
            except OSError:
                digest = hashlib.sha256(b"").hexdigest()
            return Prepared(candidate, digest, when, duration, rate, problem=clip_problem(path, exc))
        prepared = Prepared(candidate, pcm_sha256(clip.samples), when, duration, rate)
        try:
            prepared.features = self.detector.prepare(clip, display=False)
        except ClipTooShortError as exc:
            prepared.problem = clip_problem(path, exc)
        return prepared

    def _is_known(self, prepared: Prepared) -> bool:
        def check():
            with self.store.transaction() as session:
                return self.store.known(session, str(prepared.candidate.path), prepared.pcm_sha256)

        return self.store.retrying(check, self.stop.is_set, log=self.log)

    def _score(self, batch: list[Prepared]) -> list:
        """Model results for ``batch`` (all with features), retrying an unavailable server.

        Raises
        ------
        MonitorError
            The server stayed unavailable for ``server_attempts`` tries, or refused.
        """
        delay, attempt = 1.0, 0
        while True:
            attempt += 1
            try:
                return self.detector.score_batch([p.features for p in batch])
            except ServingError as exc:
                if not exc.retryable:
                    raise MonitorError(f"the model refused a request: {exc}") from None
                if (self.server_attempts is not None and attempt >= self.server_attempts) or self.stop.is_set():
                    raise MonitorError(f"the model server is unavailable ({exc}); unscored clips wait for the next run")
                self.log(f"asd: the model server is unavailable ({exc}); retrying in {delay:.0f} s")
                self.stop.wait(delay * random.uniform(0.9, 1.1))
                delay = min(delay * 2, 30.0)

    def _store(self, prepared: Prepared, result) -> None:
        """Store one clip (scored or failed), judge it against its machine's baseline, take
        it into the baseline while the machine is commissioning, and run the alert rule,
        all in one transaction (retried while the database is unavailable)."""
        candidate = prepared.candidate
        summary = self.summary[candidate.machine]
        clip_columns = dict(path=str(candidate.path), pcm_sha256=prepared.pcm_sha256, recorded_at=prepared.recorded_at,
                            duration_s=prepared.duration_s, sample_rate=prepared.sample_rate, problem=prepared.problem)

        def write():
            with self.store.transaction() as session:
                machine = self.store.machine(session, candidate.machine)
                if machine.baseline_clips is None:  # first sight: commissioning takes the monitor's N
                    machine.baseline_clips = self.baseline_clips
                score, commissioning = (None, False) if result is None else self._judge(session, machine, result)
                clip = self.store.add_clip(session, machine, score, **clip_columns)
                change = None
                if clip is not None and score is not None:
                    if commissioning:
                        self._add_to_baseline(session, machine, clip, result, "commissioning")
                    else:
                        change = self._apply_rule(session, machine, clip)
                return clip, score, change, commissioning

        clip, score, change, commissioning = self.store.retrying(write, lambda: False, log=self.log)  # never dropped
        if clip is None:
            summary.already += 1
        elif score is None:
            summary.failed += 1
            self.log(f"asd: failed: {prepared.problem}")
        else:
            summary.verdicts[score["verdict"]] += 1
            summary.baseline += commissioning
            summary.raised += change == RAISED
            summary.cleared += change == CLEARED
            if change:
                self.log(f"asd: alert {change} on {candidate.machine}")

    def _judge(self, session, machine, result) -> tuple[dict, bool]:
        """The score row of a clip, and whether it joins the baseline (commissioning).

        - A model without an embedding output, or N = 0: the model's score, threshold and
          clip verdict (no baseline).
        - Commissioning (fewer than N baseline clips of this model version): the model's
          verdict is kept for the record, and the clip joins the baseline; no alert.
        - With a baseline: the clip score against the bank plus the baseline, the mean of
          the machine's last ``window`` clip scores, the machine's threshold fitted from
          its baseline alone (:mod:`.baselines`), and the window verdict; ``unfamiliar``
          stays only when the baseline does not know the clip either.
        """
        embedding = getattr(result, "embedding", None)
        score = dict(model_name=self.model_name, model_version=self.model_version, score=float(result.score),
                     threshold=float(result.threshold), verdict=result.verdict,
                     unfamiliarity=None if result.unfamiliarity is None else float(result.unfamiliarity),
                     unfamiliar_threshold=None if result.unfamiliar_threshold is None else float(result.unfamiliar_threshold),
                     embedding=embedding_bytes(embedding), clip_score=float(result.score), baseline_size=0)
        target = machine.baseline_clips
        if embedding is None or not target:
            return score, False
        key = self.store.baseline_key(session, machine, self.model_name, self.model_version)
        if key[0] < target:  # commissioning: no clip or window score yet
            return {**score, "clip_score": None, "baseline_size": key[0]}, True
        others = self.store.recent_clip_scores(session, machine, self.window - 1, self.model_name, self.model_version)
        # the first windows after commissioning hold fewer clips: judged by the threshold for their size
        threshold, bank, _ = self._machine_threshold(session, machine, key, len(others) + 1)
        clip_score = float(baselines.clip_scores([result.score], embedding[None, :], bank)[0])
        window = others + [clip_score]
        window_score = float(np.mean(window))
        verdict = ANOMALOUS if window_score > threshold else NORMAL
        if result.verdict == UNFAMILIAR and baselines.baseline_distances(embedding[None, :], bank).min() > threshold:
            verdict = UNFAMILIAR
        return {**score, "clip_score": clip_score, "window_score": window_score, "window_size": len(window),
                "baseline_size": key[0], "threshold": threshold, "verdict": verdict}, False

    def _machine_threshold(self, session, machine, key: tuple[int, int], window: int) -> tuple[float, np.ndarray, np.ndarray]:
        """``(threshold for windows of ``window`` clips, baseline embeddings (k, dim),
        served scores (k,))`` of a machine's baseline for this model version, read and
        fitted once per baseline (``key``: :meth:`Store.baseline_key`)."""
        if self._thresholds.get(machine.id, (None,))[0] != key:
            rows = self.store.baseline(session, machine, self.model_name, self.model_version)
            bank = np.stack([embedding_array(r.embedding) for r in rows])
            model_scores = np.array([r.model_score for r in rows])
            loo = baselines.leave_one_out_scores(model_scores, bank)
            self._thresholds[machine.id] = (key, loo, bank, model_scores, {})
        _, loo, bank, model_scores, per_window = self._thresholds[machine.id]
        if window not in per_window:
            per_window[window] = baselines.fit_threshold(loo, window)
        return per_window[window], bank, model_scores

    def _add_to_baseline(self, session, machine, clip, result, by: str) -> None:
        """Take a scored clip into the machine's baseline and keep it in the clip store."""
        if self.clip_store is not None:
            try:
                clip.stored_path = str(keep_in_store(Path(clip.path), self.clip_store, machine.name, "baseline", clip.id))
            except OSError as exc:
                self.log(f"asd: could not keep baseline clip {clip.path} in the clip store: {exc.strerror or exc}")
        self.store.add_baseline_clip(session, machine, clip, self.model_name, self.model_version,
                                     embedding_bytes(result.embedding), float(result.score), by)

    def refresh_baselines(self) -> None:
        """Embed again, with this model version, the baseline clips of machines whose
        baseline another version made (from the clip store), so that a new version keeps
        every machine's baseline. A clip whose file is gone is said and skipped."""
        def machines_to_do():
            with self.store.transaction() as session:
                todo = []
                for machine in self.store.machines_in(session):
                    mine = self.store.baseline(session, machine, self.model_name, self.model_version)
                    if mine or not machine.baseline_clips:
                        continue
                    others = self.store.baseline(session, machine)
                    newest = max(((r.model_name, r.model_version) for r in others), default=None,
                                 key=lambda m: (m[0] == self.model_name, m[1]))
                    todo += [(machine.name, r.clip_id, r.clip.stored_path or r.clip.path)
                             for r in others if (r.model_name, r.model_version) == newest]
                return todo

        todo = self.store.retrying(machines_to_do, self.stop.is_set, log=self.log)
        for machine_name, clip_id, path in todo:
            try:
                clip = load_audio(Path(path), self.detector.features.sample_rate, name=str(path),
                                  max_seconds=MAX_CLIP_SECONDS)
                [result] = self._score([Prepared(Candidate(Path(path), machine_name), "", None, None, None,
                                                 features=self.detector.prepare(clip, display=False))])
            except (AudioError, ClipTooShortError, OSError) as exc:
                self.log(f"asd: baseline clip of {machine_name} not embedded again: {clip_problem(path, exc)}")
                continue
            if getattr(result, "embedding", None) is None:
                return  # this model has no embedding output: no baselines

            def add(machine_name=machine_name, clip_id=clip_id, result=result):
                with self.store.transaction() as session:
                    machine = self.store.machine_named(session, machine_name)
                    self.store.add_baseline_clip(session, machine, session.get(Clip, clip_id), self.model_name,
                                                 self.model_version, embedding_bytes(result.embedding),
                                                 float(result.score), f"re-embedded by {self.model_name} v{self.model_version}")

            self.store.retrying(add, self.stop.is_set, log=self.log)
            self.summary[machine_name].reembedded += 1

    def _apply_rule(self, session, machine, clip) -> str | None:
        """Run the alert rule after ``clip``: raise (keeping the anomalous clips of the
        window), clear, or keep an open alert's new anomalous clip. Returns the change."""
        windows = bool(clip.score.baseline_size)
        rule = self.rules.rule_for(machine.name, {"k": machine.raise_k, "n": machine.raise_n, "m": machine.clear_m},
                                   windows=windows)
        recent = self.store.recent_verdicts(session, machine, max(rule.n, rule.m))
        alert = self.store.open_alert(session, machine)
        state = next_state(alert.state if alert else None, [v for _, v in recent], rule)
        if alert is None and state == RAISED:
            alert = self.store.raise_alert(session, machine, rule.describe())
            for clip_id, verdict in recent[-rule.n:]:
                if verdict == ANOMALOUS:
                    self._keep(session, alert, machine.name, clip_id)
            return RAISED
        if alert is not None and state == CLEARED:
            self.store.clear_alert(session, alert)
            return CLEARED
        if alert is not None and clip.score.verdict == ANOMALOUS:
            self._keep(session, alert, machine.name, clip.id)
        return None

    def _keep(self, session, alert, machine: str, clip_id: int) -> None:
        clip = session.get(Clip, clip_id)
        stored = clip.stored_path if clip.stored_path and Path(clip.stored_path).is_file() else None
        if self.clip_store is not None and stored is None:
            try:
                stored = str(keep_in_store(Path(clip.path), self.clip_store, machine, f"alert-{alert.id}", clip.id))
            except OSError as exc:
                self.log(f"asd: could not keep {clip.path} in the clip store: {exc.strerror or exc}")
        self.store.attach_clip(session, alert, clip, stored)

    # -- passes -----------------------------------------------------------------------------

    def process(self, candidates: list[Candidate], progress=None) -> None:
        """Score and store ``candidates`` (already-stored ones are counted and skipped),
        ``batch_size`` per model request, decoding ahead in two threads; returns early,
        after the clip in hand, once :attr:`stop` is set.

        Raises
        ------
        MonitorError
            See :meth:`_score`.
        """
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="asd-monitor") as pool:
            batch: list[Prepared] = []
            for prepared in self._read_ahead(pool, candidates):
                if self.stop.is_set():
                    break
                if prepared is None:
                    continue
                if self._is_known(prepared):
                    self.summary[prepared.candidate.machine].already += 1
                    if progress:
                        progress.update(False)
                    continue
                if prepared.features is None:
                    self._store(prepared, None)
                    if progress:
                        progress.update(True)
                    continue
                batch.append(prepared)
                if len(batch) >= self.batch_size:
                    self._flush(batch, progress)
                    batch = []
            if batch and not self.stop.is_set():
                self._flush(batch, progress)

    def _read_ahead(self, pool, candidates: list[Candidate]):
        """Each candidate prepared in ``pool``, in order, with at most ``2 * batch_size``
        decoded ahead (~1 MB a clip), so memory stays flat however many files wait."""
        pending = deque()
        todo = iter(candidates)
        for candidate in itertools.islice(todo, 2 * self.batch_size):
            pending.append(pool.submit(self._prepare, candidate))
        while pending:
            prepared = pending.popleft().result()
            for candidate in itertools.islice(todo, 1):
                pending.append(pool.submit(self._prepare, candidate))
            yield prepared

    def _flush(self, batch: list[Prepared], progress) -> None:
        results = self._score(batch)
        for prepared, result in zip(batch, results):
            if self.stop.is_set():  # SIGTERM: the clip in hand is stored, the rest wait
                return
            self._store(prepared, result)
            if progress:
                progress.update(False)

    def notify(self) -> None:
        """Send the notifications of alert state changes not sent yet (:mod:`.notify`)."""
        try:
            self.store.retrying(lambda: notify.send_pending(self.store, self.rules.notify, log=self.log),
                                self.stop.is_set, log=self.log)
        except StoreError as exc:
            self.log(f"asd: notifications wait: {exc}")

    def run_once(self, show_progress: bool = True) -> None:
        """Score what is in the folders now, send notifications, and return."""
        from ..bulk_scoring import Progress

        self.refresh_baselines()
        candidates = self.scan()
        progress = Progress(len(candidates)) if show_progress else None
        try:
            self.process(candidates, progress)
        finally:
            if progress:
                progress.finish()
        self.notify()

    def watch(self, settle_s: float = 2.0, poll_s: float | None = None) -> None:
        """Score what is there, then every new or changed file once it has not changed for
        ``settle_s`` seconds, until :attr:`stop` is set. Folders are watched by the
        system's file events (inotify), or polled every ``poll_s`` seconds when given
        (network shares, where events do not arrive)."""
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer
        from watchdog.observers.polling import PollingObserver

        pending: dict[Path, tuple[float, tuple]] = {}
        lock = threading.Lock()

        def note(path: str) -> None:
            p = Path(path)
            if p.suffix.lower() in (".wav", ".flac") and not p.name.startswith("."):
                with lock:
                    pending[p] = (time.monotonic(), ())

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):
                if not event.is_directory:
                    note(getattr(event, "dest_path", "") or event.src_path)
                    if event.event_type in ("created", "modified", "closed"):
                        note(event.src_path)

        observer = PollingObserver(timeout=poll_s) if poll_s else Observer()
        for folder in self.folders:
            observer.schedule(Handler(), str(folder), recursive=True)
        observer.start()
        try:
            self.refresh_baselines()
            for candidate in self.scan():  # what arrived while no monitor ran
                note(str(candidate.path))
            while not self.stop.is_set():
                ready = self._settled(pending, lock, settle_s)
                candidates = [c for c in map(self.candidate, ready) if c is not None]
                if candidates:
                    self.process(candidates)
                    self.notify()
                self.stop.wait(0.25)
        finally:
            observer.stop()
            observer.join()

    @staticmethod
    def _settled(pending: dict, lock: threading.Lock, settle_s: float) -> list[Path]:
        """The pending files whose size and modification time have not changed for
        ``settle_s`` seconds (taken off ``pending``); vanished ones are dropped."""
        now, ready = time.monotonic(), []
        with lock:
            for path, (since, signature) in list(pending.items()):
                try:
                    stat = path.stat()
                except OSError:
                    del pending[path]
                    continue
                current = (stat.st_size, stat.st_mtime_ns)
                if current != signature:
                    pending[path] = (now, current)
                elif now - since >= settle_s:
                    ready.append(path)
                    del pending[path]
        return sorted(ready)
