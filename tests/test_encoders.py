"""The pretrained encoders' Keras ports (asd.encoders) against their originals, on real clips.

The weights are converted from the wheels on the package index, as a user converts them
(development/convert_encoders.py); aisfx's original network is its own PyTorch module,
imported from the same wheel. torch is a conversion-time dependency (``pip install torch==2.13.0``).
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from asd.audio import load_audio

from .conftest import REPO, SUBSET

CLIPS = sorted((SUBSET / "test").glob("*.flac"))[:4]
# float32 through 8 conv layers: the difference measured is 4e-6 on embeddings of scale ~5
ABS_TOLERANCE = 1e-4
MIN_COSINE = 0.99999
# aisfx's checkpoint is a PyTorch file: converting it needs torch (pip install torch==2.13.0, the CPU build; a large
# file). Without it the aisfx tests skip and musicnn_vgg (a TensorFlow checkpoint) runs.
# .ci/run installs the CPU build and sets ASD_REQUIRE_TORCH=1, where they fail instead.
HAVE_TORCH = importlib.util.find_spec("torch") is not None or os.environ.get("ASD_REQUIRE_TORCH") == "1"
needs_torch = pytest.mark.skipif(not HAVE_TORCH, reason="torch is not installed: aisfx's PyTorch checkpoint cannot be "
                                 "converted (pip install torch, then development/convert_encoders.py aisfx)")


@pytest.fixture(scope="session")
def wheels(tmp_path_factory) -> dict[str, Path]:
    """The two wheels, from the package index (pip's cache makes a second run cheap)."""
    folder = tmp_path_factory.mktemp("wheels")
    found = {}
    for package, version in (("aisfx", "0.1.2"), ("musicnn", "0.1.0")):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "-d", str(folder), f"{package}=={version}"], check=True)
        found[package] = next(folder.glob(f"{package}-{version}-*.whl"))
    return found


@pytest.fixture(scope="session")
def encoders_dir(wheels, tmp_path_factory) -> Path:
    """Weights converted by the project's script into a fresh ASD_ENCODERS_DIR (aisfx's
    only where torch is installed)."""
    out = tmp_path_factory.mktemp("encoders")
    for encoder, package in (("aisfx", "aisfx"), ("musicnn_vgg", "musicnn")):
        if encoder == "aisfx" and not HAVE_TORCH:
            continue
        subprocess.run([sys.executable, str(REPO / "development" / "convert_encoders.py"), encoder,
                        "--wheel", str(wheels[package]), "--out", str(out)], check=True, capture_output=True)
    return out


@pytest.fixture
def converted(encoders_dir, monkeypatch) -> Path:
    monkeypatch.setenv("ASD_ENCODERS_DIR", str(encoders_dir))
    return encoders_dir


def _waveforms(sample_rate: int = 16000) -> np.ndarray:
    return np.stack([load_audio(c, sample_rate).samples for c in CLIPS])


@needs_torch
def test_conversion_keeps_the_licence_and_attribution(converted):
    import json

    meta = json.loads((converted / "aisfx.json").read_text())
    assert meta["licence"] == "CC-BY-4.0" and "A.B. Ma and A. Lerch" in meta["attribution"]
    assert meta["n_parameters"] == 4_689_984  # 8 conv + 8 batch-norm layers of EmbeddingNet('max', 3, 1, 64)
    assert "Attribution 4.0" in (converted / "aisfx.LICENSE").read_text()
    assert "ISC" in (converted / "musicnn_vgg.LICENSE").read_text() or json.loads(
        (converted / "musicnn_vgg.json").read_text())["licence"] == "ISC"


@needs_torch
def test_aisfx_keras_port_gives_the_original_embeddings(converted, wheels, tmp_path):
    """The same log-mel blocks of real clips through aisfx's own PyTorch EmbeddingNet (its
    checkpoint, from the wheel) and through the Keras port (the converted archive)."""
    import torch  # aisfx's original network (needs_torch: skipped without it, unless CI requires it)
    import tensorflow as tf

    from asd.encoders import load_weights
    from asd.encoders.aisfx import BLOCK_FRAMES, aisfx_logmel, load_aisfx_network

    with zipfile.ZipFile(wheels["aisfx"]) as wheel:
        module_path = Path(wheel.extract("aisfx/models/cnn2d.py", tmp_path))
        checkpoint = Path(wheel.extract("aisfx/models/checkpoint.pth", tmp_path))
    spec = importlib.util.spec_from_file_location("aisfx_cnn2d", module_path)
    cnn2d = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cnn2d)
    original = cnn2d.EmbeddingNet("max", 3, 1, 64)  # aisfx/inference.py's network
    state, _ = torch.load(checkpoint, map_location="cpu", weights_only=False)
    original.load_state_dict({k.removeprefix("embedding_net."): v for k, v in state.items()
                              if k.startswith("embedding_net.")})
    original.eval()

    spectrograms = aisfx_logmel(tf.constant(_waveforms()), 16000, "original").numpy()
    starts = range(0, spectrograms.shape[1] - BLOCK_FRAMES + 1, BLOCK_FRAMES // 2)
    blocks = np.concatenate([spectrograms[:, s:s + BLOCK_FRAMES] for s in starts])  # (n_blocks, 100, 96)
    with torch.no_grad():
        expected = original(torch.from_numpy(blocks)).numpy()
    port = load_aisfx_network(load_weights("aisfx"))
    got = tf.reduce_max(port(blocks, training=False), axis=1).numpy()

    assert got.shape == expected.shape == (len(blocks), 512)
    assert np.abs(expected).max() > 1.0  # real activations, not a dead network
    np.testing.assert_allclose(got, expected, atol=ABS_TOLERANCE, rtol=0)
    cosine = np.sum(got * expected, 1) / np.linalg.norm(got, axis=1) / np.linalg.norm(expected, axis=1)
    assert cosine.min() > MIN_COSINE


def test_aisfx_logmel_is_its_librosa_spectrogram():
    """The in-graph front end against aisfx's spectrogram_librosa.py (librosa mel, HTK,
    filters summing to 1, power, log10(1 + 10000 mel) scaled), both inputs, and the
    in-graph resampling against scipy's FFT resampling."""
    import librosa
    import scipy.signal
    import tensorflow as tf

    from asd.encoders.aisfx import LOG_SCALE, aisfx_logmel, resample_fft

    waveforms = _waveforms()[:2]
    at_44k = scipy.signal.resample(waveforms, int(round(waveforms.shape[1] * 44100 / 16000)), axis=1)
    np.testing.assert_allclose(resample_fft(tf.constant(waveforms), at_44k.shape[1]).numpy(), at_44k, atol=1e-5)
    for input, (y, rate, n_fft, fmax, gain) in {"original": (at_44k, 44100, 2048, 22050, 1.0),
                                                "adapted": (waveforms, 16000, 1024, 8000, 4.0)}.items():
        y = y / np.abs(y).max(axis=1, keepdims=True)
        mel = np.stack([librosa.feature.melspectrogram(y=row, sr=rate, n_fft=n_fft, hop_length=n_fft // 2, n_mels=96, fmin=0,
                                                       fmax=fmax, htk=True, norm=1.0, power=2.0, pad_mode="constant")
                        for row in y.astype(np.float32)])
        expected = np.log10(1 + 10000 * gain * mel).transpose(0, 2, 1) / LOG_SCALE
        got = aisfx_logmel(tf.constant(waveforms), 16000, input).numpy()
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4)


def test_musicnn_logmel_is_its_librosa_spectrogram():
    """musicnn/extractor.py: librosa mel at 16 kHz, n_fft 512, hop 256, 96 bands, log10(1 + 10000 mel)."""
    import librosa
    import tensorflow as tf

    from asd.encoders.musicnn import musicnn_logmel

    waveforms = _waveforms()[:2]
    expected = np.stack([np.log10(1 + 10000 * librosa.feature.melspectrogram(
        y=row, sr=16000, n_fft=512, hop_length=256, n_mels=96, pad_mode="constant")).T for row in waveforms])
    np.testing.assert_allclose(musicnn_logmel(tf.constant(waveforms), 16000).numpy(), expected, atol=1e-4)


def test_encoder_branch_embeds_real_clips_with_the_converted_weights(converted):
    """Frozen (aisfx only where torch converted its weights), the branch gives each clip the mean of its blocks' embeddings, the same
    whatever batch it comes in; an untrained copy gives other embeddings."""
    import tensorflow as tf

    from asd.encoders.branch import EncoderBranch

    waveforms = tf.constant(_waveforms())
    for encoder, dim in (("aisfx", 512), ("musicnn_vgg", 256)):
        if encoder == "aisfx" and not HAVE_TORCH:
            continue  # its weights need torch to convert (needs_torch)
        branch = EncoderBranch(encoder, 16000, "adapted", trainable=False)
        together = branch(waveforms).numpy()
        alone = branch(waveforms[:1]).numpy()
        assert together.shape == (len(CLIPS), dim) and np.isfinite(together).all()
        np.testing.assert_allclose(alone[0], together[0], rtol=1e-4, atol=1e-5)
        assert not branch.network.trainable_variables  # frozen: nothing to fit


def test_missing_weights_say_how_to_convert(tmp_path, monkeypatch):
    from asd.encoders import EncoderWeightsError, load_weights

    monkeypatch.setenv("ASD_ENCODERS_DIR", str(tmp_path))
    with pytest.raises(EncoderWeightsError, match=r"development/convert_encoders.py aisfx"):
        load_weights("aisfx")
    with pytest.raises(ValueError, match="known: aisfx, musicnn_vgg"):
        load_weights("beats")
