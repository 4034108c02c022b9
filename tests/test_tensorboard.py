"""The TensorBoard content of a training run, read back from its event files."""

import numpy as np
import pytest

from .conftest import CONFIG, SUBSET

EVALUATION = ("auc_source", "auc_target", "pauc", "official_score")


def _events(directory):
    """EventAccumulator of one run directory with every tensor summary kept (TF2 writes
    scalars and images as tensors)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(directory), size_guidance={"tensors": 0, "scalars": 0, "images": 0})
    acc.Reload()
    return acc


def _scalars(acc, tag):
    import tensorflow as tf

    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in acc.Tensors(tag)]


def _hparams(acc):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = acc.PluginTagToContent("hparams")
    start = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/session_start_info"]).session_start_info
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content["_hparams_/experiment"]).experiment
    values = {k: v.WhichOneof("kind") and getattr(v, v.WhichOneof("kind")) for k, v in start.hparams.items()}
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    return values, metrics


def _images(acc):
    import tensorflow as tf

    images = {}
    for tag in acc.Tags()["tensors"]:
        if tag.startswith("reconstruction/"):
            event = acc.Tensors(tag)[-1]
            width, height, png = tf.make_ndarray(event.tensor_proto)[:3]
            images[tag] = (int(width), int(height), tf.io.decode_png(png).numpy())
    return images


def test_training_run_logs_losses_lr_evaluation_images_and_hparams(trained_model):
    _, result = trained_model
    epochs = result.metadata.training["epochs_run"]
    assert epochs == 2
    train, validation, root = (_events(d) for d in (result.run_dir / "train", result.run_dir / "validation", result.run_dir))

    for acc in (train, validation):
        assert [step for step, _ in _scalars(acc, "epoch_loss")] == list(range(epochs))
    assert [v for _, v in _scalars(train, "epoch_learning_rate")] == pytest.approx([1e-3] * epochs)

    for name in EVALUATION:
        values = _scalars(root, f"evaluation/{name}")
        assert [step for step, _ in values] == list(range(epochs)), name
        assert all(0.0 <= v <= 1.0 for _, v in values), (name, values)
    # the last epoch's figures are those of the final evaluation (best weights = last here
    # unless early stopping restored an earlier epoch)
    best = result.metadata.training["best_epoch"] - 1
    final = dict(_scalars(root, "evaluation/official_score"))[best]
    assert final == pytest.approx(result.metadata.evaluation["official_score"], abs=1e-4)

    images = _images(root)
    assert len(images) == 3  # the first three test clips by name
    assert "reconstruction/section_00_source_test_anomaly_0001_car_B1_spd_31V_mic_1" in images
    for width, height, pixels in images.values():
        assert height == 2 * 128 + 2 and width % 32 == 0 and width >= 32
        assert pixels.shape == (height, width, 1) and pixels.max() > 0

    values, metrics = _hparams(root)
    assert values["detector"] == "conv_ae"
    assert values["training.learning_rate"] == pytest.approx(1e-3)
    assert values["training.epochs"] == 2 and values["training.batch_size"] == 64
    assert values["features.n_mels"] == 128 and values["model.filters"] == "[16, 32, 64]"
    assert ("validation", "epoch_loss") in metrics and ("", "evaluation/official_score") in metrics


def test_without_labelled_data_no_evaluation_but_the_rest(tmp_path):
    from asd.config import load_train_config
    from asd.train import train

    config = load_train_config(CONFIG, [
        f"data_dir={SUBSET}", f"models_dir={tmp_path / 'models'}", f"runs_dir={tmp_path / 'runs'}", "evaluate=false",
        "detector=dense_ae_mse", "model={hidden_units: 16, hidden_layers: 1, bottleneck: 4}",
        "training.epochs=1", "training.max_train_clips=4",
    ])
    result = train(config, log=lambda *_: None)
    root = _events(result.run_dir)
    assert not [t for t in root.Tags()["tensors"] if t.startswith("evaluation/")]
    assert len(_scalars(_events(result.run_dir / "train"), "epoch_loss")) == 1
    assert len(_scalars(_events(result.run_dir / "validation"), "epoch_loss")) == 1
    assert len(_scalars(_events(result.run_dir / "train"), "epoch_learning_rate")) == 1
    images = _images(root)
    assert len(images) == 3 and all(n.startswith("reconstruction/section_00_source_train_normal_") for n in images)
    values, metrics = _hparams(root)
    assert values["detector"] == "dense_ae_mse" and values["model.hidden_units"] == 16
    assert not any(tag.startswith("evaluation/") for _, tag in metrics)


def test_dense_reconstruction_averages_the_overlapping_vectors():
    """A model that gives back its input makes the dense AE's frame reconstruction the input."""
    import keras

    from asd.config import TrainingSettings
    from asd.detectors import make_detector
    from asd.features import FeatureConfig

    detector = make_detector("dense_ae_mse", FeatureConfig(), {}, TrainingSettings(), 0)
    detector.model = keras.Sequential([keras.Input((5 * 128,)), keras.layers.Identity()])
    patches = np.random.default_rng(0).normal(-40, 10, (2, 128, 32)).astype(np.float32)
    np.testing.assert_allclose(detector.reconstruct(patches), patches, rtol=1e-5)


def test_ensemble_trained_in_its_own_loop_logs_loss_lr_and_hparams(waveform_model):
    """spectrum_adacos (a whole-clip detector, the default before multispec_scac) trains its networks without
    keras.Model.fit: per network and epoch its mean training loss, the learning rate,
    and the HParams still reach TensorBoard."""
    (run_dir,) = sorted((waveform_model.parent / "runs" / "toycar").iterdir())
    train = _events(run_dir / "train")
    for model in range(2):  # the fixture trains 2 networks for 1 epoch
        losses = _scalars(train, f"epoch_loss/model_{model}")
        assert [step for step, _ in losses] == [0] and np.isfinite(losses[0][1]) and losses[0][1] > 0
    assert [v for _, v in _scalars(train, "epoch_learning_rate")] == pytest.approx([1e-3])
    values, metrics = _hparams(train)
    assert values["detector"] == "spectrum_adacos" and values["model.n_models"] == 2
    assert ("train", "epoch_loss/model_1") in metrics
