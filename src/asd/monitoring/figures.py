"""The Machines page's plotly figures: a machine's score trend and a stored clip's
log-mel spectrogram. Pure functions of store rows and audio, testable without a browser."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import plotly.graph_objects as go

from ..app_figures import spectrogram_heatmap
from ..audio import load_audio
from ..features import FeatureConfig, log_mel_spectrogram
from .store import HistoryRow

#: Marker colour per verdict
VERDICT_COLOURS = {"normal": "seagreen", "anomalous": "crimson", "unfamiliar": "darkorange"}


def score_trend(rows: list[HistoryRow], machine: str) -> go.Figure:
    """Anomaly score over recorded-at time for one machine's scored clips.

    Points are coloured by verdict, one trace per verdict (so the legend reads as a key);
    a clip judged against a baseline shows its clip score (against the bank plus the
    baseline), and the window score (the mean the verdict is on) is drawn as a line; the
    decision threshold each score was judged against (the model's, or the machine's
    fitted from its baseline) is a dotted step line; each change of model version is a
    dashed vertical line labelled with the new version. Each point's ``customdata`` is
    ``[clip id, file name]``, for selecting a clip.

    Parameters
    ----------
    rows : list of HistoryRow
        Oldest first (:meth:`asd.monitoring.store.Store.history`); failed clips are skipped.
    machine : str
        For the title.
    """
    scored = [r for r in rows if r.score is not None]
    figure = go.Figure()

    def clip_score(r):
        return r.clip_score if r.baseline_size and r.clip_score is not None else r.score

    for verdict, colour in VERDICT_COLOURS.items():
        points = [r for r in scored if r.verdict == verdict]
        if not points:
            continue
        figure.add_trace(go.Scatter(
            x=[r.recorded_at for r in points], y=[clip_score(r) for r in points], mode="markers", name=verdict,
            marker={"color": colour, "size": 9, "line": {"width": 1, "color": "white"}},
            customdata=[[r.clip_id, Path(r.path).name] for r in points],
            hovertemplate="%{x|%Y-%m-%d %H:%M:%S} UTC<br>%{customdata[1]}<br>score %{y:.4f}<extra>" + verdict + "</extra>"))
    windowed = [r for r in scored if r.window_score is not None]
    if windowed:
        figure.add_trace(go.Scatter(
            x=[r.recorded_at for r in windowed], y=[r.window_score for r in windowed], mode="lines",
            name="window score (mean of the last clips)", line={"color": "black", "width": 2},
            hovertemplate="%{x|%Y-%m-%d %H:%M:%S} UTC<br>window score %{y:.4f}<extra></extra>"))
    if scored:
        figure.add_trace(go.Scatter(
            x=[r.recorded_at for r in scored], y=[r.threshold for r in scored], mode="lines", name="decision threshold",
            line={"color": "grey", "dash": "dot", "shape": "hv"}, hoverinfo="skip"))
    for previous, row in zip(scored, scored[1:]):
        if (row.model_name, row.model_version) != (previous.model_name, previous.model_version):
            figure.add_vline(x=row.recorded_at.timestamp() * 1000, line_dash="dash", line_color="royalblue",
                             annotation_text=f"{row.model_name} v{row.model_version}", annotation_position="top left")
    figure.update_layout(title=f"{machine}: anomaly score per clip", xaxis_title="recorded at (UTC)",
                         yaxis_title="anomaly score", height=380, margin={"t": 50, "b": 40},
                         legend={"orientation": "h", "y": -0.2}, clickmode="event+select")
    return figure


def clip_spectrogram(path: str | Path, features: FeatureConfig | None = None) -> go.Figure:
    """The log-mel spectrogram (dB) of a stored clip, as the models compute it.

    Raises
    ------
    asd.audio.AudioError, OSError
        The file is gone or cannot be read.
    """
    features = features or FeatureConfig()
    clip = load_audio(path, features.sample_rate)
    logmel = log_mel_spectrogram(clip.samples, features)
    times = np.arange(logmel.shape[1]) * features.frame_seconds
    return spectrogram_heatmap(logmel, times, features.mel_band_hz, f"Log-mel spectrogram: {Path(path).name}", "dB")
