"""The Keras convolutional autoencoder on log-mel patches (imports TensorFlow/Keras)."""

from __future__ import annotations

import keras
from keras import layers


def build_conv_autoencoder(n_mels: int, patch_frames: int, filters: list[int], latent_dim: int) -> keras.Model:
    """A convolutional autoencoder for standardised log-mel patches.

    Encoder: per entry of ``filters``, a 3x3 convolution with stride 2 (halving the mel
    and time axes), batch normalisation and ReLU; then a dense bottleneck of
    ``latent_dim`` units. Decoder: the mirror image with transposed convolutions and a
    linear 1-channel output. The bottleneck keeps the model from learning the identity,
    so normal sounds it has seen reconstruct well and unfamiliar ones do not.

    Parameters
    ----------
    n_mels, patch_frames : int
        Patch shape; both must be divisible by ``2 ** len(filters)``.
    filters : list of int
        Channels of each encoder block, e.g. ``[32, 64, 128]``.
    latent_dim : int
        Bottleneck width.

    Returns
    -------
    keras.Model
        Input and output shape ``(batch, n_mels, patch_frames, 1)``, float32.

    Raises
    ------
    ValueError
        If the patch shape does not divide by ``2 ** len(filters)``.
    """
    factor = 2 ** len(filters)
    if n_mels % factor or patch_frames % factor:
        raise ValueError(
            f"patch shape ({n_mels}, {patch_frames}) must divide by 2**{len(filters)} = {factor} "
            "(one halving per conv block): change features.n_mels/patch_frames or model.filters"
        )
    inputs = keras.Input(shape=(n_mels, patch_frames, 1), name="patch")
    x = inputs
    for i, f in enumerate(filters):
        x = layers.Conv2D(f, 3, strides=2, padding="same", use_bias=False, name=f"enc_conv{i}")(x)
        x = layers.BatchNormalization(name=f"enc_bn{i}")(x)
        x = layers.ReLU(name=f"enc_relu{i}")(x)
    inner_shape = (n_mels // factor, patch_frames // factor, filters[-1])
    x = layers.Flatten(name="flatten")(x)
    x = layers.Dense(latent_dim, name="bottleneck")(x)
    x = layers.Dense(inner_shape[0] * inner_shape[1] * inner_shape[2], name="expand")(x)
    x = layers.ReLU(name="expand_relu")(x)
    x = layers.Reshape(inner_shape, name="unflatten")(x)
    for i, f in enumerate(list(reversed(filters))[1:] + [filters[0]]):
        x = layers.Conv2DTranspose(f, 3, strides=2, padding="same", use_bias=False, name=f"dec_deconv{i}")(x)
        x = layers.BatchNormalization(name=f"dec_bn{i}")(x)
        x = layers.ReLU(name=f"dec_relu{i}")(x)
    outputs = layers.Conv2D(1, 3, padding="same", name="reconstruction")(x)
    return keras.Model(inputs, outputs, name="conv_autoencoder")
