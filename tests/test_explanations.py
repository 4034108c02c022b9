"""What explains a verdict: the per-frame threshold of frame-level models and the band
profiles of whole-clip models (asd.explanations), on real clips and the shipped models."""

import json
import shutil

import numpy as np
import pytest
import streamlit as st
from streamlit.testing.v1 import AppTest

from asd.app_figures import band_profile_comparison, error_over_time
from asd.audio import load_audio
from asd.explanations import BAND_PROFILES_FILE, BandProfiles, band_profile, fit_frame_threshold
from asd.features import FeatureConfig, log_mel_spectrogram
from asd.metadata import METADATA_FILE, ModelMetadata

from .conftest import REPO, SHIPPED_MODELS, SUBSET

V1, V4 = SHIPPED_MODELS / "toycar" / "1", SHIPPED_MODELS / "toycar" / "4"
TRAIN_CLIPS = sorted((SUBSET / "train").glob("*.flac"))
# An anomaly shipped v1 marks frames of (10 of its 376 frames above the frame threshold,
# measured when the threshold was fitted; the other seven test clips of the subset get 1-4).
V1_MARKED_ANOMALY = SUBSET / "test" / "section_00_source_test_anomaly_0007_car_B1_spd_34V_mic_1.flac"
# A target-domain anomaly whose band profile differs from every training clip's by 1.66 dB RMS.
V4_ANOMALY = SUBSET / "test" / "section_00_target_test_anomaly_0002_car_A1_spd_28V_mic_2.flac"


@pytest.fixture(scope="module")
def v1_detector():
    from asd.inference import Detector
    from asd.serving.inprocess import InProcessBackend

    return Detector(InProcessBackend(V1))


def _marks(figure):
    """The marked frames' trace of an error_over_time figure, or None."""
    marked = [t for t in figure.data if t.mode == "markers"]
    return marked[0] if marked else None


def test_shipped_v1_marks_under_a_tenth_of_a_normal_training_clips_frames(v1_detector):
    threshold = v1_detector.metadata.frame_threshold_value
    assert threshold is not None and threshold > v1_detector.threshold  # above the clip threshold: a frame's own rule
    for path in TRAIN_CLIPS:
        result = v1_detector.score_file(path)
        marks = _marks(error_over_time(result, v1_detector.metadata.score_unit, threshold))
        assert len(marks.x) < 0.1 * len(result.frame_error), path.name


def test_shipped_v1_marks_frames_of_an_anomaly(v1_detector):
    result = v1_detector.score_file(V1_MARKED_ANOMALY)
    figure = error_over_time(result, v1_detector.metadata.score_unit, v1_detector.metadata.frame_threshold_value)
    marks = _marks(figure)
    assert len(marks.x) >= 5
    assert np.all(np.asarray(marks.y) > v1_detector.metadata.frame_threshold_value)
    assert f"({len(marks.x)} of {len(result.frame_error)} frames)" in marks.name


def test_a_model_without_a_frame_threshold_marks_no_frames(v1_detector):
    raw = json.loads((V1 / METADATA_FILE).read_text())
    del raw["frame_threshold"]
    old = ModelMetadata.from_dict(raw)
    assert old.frame_threshold is None and old.frame_threshold_value is None
    result = v1_detector.score_file(V1_MARKED_ANOMALY)
    figure = error_over_time(result, old.score_unit, old.frame_threshold_value)
    assert _marks(figure) is None
    assert any("no per-frame threshold" in a.text for a in figure.layout.annotations)


def test_frame_threshold_is_the_quantile_of_real_training_frames(v1_detector):
    frames = [v1_detector.score_file(p).frame_error for p in TRAIN_CLIPS]
    fitted = fit_frame_threshold(frames, 0.99)
    pooled = np.concatenate(frames)
    assert fitted["n_clips"] == len(TRAIN_CLIPS) and fitted["n_frames"] == pooled.size
    assert 0.01 - 1 / pooled.size <= (pooled > fitted["value"]).mean() <= 0.01 + 1 / pooled.size
    # metadata that names a frame threshold must give its value
    raw = json.loads((V1 / METADATA_FILE).read_text())
    raw["frame_threshold"] = {"quantile": 0.99}
    with pytest.raises(ValueError, match="incomplete or invalid"):
        ModelMetadata.from_dict(raw)


@pytest.mark.parametrize("frames, quantile", [([], 0.99), ([np.array([0.2, np.nan])], 0.99),
                                              ([np.array([0.2, 0.3])], 1.0)])
def test_frame_threshold_refuses_bad_input(frames, quantile):
    with pytest.raises(ValueError):
        fit_frame_threshold(frames, quantile)


def _logmel(path):
    return log_mel_spectrogram(load_audio(path, 16000).samples, FeatureConfig())


def test_band_plot_of_an_anomaly_names_its_nearest_training_clip_and_marks_bands():
    profiles = BandProfiles.load(V4)
    assert profiles is not None and len(profiles.names) == ModelMetadata.read(V4).training["n_train_clips"]
    logmel = _logmel(V4_ANOMALY)
    nearest = profiles.nearest(logmel)
    assert nearest.reference_name in set(profiles.names)
    # the named clip is the nearest: no stored profile is closer
    rms = np.sqrt(np.mean((profiles.profiles - band_profile(logmel)) ** 2, axis=1))
    assert nearest.distance_db == pytest.approx(rms.min(), abs=1e-4) and nearest.distance_db > 1.0
    band_hz = FeatureConfig().mel_band_hz
    figure = band_profile_comparison(nearest, band_hz)
    assert nearest.reference_name in figure.data[0].name
    marked = figure.data[2]
    assert len(marked.x) >= 1 and len(marked.text) == len(marked.x)
    for band, label in zip(marked.x, marked.text):
        assert label.startswith(f"{band_hz[band]:.0f} Hz")
        assert abs(nearest.profile[band] - nearest.reference[band]) > profiles.mark_db


def test_a_training_clip_is_its_own_nearest_and_has_no_band_marked():
    profiles = BandProfiles.load(V4)
    path = TRAIN_CLIPS[0]
    nearest = profiles.nearest(_logmel(path))
    assert nearest.reference_name == path.name and nearest.distance_db < 0.01  # float16 storage
    assert len(nearest.marked) == 0


def test_a_broken_band_profile_file_is_refused_in_one_line(tmp_path):
    (tmp_path / BAND_PROFILES_FILE).parent.mkdir(parents=True)
    (tmp_path / BAND_PROFILES_FILE).write_bytes(b"not an npz")
    with pytest.raises(ValueError, match="not a band-profile file"):
        BandProfiles.load(tmp_path)
    assert BandProfiles.load(tmp_path / "absent") is None


@pytest.fixture
def app(monkeypatch):
    def start(models_dir):
        for key in ("ASD_SERVING_URL", "ASD_MODEL_NAME", "ASD_MODELS_CONFIG", "ASD_MODEL_VERSION"):
            monkeypatch.delenv(key, raising=False)
        monkeypatch.setenv("ASD_MODEL_DIR", str(models_dir))
        st.cache_resource.clear()
        st.cache_data.clear()
        at = AppTest.from_file(str(REPO / "production" / "app" / "streamlit_app.py"), default_timeout=180)
        at.run()
        uploader = at.file_uploader[0].clear()
        uploader.upload(V4_ANOMALY.name, V4_ANOMALY.read_bytes(), "audio/flac")
        uploader.run()
        return at

    yield start
    st.cache_resource.clear()
    st.cache_data.clear()


def test_app_shows_the_band_plot_of_a_whole_clip_model(app):
    at = app(SHIPPED_MODELS)
    assert not at.exception and not at.error
    charts = at.get("plotly_chart")
    assert len(charts) == 3  # gauge, band profile, log-mel
    spec = charts[1].proto.spec
    assert "nearest normal training clip: section_00_" in spec and "bands that differ most" in spec


def test_app_skips_the_band_plot_of_a_model_without_profiles(app, tmp_path):
    models = tmp_path / "models"
    shutil.copytree(V4, models / "toycar" / "4", ignore=shutil.ignore_patterns(BAND_PROFILES_FILE.split("/")[-1]))
    at = app(models)
    assert not at.exception and not at.error
    assert len(at.get("plotly_chart")) == 2  # gauge, log-mel
    assert any("no training clips' band profiles" in c.value for c in at.caption)


def test_export_fits_the_frame_threshold_and_the_band_profiles(trained_model, waveform_model):
    _, result = trained_model
    fitted = result.metadata.frame_threshold
    assert fitted["n_clips"] == len(TRAIN_CLIPS) and fitted["quantile"] == 0.99
    assert ModelMetadata.read(result.version_dir).frame_threshold_value == pytest.approx(fitted["value"])
    version_dir = next((waveform_model / "toycar").iterdir())
    profiles = BandProfiles.load(version_dir)
    assert sorted(profiles.names) == [p.name for p in TRAIN_CLIPS] and profiles.mark_db > 0
    assert ModelMetadata.read(version_dir).frame_threshold is None
