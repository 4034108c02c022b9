"""The gRPC client against a stand-in built on TF Serving's official protos
(tensorflow_serving.apis), serving the real SavedModel trained on the subset."""

import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import numpy as np
import pytest

from asd.inference import Detector
from asd.serving import ServingError, backend_from_env, make_backend

from .conftest import OTHER_MACHINE_CLIPS, SAMPLE_ANOMALY, SAMPLE_NORMAL, free_port


@pytest.fixture(scope="module")
def servers(trained_model):
    """REST and gRPC stand-ins sharing one loaded copy of the models."""
    from asd.standins.grpc import GrpcStandInServer
    from asd.standins.repository import ModelRepository
    from asd.standins.rest import StandInServer

    models_dir, _ = trained_model
    repository = ModelRepository(models_dir)
    with StandInServer(repository) as rest, GrpcStandInServer(repository) as grpc_server:
        yield rest, grpc_server


@pytest.fixture(scope="module")
def server(servers):
    return servers[1]


@pytest.fixture(scope="module")
def backend(server):
    from asd.serving.grpc import GrpcBackend

    opened = GrpcBackend(server.target, "toycar")
    yield opened
    opened.close()


def _stubs(target):
    from tensorflow_serving.apis import model_service_pb2_grpc, prediction_service_pb2_grpc

    channel = grpc.insecure_channel(target)
    return channel, prediction_service_pb2_grpc.PredictionServiceStub(channel), model_service_pb2_grpc.ModelServiceStub(channel)


def test_stand_in_answers_as_tf_serving_does(server):
    import tensorflow as tf
    from tensorflow_serving.apis import get_model_metadata_pb2, get_model_status_pb2, predict_pb2

    channel, predictions, models = _stubs(server.target)
    with channel:
        status = models.GetModelStatus(get_model_status_pb2.GetModelStatusRequest(model_spec={"name": "toycar"}), timeout=5)
        [entry] = status.model_version_status
        assert entry.version == 1 and entry.state == get_model_status_pb2.ModelVersionStatus.AVAILABLE
        assert entry.HasField("status") and entry.status.error_code == 0

        request = get_model_metadata_pb2.GetModelMetadataRequest(model_spec={"name": "toycar"}, metadata_field=["signature_def"])
        meta = predictions.GetModelMetadata(request, timeout=5)
        assert meta.model_spec.name == "toycar" and meta.model_spec.version.value == 1
        signatures = get_model_metadata_pb2.SignatureDefMap()
        assert meta.metadata["signature_def"].Unpack(signatures)
        serving = signatures.signature_def["serving_default"]
        assert serving.method_name == "tensorflow/serving/predict"
        assert serving.inputs["logmel_patches"].dtype == tf.float32.as_datatype_enum
        assert [d.size for d in serving.inputs["logmel_patches"].tensor_shape.dim] == [-1, 128, 32]
        assert set(serving.outputs) == {"reconstruction", "patch_error", "frame_error"}

        patches = np.random.default_rng(1).normal(-40, 10, size=(3, 128, 32)).astype(np.float32)
        predict = predict_pb2.PredictRequest(model_spec={"name": "toycar"}, output_filter=["patch_error"])
        predict.inputs["logmel_patches"].CopyFrom(tf.make_tensor_proto(patches))
        answer = predictions.Predict(predict, timeout=30)
        assert answer.model_spec.version.value == 1 and answer.model_spec.signature_name == "serving_default"
        assert list(answer.outputs) == ["patch_error"] and answer.outputs["patch_error"].tensor_content  # raw bytes
        assert tf.make_ndarray(answer.outputs["patch_error"]).shape == (3,)

        def refused(call, request):
            with pytest.raises(grpc.RpcError) as caught:
                call(request, timeout=30)
            return caught.value.code(), caught.value.details()

        assert refused(predictions.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "fan"}, metadata_field=["signature_def"])) == (
            grpc.StatusCode.NOT_FOUND, "Servable not found for request: Latest(fan)")
        assert refused(predictions.GetModelMetadata, get_model_metadata_pb2.GetModelMetadataRequest(
            model_spec={"name": "toycar"}))[0] == grpc.StatusCode.INVALID_ARGUMENT
        wrong_shape = predict_pb2.PredictRequest(model_spec={"name": "toycar"})
        wrong_shape.inputs["logmel_patches"].CopyFrom(tf.make_tensor_proto(np.zeros((2, 5), np.float32)))
        code, details = refused(predictions.Predict, wrong_shape)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "shape" in details
        wrong_dtype = predict_pb2.PredictRequest(model_spec={"name": "toycar"})
        wrong_dtype.inputs["logmel_patches"].CopyFrom(tf.make_tensor_proto(patches.astype(np.float64)))
        code, details = refused(predictions.Predict, wrong_dtype)
        assert code == grpc.StatusCode.INVALID_ARGUMENT and "float32" in details and "float64" in details
        no_signature = predict_pb2.PredictRequest(model_spec={"name": "toycar", "signature_name": "classify"})
        assert refused(predictions.Predict, no_signature) == (
            grpc.StatusCode.FAILED_PRECONDITION, 'Serving signature key "classify" not found.')


def test_grpc_client_scores_exactly_like_the_in_process_backend(backend, trained_model):
    from asd.serving.inprocess import InProcessBackend

    models_dir, _ = trained_model
    local_backend = InProcessBackend(models_dir)
    remote, local = Detector(backend), Detector(local_backend)
    assert remote.metadata.to_dict() == local.metadata.to_dict()
    assert backend.describe() == f"TF Serving gRPC at {backend.target}, model 'toycar' version 1"
    for clip in (SAMPLE_NORMAL, SAMPLE_ANOMALY):
        a, b = remote.score_file(clip), local.score_file(clip)
        # float32 bytes both ways: no rounding, the same graph on the same values
        assert a.score == pytest.approx(b.score, rel=1e-6)
        assert a.verdict == b.verdict
        np.testing.assert_allclose(a.frame_error, b.frame_error, rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(a.reconstruction, b.reconstruction, rtol=1e-6, atol=1e-5)
    patches = np.random.default_rng(2).normal(-40, 10, size=(5, 128, 32)).astype(np.float32)
    p, q = backend.predict(patches), local_backend.predict(patches)
    np.testing.assert_allclose(p.patch_error, q.patch_error, rtol=1e-6)
    assert p.patch_error.dtype == np.float32 and p.frame_error.shape == (5, 32) and p.reconstruction.shape == (5, 128, 32)


def test_a_long_clip_exceeds_grpc_default_message_size(backend, trained_model):
    """~60 s of audio: 240 patches of 128 x 32 float32 = 3.9 MB each way, plus the
    reconstruction coming back; above gRPC's 4 MiB default limit."""
    from asd.serving.inprocess import InProcessBackend

    patches = np.random.default_rng(3).normal(-40, 10, size=(240, 128, 32)).astype(np.float32)
    assert patches.nbytes > 3.9e6
    remote = backend.predict(patches)
    local = InProcessBackend(trained_model[0]).predict(patches)
    np.testing.assert_allclose(remote.patch_error, local.patch_error, rtol=1e-6)
    assert remote.reconstruction.shape == patches.shape


def test_predict_from_16_threads_at_once(backend):
    batches = [np.random.default_rng(i).normal(-40, 10, size=(1 + i % 3, 128, 32)).astype(np.float32) for i in range(32)]
    expected = [backend.predict(b).patch_error for b in batches]
    with ThreadPoolExecutor(max_workers=16) as pool:
        answered = list(pool.map(lambda b: backend.predict(b).patch_error, batches))
    for got, want in zip(answered, expected):
        np.testing.assert_allclose(got, want, rtol=1e-6)


def test_rest_and_grpc_stand_ins_agree(servers, backend):
    from asd.serving.rest import RestBackend

    rest_server, _ = servers
    rest_backend = RestBackend(rest_server.url, "toycar")
    assert backend.model_status() == rest_backend.model_status() == [
        {"version": "1", "state": "AVAILABLE", "status": {"error_code": "OK", "error_message": ""}}]
    assert backend.signature_defs() == rest_backend.signature_defs()
    rest, remote = Detector(rest_backend), Detector(backend)
    assert rest.metadata.to_dict() == remote.metadata.to_dict()
    for clip in (SAMPLE_NORMAL, SAMPLE_ANOMALY):
        a, b = rest.score_file(clip), remote.score_file(clip)
        assert a.score == pytest.approx(b.score, rel=1e-4)  # REST rounds dB values to 1/1000 dB
        assert a.verdict == b.verdict


def test_unknown_model_and_version_give_clear_errors(server):
    from asd.serving.grpc import GrpcBackend

    with pytest.raises(ServingError, match="NOT_FOUND for model 'fan': Could not find any versions of model fan"):
        GrpcBackend(server.target, "fan")
    with pytest.raises(ServingError, match="NOT_FOUND for model 'toycar': Could not find version 7 of model toycar"):
        GrpcBackend(server.target, "toycar", version=7)
    pinned = GrpcBackend(f"grpc://{server.target}", "toycar", version=1)
    assert pinned.metadata.version == 1 and pinned.target == server.target
    pinned.close()
    with pytest.raises(ServingError, match="channel .* unusable"):
        pinned.predict(np.zeros((1, 128, 32), np.float32))


def test_wrong_input_gives_the_servers_message(backend):
    with pytest.raises(ServingError, match=r"INVALID_ARGUMENT for model 'toycar': input 'logmel_patches' has shape"):
        backend.predict(np.zeros((2, 128, 7), np.float32))



def test_server_down_gives_a_clear_message():
    from asd.serving.grpc import GrpcBackend

    with pytest.raises(ServingError, match=r"is not reachable over gRPC .*is the server running and the address right"):
        GrpcBackend(f"127.0.0.1:{free_port()}", "toycar", timeout_s=2)


def test_silent_server_times_out(silent_port):
    """A socket that accepts the connection and never speaks HTTP/2."""
    from asd.serving.grpc import GrpcBackend

    started = time.monotonic()
    with pytest.raises(ServingError, match="did not answer within 0.5 s"):
        GrpcBackend(f"127.0.0.1:{silent_port}", "toycar", timeout_s=0.5)
    assert time.monotonic() - started < 5


def test_slow_server_times_out():
    """A server that takes the call and answers too late."""
    from tensorflow_serving.apis import get_model_status_pb2, model_service_pb2_grpc

    from asd.serving.grpc import GrpcBackend

    release = threading.Event()

    class Slow(model_service_pb2_grpc.ModelServiceServicer):
        def GetModelStatus(self, request, context):
            release.wait(10)
            return get_model_status_pb2.GetModelStatusResponse()

    slow = grpc.server(ThreadPoolExecutor(max_workers=2))
    model_service_pb2_grpc.add_ModelServiceServicer_to_server(Slow(), slow)
    port = slow.add_insecure_port("127.0.0.1:0")
    slow.start()
    try:
        with pytest.raises(ServingError, match="did not answer within 0.5 s"):
            GrpcBackend(f"127.0.0.1:{port}", "toycar", timeout_s=0.5)
    finally:
        release.set()
        slow.stop(None).wait()


def test_backend_chosen_by_address_scheme(servers):
    from asd.serving.grpc import GrpcBackend
    from asd.serving.rest import RestBackend

    rest_server, grpc_server = servers
    url = f"grpc://{grpc_server.target}"
    chosen = make_backend(server_url=url, name="toycar", timeout_s=3)
    assert isinstance(chosen, GrpcBackend) and chosen.timeout_s == 3 and chosen.target == grpc_server.target
    from_env = backend_from_env({"ASD_SERVING_URL": url, "ASD_MODEL_NAME": "toycar", "ASD_MODEL_VERSION": "1"})
    assert isinstance(from_env, GrpcBackend) and from_env.version == 1 and "TF Serving gRPC" in from_env.describe()
    assert isinstance(backend_from_env({"ASD_SERVING_URL": rest_server.url, "ASD_MODEL_NAME": "toycar"}), RestBackend)
    with pytest.raises(ValueError, match="must start with grpc:// .* or http://"):
        make_backend(server_url=grpc_server.target, name="toycar")
    with pytest.raises(ValueError, match="set ASD_MODELS_CONFIG .* or ASD_MODEL_NAME"):
        backend_from_env({"ASD_SERVING_URL": url})


def test_grpc_client_module_imports_without_tensorflow():
    code = "import sys, asd.serving, asd.serving.grpc; sys.exit(1 if 'tensorflow' in sys.modules else 0)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_cli_scores_through_grpc(server):
    run = subprocess.run(
        [sys.executable, "-m", "asd.cli", "score", str(SAMPLE_NORMAL), str(SAMPLE_ANOMALY),
         "--server", f"grpc://{server.target}", "--name", "toycar"],
        capture_output=True, text=True, timeout=300,
    )
    assert run.returncode == 0, run.stderr
    lines = run.stdout.rstrip("\n").split("\n")[2:]  # after the "# model" line and the column header
    assert [line.split("\t")[0] for line in lines] == [str(SAMPLE_NORMAL), str(SAMPLE_ANOMALY)]
    for line in lines:
        _, score, threshold, verdict, _ = line.split("\t")
        assert verdict == ("anomalous" if float(score) > float(threshold) else "normal")
    down = subprocess.run(
        [sys.executable, "-m", "asd.cli", "score", str(SAMPLE_NORMAL), "--server", f"grpc://127.0.0.1:{free_port()}",
         "--name", "toycar", "--timeout", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert down.returncode == 2 and "Traceback" not in down.stderr
    assert down.stderr.strip().splitlines()[-1].startswith("asd: error: TF Serving at ")
    assert "not reachable" in down.stderr


def test_stand_in_command_serves_rest_and_grpc(trained_model):
    """python -m asd.standins --models DIR --port P --grpc-port G"""
    from asd.serving.grpc import GrpcBackend
    from asd.serving.rest import RestBackend

    models_dir, _ = trained_model
    rest_port, grpc_port = free_port(), free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "asd.standins", "--models", str(models_dir), "--port", str(rest_port),
         "--grpc-port", str(grpc_port)],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
    )
    try:
        lines = [process.stdout.readline() for _ in range(2)]
        assert f"gRPC API on 127.0.0.1:{grpc_port}" in lines[0] and f"REST API on http://127.0.0.1:{rest_port}" in lines[1]
        remote = GrpcBackend(f"127.0.0.1:{grpc_port}", "toycar")
        rest = RestBackend(f"http://127.0.0.1:{rest_port}", "toycar")
        assert remote.metadata.to_dict() == rest.metadata.to_dict()
        remote.close()
    finally:
        process.terminate()
        process.wait(timeout=30)


def test_waveform_input_models_are_served_through_grpc_like_in_process(waveform_model):
    """A whole-clip spectrum detector takes the clip's samples (signature input
    `waveform`); gRPC sends them as float32 bytes: the same score as in-process, and as
    the REST stand-in over the same models (which rounds samples to 7 decimals)."""
    from asd.serving.grpc import GrpcBackend
    from asd.standins.grpc import GrpcStandInServer
    from asd.serving.inprocess import InProcessBackend
    from asd.serving.rest import RestBackend
    from asd.standins.rest import StandInServer

    local = Detector(InProcessBackend(waveform_model))
    assert local.metadata.input == "waveform" and local.metadata.input_samples == 192000
    with GrpcStandInServer(waveform_model) as grpc_server, StandInServer(waveform_model) as rest_server:
        remote = Detector(GrpcBackend(grpc_server.target, "toycar"))
        rest = Detector(RestBackend(rest_server.url, "toycar"))
        assert remote.metadata.to_dict() == local.metadata.to_dict()
        for clip in (SAMPLE_NORMAL, SAMPLE_ANOMALY, *OTHER_MACHINE_CLIPS):
            a, b, c = remote.score_file(clip), local.score_file(clip), rest.score_file(clip)
            assert a.score == pytest.approx(b.score, rel=1e-6) and a.verdict == b.verdict
            assert a.score == pytest.approx(c.score, rel=1e-4) and a.verdict == c.verdict  # REST: 7 decimals
            assert a.unfamiliarity == pytest.approx(b.unfamiliarity, rel=1e-6)
            assert (a.verdict == "unfamiliar") == (clip in OTHER_MACHINE_CLIPS), (clip.name, a.unfamiliarity)
            assert a.reconstruction is None and a.frame_error.shape == b.logmel.shape[1:]
