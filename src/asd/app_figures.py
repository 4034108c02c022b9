"""The app's plotly figures for one scored clip: spectrogram heatmaps, error over time,
band profile against the nearest training clip, score gauge. Pure functions of a
:class:`~asd.inference.ClipResult` and what the model carries, so they can be tested
without a browser."""

from __future__ import annotations

import numpy as np
import plotly.graph_objects as go

from .explanations import NearestProfile, frames_above
from .inference import ClipResult

# Frequencies labelled on mel-scaled axes (Hz); lower ones would crowd (50, 100 and
# 250 Hz sit a few mel rows, under 10 px, apart).
_TICK_HZ = (250, 500, 1000, 2000, 4000, 8000, 16000)
ABOVE_COLOUR = "crimson"


def spectrogram_heatmap(
    values: np.ndarray, frame_times_s: np.ndarray, band_hz: np.ndarray, title: str, unit: str,
    colorscale: str = "Viridis"
) -> go.Figure:
    """A ``(n_mels, n_frames)`` map over time (s) and frequency (Hz).

    Rows are drawn evenly spaced, as the mel bands are, and labelled in Hz; hovering shows
    a cell's time, band centre frequency and value.

    Parameters
    ----------
    values : np.ndarray [shape=(n_mels, n_frames)]
        Log-mel (dB), reconstruction (dB) or error (dB).
    frame_times_s : np.ndarray [shape=(n_frames,)]
        Start time of each frame (s), e.g. :attr:`ClipResult.frame_times_s`.
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
            x=frame_times_s,
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


def error_over_time(result: ClipResult, score_unit: str, frame_threshold: float | None) -> go.Figure:
    """Per-frame error (``result.frame_error``, ``(n_frames,)``) against time in seconds,
    with the model's per-frame threshold as a dashed line and the frames above it marked.

    The clip's decision threshold bounds the clip's *mean* error, so it is drawn only as a
    grey dotted reference; frames are compared with ``frame_threshold``, fitted on the
    training clips' frames (:mod:`asd.explanations`). A model without one (exported
    before it) gets no marks, and the figure says so.

    Parameters
    ----------
    result : ClipResult
    score_unit : str
        Axis label (the model's metadata ``score_unit``).
    frame_threshold : float or None
        :attr:`asd.metadata.ModelMetadata.frame_threshold_value`.
    """
    times = result.frame_times_s
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=times, y=result.frame_error, mode="lines", name="per frame"))
    figure.add_hline(y=result.threshold, line_dash="dot", line_color="grey",
                     annotation_text=f"clip decision threshold {result.threshold:.3f} (for the clip's mean)",
                     annotation_position="bottom left")
    if frame_threshold is None:
        figure.add_annotation(text="this model has no per-frame threshold: no frames marked", showarrow=False,
                              xref="paper", yref="paper", x=0.0, y=1.0, xanchor="left", yanchor="bottom")
    else:
        above = frames_above(result.frame_error, frame_threshold)
        figure.add_trace(
            go.Scatter(
                x=times[above],
                y=result.frame_error[above],
                mode="markers",
                name=f"above the frame threshold ({int(above.sum())} of {len(above)} frames)",
                marker={"color": ABOVE_COLOUR, "size": 5},
            )
        )
        figure.add_hline(y=frame_threshold, line_dash="dash", line_color=ABOVE_COLOUR,
                         annotation_text=f"frame threshold {frame_threshold:.3f}")
    figure.update_layout(
        xaxis_title="time (s)",
        yaxis_title=score_unit,
        height=340,
        margin={"t": 30, "b": 40},
        legend={"orientation": "h", "y": 1.15},
    )
    return figure


def band_profile_comparison(nearest: NearestProfile, band_hz: np.ndarray) -> go.Figure:
    """A clip's band profile against its nearest normal training clip's, over frequency,
    with the bands that differ most marked and labelled in Hz.

    Parameters
    ----------
    nearest : NearestProfile
        From :meth:`asd.explanations.BandProfiles.nearest`: profiles ``(n_mels,)`` in dB
        (level removed), the training clip's name, the RMS distance and the marked bands
        (an empty trace, named so, when no band differs beyond ``mark_db``).
    band_hz : np.ndarray [shape=(n_mels,)]
        Band centre frequencies (:attr:`asd.features.FeatureConfig.mel_band_hz`); the
        x axis is the band index (mel-spaced), labelled in Hz as the spectrograms are.
    """
    n_bands = len(band_hz)
    bands = np.arange(n_bands)
    ticks = [hz for hz in _TICK_HZ if band_hz[0] <= hz <= band_hz[-1]]
    hover = "%{customdata:.0f} Hz: %{y:.1f} dB<extra></extra>"
    figure = go.Figure()
    figure.add_trace(go.Scatter(x=bands, y=nearest.reference, customdata=band_hz, hovertemplate=hover,
                                mode="lines", line={"color": "seagreen"},
                                name=f"nearest normal training clip: {nearest.reference_name}"))
    figure.add_trace(go.Scatter(x=bands, y=nearest.profile, customdata=band_hz, hovertemplate=hover,
                                mode="lines", line={"color": "#444"}, name="this clip"))
    marked = nearest.marked
    difference = nearest.profile[marked] - nearest.reference[marked]
    figure.add_trace(go.Scatter(
        x=marked, y=nearest.profile[marked], mode="markers+text", marker={"color": ABOVE_COLOUR, "size": 9},
        text=[f"{band_hz[b]:.0f} Hz ({d:+.1f} dB)" for b, d in zip(marked, difference)], textposition="top center",
        customdata=band_hz[marked], hovertemplate=hover,
        # mark_db: what normal training clips' nearest neighbours rarely exceed (asd.explanations)
        name=(f"bands that differ most (by over {nearest.mark_db:.1f} dB)" if len(marked)
              else f"no band differs by over {nearest.mark_db:.1f} dB"),
    ))
    figure.update_layout(
        title=f"Band profile against the nearest normal training clip (RMS difference {nearest.distance_db:.2f} dB)",
        xaxis={"title": "frequency (Hz, mel scale)", "tickvals": np.interp(ticks, band_hz, bands),
               "ticktext": [f"{hz:g}" for hz in ticks]},
        yaxis_title="mean level over time (dB, clip level removed)",
        height=360,
        margin={"t": 40, "b": 40},
        legend={"orientation": "h", "y": -0.25},
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
