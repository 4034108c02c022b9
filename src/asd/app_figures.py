"""The app's plotly figures for one scored clip: spectrogram heatmaps, error over time,
score gauge. Pure functions of a :class:`~asd.inference.ClipResult`, so they can be tested
without a browser."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .inference import ClipResult

# Frequencies labelled on mel-scaled axes (Hz); lower ones would crowd (50, 100 and
# 250 Hz sit a few mel rows, under 10 px, apart).
_TICK_HZ = (250, 500, 1000, 2000, 4000, 8000, 16000)
ABOVE_COLOUR = "crimson"


def spectrogram_heatmap(
    values: np.ndarray, result: ClipResult, band_hz: np.ndarray, title: str, unit: str, colorscale: str = "Viridis"
) -> go.Figure:
    """A ``(n_mels, n_frames)`` map over time (s) and frequency (Hz).

    Rows are drawn evenly spaced, as the mel bands are, and labelled in Hz; hovering shows
    a cell's time, band centre frequency and value.

    Parameters
    ----------
    values : np.ndarray [shape=(n_mels, n_frames)]
        Log-mel (dB), reconstruction (dB) or error (dB).
    result : ClipResult
        Gives the frame times.
    band_hz : np.ndarray [shape=(n_mels,)]
        Band centre frequencies (:attr:`asd.features.FeatureConfig.mel_band_hz`).
    title, unit : str
        Figure title and colour bar unit.
    """
    n_bands = values.shape[0]
    ticks = [hz for hz in _TICK_HZ if band_hz[0] <= hz <= band_hz[-1]]
    tick_rows = np.interp(ticks, band_hz, np.arange(n_bands))
    figure = go.Figure(
        go.Heatmap(
            z=values,
            x=result.frame_times_s,
            y=np.arange(n_bands),
            customdata=np.repeat(band_hz[:, None], values.shape[1], axis=1),
            hovertemplate="%{x:.2f} s, %{customdata:.0f} Hz: %{z:.1f} " + unit + "<extra></extra>",
            colorscale=colorscale,
            colorbar={"title": unit},
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="time (s)",
        yaxis={"title": "frequency (Hz, mel scale)", "tickvals": tick_rows, "ticktext": [f"{hz:g}" for hz in ticks]},
        height=300,
        margin={"t": 40, "b": 40},
    )
    return figure


def error_over_time(result: ClipResult, score_unit: str) -> go.Figure:
    """Per-frame error (``result.frame_error``) against time in seconds, with the decision
    threshold as a dashed line and the frames above it marked."""
    times = result.frame_times_s
    above = result.frame_error > result.threshold
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=times, y=result.frame_error, mode="lines", name="per frame"))
    figure.add_trace(
        go.Scatter(
            x=times[above],
            y=result.frame_error[above],
            mode="markers",
            name=f"above threshold ({int(above.sum())} of {len(above)} frames)",
            marker={"color": ABOVE_COLOUR, "size": 5},
        )
    )
    figure.add_hline(
        y=result.threshold,
        line_dash="dash",
        line_color=ABOVE_COLOUR,
        annotation_text=f"decision threshold {result.threshold:.3f}",
    )
    figure.update_layout(
        xaxis_title="time (s)",
        yaxis_title=score_unit,
        height=340,
        margin={"t": 30, "b": 40},
        legend={"orientation": "h", "y": 1.15},
    )
    return figure


# The gauge's fixed range, in multiples of the decision threshold: the threshold sits at
# its middle on every clip and model version, so gauges compare at a glance.
GAUGE_TOP = 2.0


def score_gauge(result: ClipResult) -> go.Figure:
    """The clip's anomaly score as a multiple of the decision threshold
    (:attr:`ClipResult.relative_score`, 1.0 = threshold) on a gauge fixed from 0 to
    :data:`GAUGE_TOP`; the red zone starts at the threshold. A score beyond the range fills
    the gauge, shows its value in the number, and is marked "off the scale".

    A model whose threshold is not positive has no meaningful ratio: its raw score is
    shown against the threshold instead, on a range fitted to the clip.
    """
    relative = result.relative_score
    if relative is None:
        return _raw_score_gauge(result)
    off_scale = relative > GAUGE_TOP
    figure = go.Figure(
        go.Indicator(
            mode="gauge+number",
            # the bar stops at the range's end; the number says the real value
            value=relative,
            number={"valueformat": ".2f", "suffix": " x threshold",
                    "font": {"size": 30, "color": ABOVE_COLOUR if relative > 1 else "#222"}},
            gauge={
                "axis": {"range": [0, GAUGE_TOP], "tickvals": [0, 0.5, 1, 1.5, GAUGE_TOP],
                         "ticktext": ["0", "0.5", "1 (threshold)", "1.5", f"{GAUGE_TOP:g}+" if off_scale else f"{GAUGE_TOP:g}"]},
                "bar": {"color": ABOVE_COLOUR if off_scale else "#444"},
                "steps": [
                    {"range": [0, 1], "color": "#d8f0dd"},
                    {"range": [1, GAUGE_TOP], "color": "#f6d5d5"},
                ],
                "threshold": {"line": {"color": ABOVE_COLOUR, "width": 3}, "value": 1.0},
            },
            title={"text": "anomaly score in multiples of the decision threshold", "font": {"size": 14}},
        )
    )
    if off_scale:
        figure.add_annotation(text=f"off the scale: beyond {GAUGE_TOP:g} x threshold", x=0.5, y=0, yref="paper",
                              yanchor="top", showarrow=False, font={"color": ABOVE_COLOUR, "size": 14})
    figure.update_layout(height=260, margin={"t": 60, "b": 30 if off_scale else 10, "l": 30, "r": 30})
    return figure


def _raw_score_gauge(result: ClipResult) -> go.Figure:
    """The raw anomaly score against the decision threshold, range fitted to the clip."""
    top = max(abs(result.score), abs(result.threshold)) * 1.5 or 1.0
    bottom = min(0.0, result.score, result.threshold) * 1.5
    figure = go.Figure(
        go.Indicator(
            mode="gauge+number",
            value=result.score,
            number={"valueformat": ".3f"},
            gauge={
                "axis": {"range": [bottom, top]},
                "bar": {"color": "#444"},
                "steps": [
                    {"range": [bottom, result.threshold], "color": "#d8f0dd"},
                    {"range": [result.threshold, top], "color": "#f6d5d5"},
                ],
                "threshold": {"line": {"color": ABOVE_COLOUR, "width": 3}, "value": result.threshold},
            },
            title={"text": "anomaly score vs decision threshold"},
        )
    )
    figure.update_layout(height=260, margin={"t": 60, "b": 10, "l": 30, "r": 30})
    return figure
