"""``asd robustness``: the verdicts through the recording chain.

Every labelled test clip is scored clean and after each change a real recording chain
makes to it: a recorder at another sample rate, a quieter or louder microphone, another
file format, a DC offset, a noisier preamplifier. Each perturbed clip is written to a file
(bytes) and goes through :func:`asd.audio.load_audio` and the model exactly as an upload
does, so the app's resampling (``librosa.resample``, soxr_hq) is part of what is measured.

Per perturbation the report gives AUC-source, AUC-target, pAUC, the official score, the
false-alarm rate of normal clips per domain at the model's threshold, the clips called
unfamiliar, and the change from clean. Targets (issue 13 of this project): for every
resampling, gain, bit-depth, DC-offset and 40 dB-noise perturbation the false-alarm rate
rises by at most :data:`MAX_FALSE_ALARM_RISE` and AUC per domain drops by at most
:data:`MAX_AUC_DROP`; the 7 kHz low-pass is reported, not a target.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from ..audio import load_audio
from ..data import list_clips
from ..inference import Detector
from ..metrics import evaluate_scores
from ..scoring import NORMAL, UNFAMILIAR

MAX_FALSE_ALARM_RISE = 0.05
MAX_AUC_DROP = 0.03
NOISE_SNR_DB = 40.0
DC_OFFSET = 0.01  # -40 dBFS: a cheap interface's offset
LOWPASS_HZ = 7000.0


@dataclass(frozen=True)
class Perturbation:
    """One change of the recording chain.

    Attributes
    ----------
    name : str
        Short key (report rows, JSON).
    description : str
    make : callable
        ``(samples (n,) float32 at rate Hz, rate, rng) -> WAV bytes``: the file a user
        would have.
    target : bool
        Whether the robustness targets apply (the low-pass is only reported).
    """

    name: str
    description: str
    make: Callable[[np.ndarray, int, np.random.Generator], bytes]
    target: bool = True


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def _at_rate(rate_out: int) -> Callable:
    def make(samples, rate, rng):
        import librosa

        # what a recorder at rate_out would have written (the band above 8 kHz is empty,
        # as in the original); the app resamples it back with librosa's default
        return _wav(librosa.resample(samples, orig_sr=rate, target_sr=rate_out), rate_out)

    return make


def _gain(db: float) -> Callable:
    def make(samples, rate, rng):
        scaled = samples * np.float32(10 ** (db / 20))
        peak = float(np.abs(scaled).max())
        if peak >= 1.0:  # the perturbation is gain, not clipping: say so instead of measuring distortion
            raise ValueError(f"gain {db:+g} dB would clip this clip (peak {20 * np.log10(peak):+.1f} dBFS)")
        return _wav(scaled, rate, "FLOAT")  # float: a -20 dB clip keeps its 16-bit detail

    return make


def _noise(samples, rate, rng):
    rms = float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))
    noise = rng.normal(0.0, rms * 10 ** (-NOISE_SNR_DB / 20), samples.shape).astype(np.float32)
    return _wav(samples + noise, rate, "FLOAT")


def _lowpass(samples, rate, rng):
    from scipy.signal import butter, sosfiltfilt

    sos = butter(8, LOWPASS_HZ, fs=rate, output="sos")
    return _wav(sosfiltfilt(sos, samples).astype(np.float32), rate, "FLOAT")


PERTURBATIONS = (
    Perturbation("clean", "the test clip as recorded (16 kHz, 16-bit)", lambda s, r, g: _wav(s, r)),
    *(Perturbation(f"rate_{rate}", f"recorded at {rate / 1000:g} kHz (resampled from 16 kHz), resampled back by the app",
                   _at_rate(rate)) for rate in (22050, 32000, 44100, 48000)),
    Perturbation("gain_-20dB", "a quieter microphone: -20 dB", _gain(-20.0)),
    Perturbation("gain_+6dB", "a louder microphone: +6 dB (no clipping)", _gain(6.0)),
    Perturbation("pcm_24", "saved as 24-bit PCM", lambda s, r, g: _wav(s, r, "PCM_24")),
    Perturbation("float_32", "saved as 32-bit float", lambda s, r, g: _wav(s, r, "FLOAT")),
    Perturbation("dc_offset", f"a DC offset of {DC_OFFSET:g} ({20 * np.log10(DC_OFFSET):.0f} dBFS)",
                 lambda s, r, g: _wav(s + np.float32(DC_OFFSET), r, "FLOAT")),
    Perturbation("noise_40dB", f"white noise at {NOISE_SNR_DB:g} dB SNR (of the clip's RMS)", _noise),
    Perturbation("lowpass_7k", f"a {LOWPASS_HZ / 1000:g} kHz low-pass (8th-order Butterworth; reported, not a target)",
                 _lowpass, target=False),
)
PERTURBATION_NAMES = tuple(p.name for p in PERTURBATIONS)


def run_robustness(detector: Detector, data_dir: str | Path, out_dir: str | Path, names: list[str] | None = None,
                   seed: int = 0, log=print) -> dict:
    """Score every labelled test clip of ``data_dir`` under each perturbation; write
    ``robustness.json`` and ``robustness.md`` to ``out_dir``.

    Parameters
    ----------
    detector : Detector
        The model, through any backend.
    data_dir : str or Path
        A machine-type folder with ``test/`` (file names carrying labels), or a test folder.
    out_dir : str or Path
    names : list of str, optional
        Perturbations to run (:data:`PERTURBATION_NAMES`); ``clean`` always runs.
    seed : int
        For the noise.

    Returns
    -------
    dict
        The report (as in ``robustness.json``): ``model``, ``n_clips``, ``rows`` (one per
        perturbation: figures, changes from clean, ``meets_targets``), ``all_met``.

    Raises
    ------
    FileNotFoundError, asd.data.FileNameError
        No labelled test clips.
    ValueError
        An unknown perturbation name; a gain that would clip a clip.
    """
    started = time.monotonic()
    unknown = sorted(set(names or []) - set(PERTURBATION_NAMES))
    if unknown:
        raise ValueError(f"unknown perturbation(s) {', '.join(unknown)}; choose from {', '.join(PERTURBATION_NAMES)}")
    chosen = [p for p in PERTURBATIONS if p.name == "clean" or names is None or p.name in names]
    clips = [c for c in list_clips(data_dir, split=None if Path(data_dir).name == "test" else "test") if c.label]
    if not clips:
        raise FileNotFoundError(f"{data_dir}: no labelled test clips")
    rate = detector.features.sample_rate
    originals = [load_audio(c.path, rate).samples for c in clips]
    rows, clean_verdicts = [], []
    for perturbation in chosen:
        t0 = time.monotonic()
        rng = np.random.default_rng(seed)
        files = [perturbation.make(samples, rate, rng) for samples in originals]

        def prepare(i):
            return detector.prepare(load_audio(files[i], rate, name=clips[i].path.name), display=False)

        with ThreadPoolExecutor(2) as pool:
            prepared = list(pool.map(prepare, range(len(clips))))
        results = [r for i in range(0, len(prepared), 8) for r in detector.score_batch(prepared[i : i + 8])]
        rows.append(_row(perturbation, clips, results, detector.threshold))
        if perturbation.name == "clean":  # always first
            clean_verdicts = [r.verdict for r in results]
        rows[-1]["n_verdicts_changed"] = sum(r.verdict != v for r, v in zip(results, clean_verdicts))
        log(f"{perturbation.name}: official {rows[-1]['official_score']:.4f}, false alarms "
            f"{rows[-1]['false_alarm_rate']}, {time.monotonic() - t0:.0f} s")
    clean = rows[0]
    for row in rows:
        row["change"] = {
            "auc_source": _delta(row["auc_source"], clean["auc_source"]),
            "auc_target": _delta(row["auc_target"], clean["auc_target"]),
            "false_alarm_rate": {d: _delta(row["false_alarm_rate"][d], clean["false_alarm_rate"][d])
                                 for d in row["false_alarm_rate"]},
        }
        row["meets_targets"] = None if not row["target"] or row is clean else _meets(row["change"])
    meta = detector.metadata
    report = {
        "model": {"name": meta.name, "version": meta.version, "detector": meta.detector},
        "data_dir": str(data_dir),
        "n_clips": len(clips),
        "threshold": detector.threshold,
        "unfamiliar_threshold": detector.unfamiliar_threshold,
        "targets": {"max_false_alarm_rise": MAX_FALSE_ALARM_RISE, "max_auc_drop": MAX_AUC_DROP},
        "rows": rows,
        "all_met": all(r["meets_targets"] is not False for r in rows),
        "duration_s": round(time.monotonic() - started, 1),
    }
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "robustness.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    (out / "robustness.md").write_text(markdown_report(report), encoding="utf-8")
    return report


def _delta(value: float | None, clean: float | None) -> float | None:
    return None if value is None or clean is None else round(value - clean, 4)


def _meets(change: dict) -> bool:
    auc_ok = all(change[k] is None or change[k] >= -MAX_AUC_DROP for k in ("auc_source", "auc_target"))
    fa_ok = all(v is None or v <= MAX_FALSE_ALARM_RISE for v in change["false_alarm_rate"].values())
    return auc_ok and fa_ok


def _row(perturbation: Perturbation, clips, results, threshold: float) -> dict:
    """One perturbation's figures (:func:`asd.metrics.evaluate_scores` over all sections)."""
    scores = [r.score for r in results]
    metrics = evaluate_scores(clips, scores, threshold)
    domains = sorted({c.domain for c in clips if c.domain})
    false_alarms, unfamiliar = {}, {}
    for domain in domains:
        normal = [r for c, r in zip(clips, results) if c.domain == domain and not c.is_anomaly]
        false_alarms[domain] = round(sum(r.verdict != NORMAL for r in normal) / len(normal), 4) if normal else None
        unfamiliar[domain] = sum(r.verdict == UNFAMILIAR for c, r in zip(clips, results) if c.domain == domain)
    return {
        "perturbation": perturbation.name,
        "description": perturbation.description,
        "target": perturbation.target,
        "auc_source": metrics["auc_source"],
        "auc_target": metrics["auc_target"],
        "pauc": metrics["pauc"],
        "official_score": metrics["official_score"],
        "false_alarm_rate": false_alarms,
        "n_unfamiliar": unfamiliar,
        "median_normal_score": float(np.median([s for c, s in zip(clips, scores) if not c.is_anomaly])),
    }


def markdown_report(report: dict) -> str:
    """The report as Markdown: one table row per perturbation."""
    model = report["model"]
    fmt = lambda v: "n/a" if v is None else f"{v:.3f}"  # noqa: E731
    sign = lambda v: "" if v is None else f" ({v:+.3f})"  # noqa: E731
    lines = [
        f"# Robustness to the recording chain: {model['name']} v{model['version']} ({model['detector']})",
        "",
        f"`asd robustness` on {report['n_clips']} labelled test clips of `{report['data_dir']}`; each perturbed clip is "
        "written as a WAV file and loaded and scored as an upload is (the app resamples with librosa's default, "
        f"soxr_hq). Decision threshold {report['threshold']:.4f}"
        + (f", unfamiliar threshold {report['unfamiliar_threshold']:.4f}" if report["unfamiliar_threshold"] else "")
        + f". Took {report['duration_s']:.0f} s.",
        "",
        f"Targets: the false-alarm rate of normal clips rises by at most {report['targets']['max_false_alarm_rise']:.2f} "
        f"and AUC per domain drops by at most {report['targets']['max_auc_drop']:.2f} from clean (change in brackets). "
        f"**{'All met.' if report['all_met'] else 'Not all met.'}**",
        "",
        "| perturbation | AUC-source | AUC-target | pAUC | official | false alarms source | false alarms target "
        "| unfamiliar | verdicts changed | meets targets |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["rows"]:
        fa, change = row["false_alarm_rate"], row["change"]
        met = {None: "reported only" if not row["target"] else "(reference)", True: "yes", False: "**no**"}[row["meets_targets"]]
        lines.append(
            f"| {row['description']} | {fmt(row['auc_source'])}{sign(change['auc_source'])} "
            f"| {fmt(row['auc_target'])}{sign(change['auc_target'])} | {fmt(row['pauc'])} | {fmt(row['official_score'])} "
            f"| {fmt(fa.get('source'))}{sign(change['false_alarm_rate'].get('source'))} "
            f"| {fmt(fa.get('target'))}{sign(change['false_alarm_rate'].get('target'))} "
            f"| {sum(row['n_unfamiliar'].values())} | {row['n_verdicts_changed']} | {met} |"
        )
    return "\n".join(lines) + "\n"
