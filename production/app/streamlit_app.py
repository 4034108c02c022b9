"""Machine-sound anomaly detector: upload a clip, get its anomaly score and a verdict.

Run:  streamlit run production/app/streamlit_app.py
Backend (environment): ASD_SERVING_URL (TF Serving REST base URL) with ASD_MODEL_NAME,
or ASD_MODEL_DIR (a models directory in TF Serving's layout, served in-process).

The page reads as the user's story: choose a clip, hear it, see the verdict, then see
why (the model's error over time against the decision threshold).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go
import streamlit as st

from asd.audio import AudioError
from asd.features import ClipTooShortError
from asd.inference import ClipResult, Detector
from asd.layout import ModelNotFoundError
from asd.metadata import ModelMismatchError
from asd.serving import ServingError, backend_from_env

SAMPLES_DIR = Path(__file__).resolve().parents[1] / "samples"


@st.cache_resource(show_spinner="Loading the model ...")
def get_detector() -> Detector:
    """One detector per app process, shared by all sessions (backends are thread-safe).
    A failure is not cached: the next page load tries again."""
    return Detector(backend_from_env())


def sample_clips() -> dict[str, Path]:
    return {p.name: p for p in sorted(SAMPLES_DIR.glob("*/*.wav"))}


def show_model(detector: Detector) -> None:
    meta = detector.metadata
    with st.sidebar:
        st.header("Model")
        st.markdown(
            f"**{meta.name}** version {meta.version}  \n"
            f"machine type: {meta.machine_type}  \n"
            f"detector: {meta.detector}  \n"
            f"decision threshold: {detector.threshold:.4f}"
        )
        st.caption(detector.backend.describe())
        figures = meta.evaluation
        if figures:
            st.subheader("Evaluation (test set)")
            st.markdown(
                f"AUC-source {figures['auc_source']:.3f}  \n"
                f"AUC-target {figures['auc_target']:.3f}  \n"
                f"pAUC {figures['pauc']:.3f}  \n"
                f"official score {figures['official_score']:.3f}"
            )
        features = meta.features
        st.caption(
            f"log-mel: {features.sample_rate} Hz, n_fft {features.n_fft}, hop {features.hop_length}, "
            f"n_mels {features.n_mels}; patches of {features.patch_frames} frames"
        )


def choose_clip() -> tuple[bytes, str] | None:
    uploaded = st.file_uploader("Upload a recording (WAV or FLAC)", type=["wav", "flac"])
    if uploaded is not None:
        return uploaded.getvalue(), uploaded.name
    samples = sample_clips()
    choice = st.selectbox("... or try a sample clip (DCASE 2023 ToyCar test set)", ["(none)", *samples])
    if choice != "(none)":
        return samples[choice].read_bytes(), choice
    return None


def error_plot(result: ClipResult, score_unit: str) -> go.Figure:
    times = result.frame_times_s
    above = result.frame_error > result.threshold
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=times, y=result.frame_error, mode="lines", name="per frame"))
    figure.add_trace(
        go.Scatter(x=times[above], y=result.frame_error[above], mode="markers", name="above threshold",
                   marker={"color": "crimson", "size": 5})
    )
    figure.add_hline(y=result.threshold, line_dash="dash", line_color="crimson",
                     annotation_text=f"decision threshold {result.threshold:.3f}")
    figure.update_layout(xaxis_title="time (s)", yaxis_title=score_unit,
                         height=360, margin={"t": 30, "b": 40}, legend={"orientation": "h", "y": 1.12})
    return figure


def spectrogram_plot(result: ClipResult) -> go.Figure:
    figure = go.Figure(go.Heatmap(z=result.logmel, x=result.frame_times_s, y=np.arange(result.logmel.shape[0]),
                                  colorscale="Viridis", colorbar={"title": "dB"}))
    figure.update_layout(xaxis_title="time (s)", yaxis_title="mel band", height=300, margin={"t": 20, "b": 40})
    return figure


def show_result(result: ClipResult, metadata) -> None:
    score_unit = metadata.score_unit
    for note in result.notes:
        st.info(f"Note: {note}.")
    anomalous = result.verdict == "anomalous"
    message = (f"Verdict: **{result.verdict}**: anomaly score {result.score:.4f} is "
               f"{abs(result.margin):.4f} {'above' if anomalous else 'below'} the decision threshold "
               f"{result.threshold:.4f}.")
    (st.error if anomalous else st.success)(message)
    col1, col2, col3 = st.columns(3)
    col1.metric("Anomaly score", f"{result.score:.4f}")
    col2.metric("Decision threshold", f"{result.threshold:.4f}")
    col3.metric("Margin", f"{result.margin:+.4f}")
    st.subheader("Anomaly score over time")
    if metadata.input == "waveform":
        st.caption(f"{score_unit[0].upper()}{score_unit[1:]}: this model scores the clip's whole spectrum at once, "
                   "so the score is the same at every moment.")
    else:
        st.caption(f"{score_unit[0].upper()}{score_unit[1:]}, frame by frame: where it is high, the sound differs "
                   "from the normal sounds the model learnt.")
    st.plotly_chart(error_plot(result, score_unit), width="stretch")
    st.subheader("Log-mel spectrogram")
    st.plotly_chart(spectrogram_plot(result), width="stretch")


def main() -> None:
    st.set_page_config(page_title="Machine sound anomaly detector", layout="wide")
    st.title("Machine sound anomaly detector")
    st.write("Upload a recording of a machine; the model, trained on normal sounds only, "
             "says whether it sounds normal or anomalous, and where.")
    try:
        detector = get_detector()
    except (ValueError, ServingError, ModelNotFoundError, ModelMismatchError) as exc:
        st.error(f"The model is not available: {exc}")
        st.stop()
    show_model(detector)
    clip = choose_clip()
    if clip is None:
        st.info("Choose a clip to check.")
        return
    data, name = clip
    st.audio(data)
    try:
        with st.spinner("Scoring ..."):
            result = detector.score_file(data, name=name)
    except (AudioError, ClipTooShortError) as exc:
        st.error(f"This file cannot be checked: {exc}")
        return
    except ServingError as exc:
        st.error(f"The model server failed: {exc}. Try again in a moment.")
        return
    show_result(result, detector.metadata)


main()
