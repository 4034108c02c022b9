"""Machine-sound anomaly detector: check recordings against a machine type's model.

Run:  streamlit run production/app/streamlit_app.py   (from the repository root, so that
.streamlit/config.toml, with the upload limit, applies)

Backend (environment, see asd.serving.catalog): ASD_SERVING_URL (TF Serving,
``http://host:8501`` REST or ``grpc://host:8500``) with ASD_MODELS_CONFIG (the server's
models.config) or ASD_MODEL_NAME; or ASD_MODEL_DIR (a models directory in TF Serving's
layout, served in-process). ASD_MODEL_FILES_DIR: with a server, a read-only copy of the
served models directory, for the files TF Serving does not serve (a whole-clip model's
band profiles, which explain a clip).

The page reads as the user's story: pick the machine's model, give one or many clips,
get the verdicts, then see why for any clip. Scores are shown as multiples of the model's
decision threshold (1.0 = threshold), so clips and model versions compare; the CSV keeps
the raw scores too.

The title, model picker and clip inputs are drawn before the model is loaded (seconds
in-process), so a user can pick a file at once. A server is asked for its models' status
with a short deadline before anything else, at most every few seconds, so a hung server
costs one short wait, not a request timeout on every page update.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pandas as pd
import streamlit as st

from asd.access.gate import gate
from asd.app_figures import band_profile_comparison, error_over_time, score_gauge, spectrogram_heatmap
from asd.audio import AudioError, channel_count, load_audio
from asd.explanations import BandProfiles
from asd.features import ClipTooShortError
from asd.inference import MAX_CLIP_SECONDS, ClipFeatures, ClipResult, Detector
from asd.layout import ModelNotFoundError
from asd.metadata import ModelMetadata, ModelMismatchError
from asd.scoring import ANOMALOUS, UNFAMILIAR, UNFAMILIAR_ADVICE
from asd.serving import ServingError
from asd.serving.catalog import Deployment, ModelChoice, detector_in_words, recommend
from asd.serving.probe import PROBE_TIMEOUT_S

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"
UPLOAD_TYPES = ("wav", "flac")
MODEL_ERRORS = (ValueError, ServingError, ModelNotFoundError, ModelMismatchError)
CLIP_ERRORS = (AudioError, ClipTooShortError)
# How long a server's status answer (or its failure) is reused: page updates within it ask
# nothing; a new model version or a server coming back shows up after at most this long.
STATUS_TTL_S = 5
RELATIVE_UNIT = "x threshold"


# -- cached resources -------------------------------------------------------------------


@st.cache_data(ttl=STATUS_TTL_S, show_spinner=False)
def server_status(_deployment: Deployment, deployment_key: str) -> dict:
    """Each model name's available versions (newest last), from one short status probe
    per name (:func:`asd.serving.probe.probe_status`; in-process: the models directory).

    Returns ``{"versions": {name: [int, ...]}, "ms": float or None, "asked": float}``, or
    ``{"problem": str, "asked": float}`` when the server fails; either is reused for
    :data:`STATUS_TTL_S` seconds (cleared at once by "Try again" and by a failed request).
    """
    started = time.perf_counter()
    try:
        found = {name: _deployment.available_versions(name) for name in _deployment.names}
    except MODEL_ERRORS as exc:
        return {"problem": str(exc), "asked": time.time()}
    ms = (time.perf_counter() - started) * 1000 if _deployment.server_url else None
    return {"versions": found, "ms": ms, "asked": time.time()}


@st.cache_resource(max_entries=64, show_spinner=False)
def version_metadata(_deployment: Deployment, name: str, version: int, deployment_key: str) -> ModelMetadata:
    """One model version's metadata, without loading the model in this process (a
    version's files do not change once served). Errors are not cached."""
    return _deployment.metadata(name, version)


def served_choices(deployment: Deployment, versions: dict[str, list[int]]) -> tuple[list[ModelChoice], str | None]:
    """Every servable version, newest first per name, described by its metadata (a
    version whose metadata cannot be read is listed undescribed), the recommended ones
    marked; and the reason for the marks (see :func:`asd.serving.catalog.recommend`)."""
    choices = []
    for name, available in versions.items():
        for v in reversed(available):
            try:
                meta = version_metadata(deployment, name, v, repr(deployment))
            except MODEL_ERRORS:
                meta = None
            choices.append(ModelChoice.from_metadata(name, v, v == available[-1], meta))
    return recommend(choices)


@st.cache_resource(show_spinner="Loading the model ...")
def get_detector(_deployment: Deployment, name: str, version: int, deployment_key: str) -> Detector:
    """One detector per model version and process, shared by all sessions (backends are
    thread-safe)."""
    return Detector(_deployment.open(name, version))


@st.cache_data(max_entries=256, show_spinner=False)
def prepare_clip(data: bytes, name: str, model_key: str, channel: int | None, _detector: Detector) -> ClipFeatures:
    """Decode (one ``channel``, 1 = first, or all averaged) and compute a clip's features
    once per model (cached by content)."""
    clip = load_audio(data, _detector.features.sample_rate, name=name, max_seconds=MAX_CLIP_SECONDS, channel=channel)
    return _detector.prepare(clip)


# -- sidebar: model picker and status ---------------------------------------------------


def pick_model(choices: list[ModelChoice], reason: str | None) -> ModelChoice:
    """The sidebar's model picker, on the recommended version at first (else the latest)."""
    with st.sidebar:
        st.header("Machine type / model")
        start = next((i for i, c in enumerate(choices) if c.recommended), 0)
        choice = st.selectbox(
            "Model served", choices, index=start, format_func=lambda c: c.label, key="model_choice",
            help="Every model version the server serves now (TF Serving's models.config and status), "
                 "with its detector; the recommended one has the best stored official DCASE score.",
        )
        if reason:
            st.caption(reason)
        return choice


def show_model(detector: Detector) -> None:
    meta = detector.metadata
    with st.sidebar:
        st.markdown(
            f"**{meta.name}** version {meta.version}  \n"
            f"machine type: {meta.machine_type}  \n"
            f"detector: {meta.detector} ({detector_in_words(meta.detector)})  \n"
            f"decision threshold: {detector.threshold:.4f} ({meta.score_unit}); scores are shown as multiples "
            f"of it, 1.0 = threshold"
            + (f"  \nunfamiliar above: {detector.unfamiliar_threshold:.4f}" if detector.unfamiliar_threshold else "")
        )
        figures = meta.evaluation
        if figures:
            in_words = quality_in_words(figures)
            if in_words:
                st.markdown(in_words)
            st.caption(
                f"Evaluation on its test set: AUC-source {figures['auc_source']:.3f}, "
                f"AUC-target {figures['auc_target']:.3f}, pAUC {figures['pauc']:.3f}, "
                f"official score {figures['official_score']:.3f}"
            )
        st.markdown("**What the threshold means on known data**  \n" + "  \n".join(threshold_in_words(meta)))
        features = meta.features
        st.caption(
            f"log-mel: {features.sample_rate} Hz, n_fft {features.n_fft}, hop {features.hop_length}, "
            f"n_mels {features.n_mels}; input: {meta.input}"
        )


def quality_in_words(evaluation: dict) -> str | None:
    """What the model's test figures mean at its threshold, for a maintenance engineer:
    faulty machines caught of 100 and false alarms per 100 healthy ones; None when the
    evaluation lacks the counts (models exported before they were recorded)."""
    domains = [d for section in evaluation.get("sections", {}).values() for d in section["per_domain"].values()]
    if not domains or any("n_anomaly_flagged" not in d for d in domains):
        return None
    anomalies, normals = sum(d["n_anomaly"] for d in domains), sum(d["n_normal"] for d in domains)
    caught, alarms = sum(d["n_anomaly_flagged"] for d in domains), sum(d["n_normal_flagged"] for d in domains)
    return (f"On its {anomalies + normals} test recordings it caught **{100 * caught / anomalies:.0f} of 100** faulty "
            f"machines and raised **{100 * alarms / normals:.0f} false alarms per 100** healthy ones.")


def _domain_counts(evaluation: dict) -> dict[str, dict]:
    """Each domain's counts at the threshold from a stored evaluation: its ``per_domain``
    (over all sections), else the sections' ``per_domain`` added up. Evaluations stored
    before the counts were (toycar v1) give ``n_anomaly_flagged`` from recall and
    ``n_normal_flagged`` from precision (None where precision cannot give it: nothing
    caught)."""
    found: dict[str, dict] = {}
    sources = [evaluation["per_domain"]] if evaluation.get("per_domain") else [
        section.get("per_domain", {}) for section in evaluation.get("sections", {}).values()]
    for per_domain in sources:
        for domain, d in per_domain.items():
            caught = d.get("n_anomaly_flagged", round(d.get("recall", 0.0) * d.get("n_anomaly", 0)))
            alarms = d.get("n_normal_flagged")
            if alarms is None and d.get("precision"):
                alarms = round(caught / d["precision"]) - caught
            total = found.setdefault(domain, {"n_anomaly": 0, "n_normal": 0, "caught": 0, "alarms": 0})
            total["n_anomaly"] += d.get("n_anomaly", 0)
            total["n_normal"] += d.get("n_normal", 0)
            total["caught"] += caught
            total["alarms"] = None if alarms is None or total["alarms"] is None else total["alarms"] + alarms
    return found


def threshold_in_words(meta: ModelMetadata) -> list[str]:
    """What the decision threshold did on labelled clips, one sentence per domain, from
    the version's stored evaluation (``asd train`` stores :func:`asd.evaluation.evaluate_directory`'s
    figures in the metadata), e.g. "source domain: on the ToyCar test set it caught 3 of
    50 faults and flagged 2 of 50 healthy clips". A version re-exported or enrolled from
    another carries its base's evaluation: the sentences say "measured on v4" (and, where
    the threshold has changed since, the threshold it was measured at). Without a stored
    evaluation, one sentence says so."""
    evaluation = meta.evaluation
    counts = _domain_counts(evaluation) if evaluation else {}
    if not counts:
        return ["No evaluation on labelled clips is stored with this version, so what its threshold does on known "
                "data is not known (asd evaluate measures it on a labelled test set)."]
    data = Path(str(evaluation.get("data_dir", "")))
    test_set = (data.parent.name if data.name == "test" else data.name) or meta.machine_type
    measured = (evaluation.get("model") or {}).get("version")
    base = (meta.reexport or meta.enrolment or {}).get("base_version")
    measured = measured if measured is not None and measured != meta.version else base
    notes = []
    if measured is not None and measured != meta.version:
        notes.append(f"measured on v{measured}" + (", before enrolment" if meta.enrolment else ""))
    then = evaluation.get("threshold")
    if then is not None and abs(float(then) - meta.threshold_value) > 1e-6 * max(1.0, abs(float(then))):
        notes.append(f"at the threshold {float(then):.4f} it had then; this version's is {meta.threshold_value:.4f}")
    note = f" ({'; '.join(notes)})" if notes else ""
    lines = []
    for domain, c in counts.items():
        alarms = ("flagged an unrecorded number of its " if c["alarms"] is None else f"flagged {c['alarms']} of ")
        lines.append(f"{domain} domain: on the {test_set} test set it caught {c['caught']} of {c['n_anomaly']} faults "
                     f"and {alarms}{c['n_normal']} healthy clips{note}.")
    return lines


def show_status(deployment: Deployment | None, detector: Detector | None, problem: str | None = None) -> None:
    """Backend, reachability (the cached status probe, :func:`server_status`), model and
    the last request's latency."""
    with st.sidebar:
        st.header("Status")
        lines = [f"backend: {deployment.describe() if deployment else 'not configured'}"]
        status = server_status(deployment, repr(deployment)) if deployment and not problem else {}
        problem = problem or status.get("problem")
        asked = f", asked {time.time() - status['asked']:.0f} s ago" if "asked" in status else ""
        if problem:
            lines.append(f"server: **not reachable** ({problem})")
        elif deployment.server_url:
            lines.append(f"server: reachable ({status['ms']:.0f} ms to answer the status probe{asked})")
        elif detector is not None:
            lines.append("server: none needed (model loaded in this process)")
        if detector is not None:
            lines.append(f"model: {detector.metadata.name} version {detector.metadata.version}")
        last = st.session_state.get("last_request")
        if last:
            lines.append(f"last request: {last['ms']:.0f} ms ({last['model']}, {last['clip']})")
        st.markdown("  \n".join(lines), help=f"The server's status is asked with a {PROBE_TIMEOUT_S:g} s deadline, "
                                              f"at most every {STATUS_TTL_S} s.")


# -- input --------------------------------------------------------------------------------


SAMPLE_RULE = ("the lowest-numbered clip of each domain and label in each machine folder of production/samples "
               "(real DCASE 2023 Task 2 test clips); the label is the dataset's, the verdict is the model's, and "
               "they may differ")


def sample_clips() -> dict[str, Path]:
    """The sample clips offered, by a fixed rule: in each machine folder of
    ``production/samples`` (ToyCar, fan), the clip with the lowest file number of each
    (section, domain, label), e.g. ``section_00_source_test_anomaly_0001_...``; chosen by
    number, not by what a model says of them. The app shows whatever the model says of a
    sample; its label is only the dataset's. Files whose names are not DCASE clip names
    are left out."""
    from asd.data import FileNameError, parse_clip_name

    lowest: dict[tuple, tuple[int, Path]] = {}
    for path in sorted(SAMPLES_DIR.glob("*/*.wav")):
        try:
            clip = parse_clip_name(path)
        except FileNameError:
            continue
        key = (path.parent.name, clip.section, clip.domain, clip.label)
        if key not in lowest or clip.index < lowest[key][0]:
            lowest[key] = (clip.index, path)
    return {path.name: path for _, path in sorted(lowest.values(), key=lambda item: str(item[1]))}


def choose_clips(sample_rate: int) -> tuple[list[tuple[str, bytes]], list[str]]:
    """The clips to check as ``(name, bytes)``, and messages for files refused unread;
    the microphone records at the model's ``sample_rate`` (Hz)."""
    source = st.radio(
        "Clips to check", ["Upload files", "Record with the microphone", "Sample clips"], horizontal=True,
        key="source",
    )
    clips, refused = [], []
    if source == "Upload files":
        limit_mb = st.get_option("server.maxUploadSize")
        # No `type=` filter: Streamlit would refuse other files with an exception in the
        # server, not a message; the checks below say what is wrong instead.
        uploads = st.file_uploader(
            f"WAV or FLAC recordings, one or many (up to {limit_mb} MB each)",
            accept_multiple_files=True, key="uploads",
        ) or []
        for upload in uploads:
            suffix = Path(upload.name).suffix.lower().lstrip(".")
            if suffix not in UPLOAD_TYPES:
                refused.append(f"{upload.name}: .{suffix or '?'} files are not supported; upload WAV or FLAC")
            elif upload.size > limit_mb * 1024 * 1024:
                refused.append(f"{upload.name}: {upload.size / 2**20:.1f} MB is over the {limit_mb} MB upload limit; "
                               f"upload a shorter recording (the app checks the first {MAX_CLIP_SECONDS:g} s)")
            else:
                clips.append((upload.name, upload.getvalue()))
    elif source == "Record with the microphone":
        recording = st.audio_input("Record the machine (10 s or longer works best)", sample_rate=sample_rate,
                                     key="recording")
        if recording is not None:
            clips.append(("microphone recording.wav", recording.getvalue()))
    else:
        samples = sample_clips()
        picked = st.multiselect("Sample clips (DCASE 2023 Task 2 test clips: ToyCar, and a fan a ToyCar model never "
                                "heard; see production/samples)", list(samples), key="samples",
                                help=f"The samples are {SAMPLE_RULE}.")
        st.caption(f"Samples: {SAMPLE_RULE}.")
        clips += [(name, samples[name].read_bytes()) for name in picked]
    return _unique_names(clips), refused


def pick_channel(clips: list[tuple[str, bytes]]) -> int | None:
    """For multi-channel files (a recorder's 8 microphones, MIMII): which channel to check,
    or None for the channels' average. Shown only when such a file is given."""
    most = max([channel_count(data) or 1 for _, data in clips], default=1)
    if most < 2:
        return None
    return st.selectbox(
        "Channel of multi-channel files", [None, *range(1, most + 1)], key="channel",
        format_func=lambda c: "all channels, averaged" if c is None else f"channel {c}",
        help="A multi-channel recorder holds one microphone per channel: check the one nearest the machine, "
             "or their average.",
    )


def _unique_names(clips: list[tuple[str, bytes]]) -> list[tuple[str, bytes]]:
    """Clips named apart (two uploads may share a file name): ``a.wav``, ``a.wav (2)``."""
    seen: dict[str, int] = {}
    named = []
    for name, data in clips:
        seen[name] = seen.get(name, 0) + 1
        named.append((name if seen[name] == 1 else f"{name} ({seen[name]})", data))
    return named


# -- scoring ------------------------------------------------------------------------------


def score_clips(detector: Detector, model_key: str, clips: list[tuple[str, bytes]],
                channel: int | None = None) -> dict[str, ClipResult | str]:
    """Score each clip (results kept per session, so the page can redraw without asking
    the server again); a clip that cannot be checked gets its message instead."""
    store = st.session_state.setdefault("results", {})
    outcomes: dict[str, ClipResult | str] = {}
    keyed = [((model_key, name, channel, hashlib.sha1(data).hexdigest()), name, data) for name, data in clips]
    todo = sum(key not in store for key, _, _ in keyed)
    progress = st.progress(0.0, text=f"Scoring {todo} clip(s) ...") if todo > 1 else None
    done = 0
    for key, name, data in keyed:
        if key not in store:
            try:
                result = detector.score_features(prepare_clip(data, name, model_key, channel, detector))
                st.session_state["last_request"] = {"ms": result.backend_seconds * 1000, "model": model_key, "clip": name}
                store[key] = result
            except CLIP_ERRORS as exc:
                reason = str(exc) if str(exc).startswith(name) else f"{name}: {exc}"
                store[key] = f"This file cannot be checked: {reason}"
            except ServingError as exc:
                server_status.clear()  # the status panel asks again, not a cached "reachable"
                outcomes[name] = f"The model server failed: {exc}. Try again in a moment."
                continue  # not stored: the next try asks the server again
            done += 1
            if progress:
                progress.progress(done / todo, text=f"Scored {done} of {todo} clips")
        outcomes[name] = store[key]
    if progress:
        progress.empty()
    # Keep only the clips on the page: a session checking clip after clip all day must
    # not hold every spectrogram it ever drew.
    on_page = {key for key, _, _ in keyed}
    st.session_state["results"] = {k: v for k, v in store.items() if k in on_page}
    return outcomes


RELATIVE_COLUMN = f"anomaly score ({RELATIVE_UNIT})"
# Shown on the page; the CSV has every column of results_table.
PAGE_COLUMNS = ["file", RELATIVE_COLUMN, "verdict"]


def results_table(outcomes: dict[str, ClipResult | str], model_key: str, score_unit: str) -> pd.DataFrame:
    """One row per clip: the score as a multiple of the decision threshold, the raw score
    and threshold (in ``score_unit``), the model and the verdict."""
    rows = []
    for name, outcome in outcomes.items():
        checked = isinstance(outcome, ClipResult)
        relative = outcome.relative_score if checked else None
        rows.append({
            "file": name,
            RELATIVE_COLUMN: round(relative, 3) if relative is not None else None,
            "anomaly score (raw)": round(outcome.score, 4) if checked else None,
            "decision threshold (raw)": round(outcome.threshold, 4) if checked else None,
            "score unit": score_unit,
            "model": model_key,
            "verdict": outcome.verdict if checked else "not checked",
        })
    return pd.DataFrame(rows)


def show_table(outcomes: dict[str, ClipResult | str], model_key: str, score_unit: str) -> None:
    table = results_table(outcomes, model_key, score_unit)
    flagged = int((table["verdict"] == ANOMALOUS).sum())
    unfamiliar = int((table["verdict"] == UNFAMILIAR).sum())
    st.subheader(f"Results: {flagged} of {len(table)} clips anomalous"
                 + (f", {unfamiliar} unfamiliar" if unfamiliar else ""))
    st.caption(f"Anomaly scores in multiples of the model's decision threshold ({RELATIVE_UNIT}): above 1.0 is "
               "anomalous. Click a column header to sort; the CSV has the raw scores too.")
    st.dataframe(table[PAGE_COLUMNS], hide_index=True, width="stretch")
    st.download_button("Download as CSV", table.to_csv(index=False).encode(), file_name=f"asd_results_{model_key}.csv",
                       mime="text/csv")


# -- one clip -----------------------------------------------------------------------------


def verdict_sentence(result: ClipResult, score_unit: str = "raw score") -> str:
    """The verdict in one sentence (Streamlit Markdown): the score as a multiple of the
    decision threshold first, the raw score and threshold (in ``score_unit``) after."""
    if result.verdict == UNFAMILIAR:
        return (f"**{result.name}** is **unfamiliar**: {UNFAMILIAR_ADVICE}. (Its distance to the nearest training "
                f"clip, {result.unfamiliarity:.3f}, is above the model's limit {result.unfamiliar_threshold:.3f}.)")
    side = "above" if result.verdict == ANOMALOUS else "below"
    raw = f"raw score {result.score:.4f} against the threshold {result.threshold:.4f}, {score_unit}"
    relative = result.relative_score
    if relative is None:
        return (f"**{result.name}** sounds **{result.verdict}**: its anomaly score is {abs(result.margin):.4f} {side} "
                f"the decision threshold ({raw}).")
    return (f"**{result.name}** sounds **{result.verdict}**: its anomaly score is **{relative:.2f} {RELATIVE_UNIT}**, "
            f"{abs(relative - 1) * 100:.0f} % {side} the decision threshold ({raw}).")


# The verdict at a glance: one word in large type and its colour, before the sentence.
HEADLINE_COLOURS = {ANOMALOUS: "red", UNFAMILIAR: "orange"}


def headline(result: ClipResult) -> str:
    """``## :red[ANOMALOUS]`` and the like (Streamlit Markdown), for ``result``'s verdict."""
    return f"## :{HEADLINE_COLOURS.get(result.verdict, 'green')}[{result.verdict.upper()}]"


def model_files(detector: Detector) -> Path | None:
    """The model version's folder, for the files TF Serving does not serve
    (``assets.extra/``): the in-process backend's own, or with a server
    ``$ASD_MODEL_FILES_DIR/<name>/<version>`` (compose mounts production/models there)."""
    path = getattr(detector.backend, "path", None)
    if path is not None:
        return Path(path)
    root = os.environ.get("ASD_MODEL_FILES_DIR")
    meta = detector.metadata
    return Path(root) / meta.name / str(meta.version) if root else None


def show_clip(result: ClipResult, data: bytes, detector: Detector) -> None:
    meta = detector.metadata
    st.markdown(headline(result))
    st.audio(data)
    for note in result.notes:
        st.info(f"Note: {note}.")
    show = {ANOMALOUS: st.error, UNFAMILIAR: st.warning}.get(result.verdict, st.success)
    show("Verdict: " + verdict_sentence(result, meta.score_unit))
    gauge, numbers = st.columns([2, 1])
    gauge.plotly_chart(score_gauge(result), width="stretch")
    relative = result.relative_score
    numbers.metric("Anomaly score", f"{relative:.2f} {RELATIVE_UNIT}" if relative is not None else f"{result.score:.4f}",
                   help="1.0 is the decision threshold: above it, anomalous.")
    numbers.metric("Raw anomaly score", f"{result.score:.4f}", help=meta.score_unit)
    numbers.metric("Decision threshold (raw)", f"{result.threshold:.4f}", help=meta.score_unit)
    unit = meta.score_unit[0].upper() + meta.score_unit[1:]
    if meta.input == "waveform":  # one score per clip: explained by its spectrum against the nearest training clip's
        st.subheader("Spectrum against the nearest normal training clip")
        try:
            profiles = BandProfiles.load(model_files(detector))
        except ValueError as exc:
            profiles, problem = None, str(exc)
        else:
            problem = "this model carries no training clips' band profiles here"
        if profiles is None or not result.logmel.size:
            st.caption(f"This model scores the clip's whole spectrum at once, so its score is the same at every "
                       f"moment; {problem}, so there is no plot that explains it.")
        else:
            st.caption("Each mel band's mean level over the clip (the clip's overall level removed), against the normal "
                       "training clip closest to it (smallest RMS difference over bands). The bands where they differ "
                       "most are marked.")
            st.plotly_chart(band_profile_comparison(profiles.nearest(result.logmel), detector.features.mel_band_hz),
                            width="stretch")
    else:
        st.subheader("Anomaly score over time")
        marks = ("Frames above the frame threshold (fitted on the training clips' frames) are marked."
                 if meta.frame_threshold_value is not None else
                 "This model carries no per-frame threshold (it was exported before them), so no frames are marked.")
        st.caption(f"{unit}, frame by frame: where it is high, the sound differs from the normal sounds the model "
                   f"learnt. {marks}")
        st.plotly_chart(error_over_time(result, meta.score_unit, meta.frame_threshold_value), width="stretch")
    st.subheader("Spectrograms")
    band_hz = detector.features.mel_band_hz
    st.plotly_chart(spectrogram_heatmap(result.logmel, result.frame_times_s, band_hz, "Log-mel spectrogram (input)", "dB"),
                    width="stretch")
    if result.reconstruction is None:
        st.caption("This model does not reconstruct its input, so there is no reconstruction or error map.")
        return
    st.plotly_chart(spectrogram_heatmap(result.reconstruction, result.frame_times_s, band_hz,
                                        "Reconstruction (what the model expects of a normal sound)", "dB"),
                    width="stretch")
    error_map = abs(result.logmel - result.reconstruction)
    st.plotly_chart(spectrogram_heatmap(error_map, result.frame_times_s, band_hz,
                                        "Error map: |input - reconstruction| (where the sound differs)", "dB",
                                        colorscale="Reds"),
                    width="stretch")


# -- page ---------------------------------------------------------------------------------


def models_unavailable(message: str, deployment: Deployment | None, problem: str) -> None:
    """Say why no model can be used, with the status and a retry, and end this page run."""
    st.error(message)
    show_status(deployment, None, problem=problem)
    st.button("Try again", on_click=server_status.clear)  # ask the server again, not the cache
    st.stop()


def main() -> None:
    st.set_page_config(page_title="Machine sound anomaly detector", layout="wide")
    gate()  # with sign-in on, nothing below is drawn for an anonymous visitor (asd.access)
    st.title("Machine sound anomaly detector")
    st.write("Check recordings of a machine: the model, trained on its normal sounds only, says whether each "
             "sounds normal or anomalous, and where.")
    try:
        deployment = Deployment.from_env()
    except ValueError as exc:
        models_unavailable(f"The models are not available: {exc}", None, str(exc))
    status = server_status(deployment, repr(deployment))
    if "problem" in status:
        models_unavailable(f"The models are not available: {status['problem']}", deployment, status["problem"])
    choices, reason = served_choices(deployment, status["versions"])
    choice = pick_model(choices, reason)
    model_key = f"{choice.name}-v{choice.version}"
    try:
        meta = version_metadata(deployment, choice.name, choice.version, repr(deployment))
    except MODEL_ERRORS as exc:
        models_unavailable(f"Model {choice.label} is not available: {exc}", deployment, str(exc))
    # The inputs come before the model loads (seconds in-process), so a file can be picked at once.
    clips, refused = choose_clips(meta.features.sample_rate)
    for message in refused:
        st.error(f"This file cannot be checked: {message}")
    channel = pick_channel(clips)
    try:
        detector = get_detector(deployment, choice.name, choice.version, repr(deployment))
    except MODEL_ERRORS as exc:
        models_unavailable(f"Model {choice.label} is not available: {exc}", deployment, str(exc))
    show_model(detector)
    outcomes = score_clips(detector, model_key, clips, channel) if clips else {}
    show_status(deployment, detector)
    if not outcomes:
        if not refused:
            st.info("Upload, record or pick a clip to check.")
        return
    checked = {n: o for n, o in outcomes.items() if isinstance(o, ClipResult)}
    for outcome in outcomes.values():
        if isinstance(outcome, str):
            st.error(outcome)
    if len(outcomes) > 1:
        show_table(outcomes, model_key, detector.metadata.score_unit)
    if not checked:
        return
    if len(checked) > 1:
        def anomalousness(n: str) -> float:
            relative = checked[n].relative_score
            return relative if relative is not None else checked[n].margin

        ranked = sorted(checked, key=anomalousness, reverse=True)
        name = st.selectbox("Details for", ranked, key="details",
                            help=f"Clips ordered from most to least anomalous (by anomaly score, {RELATIVE_UNIT}).")
    else:
        name = next(iter(checked))
    data = dict(clips)[name]
    show_clip(checked[name], data, detector)


main()
