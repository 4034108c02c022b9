"""A pretrained encoder as one branch of a waveform network (imports TensorFlow/Keras).

:class:`EncoderBranch` turns ``(batch, n_samples)`` clips into one embedding each: the
encoder's own log-mel front end, then its network on blocks of the spectrogram. Served
(and at the end of training) it embeds every block (hop half a block) and takes the mean,
as aisfx's feature extraction does; in training it embeds one block at a random place in
each clip, which costs a fraction of the whole clip and adds a random crop. With
``trainable=False`` the pretrained weights and batch statistics stay as they are (Keras 3
runs a frozen BatchNormalization in inference mode).
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from . import encoder_source, load_weights
from . import aisfx, musicnn
from .aisfx import BLOCK_FRAMES, aisfx_logmel, load_aisfx_network
from .musicnn import SEGMENT_FRAMES, load_musicnn_vgg, musicnn_logmel

ENCODER_DIMS = {"aisfx": aisfx.EMBEDDING_DIM, "musicnn_vgg": musicnn.EMBEDDING_DIM}


@keras.saving.register_keras_serializable(package="asd")
class EncoderBranch(keras.layers.Layer):
    """Embeddings ``(batch, dim)`` of waveforms ``(batch, n_samples)`` by a pretrained encoder.

    Parameters
    ----------
    encoder : {"aisfx", "musicnn_vgg"}
    sample_rate : int
        Hz of the waveforms.
    input : {"original", "adapted"}
        aisfx only (:func:`asd.encoders.aisfx.aisfx_logmel`).
    trainable : bool
        Fine-tune the encoder's weights (False: frozen).

    Raises
    ------
    asd.encoders.EncoderWeightsError
        The converted weights are missing.
    ValueError
        Unknown encoder or input.
    """

    def __init__(self, encoder: str, sample_rate: int, input: str = "original", trainable: bool = True, **kwargs):
        super().__init__(trainable=trainable, **kwargs)
        encoder_source(encoder)
        self.encoder, self.sample_rate, self.encoder_input = encoder, sample_rate, input
        weights = load_weights(encoder)
        if encoder == "aisfx":
            self.network, self.block = load_aisfx_network(weights), BLOCK_FRAMES
        else:
            self.network, self.block = load_musicnn_vgg(weights), SEGMENT_FRAMES
        self.network.trainable = trainable
        self.dim = ENCODER_DIMS[encoder]

    def spectrogram(self, waveforms: tf.Tensor) -> tf.Tensor:
        """The encoder's input ``(batch, n_frames, 96)``."""
        if self.encoder == "aisfx":
            return aisfx_logmel(waveforms, self.sample_rate, self.encoder_input)
        return musicnn_logmel(waveforms, self.sample_rate)

    def _embed(self, blocks: tf.Tensor, training) -> tf.Tensor:
        features = self.network(blocks, training=training)
        return tf.reduce_max(features, axis=1) if self.encoder == "aisfx" else features  # aisfx: max over time

    def call(self, waveforms, training=False):
        spectrogram = self.spectrogram(waveforms)
        n_frames = spectrogram.shape[1]
        block = min(self.block, n_frames)
        if training:
            offsets = tf.random.uniform([tf.shape(spectrogram)[0]], 0, n_frames - block + 1, dtype=tf.int32)
            rows = offsets[:, None] + tf.range(block)[None, :]
            return self._embed(tf.gather(spectrogram, rows, axis=1, batch_dims=1), training)
        starts = np.arange(0, n_frames - block + 1, max(block // 2, 1))
        blocks = tf.gather(spectrogram, starts[:, None] + np.arange(block)[None, :], axis=1)  # (batch, n_blocks, block, 96)
        embeddings = self._embed(tf.reshape(blocks, (-1, block, spectrogram.shape[2])), training)
        return tf.reduce_mean(tf.reshape(embeddings, (-1, len(starts), self.dim)), axis=1)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.dim)

    def get_config(self):
        return {**super().get_config(), "encoder": self.encoder, "sample_rate": self.sample_rate, "input": self.encoder_input}
