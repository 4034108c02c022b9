"""gRPC across replicas: one client channel spreads its calls over every server its
target names (round_robin), as it would over the pods behind a headless Kubernetes
Service; two stand-in servers play the replicas."""

from __future__ import annotations

import copy

import numpy as np
import pytest

from asd.inference import Detector
from asd.serving import make_backend

from .conftest import SAMPLE_NORMAL


def _counting(repository):
    """A view of ``repository`` (same loaded models) that counts the requests it finds a
    servable for: one per Predict, GetModelStatus or GetModelMetadata call."""
    view = copy.copy(repository)
    view.calls = 0
    find = repository.find

    def counted_find(*args, **kwargs):
        view.calls += 1
        return find(*args, **kwargs)

    view.find = counted_find
    return view


@pytest.fixture(scope="module")
def replicas(trained_model):
    from asd.standins.grpc import GrpcStandInServer
    from asd.standins.repository import ModelRepository

    models_dir, _ = trained_model
    repository = ModelRepository(models_dir)
    views = [_counting(repository), _counting(repository)]
    with GrpcStandInServer(views[0]) as first, GrpcStandInServer(views[1]) as second:
        yield views, [first, second]


def test_one_channel_spreads_calls_over_both_replicas(replicas, trained_model):
    views, servers = replicas
    name = "toycar"  # trained_model's config name
    target = "ipv4:" + ",".join(s.target for s in servers)  # two addresses, as a headless Service's DNS name gives
    backend = make_backend(server_url=f"grpc://{target}", name=name)
    try:
        detector = Detector(backend)
        before = [v.calls for v in views]
        scores = [detector.score_file(SAMPLE_NORMAL).score for _ in range(20)]
        calls = [v.calls - b for v, b in zip(views, before)]
    finally:
        backend.close()
    assert np.ptp(scores) == 0  # the same model behind both
    assert sum(calls) >= 20
    assert min(calls) >= 5, f"calls per replica {calls}: not balanced"


@pytest.mark.parametrize("form", ["{}", "dns:///{}"])
def test_a_single_address_still_works_with_round_robin(replicas, trained_model, form):
    """host:port, and the dns:/// form README gives for the headless Service."""
    _, servers = replicas
    name = "toycar"  # trained_model's config name
    backend = make_backend(server_url="grpc://" + form.format(servers[0].target), name=name)
    try:
        assert np.isfinite(Detector(backend).score_file(SAMPLE_NORMAL).score)
    finally:
        backend.close()
