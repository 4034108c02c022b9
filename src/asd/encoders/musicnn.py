"""musicnn's VGG-like tagger (``MSD_vgg``) in Keras, with its log-mel front end in the graph.

Pons and Serra, "musicnn: pre-trained convolutional neural networks for music audio
tagging", ISMIR 2019 LBD (package ``musicnn`` 0.1.0, ``musicnn/models.py`` ``vgg``,
``musicnn/extractor.py``): trained to tag the Million Song Dataset's music. Five 3x3
convolutions of 128 channels (ReLU, then batch norm), max pooling 4x1 (stride 2) after the
first, 2x2 after the next three and 4x4 after the last; the input is batch-normalised.

Input: 16 kHz, Hann STFT with n_fft 512 and hop 256 (16 ms), power, 96 mel bands
(librosa's defaults: Slaney formula and area normalisation, 0-8000 Hz), ``log10(1 + 10000 *
mel)``, segments of 187 frames (3 s). Embedding of a segment: its last pooled map
flattened, ``(2, 1, 128)`` -> 256; of a clip: the mean over its segments.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers

SAMPLE_RATE = 16000
N_FFT, HOP, N_MELS = 512, 256, 96
SEGMENT_FRAMES = 187  # librosa.time_to_frames(3, sr=16000, n_fft=512, hop_length=256) + 1
EMBEDDING_DIM = 256


@functools.cache
def _mel_matrix() -> np.ndarray:
    import librosa

    return librosa.filters.mel(sr=SAMPLE_RATE, n_fft=N_FFT, n_mels=N_MELS).T.astype(np.float32)


def musicnn_logmel(waveforms: tf.Tensor, sample_rate: int) -> tf.Tensor:
    """``(batch, n_samples)`` 16 kHz waveforms -> ``(batch, n_frames, 96)``
    ``log10(1 + 10000 * mel)`` (frames centred, zero padding of n_fft / 2 at both ends).

    Raises
    ------
    ValueError
        A sample rate other than 16 kHz.
    """
    if sample_rate != SAMPLE_RATE:
        raise ValueError(f"musicnn expects {SAMPLE_RATE} Hz clips, not {sample_rate} Hz")
    padded = tf.pad(waveforms, [[0, 0], [N_FFT // 2, N_FFT // 2]])
    power = tf.square(tf.abs(tf.signal.stft(padded, N_FFT, HOP, N_FFT, window_fn=tf.signal.hann_window)))
    return tf.math.log(1.0 + 10000.0 * tf.matmul(power, tf.constant(_mel_matrix()))) / np.log(10.0)


def build_musicnn_vgg(name: str = "musicnn_vgg") -> keras.Model:
    """The network (weights initialised, not loaded): ``(batch, 187, 96)`` ->
    ``(batch, 256)``. Layer names are those of the converted weights."""
    spectrogram = keras.Input((SEGMENT_FRAMES, N_MELS), name="musicnn_logmel")
    x = layers.Reshape((SEGMENT_FRAMES, N_MELS, 1))(spectrogram)
    x = layers.BatchNormalization(epsilon=1e-3, name="input_bn")(x)
    pools = ((4, 1, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (2, 2, 2, 2), (4, 4, 4, 4))
    for i, (ph, pw, sh, sw) in enumerate(pools, 1):
        x = layers.Conv2D(128, 3, padding="same", activation="relu", name=f"conv{i}")(x)
        x = layers.BatchNormalization(epsilon=1e-3, name=f"bn{i}")(x)
        x = layers.MaxPool2D((ph, pw), strides=(sh, sw))(x)
    return keras.Model(spectrogram, layers.Flatten()(x), name=name)


def load_musicnn_vgg(weights: dict) -> keras.Model:
    """:func:`build_musicnn_vgg` with converted ``weights``.

    Raises
    ------
    asd.encoders.EncoderWeightsError
        A layer missing from ``weights`` or of another shape.
    """
    from . import set_converted_weights

    return set_converted_weights(build_musicnn_vgg(), weights, "musicnn_vgg")
