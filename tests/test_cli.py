"""The asd command, run as a user runs it (a subprocess), on real clips."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import soundfile as sf

from .conftest import CONFIG, OTHER_MACHINE_CLIPS, REPO, SAMPLE_ANOMALY, SAMPLE_NORMAL, SUBSET


def asd(*args, timeout=300):
    return subprocess.run([sys.executable, "-m", "asd.cli", *map(str, args)], capture_output=True, text=True, timeout=timeout)


def _one_line_error(result):
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines and lines[-1].startswith("asd: error: ")
    assert "Traceback" not in result.stderr
    return lines[-1]


def _rows(stdout: str) -> list[list[str]]:
    """asd score's table rows, after its "# model" line and column header (checked)."""
    lines = stdout.rstrip("\n").split("\n")
    assert lines[0].startswith("# model toycar v") and lines[1] == "file\tanomaly_score\tthreshold\tverdict\tnotes"
    return [line.split("\t") for line in lines[2:]]


def test_score_prints_the_model_a_header_and_one_line_per_file(trained_model):
    models_dir, result = trained_model
    run = asd("score", SAMPLE_NORMAL, SAMPLE_ANOMALY, "--model", models_dir)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith(f"# model toycar v{result.metadata.version} (conv_ae): decision threshold ")
    rows = _rows(run.stdout)
    assert len(rows) == 2
    for (file, score, threshold, verdict, notes), clip in zip(rows, (SAMPLE_NORMAL, SAMPLE_ANOMALY)):
        assert file == str(clip)
        assert float(threshold) == pytest.approx(result.metadata.threshold_value, abs=1e-6)
        assert verdict == ("anomalous" if float(score) > float(threshold) else "normal")


def test_score_unreadable_input_exits_2_with_one_line(trained_model, tmp_path):
    models_dir, _ = trained_model
    text = tmp_path / "notes.wav"
    text.write_text("not audio at all\n" * 20)
    truncated = tmp_path / "cut.wav"
    truncated.write_bytes(SAMPLE_NORMAL.read_bytes()[:50000])
    empty = tmp_path / "empty.wav"
    empty.write_bytes(b"")
    short = tmp_path / "short.wav"
    samples, rate = sf.read(SAMPLE_NORMAL)
    sf.write(short, samples[: rate // 2], rate)
    for bad, message in [(text, "not a readable WAV or FLAC"), (truncated, "truncated"), (empty, "empty"),
                         (short, "clip too short"), (tmp_path / "missing.wav", "No such file")]:
        line = _one_line_error(asd("score", bad, "--model", models_dir))
        assert message in line and str(bad.name) in line
    # good files are still scored when one in the batch is bad
    mixed = asd("score", SAMPLE_NORMAL, text, "--model", models_dir)
    assert mixed.returncode == 2 and len(_rows(mixed.stdout)) == 1


def test_score_through_a_server(trained_model):
    from asd.standins.rest import StandInServer

    models_dir, _ = trained_model
    with StandInServer(models_dir) as server:
        run = asd("score", SAMPLE_ANOMALY, "--server", server.url, "--name", "toycar")
    assert run.returncode == 0, run.stderr
    assert _rows(run.stdout)[0][0] == str(SAMPLE_ANOMALY)
    line = _one_line_error(asd("score", SAMPLE_ANOMALY, "--server", server.url, "--name", "toycar", "--timeout", "2"))
    assert "not reachable" in line


def test_evaluate_prints_and_writes_the_metrics(trained_model, tmp_path):
    models_dir, result = trained_model
    out = tmp_path / "metrics.json"
    run = asd("evaluate", "--model", models_dir, "--data", SUBSET, "--json", out)
    assert run.returncode == 0, run.stderr
    metrics = json.loads(out.read_text())
    for key in ("auc_source", "auc_target", "pauc", "official_score"):
        assert metrics[key] == pytest.approx(result.metadata.evaluation[key])
        assert f"{metrics[key]:.4f}" in run.stdout
    assert "official score" in run.stdout
    for domain in ("source", "target"):  # every domain's recall and false-alarm rate, in JSON and the table
        figures = metrics["per_domain"][domain]
        assert {"recall", "false_alarm_rate", "n_normal_flagged", "n_anomaly_flagged"} <= set(figures)
        assert (f"{domain} domain: false-alarm rate {figures['false_alarm_rate']:.4f} "
                f"({figures['n_normal_flagged']} of {figures['n_normal']} normal flagged)  "
                f"recall {figures['recall']:.4f}") in run.stdout
    assert "fewer than 20 normal or anomalous clips per domain (section 00 source: 2 normal, 2 anomalous" in run.stderr


def test_bad_config_and_bad_model_dir_exit_2(tmp_path):
    assert "training.epochs" in _one_line_error(asd("train", "--config", CONFIG, "--set", "training.epochs=-1"))
    assert "does not exist" in _one_line_error(asd("train", "--config", tmp_path / "x.yaml"))
    assert "no SavedModel" in _one_line_error(asd("score", SAMPLE_NORMAL, "--model", tmp_path))


def test_score_calls_other_machines_unfamiliar_and_says_what_to_check(waveform_model):
    """A fan and a valve (real DCASE 2023 clips) against a ToyCar model: the verdict
    column says unfamiliar, and one line says what to check."""
    run = asd("score", SAMPLE_NORMAL, *OTHER_MACHINE_CLIPS, "--model", waveform_model)
    assert run.returncode == 0, run.stderr
    verdicts = [row[3] for row in _rows(run.stdout)]
    assert verdicts[1:] == ["unfamiliar"] * len(OTHER_MACHINE_CLIPS) and verdicts[0] != "unfamiliar"
    assert f"asd: {len(OTHER_MACHINE_CLIPS)} clip(s) unfamiliar: " in run.stderr
    assert "the model is the one for this machine type" in run.stderr


def test_score_picks_one_channel_of_a_multichannel_wav(waveform_model, tmp_path):
    """An 8-channel WAVE_FORMAT_EXTENSIBLE file: the average by default (noted), or the
    channel --channel names, scored as that clip alone would be."""
    clips = sorted((SUBSET / "test").glob("*.flac"))
    channels = np.stack([sf.read(p, dtype="float32")[0] for p in clips], axis=1)
    wavex = tmp_path / "recorder.wav"
    sf.write(wavex, channels, 16000, format="WAVEX", subtype="PCM_24")
    mixed = asd("score", wavex, "--model", waveform_model)
    assert mixed.returncode == 0, mixed.stderr
    assert "downmixed 8 channels to mono" in mixed.stdout
    third = asd("score", wavex, clips[2], "--model", waveform_model, "--channel", "3")
    assert third.returncode == 0, third.stderr
    picked, alone = _rows(third.stdout)
    assert picked[4] == "used channel 3 of 8"
    assert float(picked[1]) == pytest.approx(float(alone[1]), rel=1e-4)
    line = _one_line_error(asd("score", wavex, "--model", waveform_model, "--channel", "9"))
    assert "channel 9 was asked for, but the file has 8 channels" in line
    assert asd("score", wavex, "--model", waveform_model, "--channel", "0").returncode == 2  # usage error


def test_evaluate_json_counts_the_verdicts(waveform_model, tmp_path):
    out = tmp_path / "metrics.json"
    run = asd("evaluate", "--model", waveform_model, "--data", SUBSET, "--json", out)
    assert run.returncode == 0, run.stderr
    metrics = json.loads(out.read_text())
    assert set(metrics["verdicts"]) == {"normal", "anomalous", "unfamiliar"}
    assert sum(metrics["verdicts"].values()) == metrics["n_clips"] == 8
    # flagged = above the threshold; an unfamiliar clip may be above it, but is not "anomalous"
    assert metrics["verdicts"]["anomalous"] <= metrics["n_flagged"] <= sum(
        metrics["verdicts"][v] for v in ("anomalous", "unfamiliar"))
    per_domain = metrics["sections"]["00"]["per_domain"]
    assert sum(d["n_unfamiliar"] for d in per_domain.values()) == metrics["verdicts"]["unfamiliar"]
    assert sum(d["n_unfamiliar"] for d in metrics["per_domain"].values()) == metrics["verdicts"]["unfamiliar"]
    assert "verdicts: " in run.stdout


def test_python_dash_m_asd_is_the_asd_command():
    run = subprocess.run([sys.executable, "-m", "asd", "--version"], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("asd ")
    usage = subprocess.run([sys.executable, "-m", "asd", "evaluate", "--help"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 0 and "usage: asd evaluate" in usage.stdout


def test_a_file_that_is_not_audio_is_answered_before_tensorflow_loads():
    """`asd score README.md`: one line on stderr, exit 2, and TensorFlow never imported
    (its import alone takes seconds)."""
    code = ("import sys; from asd.cli import main; "
            "rc = main(['score', 'README.md', '--model', 'production/models']); "
            "print(rc, 'tensorflow' in sys.modules)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.stdout.split() == ["2", "False"], run.stdout + run.stderr
    assert run.stderr.strip().splitlines() == ["asd: error: README.md: not a readable WAV or FLAC file (Format not recognised.)"]
    # the same with no model named: the file is answered first, in one line
    bare = subprocess.run([sys.executable, "-m", "asd.cli", "score", "README.md"], capture_output=True, text=True,
                          timeout=60, cwd=REPO)
    assert bare.returncode == 2 and bare.stderr.strip().splitlines() == [
        "asd: error: README.md: not a readable WAV or FLAC file (Format not recognised.)"]


def test_score_without_a_model_says_which_options_in_one_line():
    run = asd("score", SAMPLE_NORMAL)
    assert run.returncode == 2 and run.stderr.strip().splitlines() == [
        "asd: error: asd score needs a model: --model DIR (e.g. production/models) or --server URL "
        "(e.g. http://localhost:8501 with --name toycar)"]


def test_scoring_a_sample_prints_no_tensorflow_lines():
    run = asd("score", SAMPLE_NORMAL, "--model", REPO / "production" / "models")
    assert run.returncode == 0 and len(_rows(run.stdout)) == 1
    assert run.stderr == "", run.stderr


def test_score_json_lines_carry_the_model_and_every_figure(waveform_model):
    run = asd("score", SAMPLE_NORMAL, OTHER_MACHINE_CLIPS[0], "--model", waveform_model, "--json")
    assert run.returncode == 0, run.stderr
    records = [json.loads(line) for line in run.stdout.splitlines()]
    assert [r["file"] for r in records] == [str(SAMPLE_NORMAL), str(OTHER_MACHINE_CLIPS[0])]
    assert records[1]["verdict"] == "unfamiliar" and records[1]["unfamiliarity"] > records[1]["unfamiliar_threshold"]
    assert all(r["model"] == {"name": "toycar", "version": 1} and r["threshold"] > 0 for r in records)


def test_train_exports_to_runs_models_unless_told_to_ship(tmp_path):
    """A casual `asd train` never becomes the app's newest model: without --models-dir it
    exports to runs/models (relative to where it runs), and production/models is untouched."""
    shipped = REPO / "production" / "models"
    before = sorted((p.relative_to(shipped), p.stat().st_mtime_ns) for p in shipped.rglob("*"))
    overrides = [f"data_dir={SUBSET}", "detector=conv_ae", "model={filters: [8, 16, 16], latent_dim: 8}",
                 "training.epochs=1", "evaluate=false"]
    args = [sys.executable, "-m", "asd.cli", "train", "--config", str(CONFIG), *[a for o in overrides for a in ("--set", o)]]
    run = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (tmp_path / "runs" / "models" / "toycar" / "1" / "saved_model.pb").is_file()
    assert sorted((p.relative_to(shipped), p.stat().st_mtime_ns) for p in shipped.rglob("*")) == before
    elsewhere = tmp_path / "ship"
    run = subprocess.run([*args, "--models-dir", str(elsewhere)], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-2000:]
    assert (elsewhere / "toycar" / "1" / "saved_model.pb").is_file()


def test_train_names_an_unset_data_variable(tmp_path):
    """The shipped config finds the data through ASD_DATA_DIR: unset, the one line says so."""
    env = {k: v for k, v in os.environ.items() if k != "ASD_DATA_DIR"}
    run = subprocess.run([sys.executable, "-m", "asd.cli", "train", "--config", str(CONFIG)], capture_output=True,
                         text=True, timeout=300, env=env, cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines() == [
        "asd: error: data_dir ${ASD_DATA_DIR}/dcase2023t2/dev_data/ToyCar uses $ASD_DATA_DIR, which is not set: set it, "
        "e.g. ASD_DATA_DIR=../shared/data (a folder laid out like ../shared/data), or give the folder with --set data_dir=..."]


def test_train_help_names_the_configs_the_keys_the_detectors_and_the_data_variable():
    from asd.config import TrainConfig, TrainingSettings
    from asd.detectors import DETECTORS
    from asd.train_help import config_summary

    run = asd("train", "--help", timeout=60)
    assert run.returncode == 0 and run.stderr == "", run.stderr
    text = " ".join(run.stdout.split())  # as one line: the columns wrap wherever the terminal is
    shipped = sorted((REPO / "development" / "configs").glob("*.yaml"))
    assert len(shipped) >= 3
    for config in shipped:
        assert config.name in text and config_summary(config) in text
    assert "The shipped ToyCar model (DCASE 2023 Task 2 dev set)." in text  # toycar.yaml's opening sentence
    for kind in DETECTORS:
        assert kind in text
    for key in [*TrainConfig.model_fields, *(f"training.{k}" for k in TrainingSettings.model_fields),
                "threshold.quantile", "threshold.margin", "features.n_mels", "features.hop_length", "model.*"]:
        assert key in text
    assert "ASD_DATA_DIR" in text and "runs/models/<name>/<next version>/" in text and "tensorboard --logdir runs" in text
    assert text.count("asd train --config development/configs/") >= 2  # the examples


def test_train_help_reads_the_configs_of_the_working_directory_when_it_runs(tmp_path):
    """A config added to development/configs appears with its opening sentence: the help
    is read from the files, not written beside them."""
    configs = tmp_path / "development" / "configs"
    configs.mkdir(parents=True)
    (configs / "fan_dense.yaml").write_text("# Fan, e.g. the DCASE baseline\n# dense autoencoder. Second sentence.\n"
                                            "name: fan\ndata_dir: /data/fan\ndetector: dense_ae_mse\n")
    (configs / "sweep.yaml").write_text("# A sweep of something else.\nruns: 3\n")
    run = subprocess.run([sys.executable, "-m", "asd.cli", "train", "--help"], capture_output=True, text=True,
                         timeout=60, cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    text = " ".join(run.stdout.split())
    assert "development/configs/fan_dense.yaml Fan, e.g. the DCASE baseline dense autoencoder." in text
    assert "Second sentence" not in text
    assert "development/configs/sweep.yaml A sweep of something else. Not a training config." in text
    shipped = text.split("shipped configs")[1].split("config keys")[0]
    assert "toycar" not in shipped  # this directory's configs, not the repository's


def test_train_help_imports_no_tensorflow():
    code = ("import sys; from asd.cli import main\n"
            "try:\n    main(['train', '--help'])\nexcept SystemExit as exc:\n    code = exc.code\n"
            "print(code, sorted({m.split('.')[0] for m in sys.modules} & {'tensorflow', 'keras', 'sklearn'}))")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=REPO)
    assert run.stdout.splitlines()[-1] == "0 []", run.stdout[-500:] + run.stderr


def test_train_help_sorts_the_detector_kinds_as_their_classes_do():
    """The help calls the kinds of the scikit-learn module unservable without importing
    them; the classes agree."""
    from asd.detectors import DETECTORS, ServableDetector, detector_class
    from asd.train_help import SCIKIT_LEARN_MODULE

    for kind, (module, _) in DETECTORS.items():
        assert issubclass(detector_class(kind), ServableDetector) == (module != SCIKIT_LEARN_MODULE), kind
