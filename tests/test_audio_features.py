"""Audio loading and the single feature path, on real clips."""

import io

import numpy as np
import pytest
import soundfile as sf

from asd.audio import AudioError, load_audio
from asd.data import list_clips
from asd.features import (
    ClipTooShortError,
    FeatureConfig,
    clip_patches,
    log_mel_spectrogram,
    patches_to_frames,
    to_patches,
)

from .conftest import SAMPLE_ANOMALY, SAMPLE_NORMAL, SUBSET, SUBSET_FLAC_OF_SAMPLE

FEATURES = FeatureConfig()


def _wav_bytes(samples, rate, subtype="PCM_16"):
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format="WAV", subtype=subtype)
    return buffer.getvalue()


def test_real_wav_and_flac_decode_to_the_same_samples():
    wav = load_audio(SAMPLE_ANOMALY, 16000)
    flac = load_audio(SUBSET_FLAC_OF_SAMPLE, 16000)
    assert wav.samples.dtype == np.float32 and wav.samples.shape == (192000,)
    assert wav.duration_s == pytest.approx(12.0) and wav.notes == []
    np.testing.assert_array_equal(wav.samples, flac.samples)


def test_features_equal_between_training_path_and_app_path():
    """Training reads FLAC files from disk; the app gets uploaded WAV bytes. Both must
    give the identical log-mel patches for the same recording."""
    from asd.detectors import load_clipset

    clip = next(c for c in list_clips(SUBSET, split="test") if c.path == SUBSET_FLAC_OF_SAMPLE)
    training_logmel = load_clipset([clip], FEATURES).logmels[0]
    upload = load_audio(SAMPLE_ANOMALY.read_bytes(), FEATURES.sample_rate, name="upload.wav")
    app_logmel, app_patches = clip_patches(upload.samples, FEATURES)
    np.testing.assert_array_equal(training_logmel, app_logmel)
    np.testing.assert_array_equal(to_patches(training_logmel, FEATURES), app_patches)


def test_log_mel_and_patch_shapes_of_a_12_s_clip():
    logmel, patches = clip_patches(load_audio(SAMPLE_NORMAL, 16000).samples, FEATURES)
    assert logmel.shape == (128, 376) and logmel.dtype == np.float32
    assert patches.shape == (44, 128, 32)
    assert -120 < logmel.min() < logmel.max() < 60  # dB of a real recording
    np.testing.assert_array_equal(patches[1], logmel[:, 8:40])
    np.testing.assert_array_equal(patches[-1], logmel[:, -32:])
    # overlap-averaging the patches back gives the spectrogram again
    np.testing.assert_allclose(patches_to_frames(patches, 376, FEATURES), logmel, atol=1e-4)


@pytest.mark.parametrize("settings", [{}, {"power": 1.0, "fmin": 50.0, "fmax": 7000.0, "n_mels": 64}])
def test_log_mel_equals_librosa_melspectrogram_on_real_clips(settings):
    """The step-by-step log-mel (cached filter bank) is librosa's melspectrogram + power_to_db."""
    import librosa

    config = FeatureConfig(**settings)
    for path in (SAMPLE_NORMAL, SAMPLE_ANOMALY):
        samples = load_audio(path, 16000).samples
        reference = librosa.power_to_db(
            librosa.feature.melspectrogram(
                y=samples, sr=16000, n_fft=config.n_fft, hop_length=config.hop_length, n_mels=config.n_mels,
                power=config.power, fmin=config.fmin, fmax=config.fmax or 8000,
            ),
            ref=config.db_ref, amin=config.db_amin, top_db=None,
        )
        np.testing.assert_allclose(log_mel_spectrogram(samples, config), reference, atol=1e-3)


def test_last_patch_is_flush_with_the_end_when_hop_does_not_divide():
    logmel = np.random.default_rng(0).normal(size=(128, 100)).astype(np.float32)
    patches = to_patches(logmel, FEATURES)
    assert len(patches) == 10  # starts 0, 8, ..., 64, then 68 flush with the end
    np.testing.assert_array_equal(patches[-1], logmel[:, 68:])


def test_stereo_is_downmixed_and_other_rates_resampled_with_notes():
    mono = load_audio(SAMPLE_NORMAL, 16000).samples
    stereo = load_audio(_wav_bytes(np.stack([mono, mono], axis=1), 16000), 16000, name="st.wav")
    assert stereo.notes == ["downmixed 2 channels to mono (their average; one channel can be chosen instead)"]
    np.testing.assert_allclose(stereo.samples, mono, atol=1e-4)
    resampled = load_audio(_wav_bytes(mono[:48000], 16000), 44100, name="r.wav")
    assert resampled.notes[0].startswith("resampled from 16000 Hz to 44100 Hz, ")
    assert len(resampled.samples) == 132300


def _container(samples: np.ndarray, rate: int, fmt: str, subtype: str) -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


@pytest.mark.parametrize("fmt, subtype", [("WAVEX", "PCM_16"), ("WAVEX", "PCM_24"), ("WAVEX", "FLOAT"), ("RF64", "PCM_24"),
                                          ("W64", "PCM_32"), ("WAV", "PCM_U8"), ("WAV", "PCM_24"), ("WAV", "DOUBLE")])
def test_every_wav_container_and_depth_libsndfile_reads_is_accepted(fmt, subtype):
    mono = load_audio(SAMPLE_NORMAL, 16000).samples
    clip = load_audio(_container(mono, 16000, fmt, subtype), 16000, name=f"x.{fmt}")
    assert clip.notes == []
    # the same samples, to within the format's resolution (8-bit: 1/128)
    np.testing.assert_allclose(clip.samples, mono, atol=1 / 100 if subtype == "PCM_U8" else 1e-4)


def test_an_8_channel_wavex_is_downmixed_or_one_channel_is_picked():
    """A multi-channel recorder's file (WAVE_FORMAT_EXTENSIBLE, as MIMII writes): 8 real clips."""
    import glob

    paths = sorted(glob.glob(str(SUBSET / "test" / "*.flac")))[:8]
    channels = np.stack([load_audio(p, 16000).samples[:16000 * 10] for p in paths], axis=1)
    data = _container(channels, 16000, "WAVEX", "PCM_16")
    assert sf.info(io.BytesIO(data)).format == "WAVEX"
    mixed = load_audio(data, 16000, name="rec.wav")
    assert mixed.notes == ["downmixed 8 channels to mono (their average; one channel can be chosen instead)"]
    np.testing.assert_allclose(mixed.samples, channels.mean(axis=1), atol=1e-4)
    third = load_audio(data, 16000, name="rec.wav", channel=3)
    assert third.notes == ["used channel 3 of 8"]
    np.testing.assert_allclose(third.samples, channels[:, 2], atol=1e-4)
    with pytest.raises(AudioError, match="channel 9 was asked for, but the file has 8 channels"):
        load_audio(data, 16000, name="rec.wav", channel=9)


def test_silence_is_refused_but_a_quiet_clip_is_not_and_long_clips_are_cut_with_a_note():
    mono = load_audio(SAMPLE_NORMAL, 16000).samples
    with pytest.raises(AudioError, match="silent .*-inf dBFS"):
        load_audio(_wav_bytes(np.zeros(32000, np.float32), 16000), 16000, name="zeros.wav")
    with pytest.raises(AudioError, match="silent"):  # a muted input's last-bit noise, -90 dBFS
        load_audio(_wav_bytes(np.full(32000, 2**-15, np.float32), 16000), 16000, name="muted.wav")
    quiet = mono * (10 ** (-60 / 20) / np.abs(mono).max())  # peak -60 dBFS: quiet but real
    assert len(load_audio(_wav_bytes(quiet, 16000), 16000).samples) == len(mono)
    long = load_audio(_wav_bytes(np.tile(mono, 3), 16000), 16000, name="long.wav", max_seconds=20)
    assert len(long.samples) == 20 * 16000
    assert long.notes == [f"checked the first 20 s of {3 * len(mono) / 16000:.1f} s (longer clips are cut)"]
    np.testing.assert_array_equal(long.samples[: len(mono)], mono)


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda wav: b"", "empty"),
        (lambda wav: b"timestamp,value\n0,1\n1,2\n" * 40, "not a readable WAV or FLAC"),
        (lambda wav: wav[: len(wav) // 3], "truncated"),
        (lambda wav: wav[:30], "not a readable WAV or FLAC"),
    ],
    ids=["empty", "text renamed .wav", "truncated wav", "header only"],
)
def test_bad_files_are_refused_with_a_clear_message(make, message):
    data = make(SAMPLE_NORMAL.read_bytes())
    with pytest.raises(AudioError, match=message) as caught:
        load_audio(data, 16000, name="bad.wav")
    assert str(caught.value).startswith("bad.wav: ")


def test_nan_samples_are_refused():
    samples = np.zeros(16000, dtype=np.float32)
    samples[100] = np.nan
    with pytest.raises(AudioError, match="NaN or infinite"):
        load_audio(_wav_bytes(samples, 16000, subtype="FLOAT"), 16000, name="nan.wav")


def test_clip_shorter_than_one_patch_is_refused():
    short = load_audio(SAMPLE_NORMAL, 16000).samples[:8000]  # 0.5 s
    with pytest.raises(ClipTooShortError, match="clip too short: 16 frames .* at least 32 frames"):
        clip_patches(short, FEATURES)


def test_feature_config_reports_differences_and_rejects_unknown_keys():
    assert FeatureConfig().differences(FeatureConfig(n_mels=64)) == ["n_mels: 128 != 64"]
    with pytest.raises(ValueError, match="unknown feature settings: nmels"):
        FeatureConfig.from_dict({"nmels": 64})
