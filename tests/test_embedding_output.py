"""The clip embedding leaves the server (issue 29, item 1): reference-bank models serve it
as the output ``embedding`` of ``serving_default``; shipped v5 is v4 re-exported with it
(``asd resave --add-embedding``), scoring exactly as v4; every client returns it
(``Prediction.embedding``, ``ClipResult.embedding``), None for models without it."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest

from asd.audio import load_audio
from asd.features import FeatureConfig
from asd.inference import Detector, clip_embedding, model_input
from asd.metadata import EMBEDDING_OUTPUT_NAME, ModelMetadata
from asd.serving import Prediction, ServingError

from .conftest import REPO, SAMPLE_ANOMALY, SAMPLE_FLAGGED, SAMPLE_NORMAL, SHIPPED_MODELS, SUBSET

V4, V5 = SHIPPED_MODELS / "toycar" / "4", SHIPPED_MODELS / "toycar" / "5"
CLIPS = sorted((SUBSET / "test").glob("*.flac"))  # 8 real test clips, normal and anomalous, both domains
DIM = 512


def _inputs(clips, metadata) -> np.ndarray:
    features = FeatureConfig()
    return np.concatenate([model_input(load_audio(c, features.sample_rate, max_seconds=60).samples, metadata, features,
                                       display=False)[1] for c in clips]).astype(np.float32)


def _outputs(version_dir, inputs) -> dict[str, np.ndarray]:
    import tensorflow as tf

    loaded = tf.saved_model.load(str(version_dir))
    return {k: v.numpy() for k, v in loaded.signatures["serving_default"](waveform=tf.constant(inputs)).items()}


# -- shipped v5 ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def v4_embedding_model():
    from asd.enrolment import EmbeddingModel

    return EmbeddingModel(V4)


def test_v5_scores_as_v4_and_serves_its_embedding(v4_embedding_model):
    inputs = _inputs(CLIPS, ModelMetadata.read(V4))
    before, after = _outputs(V4, inputs), _outputs(V5, inputs)
    assert sorted(after) == sorted([*before, EMBEDDING_OUTPUT_NAME])
    for key, value in before.items():
        assert after[key].shape == value.shape and after[key].dtype == value.dtype, key
        assert np.max(np.abs(after[key] - value)) <= 1e-6, key  # measured: 0 (the same ops on the same variables)
    embedding = after[EMBEDDING_OUTPUT_NAME]
    assert embedding.shape == (len(CLIPS), DIM) and embedding.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(embedding, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(embedding, v4_embedding_model(inputs), atol=1e-6)
    # its score is the cosine distance to the nearest reference of v4's bank
    from asd.enrolment import _EmbeddingOutputModule

    module = _EmbeddingOutputModule(v4_embedding_model, v4_embedding_model.metadata)
    bank = next(c.numpy() for c in module.captured_constants if c.shape.rank == 2)  # (dim, n_train), as enrol reads it
    assert bank.shape == (DIM, 805)
    np.testing.assert_allclose((1.0 - embedding @ bank).min(axis=1), before["patch_error"], atol=2e-6)


def test_v5_metadata_is_v4s_with_the_embedding_and_a_reexport_record():
    v4, v5 = ModelMetadata.read(V4).to_dict(), ModelMetadata.read(V5).to_dict()
    assert v5["version"] == 5 and v5["reexport"]["base_version"] == 4
    assert "re-exported with the clip embedding" in v5["reexport"]["change"]
    assert v5["signature"] == {**v4["signature"], "outputs": [*v4["signature"]["outputs"], EMBEDDING_OUTPUT_NAME]}
    for key in ("threshold", "unfamiliar", "evaluation", "training", "features", "normalisation", "detector"):
        assert v5[key] == v4[key], key
    assert (V5 / "assets.extra" / "band_profiles.npz").read_bytes() == (V4 / "assets.extra" / "band_profiles.npz").read_bytes()
    assert (V5 / "assets.extra" / "tf_serving_warmup_requests").is_file()


def test_resave_add_embedding_rewrites_v5_from_v4(tmp_path):
    """The command that wrote v5, run again on a copy of v4: the same metadata (but the
    time), the same outputs; a version that has the output, or no bank, is refused."""
    models = tmp_path / "models"
    shutil.copytree(V4, models / "toycar" / "4")
    asd = [sys.executable, "-m", "asd.cli", "resave", "--model", str(models), "--name", "toycar"]
    run = subprocess.run(asd + ["--model-version", "4", "--add-embedding"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr
    assert "re-exported with the 'embedding' output as version 5" in run.stdout
    assert "max abs difference from v4: embedding 0, frame_error 0, patch_error 0, unfamiliarity 0" in run.stdout
    written = ModelMetadata.read(models / "toycar" / "5").to_dict()
    shipped = ModelMetadata.read(V5).to_dict()
    for meta in (written, shipped):
        del meta["reexport"]["written_at"]
    assert written == shipped
    inputs = _inputs(CLIPS[:2], ModelMetadata.read(V4))
    again, ours = _outputs(models / "toycar" / "5", inputs), _outputs(V5, inputs)
    assert all(np.array_equal(again[k], ours[k]) for k in ours)
    refused = subprocess.run(asd + ["--model-version", "5", "--add-embedding"], capture_output=True, text=True, timeout=600)
    assert refused.returncode == 2 and "already has the 'embedding' output" in refused.stderr
    shutil.copytree(SHIPPED_MODELS / "toycar" / "1", models / "toycar" / "1")
    no_bank = subprocess.run(asd + ["--model-version", "1", "--add-embedding"], capture_output=True, text=True, timeout=600)
    assert no_bank.returncode == 2 and "no reference bank" in no_bank.stderr and "Traceback" not in no_bank.stderr
    assert sorted(p.name for p in (models / "toycar").iterdir()) == ["1", "4", "5"]  # nothing else written


def test_a_version_with_the_output_takes_enrolled_clips(tmp_path, v4_embedding_model):
    """Enrolling into v5 reads its embedding from the output; the enrolled version serves
    the same embedding, and the enrolled clip is normal to it."""
    from asd.enrolment import EmbeddingModel, enroll

    models = tmp_path / "models"
    shutil.copytree(V5, models / "toycar" / "5")
    clip = next(c for c in CLIPS if "target_test_normal" in c.name)
    new = enroll(models, "toycar", [clip], "target", log=lambda *_: None)
    meta = ModelMetadata.read(new)
    assert new.name == "6" and meta.enrolment["root_version"] == 5
    assert meta.outputs == ["patch_error", "frame_error", "unfamiliarity", EMBEDDING_OUTPUT_NAME]
    inputs = _inputs(CLIPS, meta)
    outputs = _outputs(new, inputs)
    np.testing.assert_allclose(outputs[EMBEDDING_OUTPUT_NAME], v4_embedding_model(inputs), atol=1e-6)
    assert outputs["patch_error"][CLIPS.index(clip)] < 1e-5
    assert EMBEDDING_OUTPUT_NAME in EmbeddingModel(models / "toycar" / "5")._output_names


# -- clients -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def servers():
    """REST and gRPC stand-ins over the shipped models, sharing one loaded copy."""
    from asd.standins.grpc import GrpcStandInServer
    from asd.standins.repository import ModelRepository
    from asd.standins.rest import StandInServer

    repository = ModelRepository(SHIPPED_MODELS)
    with StandInServer(repository) as rest, GrpcStandInServer(repository) as grpc_server:
        yield rest, grpc_server


def _detectors(servers, version=None):
    from asd.serving.grpc import GrpcBackend
    from asd.serving.inprocess import InProcessBackend
    from asd.serving.rest import RestBackend

    rest, grpc_server = servers
    return {"rest": Detector(RestBackend(rest.url, "toycar", version)),
            "grpc": Detector(GrpcBackend(grpc_server.target, "toycar", version)),
            "inprocess": Detector(InProcessBackend(SHIPPED_MODELS, "toycar", version))}


def test_every_client_returns_the_same_embedding_and_the_scores_of_v4(servers, v4_embedding_model):
    detectors = _detectors(servers)  # unpinned: the latest, v5
    assert {d.metadata.version for d in detectors.values()} == {5}
    v4 = Detector(__import__("asd.serving.inprocess", fromlist=["InProcessBackend"]).InProcessBackend(V4))
    for clip in (SAMPLE_NORMAL, SAMPLE_ANOMALY, SAMPLE_FLAGGED):
        results = {name: d.score_file(clip, display=False) for name, d in detectors.items()}
        before = v4.score_file(clip, display=False)
        assert before.embedding is None
        local = results["inprocess"]
        assert local.embedding.shape == (DIM,) and local.embedding.dtype == np.float32
        assert abs(np.linalg.norm(local.embedding) - 1.0) < 1e-5
        inputs = Detector(detectors["inprocess"].backend).prepare(load_audio(clip, 16000, max_seconds=60), False).inputs
        np.testing.assert_allclose(local.embedding, v4_embedding_model(inputs)[0], atol=1e-6)
        np.testing.assert_array_equal(results["grpc"].embedding, local.embedding)  # tensor bytes both ways
        # REST: samples sent with 7 decimals (asd.serving.rest), so ~1e-5 apart (measured 1.5e-5 at most)
        np.testing.assert_allclose(results["rest"].embedding, local.embedding, atol=3e-5)
        assert float(results["rest"].embedding @ local.embedding) > 1 - 1e-6
        assert local.score == before.score and results["grpc"].score == before.score
        assert results["rest"].score == pytest.approx(before.score, rel=1e-4, abs=1e-6)
        assert {r.verdict for r in results.values()} == {before.verdict}
        assert results["rest"].unfamiliarity == pytest.approx(before.unfamiliarity, rel=1e-4, abs=1e-6)


def test_models_without_the_output_give_none(servers):
    for version in (4, 1):
        for name, detector in _detectors(servers, version).items():
            result = detector.score_file(SAMPLE_NORMAL, display=False)
            assert result.embedding is None, (name, version)
            assert detector.backend.predict(detector.prepare(load_audio(SAMPLE_NORMAL, 16000), False).inputs
                                            ).embedding is None


def test_a_batch_split_into_requests_gives_each_clip_its_own_embedding(servers):
    from asd.serving.grpc import GrpcBackend

    _, grpc_server = servers
    backend = GrpcBackend(grpc_server.target, "toycar", 5)
    alone = Detector(backend)
    split = Detector(backend, max_request_rows=2)  # 5 clips: requests of 2, 2 and 1 rows
    prepared = [alone.prepare(load_audio(c, 16000, max_seconds=60), False) for c in CLIPS[:5]]
    together = split.score_batch(prepared)
    for one, result in zip(prepared, together):
        single = alone.score_batch([one])[0]
        # each clip its own row (a batch of 2 and one of 1 differ in float rounding only)
        assert result.name == one.name and result.score == pytest.approx(single.score, abs=1e-6)
        np.testing.assert_allclose(result.embedding, single.embedding, atol=1e-6)
    assert len({r.embedding.tobytes() for r in together}) == 5


# -- Prediction and ClipResult -------------------------------------------------------------


def test_prediction_reads_the_output_and_checks_its_shape():
    rows = np.eye(3, 4, dtype=np.float32)
    outputs = {"patch_error": np.zeros(3), "frame_error": np.zeros((3, 1))}
    assert Prediction.from_outputs(outputs, 3).embedding is None
    got = Prediction.from_outputs({**outputs, "embedding": rows.tolist()}, 3).embedding  # JSON lists, as REST gives
    assert got.dtype == np.float32 and np.array_equal(got, rows)
    with pytest.raises(ServingError, match="'embedding' has shape"):
        Prediction.from_outputs({**outputs, "embedding": np.zeros(3)}, 3)
    with pytest.raises(ServingError, match="expected 3 rows"):
        Prediction.from_outputs({**outputs, "embedding": rows[:2]}, 3)


def test_a_clip_of_several_rows_gets_their_mean_direction():
    rows = np.array([[1.0, 0.0], [0.0, 1.0]], np.float32)
    np.testing.assert_allclose(clip_embedding(rows), [2 ** -0.5, 2 ** -0.5], rtol=1e-6)
    assert np.array_equal(clip_embedding(rows[:1]), rows[0])
    with pytest.raises(ServingError):
        clip_embedding(np.full((1, 2), np.nan, np.float32))


# -- deployment --------------------------------------------------------------------------


def test_v5_is_served_and_recommended_where_v4_was():
    from asd.serving.catalog import Deployment, ModelChoice, configured_model_names, recommend

    deployment = Deployment(server_url=None, model_dir=str(SHIPPED_MODELS), names=("toycar",))
    versions = deployment.available_versions("toycar")
    assert versions[-1] == 5
    choices = [ModelChoice.from_metadata("toycar", v, v == versions[-1], deployment.metadata("toycar", v))
               for v in versions]
    marked, reason = recommend(choices)
    assert [c.version for c in marked if c.recommended] == [5]
    assert "toycar v5 is recommended" in reason
    config = REPO / "production" / "serving" / "models.config"
    assert configured_model_names(config) == ["toycar"]
    # the two newest versions: v5 (the default) and v4 (loaded for a rollback)
    assert "num_versions: 2" in config.read_text()
    assert json.loads((V5 / "assets.extra" / "asd_metadata.json").read_text())["version"] == 5


def test_a_new_ensemble_export_serves_one_unit_embedding_of_its_networks(tmp_path):
    """multispec_scac with n_models 2, trained for one epoch on the subset: the exported
    ``embedding`` is both networks' normalised embeddings side by side over sqrt(2), a
    unit vector; ``ClipResult.embedding`` carries it."""
    from asd.config import load_train_config
    from asd.serving.inprocess import InProcessBackend
    from asd.train import train

    from .conftest import CONFIG

    config = load_train_config(CONFIG, [
        f"data_dir={SUBSET}", f"models_dir={tmp_path / 'models'}", f"runs_dir={tmp_path / 'runs'}", "evaluate=false",
        "model={n_ffts: [256], fft_branch: false, crop_seconds: 4.0, n_models: 2}", "training.epochs=1",
    ])
    result = train(config, log=lambda *_: None)
    assert EMBEDDING_OUTPUT_NAME in result.metadata.outputs
    detector = Detector(InProcessBackend(tmp_path / "models"))
    inputs = _inputs(CLIPS[:3], detector.metadata)
    served = _outputs(tmp_path / "models" / "toycar" / "1", inputs)[EMBEDDING_OUTPUT_NAME]
    half = served.shape[1] // 2
    np.testing.assert_allclose(np.linalg.norm(served, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(served[:, :half], axis=1), 2 ** -0.5, atol=1e-5)
    scored = detector.score_file(CLIPS[0], display=False)
    np.testing.assert_allclose(scored.embedding, served[0], atol=1e-6)
