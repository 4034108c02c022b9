"""A real training run on the shipped subset, its SavedModel and its metadata."""

import json
from pathlib import Path

import numpy as np
import pytest

from asd.features import FeatureConfig
from asd.inference import Detector
from asd.layout import ModelNotFoundError, next_version, resolve_version_dir
from asd.metadata import ModelMetadata, ModelMismatchError

from .conftest import SAMPLE_ANOMALY, SUBSET


def test_training_exports_a_savedmodel_in_tf_serving_layout(trained_model):
    models_dir, result = trained_model
    assert result.version_dir == models_dir / "toycar" / "1"
    assert (result.version_dir / "saved_model.pb").is_file()
    assert (result.version_dir / "variables").is_dir()
    assert resolve_version_dir(models_dir) == result.version_dir
    assert resolve_version_dir(models_dir / "toycar") == result.version_dir
    assert next_version(models_dir / "toycar") == 2
    with pytest.raises(ModelNotFoundError, match="no model named 'fan'"):
        resolve_version_dir(models_dir, name="fan")


def test_savedmodel_serves_the_documented_signatures(trained_model):
    import tensorflow as tf

    _, result = trained_model
    loaded = tf.saved_model.load(str(result.version_dir))
    serve = loaded.signatures["serving_default"]
    (name, spec), = serve.structured_input_signature[1].items()
    assert name == "logmel_patches" and spec.shape.as_list() == [None, 128, 32] and spec.dtype == tf.float32
    assert set(serve.structured_outputs) == {"reconstruction", "patch_error", "frame_error"}
    patches = np.random.default_rng(0).normal(-40, 10, size=(5, 128, 32)).astype(np.float32)
    out = serve(logmel_patches=tf.constant(patches))
    assert out["reconstruction"].shape == (5, 128, 32)
    assert out["patch_error"].shape == (5,) and out["frame_error"].shape == (5, 32)
    np.testing.assert_allclose(out["frame_error"].numpy().mean(axis=1), out["patch_error"].numpy(), rtol=1e-5)
    # the metadata signature serves exactly the JSON of assets.extra
    served = loaded.signatures["metadata"](unused=tf.constant([0.0]))["metadata_json"].numpy()[0].decode()
    assert json.loads(served) == json.loads((result.version_dir / "assets.extra/asd_metadata.json").read_text())
    # one JSON per row: TF Serving's batching refuses outputs without the batch dimension
    assert loaded.signatures["metadata"](unused=tf.zeros(3))["metadata_json"].shape == (3,)


def test_metadata_carries_what_the_app_must_agree_with(trained_model):
    _, result = trained_model
    meta = ModelMetadata.read(result.version_dir)
    assert meta.features == FeatureConfig()
    assert meta.machine_type == "ToyCar" and meta.version == 1
    assert meta.threshold["method"] == "gamma_ppf" and meta.threshold["quantile"] == 0.9
    assert meta.threshold_value > 0 and meta.threshold["n_scores"] == 10
    assert len(meta.normalisation["mean_db"]) == 128
    assert meta.training["n_train_clips"] + meta.training["n_validation_clips"] == 10
    assert meta.training["epochs_run"] == 2 and meta.training["versions"]["tensorflow"]
    # provenance paths relative to where asd ran (the repository), not this machine's absolute ones
    paths = [meta.training["data_dir"], meta.training["tensorboard_run"],
             *(meta.training["config"][k] for k in ("data_dir", "models_dir", "runs_dir"))]
    assert not any(Path(p).is_absolute() for p in paths), paths
    assert (Path.cwd() / meta.training["data_dir"]).resolve() == SUBSET.resolve()
    evaluation = meta.evaluation
    assert evaluation["n_clips"] == 8
    for key in ("auc_source", "auc_target", "pauc", "official_score"):
        assert 0.0 <= evaluation[key] <= 1.0


def test_tensorboard_run_has_loss_curves(trained_model):
    _, result = trained_model
    events = list(result.run_dir.rglob("events.out.tfevents.*"))
    assert {p.parent.name for p in events} >= {"train", "validation"}


def test_exported_model_reproduces_training_time_evaluation(trained_model):
    from asd.evaluation import evaluate_directory
    from asd.serving.inprocess import InProcessBackend

    from .conftest import SUBSET

    models_dir, result = trained_model
    metrics, _ = evaluate_directory(Detector(InProcessBackend(models_dir)), SUBSET)
    for key in ("auc_source", "auc_target", "pauc", "official_score", "precision", "recall"):
        assert metrics[key] == pytest.approx(result.metadata.evaluation[key], abs=1e-9)


def test_model_with_other_feature_settings_is_refused(trained_model, tmp_path):
    import shutil

    from asd.serving.inprocess import InProcessBackend

    _, result = trained_model
    copy = tmp_path / "models" / "toycar" / "1"
    shutil.copytree(result.version_dir, copy)
    meta = ModelMetadata.read(copy)
    meta.features = FeatureConfig(n_mels=64, hop_length=256)
    meta.write(copy)
    with pytest.raises(ModelMismatchError, match=r"n_mels: 64 != 128.*model != app"):
        Detector(InProcessBackend(copy))


def test_existing_version_is_never_overwritten(trained_model):
    from asd.config import load_train_config
    from asd.train import train

    from .conftest import CONFIG, SUBSET

    models_dir, _ = trained_model
    config = load_train_config(CONFIG, [f"data_dir={SUBSET}", f"models_dir={models_dir}", "version=1"])
    with pytest.raises(FileExistsError, match="never overwritten"):
        train(config, log=lambda *_: None)


def test_detector_scores_a_real_clip(trained_model):
    from asd.serving.inprocess import InProcessBackend

    models_dir, _ = trained_model
    result = Detector(InProcessBackend(models_dir)).score_file(SAMPLE_ANOMALY)
    assert result.frame_error.shape == (376,) and result.reconstruction.shape == (128, 376)
    assert result.score == pytest.approx(result.patch_error.mean())
    assert result.verdict in ("normal", "anomalous")
    assert result.verdict == ("anomalous" if result.score > result.threshold else "normal")


def test_savedmodel_stores_each_weight_once(trained_model):
    """keras#23553: ExportArchive.track() would store every weight twice."""
    import tensorflow as tf

    _, result = trained_model
    reader = tf.train.load_checkpoint(str(result.version_dir / "variables" / "variables"))
    stored = sum(int(np.prod(shape)) for key, shape in reader.get_variable_to_shape_map().items() if key != "_CHECKPOINTABLE_OBJECT_GRAPH")
    assert stored == result.metadata.training["parameters"]


def test_metadata_with_an_unknown_model_input_is_refused(trained_model):
    _, result = trained_model
    values = json.loads((result.version_dir / "assets.extra/asd_metadata.json").read_text())
    values["signature"]["input"] = "mfcc"
    with pytest.raises(ModelMismatchError, match="model input 'mfcc'"):
        ModelMetadata.from_dict(values)


def _adacos_scale_reference(embedding, centres, lined_up_labels, scale):
    """The dynamic AdaCos scale update in numpy, with the labels already lined up with the
    centres ``(n, n_classes * n_subclusters)``."""
    e = embedding / np.linalg.norm(embedding, axis=1, keepdims=True)
    c = centres / np.linalg.norm(centres, axis=0, keepdims=True)
    cosine = e @ c
    logits = scale * cosine
    top = logits.max()
    b_avg = np.mean(np.sum(np.exp(logits - top), axis=1))
    theta = np.arccos(np.clip(cosine, -1 + 1e-7, 1 - 1e-7))
    theta_class = np.sum(lined_up_labels * theta, axis=1)
    median = np.sort(theta_class)[len(theta_class) // 2]
    return (top + np.log(b_avg)) / (np.cos(min(np.pi / 4, median)) + 1e-7)


def test_subcluster_adacos_scale_reads_centres_class_major():
    """A tiny head (2 classes x 2 sub-clusters in 2-D): each clip lies on its own class's
    first centre, so the angle to its class's centres is small; the old tf.tile lined the
    labels up with the other class's first centre and gave another scale."""
    import tensorflow as tf

    from asd.detectors.multispec import SubClusterAdaCosHead

    centres = np.array([[1.0, 0.9, 0.0, 0.1], [0.0, 0.1, 1.0, 0.9]], np.float32)  # class 0 near x, class 1 near y
    embedding = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 1.0]], np.float32)
    labels = np.array([[1, 0], [0, 1], [0, 1]], np.float32)
    head = SubClusterAdaCosHead(2, 2)
    head(tf.zeros((1, 2)))
    head.centres.assign(centres)
    start = float(head.scale.numpy())
    p = head(tf.constant(embedding), tf.constant(labels), training=True).numpy()
    # class-major, as the probabilities are reshaped: centre index class * 2 + sub-cluster
    expected = _adacos_scale_reference(embedding, centres, np.repeat(labels, 2, axis=1), start)
    assert float(head.scale.numpy()) == pytest.approx(expected, rel=1e-5)
    tiled = _adacos_scale_reference(embedding, centres, np.tile(labels, (1, 2)), start)
    assert abs(expected - tiled) > 0.1  # the defect would have given a clearly other scale
    assert p.shape == (3, 2) and np.all(p.argmax(axis=1) == labels.argmax(axis=1))
