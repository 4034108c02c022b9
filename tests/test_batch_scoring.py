"""Scoring many files at once (`asd score`'s path): threads prepare clips ahead and the
model takes several per request; the results must be exactly those of one clip at a time."""

from __future__ import annotations

import numpy as np
import pytest

from asd.audio import AudioError, load_audio
from asd.data import list_clips
from asd.inference import Detector
from asd.serving.inprocess import InProcessBackend

from .conftest import SUBSET


@pytest.fixture(params=["trained_model", "waveform_model"])
def detector(request):
    """A log-mel model (conv_ae, with reconstruction) and a waveform model."""
    value = request.getfixturevalue(request.param)
    models_dir = value[0] if isinstance(value, tuple) else value
    return Detector(InProcessBackend(models_dir))


def test_batched_scoring_equals_one_clip_at_a_time_and_keeps_bad_files_in_place(detector, tmp_path):
    clips = [c.path for c in list_clips(SUBSET / "test")]
    bad = tmp_path / "notes.wav"
    bad.write_text("not audio\n" * 50)
    paths = clips[:3] + [bad] + clips[3:]

    calls = []
    predict = detector.backend.predict
    detector.backend.predict = lambda inputs: calls.append(len(inputs)) or predict(inputs)
    rows_per_clip = len(detector.prepare(load_audio(clips[0], 16000)).inputs)  # 44 patches, or 1 waveform
    outcomes = list(detector.score_files(paths, workers=2, batch_size=4, max_rows=2 * rows_per_clip))
    detector.backend.predict = predict
    assert sum(calls) == len(clips) * rows_per_clip and max(calls) <= 2 * rows_per_clip  # TF Serving's row limit kept

    assert [p for p, _ in outcomes] == paths
    assert isinstance(outcomes[3][1], AudioError) and "notes.wav" in str(outcomes[3][1])
    for path, result in outcomes[:3] + outcomes[4:]:
        alone = detector.score_file(path, name=str(path))
        assert result.name == str(path)
        assert result.verdict == alone.verdict
        assert result.score == pytest.approx(alone.score, rel=1e-5)
        np.testing.assert_allclose(result.patch_error, alone.patch_error, rtol=1e-4, atol=1e-7)
        np.testing.assert_allclose(result.frame_error, alone.frame_error, rtol=1e-4, atol=1e-7)
        assert (result.reconstruction is None) == (alone.reconstruction is None)
        if alone.reconstruction is not None:
            np.testing.assert_allclose(result.reconstruction, alone.reconstruction, rtol=1e-4, atol=1e-4)


def test_one_request_scores_a_batch(detector):
    """score_batch sends the batch in one request: the backend sees all clips' rows at once."""
    clips = [c.path for c in list_clips(SUBSET / "test")][:3]
    calls = []
    predict = detector.backend.predict
    detector.backend.predict = lambda inputs: calls.append(len(inputs)) or predict(inputs)
    prepared = [detector.prepare(load_audio(c, 16000)) for c in clips]
    results = detector.score_batch(prepared)
    assert calls == [sum(len(p.inputs) for p in prepared)]
    assert [r.name for r in results] == [p.name for p in prepared]
    assert len({r.backend_seconds for r in results}) == 1


def test_skipping_the_display_log_mel_changes_no_score(detector):
    """`asd score` skips the log-mel a waveform model does not take (display=False): same
    scores, verdicts and frame count; a log-mel model still gets its spectrogram; a clip
    shorter than one patch is refused either way."""
    from asd.features import ClipTooShortError

    clips = [c.path for c in list_clips(SUBSET / "test")]
    shown = [r for _, r in detector.score_files(clips)]
    lean = [r for _, r in detector.score_files(clips, display=False)]
    waveform = detector.metadata.input == "waveform"
    for a, b in zip(shown, lean):
        # the batches score_files forms depend on thread timing: scores to batched-inference precision
        assert a.score == pytest.approx(b.score, rel=1e-5) and a.verdict == b.verdict
        assert a.logmel.shape[1] == b.logmel.shape[1] and b.logmel.shape[0] == (0 if waveform else 128)
    short = load_audio(clips[0], 16000)
    short.samples = short.samples[:8000]
    with pytest.raises(ClipTooShortError, match="clip too short: 16 frames"):
        detector.prepare(short, display=False)
