"""Every kind of bad input the app can get, uploaded through the real app: each gets a
clear message (never a traceback), and the next clip is still checked.

Writes the table of inputs and the messages shown to test-artifacts/bad_inputs.md; the
README shows the same table (checked below)."""

import io
from dataclasses import dataclass

import numpy as np
import pytest
import soundfile as sf
import streamlit as st
from streamlit.testing.v1 import AppTest

from .conftest import OTHER_MACHINE_CLIPS, REPO, SAMPLE_NORMAL, SHIPPED_MODELS, SUBSET
from .test_app import APP, TIMEOUT

ARTIFACTS = REPO / "test-artifacts"
UPLOAD_LIMIT_MB = 20  # .streamlit/config.toml server.maxUploadSize


def _wav(samples: np.ndarray, rate: int, subtype: str = "PCM_16", fmt: str = "WAV") -> bytes:
    buffer = io.BytesIO()
    sf.write(buffer, samples, rate, format=fmt, subtype=subtype)
    return buffer.getvalue()


def _eight_channel_wavex() -> bytes:
    """A multi-channel recorder's file (WAVE_FORMAT_EXTENSIBLE, as MIMII writes): the 8 real
    test clips of the subset as 8 channels."""
    channels = [sf.read(p, dtype="float32")[0][: 16000 * 10] for p in sorted((SUBSET / "test").glob("*.flac"))]
    return _wav(np.stack(channels, axis=1), 16000, fmt="WAVEX")


def _real() -> tuple[np.ndarray, int]:
    return sf.read(SAMPLE_NORMAL, dtype="float32")


@dataclass
class Case:
    label: str  # the row's first column
    file_name: str
    make: callable
    expect: str  # "refused", "checked" (with a note), "scored" (no note needed) or "unfamiliar"
    message: str  # a part of the message the user must see


def _ogg() -> bytes:
    samples, rate = _real()
    buffer = io.BytesIO()
    sf.write(buffer, samples[: rate * 2], rate, format="OGG", subtype="VORBIS")
    return buffer.getvalue()


def _nan_wav() -> bytes:
    samples, rate = _real()
    samples = samples.copy()
    samples[1000] = np.nan
    return _wav(samples, rate, subtype="FLOAT")


def _resampled(rate_out: int) -> bytes:
    import librosa

    samples, rate = _real()
    return _wav(librosa.resample(samples, orig_sr=rate, target_sr=rate_out), rate_out)


CASES = [
    Case("empty file (0 bytes)", "empty.wav", lambda: b"", "refused", "the file is empty"),
    Case("non-audio bytes", "random.wav", lambda: np.random.default_rng(0).bytes(50_000), "refused",
         "not a readable WAV or FLAC file"),
    Case("a text file renamed .wav", "notes.wav", lambda: b"maintenance log, pump 3: bearing noise\n" * 40, "refused",
         "not a readable WAV or FLAC file"),
    Case("another format (Ogg Vorbis)", "clip.ogg", _ogg, "refused", "files are not supported; upload WAV or FLAC"),
    Case("another format renamed .wav (Ogg Vorbis)", "clip_ogg.wav", _ogg, "refused", "is not supported; upload WAV or FLAC"),
    Case("truncated WAV (header longer than the data)", "truncated.wav",
         lambda: SAMPLE_NORMAL.read_bytes()[:60_000], "refused", "the file is truncated"),
    Case("multi-channel WAV (stereo)", "stereo.wav",
         lambda: _wav(np.stack([_real()[0], _real()[0] * 0.5], axis=1), _real()[1]), "checked",
         "downmixed 2 channels to mono"),
    Case("multi-channel WAV in the extensible format (WAVEX, 8 channels, as MIMII and field recorders write)",
         "recorder_8ch.wav", _eight_channel_wavex, "checked", "downmixed 8 channels to mono"),
    Case("RF64 WAV (24-bit)", "clip_rf64.wav", lambda: _wav(_real()[0], 16000, "PCM_24", fmt="RF64"), "scored", ""),
    Case("24-bit PCM WAV", "clip_24bit.wav", lambda: _wav(_real()[0], 16000, "PCM_24"), "scored", ""),
    Case("32-bit float WAV", "clip_float.wav", lambda: _wav(_real()[0], 16000, "FLOAT"), "scored", ""),
    Case("a recording of another machine (a fan, DCASE 2023)", "fan.flac",
         lambda: OTHER_MACHINE_CLIPS[0].read_bytes(), "unfamiliar", "is **unfamiliar**"),
    Case("wrong sample rate (48 kHz)", "rate_48k.wav", lambda: _resampled(48_000), "checked",
         "resampled from 48000 Hz to 16000 Hz, the model's sample rate"),
    Case("very short clip (0.5 s, shorter than one model patch)", "short.wav",
         lambda: _wav(_real()[0][:8000], _real()[1]), "refused", "clip too short"),
    Case("very long clip (90 s)", "long.wav", lambda: _wav(np.tile(_real()[0], 8)[: 90 * 16000], 16000), "checked",
         "checked the first 60 s of 90.0 s"),
    Case("silence (all samples zero)", "silence.wav", lambda: _wav(np.zeros(12 * 16000, np.float32), 16000),
         "refused", "the clip is silent"),
    Case("NaN sample values (float WAV)", "nan.wav", _nan_wav, "refused", "NaN or infinite sample values"),
    Case(f"file over the upload limit ({UPLOAD_LIMIT_MB + 1} MB)", "huge.wav",
         lambda: _wav(np.tile(_real()[0], 60)[: (UPLOAD_LIMIT_MB + 1) * 2**20 // 2], 16000), "refused",
         f"over the {UPLOAD_LIMIT_MB} MB upload limit"),
]


def _messages(at) -> list[tuple[str, str]]:
    return [("error", e.value) for e in at.error] + [("info", e.value) for e in at.info] + [
        ("warning", e.value) for e in at.warning] + [("success", e.value) for e in at.success]


@pytest.fixture(scope="module")
def outcomes():
    """Upload every case in turn into one running app session, then a good clip."""
    st.cache_resource.clear()
    st.cache_data.clear()
    with pytest.MonkeyPatch.context() as patch:
        for key in ("ASD_SERVING_URL", "ASD_MODELS_CONFIG", "ASD_MODEL_NAME"):
            patch.delenv(key, raising=False)
        patch.setenv("ASD_MODEL_DIR", str(SHIPPED_MODELS))
        at = AppTest.from_file(APP, default_timeout=TIMEOUT)
        at.run()
        found = {}
        for case in CASES:
            at.file_uploader[0].clear().upload(case.file_name, case.make(), "audio/wav").run()
            found[case.label] = (at.exception, _messages(at))
        at.file_uploader[0].clear().upload(SAMPLE_NORMAL.name, SAMPLE_NORMAL.read_bytes(), "audio/wav").run()
        found["after all of them, a good clip"] = (at.exception, _messages(at))
    st.cache_resource.clear()
    st.cache_data.clear()
    return found


def _table(outcomes) -> str:
    lines = ["| input | outcome | message shown |", "|---|---|---|"]
    for case in CASES:
        _, messages = outcomes[case.label]
        shown = [text for kind, text in messages if kind in ("error", "info") and not text.startswith("Verdict")]
        refused = any("cannot be checked" in text for _, text in messages)
        verdict = next((text for _, text in messages if text.startswith("Verdict")), "")
        if refused:
            outcome = "refused"
        elif "**unfamiliar**" in verdict:
            outcome, shown = "checked: unfamiliar", [verdict.split(": ", 1)[1].replace("**", "")]
        else:
            outcome = "checked, with a note" if shown else "checked"
        lines.append(f"| {case.label} | {outcome} | {' / '.join(s.replace('|', '/') for s in shown) or '(none needed)'} |")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("case", CASES, ids=[c.label for c in CASES])
def test_bad_input_gets_a_clear_message_and_no_traceback(outcomes, case):
    exception, messages = outcomes[case.label]
    assert not exception, exception
    kinds = {kind for kind, text in messages if case.message in text}
    assert kinds, f"'{case.message}' not shown; shown: {messages}"
    if case.expect == "refused":
        assert kinds == {"error"} and any("cannot be checked" in t for k, t in messages if k == "error")
        assert not any(t.startswith("Verdict") for _, t in messages)
    elif case.expect == "checked":  # fixed on the way and said so, then checked
        assert kinds == {"info"} and any(t.startswith("Verdict") for _, t in messages)
    elif case.expect == "scored":  # read as any WAV: a verdict, no note, no error
        assert not [t for k, t in messages if k in ("error", "info")]
        assert [t for _, t in messages if t.startswith("Verdict")]
    else:  # another machine: a warning that says what to check, not a verdict on its health
        assert kinds == {"warning"}
        assert any("the model is the one for this machine type" in t for k, t in messages if k == "warning")


def test_the_next_clip_is_checked_after_every_bad_input(outcomes):
    exception, messages = outcomes["after all of them, a good clip"]
    assert not exception
    assert [k for k, t in messages if t.startswith("Verdict")] and not [k for k, _ in messages if k == "error"]


def test_bad_input_table_is_written_and_shown_in_readme(outcomes):
    table = _table(outcomes)
    ARTIFACTS.mkdir(exist_ok=True)
    (ARTIFACTS / "bad_inputs.md").write_text(table)
    page = (REPO / "docs" / "testing.md").read_text()  # the docs page "What was tested, and how"
    assert table in page, f"docs/testing.md's bad-input table differs from what the app shows; update it from {ARTIFACTS / 'bad_inputs.md'}"
