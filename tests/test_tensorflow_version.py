"""One TensorFlow version from training to serving: the shipped SavedModels are written by
the TensorFlow of the tensorflow/serving image, which is also the one pinned for training
and export; asd resave moves a version to it with identical answers."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import tomllib

import numpy as np
import pytest
import yaml

from .conftest import REPO, SHIPPED_MODELS, SUBSET

SHIPPED_VERSION_DIRS = sorted(p.parent for p in SHIPPED_MODELS.glob("*/*/saved_model.pb"))


def _serving_image_version() -> str:
    """The tensorflow/serving tag of the production compose file, e.g. ``2.20.0``."""
    image = yaml.safe_load((REPO / "docker-compose.prod.yaml").read_text())["services"]["serving"]["image"]
    repository, _, tag = image.rpartition(":")
    assert repository == "tensorflow/serving" and re.fullmatch(r"\d+\.\d+\.\d+", tag), image
    return tag


def _written_by(version_dir) -> set[str]:
    """``meta_info_def.tensorflow_version`` of every MetaGraph in ``saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    return {graph.meta_info_def.tensorflow_version for graph in saved_model.meta_graphs}


def _pin(text: str, package: str) -> str:
    (version,) = re.findall(rf"^{package}==(\S+)$", text, re.M | re.I)
    return version


def test_both_compose_files_run_the_same_tensorflow_serving_version():
    gpu = yaml.safe_load((REPO / "docker-compose.gpu.yaml").read_text())["services"]["serving"]["image"]
    assert gpu == f"tensorflow/serving:{_serving_image_version()}-gpu"


@pytest.mark.parametrize("version_dir", SHIPPED_VERSION_DIRS, ids=lambda p: f"{p.parent.name}-v{p.name}")
def test_shipped_models_are_written_by_the_serving_images_tensorflow(version_dir):
    assert _written_by(version_dir) == {_serving_image_version()}


@pytest.mark.parametrize("version_dir", SHIPPED_VERSION_DIRS, ids=lambda p: f"{p.parent.name}-v{p.name}")
def test_shipped_models_serve_their_metadata_file(version_dir):
    """A client that sees only the server (gRPC) reads the metadata signature: it must say
    what assets.extra says (asd resave rebuilds it from the file after the file changes)."""
    import tensorflow as tf

    served = tf.saved_model.load(str(version_dir)).signatures["metadata"](unused=tf.zeros(1))["metadata_json"]
    assert json.loads(served.numpy()[0]) == json.loads((version_dir / "assets.extra" / "asd_metadata.json").read_text())


def test_training_and_export_pin_the_serving_images_tensorflow():
    serving = _serving_image_version()
    constraints = (REPO / "constraints.txt").read_text()
    assert _pin(constraints, "tensorflow[-_]cpu") == serving
    # tensorflow-cpu 2.20 asks for tensorboard ~= 2.20.0
    assert _pin(constraints, "tensorboard").rsplit(".", 1)[0] == serving.rsplit(".", 1)[0]
    # the gRPC protos of the same TF Serving release
    assert _pin((REPO / "requirements-nodeps.txt").read_text(), "tensorflow-serving-api") == serving
    extras = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    for extra in ("train", "grpc"):
        assert f"tensorflow-cpu=={serving}" in extras[extra], extra


def test_the_installed_tensorflow_is_the_pinned_one():
    import tensorflow as tf

    assert tf.__version__ == _pin((REPO / "constraints.txt").read_text(), "tensorflow[-_]cpu"), (
        "this environment predates constraints.txt: run scripts/setup-env")


def _signature_defs(version_dir) -> dict:
    """Signature name -> inputs and outputs as name -> (dtype, shape) from ``saved_model.pb``."""
    from tensorflow.core.protobuf import saved_model_pb2

    saved_model = saved_model_pb2.SavedModel()
    saved_model.ParseFromString((version_dir / "saved_model.pb").read_bytes())
    (graph,) = saved_model.meta_graphs

    def specs(tensors):
        return {k: (v.dtype, [d.size for d in v.tensor_shape.dim]) for k, v in tensors.items()}

    return {name: (specs(sig.inputs), specs(sig.outputs), sig.method_name) for name, sig in graph.signature_def.items()}


def test_resave_writes_the_same_model_with_the_installed_tensorflow(tmp_path):
    import tensorflow as tf

    from asd.export import SAVEDMODEL_PARTS, replace_savedmodel
    from asd.inference import Detector
    from asd.serving.inprocess import InProcessBackend

    shipped = SHIPPED_MODELS / "toycar" / "1"  # the smaller shipped version (2 MB)
    copy = tmp_path / "toycar" / "1"
    shutil.copytree(shipped, copy)
    extra_before = {p.name: p.read_bytes() for p in (copy / "assets.extra").iterdir()}

    assert replace_savedmodel(copy) == copy
    assert _written_by(copy) == {tf.__version__}
    assert sorted(p.name for p in copy.iterdir()) == sorted([*SAVEDMODEL_PARTS, "assets.extra"])
    assert {p.name: p.read_bytes() for p in (copy / "assets.extra").iterdir()} == extra_before
    assert _signature_defs(copy) == _signature_defs(shipped)

    clips = sorted((SUBSET / "test").glob("*.flac"))
    before, after = Detector(InProcessBackend(shipped)), Detector(InProcessBackend(copy))
    for clip in clips:
        old, new = before.score_file(clip), after.score_file(clip)
        assert new.score == old.score and new.verdict == old.verdict, clip.name
        assert np.array_equal(new.patch_error, old.patch_error) and np.array_equal(new.reconstruction, old.reconstruction)


def test_resave_refuses_an_existing_directory_and_leaves_it_alone(tmp_path):
    from asd.export import resave_savedmodel

    taken = tmp_path / "taken"
    taken.mkdir()
    with pytest.raises(FileExistsError, match="exists"):
        resave_savedmodel(SHIPPED_MODELS / "toycar" / "1", taken)
    assert list(taken.iterdir()) == []


@pytest.mark.parametrize("args, message", [
    (["--model", "production/models/toycar/1"], "say where: --out DIR (a new version directory) or --in-place"),
    (["--model", "no/such/models", "--in-place"], "no/such/models: no SavedModel here"),
])
def test_resave_command_bad_input_is_one_line(args, message):
    run = subprocess.run([sys.executable, "-m", "asd.cli", "resave", *args], capture_output=True, text=True,
                         timeout=120, cwd=REPO)
    assert run.returncode == 2 and run.stdout == ""
    assert run.stderr.startswith(f"asd: error: {message}") and run.stderr.count("\n") == 1, run.stderr
