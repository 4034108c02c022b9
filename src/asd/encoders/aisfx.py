"""The ``aisfx`` embedding network in Keras, with its log-mel front end in the graph.

Ma and Lerch, "Representation Learning for the Automatic Indexing of Sound Effects
Libraries", ISMIR 2022 (package ``aisfx`` 0.1.2, ``aisfx/models/cnn2d.py``): the DCASE
2018 cross-task baseline CNN (Kong et al., arXiv 1808.00773), ``EmbeddingNet('max', 3, 1,
64)``: four blocks of two 3x3 convolutions (no bias) each followed by batch norm and ReLU,
64/128/256/512 channels, 2x2 max pooling after the first three blocks; then the mean over
frequency and the max over time: a 512-d embedding of a block of 100 frames.

Its input (``aisfx/inference.py``, ``spectrogram/spectrogram_librosa.py``): the waveform at
44.1 kHz scaled to peak 1, Hann STFT with n_fft 2048 and hop 1024 (23 ms), power, 96 mel
bands (HTK formula, each filter summing to 1, 0-22050 Hz), ``log10(1 + 10000 * mel)``
divided by 9.4578 (the min-max scaling of the paper's spectrograms), blocks of 100
frames (2.3 s) with hop 50.

Two ways in from this project's 16 kHz clips (``input`` of :func:`aisfx_logmel`):

- ``"original"``: resampled to 44.1 kHz in the graph (band-limited, through the FFT) and
  the settings above unchanged: the filters see what they were trained on, but the mel
  bands above 8 kHz (27 of 96) stay empty.
- ``"adapted"``: the 96 mel bands spread over 0-8000 Hz at 16 kHz, n_fft 1024 and hop 512
  (the DCASE baseline's frames, 32 ms; a block of 100 frames is 3.2 s), the power scaled
  by (2048 / 1024)^2 so that the levels match the original's window.
"""

from __future__ import annotations

import functools

import keras
import numpy as np
import tensorflow as tf
from keras import layers

N_MELS = 96
BLOCK_FRAMES = 100
LOG_SCALE = 9.457798957824707  # aisfx/preprocessing.py: spectrogram_normalize, 'original'
EMBEDDING_DIM = 512
CHANNELS = (64, 128, 256, 512)
INPUTS = ("original", "adapted")
# (sample rate, n_fft, hop, fmax) of each input
_SETTINGS = {"original": (44100, 2048, 1024, 22050.0), "adapted": (16000, 1024, 512, 8000.0)}


@functools.cache
def _mel_matrix(input: str) -> np.ndarray:
    import librosa

    sample_rate, n_fft, _, fmax = _SETTINGS[input]
    return librosa.filters.mel(sr=sample_rate, n_fft=n_fft, n_mels=N_MELS, fmin=0.0, fmax=fmax, htk=True, norm=1.0).T.astype(np.float32)


def resample_fft(waveforms: tf.Tensor, n_out: int) -> tf.Tensor:
    """Band-limited resampling of ``(batch, n_in)`` waveforms to ``n_out`` samples through
    the FFT (zero-padding the spectrum; exact for a periodic signal, as ``scipy.signal.resample``)."""
    n_in = waveforms.shape[-1]
    spectrum = tf.signal.rfft(waveforms)
    spectrum = tf.pad(spectrum, [[0, 0], [0, n_out // 2 + 1 - (n_in // 2 + 1)]])
    return tf.signal.irfft(spectrum, fft_length=[n_out]) * (n_out / n_in)


def aisfx_logmel(waveforms: tf.Tensor, sample_rate: int, input: str = "original") -> tf.Tensor:
    """The network's input: scaled log-mel spectrograms of whole clips.

    Parameters
    ----------
    waveforms : tf.Tensor [shape=(batch, n_samples), dtype=float32]
        Clips at ``sample_rate`` (16 kHz here), samples in [-1, 1].
    sample_rate : int
        Hz.
    input : {"original", "adapted"}
        Module docstring.

    Returns
    -------
    tf.Tensor [shape=(batch, n_frames, 96), dtype=float32]
        ``log10(1 + 10000 * mel) / 9.4578`` of the peak-normalised clip; frames centred
        (zero padding of n_fft / 2 at both ends, as librosa's ``center=True``).

    Raises
    ------
    ValueError
        Unknown ``input``, or a sample rate above 44.1 kHz for ``"original"``.
    """
    if input not in _SETTINGS:
        raise ValueError(f"aisfx input {input!r}: one of {', '.join(INPUTS)}")
    rate, n_fft, hop, _ = _SETTINGS[input]
    if input == "original":
        if sample_rate > rate:
            raise ValueError(f"aisfx input 'original' resamples up to {rate} Hz, not down from {sample_rate} Hz")
        n = waveforms.shape[-1]
        waveforms = resample_fft(waveforms, int(round(n * rate / sample_rate))) if sample_rate != rate else waveforms
    elif sample_rate != rate:
        raise ValueError(f"aisfx input 'adapted' expects {rate} Hz clips, not {sample_rate} Hz")
    peak = tf.reduce_max(tf.abs(waveforms), axis=1, keepdims=True)
    waveforms = waveforms / tf.maximum(peak, 1e-12)  # a silent clip stays zero
    waveforms = tf.pad(waveforms, [[0, 0], [n_fft // 2, n_fft // 2]])
    power = tf.square(tf.abs(tf.signal.stft(waveforms, n_fft, hop, n_fft, window_fn=tf.signal.hann_window)))
    mel = tf.matmul(power, tf.constant(_mel_matrix(input))) * ((2048 / n_fft) ** 2)
    return tf.math.log(1.0 + 10000.0 * mel) / (np.log(10.0) * LOG_SCALE)


def build_aisfx_network(name: str = "aisfx") -> keras.Model:
    """The embedding network (weights initialised, not loaded): ``(batch, n_frames, 96)``
    -> feature maps ``(batch, n_frames // 8, 512)`` after the mean over frequency. The max
    over time of the output is aisfx's embedding of a block.

    Layer names (``block<b>_conv<c>``, ``block<b>_bn<c>``) are those of the converted
    weights (``development/convert_encoders.py``)."""
    spectrogram = keras.Input((None, N_MELS), name="aisfx_logmel")
    x = layers.Reshape((-1, N_MELS, 1))(spectrogram)
    for block, channels in enumerate(CHANNELS, 1):
        for conv in (1, 2):
            x = layers.Conv2D(channels, 3, padding="same", use_bias=False, name=f"block{block}_conv{conv}")(x)
            x = layers.BatchNormalization(epsilon=1e-5, name=f"block{block}_bn{conv}")(x)  # PyTorch's eps
            x = layers.ReLU()(x)
        if block < len(CHANNELS):
            x = layers.MaxPool2D(2)(x)
    x = layers.Lambda(lambda t: tf.reduce_mean(t, axis=2), name="mean_over_frequency")(x)
    return keras.Model(spectrogram, x, name=name)


def load_aisfx_network(weights: dict) -> keras.Model:
    """:func:`build_aisfx_network` with converted ``weights`` (layer name -> arrays, as
    :func:`asd.encoders.load_weights` gives).

    Raises
    ------
    asd.encoders.EncoderWeightsError
        A layer missing from ``weights`` or of another shape.
    """
    from . import set_converted_weights

    return set_converted_weights(build_aisfx_network(), weights, "aisfx")
