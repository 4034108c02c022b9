"""The served-model catalog: the recommended version, detector kinds in words, and the
short status probe (against the REST stand-in and a server that never answers)."""

import dataclasses
import socket

import pytest

from asd.serving import ServingError
from asd.serving.catalog import DETECTOR_IN_WORDS, Deployment, ModelChoice, recommend
from asd.serving.probe import probe_status

from .conftest import SHIPPED_MODELS


def _shipped_choices() -> list[ModelChoice]:
    deployment = Deployment(server_url=None, model_dir=str(SHIPPED_MODELS), names=("toycar",))
    available = deployment.available_versions("toycar")
    return [ModelChoice.from_metadata("toycar", v, v == available[-1], deployment.metadata("toycar", v))
            for v in reversed(available)]


def test_the_shipped_version_with_the_best_official_score_is_recommended_and_says_why():
    choices = _shipped_choices()
    scores = {c.version: c.official_score for c in choices}
    assert all(s is not None for s in scores.values())  # both shipped versions are evaluated
    marked, reason = recommend(choices)
    best = max(scores, key=scores.get)
    assert [c.version for c in marked if c.recommended] == [best]
    assert [c.version for c in marked] == [c.version for c in choices]  # order kept
    assert reason.startswith(f"toycar v{best} is recommended: the best official DCASE score, {scores[best]:.3f}")
    label = next(c.label for c in marked if c.recommended)
    assert "recommended" in label and label.endswith(DETECTOR_IN_WORDS[next(c.detector for c in marked if c.recommended)])


def test_v5_the_reexport_of_v4_is_recommended_where_v4_was():
    marked, reason = recommend(_shipped_choices())
    assert [c.version for c in marked if c.recommended] == [5]
    assert next(c for c in marked if c.version == 5).reexport_of == 4
    assert "tied with v4 (v5 is v4 re-exported: the same scores), the latest is taken." in reason


def test_a_tie_goes_to_the_latest_and_unevaluated_versions_get_no_mark():
    choices = _shipped_choices()
    tied = [dataclasses.replace(c, official_score=0.6) for c in choices]
    marked, _ = recommend(tied)
    assert [c.version for c in marked if c.recommended] == [max(c.version for c in choices)]
    unevaluated = [dataclasses.replace(c, official_score=None) for c in choices]
    marked, reason = recommend(unevaluated)
    assert not any(c.recommended for c in marked) and reason is None
    # one evaluated version among unevaluated ones: marked, and the reason says so
    one = [dataclasses.replace(c, official_score=None) if c.version != choices[-1].version else c for c in choices]
    marked, reason = recommend(one)
    assert [c.version for c in marked if c.recommended] == [choices[-1].version]
    assert "among the evaluated versions" in reason


def test_every_detector_kind_has_words():
    from asd.detectors import DETECTORS

    assert set(DETECTOR_IN_WORDS) == set(DETECTORS)


def test_the_probe_reads_the_status_from_the_rest_stand_in():
    from asd.standins.rest import StandInServer

    with StandInServer(SHIPPED_MODELS) as server:
        status = probe_status(server.url, "toycar")
        assert {int(s["version"]) for s in status if s["state"] == "AVAILABLE"} == {
            int(p.name) for p in (SHIPPED_MODELS / "toycar").iterdir()}
        with pytest.raises(ServingError, match="HTTP 404"):
            probe_status(server.url, "no_such_model")


@pytest.mark.parametrize("scheme", ["http", "grpc"])
def test_the_probe_gives_up_on_a_server_that_never_answers_within_its_deadline(scheme):
    with socket.create_server(("127.0.0.1", 0)) as listener:  # accepts (backlog), never answers
        url = f"{scheme}://127.0.0.1:{listener.getsockname()[1]}"
        with pytest.raises(ServingError, match="did not answer within 0.5 s"):
            probe_status(url, "toycar", timeout_s=0.5)
