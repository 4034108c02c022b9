"""``asd benchmark``: every detector trained and evaluated on the same split, side by side.

For each detector entry of the config and each seed (all seeds for neural detectors, the
first one otherwise): fit on the normal training clips, score the test clips, and compute
the official DCASE metrics (:mod:`asd.metrics`), the training time, the scoring time per
clip and the model size. Log-mel features are computed once for all detectors.

Honest selection: every figure in the main columns is on all test clips, and choosing
the best detector by them uses test labels (as DCASE teams do on the dev set). The
held-apart check splits the test clips in two halves stratified by domain and label,
chooses the best detector on half A, and reports its figure on half B.

A row may name its own seeds, and may train on a renamed copy of the training clips
(``renamed:``; :mod:`asd.measure.renamed_view`): ``rec_0001.flac`` ... with no attributes,
as a user's folder holds them (issue 30's ``attribute_free_*`` rows). With ``update``
the rows of an earlier report in the same folder are kept, so that rows which each take
many minutes run one at a time and each is kept as it arrives.

Writes ``results.json``, ``results.md``, ``scores.csv`` (each clip's score per detector,
first seed) and, per detector, ``plots/<entry>_roc.png`` and ``plots/<entry>_scores.png``.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from .. import __version__
from ..config import ConfigError, TrainingSettings, load_yaml_settings
from ..data import list_clips, training_clips
from ..features import FeatureConfig
from ..metrics import section_metrics
from ..provenance import package_version
from .renamed_view import renamed_training_set
from ..scoring import choose_margin, fit_gamma_threshold

FIGURES = ("auc_source", "auc_target", "pauc", "official_score")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RenamedTraining(_Strict):
    """Train the row on the training clips as a user's folder holds them
    (:mod:`asd.measure.renamed_view`): ``rec_0001.flac`` ..., no attributes table."""

    keep_domains: bool = Field(default=True, description="source/ and target/ folders (else every clip is source)")
    attribute_folders: list[str] = Field(default_factory=list, description="attributes whose values become "
                                         "sub-folders, e.g. [car] -> car_A1/")


class DetectorEntry(_Strict):
    """One row of the benchmark: a detector kind with its settings."""

    kind: str
    model: dict[str, Any] = Field(default_factory=dict)
    training: TrainingSettings = Field(default_factory=TrainingSettings)
    seeds: list[int] | None = Field(default=None, min_length=1, description="this row's seeds (default: the "
                                    "config's, all of them for neural rows, the first for the others)")
    renamed: RenamedTraining | None = Field(default=None, description="train on a renamed copy of the training "
                                            "clips (attribute-free rows); the test clips keep their DCASE labels")


class BenchmarkConfig(_Strict):
    seeds: list[int] = Field(default=[13711, 39876401, 20230501], min_length=1)
    features: dict[str, Any] = Field(default_factory=dict)
    held_apart_seed: int = 0
    threshold_quantile: float = Field(default=0.9, gt=0, lt=1)
    # the decision threshold's margin is chosen on half A so that at most these shares of
    # each domain's normal clips are flagged (asd.scoring.choose_margin); half B reports it
    max_false_alarms: dict[str, float] = Field(default={"source": 0.10, "target": 0.25})
    detectors: dict[str, DetectorEntry]


def load_benchmark_config(path: str | Path, overrides: list[str] | None = None) -> BenchmarkConfig:
    """Read the benchmark YAML (see ``development/configs/benchmark.yaml``).

    Raises
    ------
    ConfigError
        Missing or invalid file, or invalid settings (named).
    """
    return load_yaml_settings(path, BenchmarkConfig, overrides, what="benchmark config")


def figures(labels: np.ndarray, domains: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    """AUC-source, AUC-target, pAUC and official score of one section's clips."""
    from scipy.stats import hmean

    m = section_metrics(labels, domains, scores, threshold=np.inf)
    terms = [m["auc_source"], m["auc_target"], m["pauc"]]
    return {"auc_source": m["auc_source"], "auc_target": m["auc_target"], "pauc": m["pauc"], "official_score": float(hmean(terms))}


def held_apart_halves(labels: np.ndarray, domains: np.ndarray, seed: int) -> np.ndarray:
    """Bool mask of half A: half of every (domain, label) group, chosen with ``seed``."""
    rng = np.random.default_rng(seed)
    half_a = np.zeros(len(labels), bool)
    for domain in ("source", "target"):
        for label in (False, True):
            members = np.flatnonzero((domains == domain) & (labels == label))
            half_a[rng.permutation(members)[: len(members) // 2]] = True
    return half_a


def _summary(runs: list[dict], key: str) -> dict:
    values = np.array([r[key] for r in runs], float)
    return {"mean": float(values.mean()), "std": float(values.std(ddof=1)) if len(values) > 1 else 0.0}


def run_benchmark(
    data_dir: str | Path,
    config: BenchmarkConfig,
    detectors: list[str],
    out_dir: str | Path,
    max_train_clips: int | None = None,
    log=print,
    update: bool = False,
    retrain: bool = False,
) -> dict:
    """Train and evaluate ``detectors`` (entry names of ``config``) and write the report.

    Parameters
    ----------
    data_dir : path
        A machine-type folder with a labelled ``test/`` folder (DCASE names, or
        ``normal/`` and ``anomaly/`` folders) and normal training clips: its ``train/``
        folder's, or every other clip in it, with any names
        (:func:`asd.data.training_clips`, as ``asd train --data`` reads them).
    max_train_clips : int, optional
        Use this many training clips (stratified by domain), for quick runs.
    update : bool
        Keep the rows of an earlier report in ``out_dir`` (same data, test clips and
        seeds) that this run does not compute; the rows it computes replace theirs. Rows
        that take long can so run one at a time, each committed as it arrives. A row
        computed again with the same settings keeps its earlier runs of the seeds it
        names and trains only the others, so seeds can be added one run at a time.
    retrain : bool
        With ``update``: train every seed of the rows computed again, kept runs or not
        (after a change to the code that trains them).
    log : callable or None
        Where progress lines go (``print``): the data, each row's fit, one line per epoch
        while a neural row trains (as ``asd train`` prints them, prefixed
        ``[<entry>] seed <seed>: ``) and its figures; None for none.

    Returns
    -------
    dict
        The content of ``results.json``.

    Raises
    ------
    ConfigError
        A detector name not in the config.
    FileNotFoundError, asd.data.FileNameError, asd.audio.AudioError
        Data problems.
    """
    from ..detectors import load_clipset, make_detector, split_validation

    unknown = [d for d in detectors if d not in config.detectors]
    if unknown:
        raise ConfigError(f"detector(s) {', '.join(unknown)} not in the benchmark config; known: {', '.join(config.detectors)}")
    out_dir = Path(out_dir)
    (out_dir / "plots").mkdir(parents=True, exist_ok=True)
    features = FeatureConfig.from_dict(config.features)
    data_dir = Path(data_dir)

    started = time.monotonic()
    train = load_clipset([c for c in training_clips(data_dir) if not c.is_anomaly], features)
    if max_train_clips and max_train_clips < len(train):
        train, _ = split_validation(train, 1 - max_train_clips / len(train), config.seeds[0])
    test = load_clipset(list_clips(data_dir, "test"), features)
    feature_s = (time.monotonic() - started) / (len(train) + len(test))
    labels, domains = test.labels, test.domains
    half_a = held_apart_halves(labels, domains, config.held_apart_seed)
    fit_log = log  # None: the detectors build no lines
    log = log or (lambda line: None)
    log(f"{len(train)} training clips, {len(test)} test clips; log-mel {1000 * feature_s:.1f} ms per clip")
    earlier = _earlier_report(out_dir, data_dir, test, config) if update else None  # checked before any training

    results: dict[str, dict] = {}
    first_scores: dict[str, np.ndarray] = {}
    for name in detectors:
        entry = config.detectors[name]
        probe = make_detector(entry.kind, features, entry.model, entry.training, config.seeds[0])
        seeds = entry.seeds or (config.seeds if probe.neural else config.seeds[:1])
        settings = {"model": probe.params.model_dump(), "training": entry.training.model_dump() if probe.neural else None,
                    "renamed": entry.renamed.model_dump() if entry.renamed else None}
        kept = {} if retrain else _kept_runs(earlier, name, entry.kind, settings, seeds)
        # only a renamed row needs a folder of its own (symlinks to the clips)
        folder = tempfile.TemporaryDirectory(prefix=f"asd-{name}-") if entry.renamed else contextlib.nullcontext()
        with folder as renamed_dir:
            row_train = train
            if entry.renamed is not None:
                row_train = renamed_training_set(train, renamed_dir, entry.renamed.keep_domains,
                                                 tuple(entry.renamed.attribute_folders))
                log(f"[{name}] trains on a renamed copy: rec_XXXX names, no attributes"
                    + (", source/ and target/ folders" if entry.renamed.keep_domains else ", no domains")
                    + "".join(f", {a}_<value>/ folders" for a in entry.renamed.attribute_folders))
            runs = _row_runs(name, entry, row_train, test, seeds, half_a, config, out_dir, first_scores, fit_log, log, kept)
        results[name] = {
            "kind": entry.kind,
            "description": probe.description,
            "servable": probe.servable,
            "neural": probe.neural,
            "settings": settings,
            "runs": runs,
            **{key: _summary(runs, key) for key in FIGURES + ("fit_s", "score_ms_per_clip", "size_bytes")},
            "half_a_official": _summary([r["half_a"] for r in runs], "official_score"),
            "half_b_official": _summary([r["half_b"] for r in runs], "official_score"),
            "threshold": _threshold_summary(runs),
        }

    if earlier is not None:
        results, first_scores = _merged_rows(earlier, results, first_scores)
    report = {
        "data_dir": str(data_dir),
        "n_train_clips": len(train),
        "n_test_clips": len(test),
        "features": features.to_dict(),
        "feature_ms_per_clip": round(1000 * feature_s, 2),
        "seeds": config.seeds,
        "held_apart_seed": config.held_apart_seed,
        "threshold_quantile": config.threshold_quantile,
        "max_false_alarms": config.max_false_alarms,
        "detectors": results,
        "selection": _selection(results),
        "duration_s": round(time.monotonic() - started, 1),  # this run's; an --update run adds rows only
        "updated": earlier is not None,
        "machine": {"python": platform.python_version(), "cpus": os.cpu_count(), "platform": platform.platform()},
        "versions": _versions(),
    }
    (out_dir / "results.json").write_text(json.dumps(report, indent=2) + "\n")
    (out_dir / "results.md").write_text(markdown_table(report))
    with open(out_dir / "scores.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["file", "domain", "label", "half", *first_scores])
        for i, clip in enumerate(test.clips):
            writer.writerow([clip.path.name, clip.domain, clip.label, "A" if half_a[i] else "B", *(f"{s[i]:.6f}" for s in first_scores.values())])
    return report


def _earlier_report(out_dir: Path, data_dir: Path, test, config: BenchmarkConfig) -> tuple[dict, list[dict]] | None:
    """The report already in ``out_dir`` (``results.json`` and the rows of ``scores.csv``),
    or None where there is none.

    Raises
    ------
    ConfigError
        It was made on other data, test clips or seeds.
    """
    if not (out_dir / "results.json").is_file():
        return None
    earlier = json.loads((out_dir / "results.json").read_text())
    with open(out_dir / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    if (earlier.get("data_dir") != str(data_dir) or earlier.get("seeds") != config.seeds
            or [r["file"] for r in rows] != [c.path.name for c in test.clips]):
        raise ConfigError(f"--update: {out_dir / 'results.json'} was made on other data, test clips or seeds; "
                          "write to another --out")
    return earlier, rows


def _merged_rows(earlier: tuple[dict, list[dict]], results: dict, first_scores: dict) -> tuple[dict, dict]:
    """The earlier report's rows and per-clip scores with this run's in their place (or added)."""
    report, rows = earlier
    kept = {n: r for n, r in report["detectors"].items() if n not in results}
    scores = {n: column for n in kept if (column := _earlier_scores(rows, n)) is not None}
    return {**kept, **results}, {**scores, **first_scores}


def _earlier_scores(rows: list[dict], name: str) -> np.ndarray | None:
    """Row ``name``'s per-clip scores in the earlier ``scores.csv`` rows (its first seed's),
    or None where that file has no such column."""
    return np.array([float(r[name]) for r in rows]) if rows and name in rows[0] else None


def _kept_runs(earlier: tuple[dict, list[dict]] | None, name: str, kind: str, settings: dict,
               seeds: list[int]) -> dict[int, tuple[dict, np.ndarray | None]]:
    """The earlier report's runs of row ``name`` that an ``--update`` run keeps instead of
    training them again: those of ``seeds`` when the row had the same kind and settings.
    Each maps its seed to ``(run, scores)``; the per-clip scores (``scores.csv``) are
    known for the row's first seed only, None for the others."""
    if earlier is None or name not in earlier[0]["detectors"]:
        return {}
    row, rows = earlier[0]["detectors"][name], earlier[1]
    if row.get("kind") != kind or json.loads(json.dumps(settings)) != row.get("settings"):
        return {}
    first = row["runs"][0]["seed"] if row["runs"] else None
    return {run["seed"]: (run, _earlier_scores(rows, name) if run["seed"] == first else None)
            for run in row["runs"] if run["seed"] in seeds}


def _row_runs(name, entry, train, test, seeds, half_a, config, out_dir, first_scores, fit_log, log,
              kept: dict | None = None) -> list[dict]:
    """Fit and score one row with each seed; the first seed's scores go to
    ``first_scores`` and its plots to ``out_dir/plots``. Seeds in ``kept``
    (:func:`_kept_runs`) are not trained again, unless the first seed's scores are unknown."""
    from ..detectors import make_detector

    labels, domains = test.labels, test.domains
    runs = []
    kept = kept or {}
    for seed in seeds:
        if seed in kept and (runs or kept[seed][1] is not None):
            run, scores = kept[seed]
            if not runs:
                first_scores[name] = scores  # its plots are in out_dir/plots already
            log(f"[{name}] seed {seed}: kept from the earlier report (same settings): official {run['official_score']:.4f}")
            runs.append(run)
            continue
        detector = make_detector(entry.kind, train.features, entry.model, entry.training, seed)
        log(f"[{name}] seed {seed}: fitting ...")
        t0 = time.monotonic()
        # one line per epoch (or before and after a classical fit), as asd train prints them
        detector.fit(train, log=_row_log(fit_log, f"[{name}] seed {seed}: "))
        fit_s = time.monotonic() - t0
        t0 = time.monotonic()
        scores = np.asarray(detector.score(test), float)
        score_ms = 1000 * (time.monotonic() - t0) / len(test)
        train_scores = np.asarray(detector.training_scores(train), float)
        run = {
            "seed": seed,
            **figures(labels, domains, scores),
            "half_a": figures(labels[half_a], domains[half_a], scores[half_a]),
            "half_b": figures(labels[~half_a], domains[~half_a], scores[~half_a]),
            "fit_s": round(fit_s, 1),
            "score_ms_per_clip": round(score_ms, 2),
            "size_bytes": detector.size_bytes(),
            "threshold": threshold_on_halves(train_scores, scores, labels, domains, half_a, config),
            "info": detector.info,
        }
        log(f"[{name}] seed {seed}: official {run['official_score']:.4f} (AUC-source {run['auc_source']:.4f}, "
            f"AUC-target {run['auc_target']:.4f}, pAUC {run['pauc']:.4f}); fit {fit_s:.0f} s")
        if not runs:
            first_scores[name] = scores
            threshold = run["threshold"]["value"]
            from ..plots import plot_roc_per_domain, plot_score_histogram

            plot_roc_per_domain(labels, domains, scores, f"{name} (seed {seed})", out_dir / "plots" / f"{name}_roc.png")
            plot_score_histogram(labels, domains, scores, threshold, f"{name} (seed {seed})", out_dir / "plots" / f"{name}_scores.png")
        runs.append(run)
    return runs


def _row_log(log, prefix: str):
    """``log`` with each line prefixed by its row and seed (None when ``log`` is None)."""
    if log is None:
        return None
    return lambda line: log(prefix + line)


def _base_threshold(train_scores: np.ndarray, quantile: float) -> float:
    """The DCASE gamma threshold of the training scores, or their empirical quantile where
    a gamma fit does not apply (scores <= 0, as some scikit-learn scores are)."""
    try:
        return fit_gamma_threshold(train_scores, quantile).value
    except ValueError:
        return float(np.quantile(train_scores, quantile))


def rates_at(threshold: float, scores: np.ndarray, labels: np.ndarray, domains: np.ndarray) -> dict:
    """Per domain: ``false_alarm_rate`` (normal clips flagged / normal clips) and ``recall``
    (anomalies flagged / anomalies) at ``threshold`` (flagged: score > threshold)."""
    flagged = scores > threshold
    out: dict = {"false_alarm_rate": {}, "recall": {}}
    for domain in ("source", "target"):
        normal, anomaly = (domains == domain) & ~labels, (domains == domain) & labels
        out["false_alarm_rate"][domain] = float(flagged[normal].mean()) if normal.any() else None
        out["recall"][domain] = float(flagged[anomaly].mean()) if anomaly.any() else None
    return out


def threshold_on_halves(train_scores, scores, labels, domains, half_a, config: BenchmarkConfig) -> dict:
    """The decision threshold of one run: the baselines' rule (gamma quantile of the
    training scores), and that times the margin chosen on half A of the test clips
    (:func:`asd.scoring.choose_margin`), each with its false-alarm rate and recall per
    domain on half B."""
    base = _base_threshold(train_scores, config.threshold_quantile)
    if base > 0:
        margin = choose_margin(base, scores[half_a], labels[half_a], domains[half_a], config.max_false_alarms)
    else:  # a margin scales positive thresholds only (some scikit-learn scores are negative)
        margin = 1.0
    half_b = ~half_a
    return {
        "base": base,
        "margin": margin,
        "value": base * margin,
        "baseline_rule_half_b": rates_at(base, scores[half_b], labels[half_b], domains[half_b]),
        "half_b": rates_at(base * margin, scores[half_b], labels[half_b], domains[half_b]),
    }


def _selection(results: dict) -> dict:
    by_official = sorted(results, key=lambda n: results[n]["official_score"]["mean"], reverse=True)
    servable = [n for n in by_official if results[n]["servable"]]
    chosen_on_a = max(results, key=lambda n: results[n]["half_a_official"]["mean"])
    return {
        "best": by_official[0],
        "best_servable": servable[0] if servable else None,
        "held_apart": {
            "chosen_on_half_a": chosen_on_a,
            "official_half_a": results[chosen_on_a]["half_a_official"]["mean"],
            "official_half_b": results[chosen_on_a]["half_b_official"]["mean"],
        },
    }


def _threshold_summary(runs: list[dict]) -> dict:
    """Mean over runs of the margin and of the half-B rates of both threshold rules."""
    def mean(rule: str, key: str, domain: str):
        values = [r["threshold"][rule][key][domain] for r in runs if r["threshold"][rule][key][domain] is not None]
        return float(np.mean(values)) if values else None

    return {
        "margin": float(np.mean([r["threshold"]["margin"] for r in runs])),
        **{rule: {key: {d: mean(rule, key, d) for d in ("source", "target")} for key in ("false_alarm_rate", "recall")}
           for rule in ("baseline_rule_half_b", "half_b")},
    }


def _versions() -> dict:
    found = {p: package_version(p) for p in ("tensorflow-cpu", "keras", "scikit-learn", "librosa", "numpy")}
    return {"asd": __version__, **{p: v for p, v in found.items() if v is not None}}


def _mean_sd(summary: dict, digits: int = 3) -> str:
    text = f"{summary['mean']:.{digits}f}"
    return text + (f" ± {summary['std']:.{digits}f}" if summary["std"] else "")


def markdown_table(report: dict) -> str:
    """The benchmark table (Markdown): one row per detector, best official score first."""
    rows = sorted(report["detectors"].items(), key=lambda kv: kv[1]["official_score"]["mean"], reverse=True)
    lines = [
        f"Benchmark on `{report['data_dir']}`: {report['n_train_clips']} normal training clips, "
        f"{report['n_test_clips']} test clips; seeds {', '.join(map(str, report['seeds']))} "
        "(neural detectors: all seeds, mean ± sd; others: the first seed; a row may name its own).",
        "",
        "| detector | served by TF Serving | seeds | AUC-source | AUC-target | pAUC | official score | official, half A / half B | training (s) | scoring (ms/clip) | scoring (clips/s) | model size (KB) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, r in rows:
        lines.append(
            f"| `{name}` | {'yes' if r['servable'] else 'no'} | {', '.join(str(run['seed']) for run in r['runs'])} | {_mean_sd(r['auc_source'])} | "
            f"{_mean_sd(r['auc_target'])} | {_mean_sd(r['pauc'])} | **{_mean_sd(r['official_score'])}** | "
            f"{r['half_a_official']['mean']:.3f} / {r['half_b_official']['mean']:.3f} | {r['fit_s']['mean']:.0f} | "
            f"{r['score_ms_per_clip']['mean']:.1f} | {1000 / max(r['score_ms_per_clip']['mean'], 1e-3):.0f} | "
            f"{r['size_bytes']['mean'] / 1024:.0f} |"
        )
    limits = report.get("max_false_alarms", {})
    lines += [
        "",
        "Decision threshold, half B of the test clips (mean over runs): the baselines' rule (gamma "
        f"{report.get('threshold_quantile', 0.9)} quantile of the training scores) and that times a margin chosen on "
        f"half A so that at most {100 * limits.get('source', 0):.0f} % of source and {100 * limits.get('target', 0):.0f} % "
        "of target normal clips are flagged.",
        "",
        "| detector | false alarms, baseline rule (source / target) | recall, baseline rule (source / target) | margin (half A) | false alarms with margin (source / target) | recall with margin (source / target) |",
        "|---|---|---|---|---|---|",
    ]

    def pair(values: dict) -> str:
        return " / ".join("n/a" if values[d] is None else f"{values[d]:.2f}" for d in ("source", "target"))

    for name, r in rows:
        t = r["threshold"]
        lines.append(
            f"| `{name}` | {pair(t['baseline_rule_half_b']['false_alarm_rate'])} | {pair(t['baseline_rule_half_b']['recall'])} | "
            f"{t['margin']:.3g} | {pair(t['half_b']['false_alarm_rate'])} | {pair(t['half_b']['recall'])} |"
        )
    sel = report["selection"]
    held = sel["held_apart"]
    lines += [
        "",
        f"Best by official score on all test clips: `{sel['best']}`; best that TF Serving can serve: "
        f"`{sel['best_servable']}` (chosen with the test labels, as DCASE teams do on the dev set).",
        f"Held-apart check (halves stratified by domain and label, seed {report['held_apart_seed']}): "
        f"chosen on half A: `{held['chosen_on_half_a']}`, official {held['official_half_a']:.3f} on A, "
        f"**{held['official_half_b']:.3f} on B**.",
        f"Log-mel features: {report['feature_ms_per_clip']:.1f} ms per clip (computed once, shared); "
        "scoring time excludes them. Model size: float32 weights of neural detectors, pickled state of "
        "the others. "
        + ("The last run (which added rows with --update) took " if report.get("updated") else "Total run time ")
        + f"{report['duration_s'] / 60:.1f} min on {report['machine']['cpus']} CPU cores.",
        "",
    ]
    return "\n".join(lines)
