"""The ``asd`` command: train, evaluate, score, benchmark, load-test, bench (speed) and resave;
monitor, db, history and alerts (:mod:`asd.monitoring.cli`).

Bad input ends with a one-line ``asd: error: ...`` message and exit code 2, never a
traceback.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from . import __version__
from .audio import AudioError, check_header, clip_problem
from .config import ConfigError
from .detectors.base import DetectorConfigError
from .data import FileNameError
from .features import ClipTooShortError
from .layout import ModelNotFoundError
from .metadata import ModelMismatchError
from .scoring import UNFAMILIAR, UNFAMILIAR_ADVICE
from .serving import ServingError
from .tensorflow_import import import_tensorflow
from .train_help import train_epilog

EXIT_BAD_INPUT = 2
EXIT_LOAD_TEST_FAILED = 1  # asd loadtest: a request was lost or answered wrongly
# asd evaluate warns below this many normal or anomalous clips in a domain (DCASE test
# sets have 50 each): with n of them, one clip can move an AUC by up to 1/n
MIN_CLIPS_PER_DOMAIN = 20
# Errors a user can act on: reported in one line, never as a traceback.
USER_ERRORS = (
    AudioError,
    ClipTooShortError,
    ConfigError,
    DetectorConfigError,
    FileNameError,
    FileNotFoundError,
    FileExistsError,
    ModelMismatchError,
    ModelNotFoundError,
    ServingError,
    ValueError,
)


def _fail(message: str) -> int:
    print(f"asd: error: {message}", file=sys.stderr)
    return EXIT_BAD_INPUT


def _add_backend_options(parser: argparse.ArgumentParser, required: bool = True) -> None:
    # asd score checks its files first (one line each, before a model is needed), then
    # asks for --model or --server itself: required=False there
    group = parser.add_mutually_exclusive_group(required=required)
    group.add_argument("--model", metavar="DIR", help="model directory in TF Serving's layout, run in-process")
    group.add_argument("--server", metavar="URL", help="TF Serving: http://host:8501 (REST) or grpc://host:8500 (gRPC)")
    parser.add_argument("--name", help="model name on the server (with --server) or in a models directory")
    parser.add_argument("--model-version", type=int, help="model version (default: latest)")
    parser.add_argument("--timeout", type=float, default=10.0, help="seconds per server request (default 10)")


def _detector(args):
    from .inference import Detector
    from .serving import make_backend

    if args.model:
        from .layout import resolve_version_dir

        resolve_version_dir(args.model, args.name, args.model_version)  # a wrong path fails fast
    if args.model or (args.server or "").startswith("grpc"):  # REST needs no TensorFlow
        import_tensorflow()

    backend = make_backend(
        model_dir=args.model, server_url=args.server, name=args.name, version=args.model_version, timeout_s=args.timeout
    )
    return Detector(backend)


def _require_machine_type_folder(data: str) -> None:
    """``data`` must hold train/ and test/ (asd benchmark and asd bench use both)."""
    if not Path(data, "train").is_dir() or not Path(data, "test").is_dir():
        raise FileNotFoundError(f"{data}: needs train/ and test/ folders (a machine-type folder such as dev_data/ToyCar)")


def cmd_train(args) -> int:
    from .config import folder_train_config, load_train_config

    if not args.config and not args.data:
        raise ConfigError("give --data FOLDER (a folder of one machine type's normal clips) or --config YAML")
    if args.name and not args.data:
        raise ConfigError("--name goes with --data (with --config alone, set name=... with --set)")
    import_tensorflow()  # quietly: checking the detector's settings imports the detectors
    overrides = args.set + ([f"models_dir={args.models_dir}"] if args.models_dir else [])
    if args.data:
        config, recipe = folder_train_config(args.data, args.name, args.config, overrides)
        print(f"training {config.machine_type} (model {config.name}) on {args.data} with {recipe}", flush=True)
    else:
        config = load_train_config(args.config, overrides)
    config.check_data_dir()
    from .train import train

    result = train(config, strict=args.strict)
    print(f"model: {result.version_dir}")
    print(f"tensorboard: tensorboard --logdir {result.run_dir.parent}")
    return 0


def _format_metrics(metrics: dict) -> str:
    def fmt(value):
        return "n/a" if value is None else f"{value:.4f}"

    lines = [
        f"model {metrics['model']['name']} v{metrics['model']['version']} on {metrics['data_dir']} "
        f"({metrics['n_clips']} clips, threshold {metrics['threshold']:.4f})",
        f"  AUC-source      {fmt(metrics['auc_source'])}",
        f"  AUC-target      {fmt(metrics['auc_target'])}",
        f"  pAUC (FPR<=0.1) {fmt(metrics['pauc'])}",
        f"  official score  {fmt(metrics['official_score'])}",
        f"  at threshold: precision {fmt(metrics['precision'])}  recall {fmt(metrics['recall'])}  "
        f"F1 {fmt(metrics['f1'])}  ({metrics['n_flagged']} of {metrics['n_clips']} flagged)",
    ]
    if "verdicts" in metrics:
        lines.append("  verdicts: " + ", ".join(f"{n} {v}" for v, n in metrics["verdicts"].items()))

    def domain_line(where: str, prf: dict) -> str:
        return (f"  {where}: false-alarm rate {fmt(prf['false_alarm_rate'])} "
                f"({prf['n_normal_flagged']} of {prf['n_normal']} normal flagged)  recall {fmt(prf['recall'])} "
                f"({prf['n_anomaly_flagged']} of {prf['n_anomaly']} anomalous flagged)  precision {fmt(prf['precision'])}  "
                f"F1 {fmt(prf['f1'])}" + (f"  unfamiliar {prf['n_unfamiliar']}" if "n_unfamiliar" in prf else ""))

    # per domain over all sections (JSON: per_domain), then per section when there are several
    # (JSON: sections.<id>.per_domain); older metrics (stored evaluations) may lack the first
    overall = metrics.get("per_domain")
    sections = metrics["sections"]
    if overall:
        lines += [domain_line(f"{domain} domain" if len(sections) == 1 else f"{domain} domain, all sections", prf)
                  for domain, prf in overall.items()]
    if not overall or len(sections) > 1:
        lines += [domain_line(f"section {section} {domain}", prf)
                  for section, values in sections.items() for domain, prf in values["per_domain"].items()]
    return "\n".join(lines)


def cmd_evaluate(args) -> int:
    from .evaluation import evaluate_directory, write_scores_csv

    detector = _detector(args)
    metrics, rows = evaluate_directory(detector, args.data)
    print(_format_metrics(metrics))
    few = [f"section {section} {domain}: {f['n_normal']} normal, {f['n_anomaly']} anomalous"
           for section, values in metrics["sections"].items() for domain, f in values["per_domain"].items()
           if min(f["n_normal"], f["n_anomaly"]) < MIN_CLIPS_PER_DOMAIN]
    if few:
        print(f"asd: note: fewer than {MIN_CLIPS_PER_DOMAIN} normal or anomalous clips per domain ({'; '.join(few)}): "
              "with n clips, one clip can move an AUC by up to 1/n; do not compare models on these figures",
              file=sys.stderr)
    if args.json:
        Path(args.json).write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
        print(f"metrics written to {args.json}")
    if args.scores_csv:
        write_scores_csv(rows, args.scores_csv)
        print(f"per-clip scores written to {args.scores_csv}")
    return 0


# asd score's tab-separated columns (after a "# model ..." line); --json writes these keys
# and the model, unfamiliarity and unfamiliar threshold as JSON Lines instead
SCORE_COLUMNS = ("file", "anomaly_score", "threshold", "verdict", "notes")


def _header_problem(file: str) -> str | None:
    """Why ``file`` cannot be scored, if its header alone says so (no model needed)."""
    try:
        check_header(file)
    except (AudioError, OSError) as exc:
        return clip_problem(file, exc)
    return None


def _score_line(file, result, model: dict, as_json: bool) -> str:
    """One scored clip as ``asd score`` prints it: a table row, or a JSON object."""
    if as_json:
        return json.dumps({"file": str(file), "anomaly_score": result.score, "threshold": result.threshold,
                           "verdict": result.verdict, "unfamiliarity": result.unfamiliarity,
                           "unfamiliar_threshold": result.unfamiliar_threshold, "notes": result.notes, "model": model})
    return f"{file}\t{result.score:.6f}\t{result.threshold:.6f}\t{result.verdict}\t{'; '.join(result.notes)}"


def _print_header(detector) -> None:
    meta = detector.metadata
    unfamiliar_rule = f"; unfamiliar above {detector.unfamiliar_threshold:.6f}" if detector.unfamiliar_threshold else ""
    print(f"# model {meta.name} v{meta.version} ({meta.detector}): decision threshold {detector.threshold:.6f}"
          f"{unfamiliar_rule}")
    print("\t".join(SCORE_COLUMNS), flush=True)


def cmd_score(args) -> int:
    from .bulk_scoring import expand_paths

    if args.resume and not args.output:
        raise ValueError("--resume needs --output FILE (the results to go on with)")
    files = expand_paths(args.files)
    if not files:
        raise FileNotFoundError(f"no .wav or .flac files in {', '.join(args.files)}")
    problems = [_header_problem(f) for f in files]
    if all(problems):  # nothing to score: answer before loading a model (and TensorFlow)
        for message in problems:
            print(f"asd: error: {message}", file=sys.stderr)
        return EXIT_BAD_INPUT
    if not (args.model or args.server):
        raise ValueError("asd score needs a model: --model DIR (e.g. production/models) or --server URL "
                         "(e.g. http://localhost:8501 with --name toycar)")
    detector = _detector(args)
    if args.concurrency or args.output:
        return _score_concurrently(args, detector, files)
    meta = detector.metadata
    model = {"name": meta.name, "version": meta.version}
    if not args.json:
        _print_header(detector)
    failed, unfamiliar = 0, 0
    for file, outcome in detector.score_files(files, workers=args.workers, batch_size=args.batch_size,
                                              channel=args.channel, display=False):
        if isinstance(outcome, Exception):  # AudioError, ClipTooShortError or OSError (score_files)
            failed += 1
            print(f"asd: error: {clip_problem(file, outcome)}", file=sys.stderr)
            continue
        print(_score_line(file, outcome, model, args.json), flush=True)
        unfamiliar += outcome.verdict == UNFAMILIAR
    if unfamiliar:
        print(f"asd: {unfamiliar} clip(s) unfamiliar: {UNFAMILIAR_ADVICE}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def _score_concurrently(args, detector, files) -> int:
    """``asd score --concurrency N`` / ``--output FILE``: clips in flight at once, results
    as they complete, retries of transient server errors, a summary at the end."""
    from collections import Counter

    from .bulk_scoring import Progress, ResultFile, result_record, score_concurrently, summary

    meta = detector.metadata
    model = {"name": meta.name, "version": meta.version}
    output = ResultFile(args.output, meta.name, meta.version, resume=args.resume) if args.output else None
    todo = [f for f in files if str(f) not in output.done] if output else files
    if output is None and not args.json:
        _print_header(detector)
    # a progress bar on a terminal, unless the results themselves go to it
    progress = Progress(len(todo), stream=sys.stderr if (output or not sys.stdout.isatty()) else None)
    verdicts: Counter = Counter()
    failed = []
    try:
        for outcome in score_concurrently(detector, todo, args.concurrency or 1, args.channel, retries=args.retries):
            if outcome.result is None:
                failed.append(outcome)
            else:
                verdicts[outcome.result.verdict] += 1
                if output:
                    output.write(result_record(outcome.result, outcome.file, meta.name, meta.version))
                else:
                    print(_score_line(outcome.file, outcome.result, model, args.json), flush=True)
            progress.update(outcome.result is None)
    finally:
        progress.finish()
        if output:
            output.close()
    print(summary(verdicts, failed, len(files) - len(todo)), file=sys.stderr)
    if verdicts[UNFAMILIAR]:
        print(f"asd: {verdicts[UNFAMILIAR]} clip(s) unfamiliar: {UNFAMILIAR_ADVICE}", file=sys.stderr)
    return EXIT_BAD_INPUT if failed else 0


def cmd_enroll(args) -> int:
    from .enrolment import enroll

    version_dir = enroll(args.model, args.name, args.clips, args.domain, base_version=args.model_version,
                         out_dir=args.models_dir, force=args.force, threshold_rule=args.threshold_rule,
                         log=lambda line: print(line, file=sys.stderr))
    print(version_dir)
    return 0


def cmd_enroll_curve(args) -> int:
    from .measure.enrolment_curve import run_enrolment_curve

    _require_machine_type_folder(args.data)
    ks = [int(k) for k in args.ks.split(",") if k.strip()]
    if not ks or any(k < 0 for k in ks):
        raise ValueError("--ks must be non-negative integers separated by commas, e.g. 0,3,5,10,20,40")
    report = run_enrolment_curve(args.model, args.data, args.out, name=args.name, version=args.model_version,
                                 ks=sorted(set(ks)), draws=args.draws, seed=args.seed, rule=args.threshold_rule)
    print((Path(args.out) / "enrolment.md").read_text(), end="")
    print(f"report: {Path(args.out) / 'enrolment.md'}, {Path(args.out) / 'enrolment.json'}, {Path(args.out) / 'enrolment.png'}")
    met = report["targets"]["met"]
    missed = [key for key in ("auc_target", "false_alarm_target", "source_no_worse") if not met[key]]
    if missed:
        print(f"asd enroll-curve: targets missed at k = {met['k']}: {', '.join(missed)}", file=sys.stderr)
    return 0


def cmd_baseline_curve(args) -> int:
    from .measure.baseline_curve import TARGET_WINDOW, run_baseline_curve

    if not Path(args.data, "test").is_dir():
        raise FileNotFoundError(f"{args.data}: needs a labelled test/ folder (a machine-type folder such as dev_data/ToyCar)")
    ks = sorted({int(k) for k in args.ks.split(",") if k.strip()})
    windows = sorted({int(w) for w in args.windows.split(",") if w.strip()})
    if not ks or any(k < 0 for k in ks) or 1 in ks:
        raise ValueError("--ks must be non-negative integers other than 1 (a threshold needs 2 baseline clips), "
                         "separated by commas, e.g. 0,3,5,8")
    if not windows or any(w < 1 for w in windows):
        raise ValueError("--windows must be positive integers separated by commas, e.g. 1,5")
    rules = [r.strip() for r in args.rules.split(",") if r.strip()] if args.rules else None
    report = run_baseline_curve(args.model, args.data, args.out, name=args.name, version=args.model_version, ks=ks,
                                windows=windows, draws=args.draws, rules=rules, seed=args.seed, cache=args.cache,
                                log=lambda line: print(line, file=sys.stderr))
    out = Path(args.out)
    print((out / "baselines.md").read_text(), end="")
    print(f"report: {out / 'baselines.md'}, {out / 'baselines.json'}, {out / 'baselines.png'}")
    missed = [key for key, ok in report["targets_met"][report["default_rule"]].items() if not ok]
    if missed:
        print(f"asd baseline-curve: targets (windows of {TARGET_WINDOW}) missed by {report['default_rule']}: "
              f"{', '.join(missed)}", file=sys.stderr)
    return 0


def cmd_robustness(args) -> int:
    from .measure.robustness import run_robustness

    detector = _detector(args)
    names = [n.strip() for n in args.perturbations.split(",") if n.strip()] if args.perturbations else None
    report = run_robustness(detector, args.data, args.out, names=names)
    print((Path(args.out) / "robustness.md").read_text(), end="")
    print(f"report: {Path(args.out) / 'robustness.md'}, {Path(args.out) / 'robustness.json'}")
    missed = [r["perturbation"] for r in report["rows"] if r["meets_targets"] is False]
    if missed:
        print(f"asd robustness: targets missed under {', '.join(missed)}", file=sys.stderr)
    return 0


DEFAULT_BENCHMARK_CONFIG = "development/configs/benchmark.yaml"


def cmd_benchmark(args) -> int:
    from .measure.benchmark import load_benchmark_config

    if args.retrain and not args.update:
        raise ConfigError("--retrain goes with --update (without it every row trains anyway)")
    config = load_benchmark_config(args.config, args.set)
    if args.seeds is not None:
        if not 1 <= args.seeds <= len(config.seeds):
            raise ConfigError(f"--seeds must be 1 to {len(config.seeds)} (the config lists {config.seeds})")
        config.seeds = config.seeds[: args.seeds]
    names = [d.strip() for d in args.detectors.split(",") if d.strip()] if args.detectors != "all" else list(config.detectors)
    if not Path(args.data, "test").is_dir():
        raise FileNotFoundError(f"{args.data}: needs a labelled test/ folder (DCASE names, or normal/ and anomaly/ "
                                "folders); the training clips are its train/ folder's, or every other clip in it")
    from .measure.benchmark import run_benchmark  # imports the detectors' libraries

    run_benchmark(args.data, config, names, args.out, max_train_clips=args.max_train_clips, update=args.update,
                  retrain=args.retrain)
    print((Path(args.out) / "results.md").read_text(), end="")
    print(f"report: {Path(args.out) / 'results.md'}, {Path(args.out) / 'results.json'}; plots in {Path(args.out) / 'plots'}")
    return 0


def cmd_loadtest(args) -> int:
    import glob

    from .measure.loadtest import DEFAULT_CLIPS_GLOB, available_backends, markdown_report, run_loadtest

    backends = [b.strip() for b in (args.backends or ",".join(available_backends())).split(",") if b.strip()]
    clips = sorted(glob.glob(DEFAULT_CLIPS_GLOB)) + list(args.clips)
    if not clips:
        raise FileNotFoundError(f"no clips: {DEFAULT_CLIPS_GLOB} matches nothing here; give WAV/FLAC files with --clips")
    report = run_loadtest(
        args.model, clips, backends, n_requests=args.requests, threads=args.threads, out_dir=args.out,
        name=args.name, version=args.model_version, timeout_s=args.timeout,
    )
    print(markdown_report(report), end="")
    print(f"report: {Path(args.out) / 'load_test.md'}, {Path(args.out) / 'load_test.json'}")
    if report["ok"]:
        return 0
    failed = "; ".join(f"{k}: {r['lost']} lost, {r['wrong']} wrong" for k, r in report["backends"].items())
    print(f"asd: load test failed: {failed} (of {args.requests} requests per backend)", file=sys.stderr)
    return EXIT_LOAD_TEST_FAILED


def cmd_bench(args) -> int:
    from .measure.speed import DEFAULT_TRAIN_CONFIG, SECTIONS, BenchSettings, run_bench

    _require_machine_type_folder(args.data)
    if not str(args.out).endswith(".md"):
        raise ValueError(f"--out {args.out}: name the Markdown report, e.g. benchmarks/speed/report.md (the JSON goes next to it)")
    sections = tuple(s.strip() for s in args.sections.split(",") if s.strip()) if args.sections else tuple(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        raise ValueError(f"--sections {args.sections}: choose from {', '.join(SECTIONS)}")
    quick = {"repeats": 2, "requests": 10, "epochs": 2, "ingest_clips": 16, "ingest_machines": 2} if args.quick else {}
    settings = BenchSettings(
        data=Path(args.data), out=Path(args.out), models=Path(args.model), name=args.name,
        repeats=args.repeats or quick.get("repeats", 5), requests=args.requests or quick.get("requests", 200),
        max_clips=args.max_clips, train_config=Path(args.config or DEFAULT_TRAIN_CONFIG),
        epochs=args.epochs or quick.get("epochs"), max_train_clips=args.max_train_clips, quick=args.quick,
        sections=sections, ingest_clips=args.ingest_clips or quick.get("ingest_clips", 1000),
        ingest_machines=args.ingest_machines or quick.get("ingest_machines", 50),
    )
    for name in ("repeats", "requests", "ingest_clips", "ingest_machines"):
        if getattr(settings, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be at least 1")
    report = run_bench(settings)
    print(Path(args.out).read_text(), end="")
    print(f"report: {args.out}, {Path(args.out).with_suffix('.json')}")
    missed = [r["what"] for r in report["headline"] if r["met"] is False]
    if missed and not args.quick:
        print(f"asd bench: {len(missed)} target(s) missed: " + "; ".join(missed), file=sys.stderr)
    return 0


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a clear usage error otherwise)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not 1 or more")
    return value


def cmd_resave(args) -> int:
    from .layout import resolve_version_dir

    version_dir = resolve_version_dir(args.model, args.name, args.model_version)
    if args.add_embedding:
        import_tensorflow()
        from .enrolment import EnrolmentError, add_embedding_output

        try:
            add_embedding_output(version_dir, log=print)
        except EnrolmentError as exc:
            return _fail(str(exc))
        return 0
    if not args.out and not args.in_place:
        return _fail("say where: --out DIR (a new version directory) or --in-place (or --add-embedding: the next "
                     "version with the embedding output)")
    tf = import_tensorflow()
    from .export import replace_savedmodel, resave_savedmodel

    written = replace_savedmodel(version_dir) if args.in_place else resave_savedmodel(version_dir, args.out)
    print(f"{written}: written by TensorFlow {tf.__version__}; signatures and warm-up clip outputs unchanged")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="asd", description="Unsupervised anomalous sound detection for machine condition monitoring."
    )
    parser.add_argument("--version", action="version", version=f"asd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("train", help="train a model on normal clips and export it as a SavedModel",
                       description="Train a model on a machine type's normal clips, fit its decision threshold,\n"
                                   "evaluate it on the labelled test clips and export it as a SavedModel.",
                       epilog=train_epilog(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", metavar="FOLDER",
                   help="a folder of one machine type's normal clips (.wav/.flac, any names, searched recursively; its "
                        "train/ folder when it has one; source/ and target/ folders name domains, else all are source; "
                        "a labelled test/ folder is evaluated): trains without --config with the shipped recipe, "
                        "attribute-free unless the clips carry DCASE names")
    p.add_argument("--name", help="with --data: the machine type and model name (default: the folder's name)")
    p.add_argument("--config", help="YAML training config (the shipped ones and every key below); with --data, "
                   "its data_dir, name and machine_type are replaced")
    p.add_argument("--strict", action="store_true", help="refuse to train when a clip cannot be used "
                   "(default: such clips are listed and skipped)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="override a setting, e.g. training.epochs=3")
    p.add_argument("--models-dir", metavar="DIR",
                   help="export to DIR/<name>/<next version>/ (default: the config's models_dir, runs/models; "
                        "ship a model with --models-dir production/models)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("evaluate", help="AUC per domain, pAUC and official score on a labelled test set")
    _add_backend_options(p)
    p.add_argument("--data", required=True, help="machine-type folder with test/ (e.g. dev_data/ToyCar), or a test "
                   "folder; clips labelled by DCASE names or by normal/ and anomaly/ (abnormal/, as MIMII has it) folders")
    p.add_argument("--json", metavar="FILE", help="also write the metrics as JSON")
    p.add_argument("--scores-csv", metavar="FILE", help="also write each clip's score as CSV")
    p.set_defaults(func=cmd_evaluate)

    p = sub.add_parser("score", help="score WAV/FLAC files and folders: a '# model' line, then a tab-separated table "
                       "(file, anomaly_score, threshold, verdict, notes)")
    p.add_argument("files", nargs="+", metavar="PATH", help="WAV/FLAC files, or folders (their .wav/.flac files, recursively)")
    _add_backend_options(p, required=False)
    p.add_argument("--workers", type=int, default=2,
                   help="threads decoding clips and computing log-mel ahead of the model (default 2)")
    p.add_argument("--batch-size", type=int, default=8,
                   help="clips per model request at most, of those ready when the model is free (default 8; "
                        "never more than 512 input rows, TF Serving's max_batch_size)")
    p.add_argument("--channel", type=_positive_int, metavar="N",
                   help="score channel N (1 = first) of multi-channel files instead of their average")
    p.add_argument("--json", action="store_true",
                   help="write one JSON object per clip (JSON Lines: file, anomaly_score, threshold, verdict, "
                        "unfamiliarity, unfamiliar_threshold, notes, model) instead of the table")
    p.add_argument("--concurrency", type=_positive_int, metavar="N",
                   help="score N clips at once, each its own request (for a server, or several behind one "
                        "address); results in the order they complete, with a summary on stderr")
    p.add_argument("--output", metavar="FILE",
                   help="write results to FILE as they come: CSV if it ends in .csv, else JSON Lines "
                        "(columns file, anomaly_score, threshold, verdict, unfamiliarity, unfamiliar_threshold, notes, "
                        "model_name, model_version); never overwrites")
    p.add_argument("--resume", action="store_true",
                   help="go on with an existing --output: skip the clips already in it (same model and version)")
    p.add_argument("--retries", type=int, default=4, metavar="N",
                   help="with --concurrency or --output: retry a clip N times, waiting 0.5, 1, 2, ... s, when the "
                        "server is unreachable, overloaded or too slow (default 4); a clip still failing is listed")
    p.set_defaults(func=cmd_score)

    p = sub.add_parser("enroll", help="a new model version that knows more normal: the clips' embeddings join the "
                       "base version's reference bank (same network, no training); prints the new version's folder")
    p.add_argument("clips", nargs="+", metavar="CLIP", help="WAV/FLAC recordings of the machine as it runs now, normal")
    p.add_argument("--model", required=True, metavar="DIR", help="models directory holding the base version")
    p.add_argument("--name", required=True, help="model name (e.g. toycar)")
    p.add_argument("--model-version", type=int, help="base version (default: latest)")
    p.add_argument("--domain", required=True, metavar="LABEL",
                   help="the clips' domain: target, or a new label such as line-3-mic-b")
    p.add_argument("--models-dir", metavar="DIR", help="write the new version here (default: --model's directory)")
    p.add_argument("--force", action="store_true",
                   help="also enrol clips the base version calls anomalous or unfamiliar (refused otherwise)")
    p.add_argument("--threshold-rule", choices=("base", "refit_all", "refit_training"), default="base",
                   help="the new version's decision threshold: the base version's (default; refits raise false "
                        "alarms in the other domains, benchmarks/enrolment), or refitted on the training and "
                        "enrolled clips left out one at a time (refit_all) or on the training clips only")
    p.set_defaults(func=cmd_enroll)

    p = sub.add_parser("enroll-curve", help="how many recordings of a new normal a user needs: enrol k target-domain "
                       "normal test clips into a reference-bank model's bank (threshold refitted on the bank only), "
                       "score the rest; AUC and false alarms per k over random draws; writes a report and a plot")
    p.add_argument("--model", required=True, metavar="DIR", help="models directory (or a version directory)")
    p.add_argument("--name", help="model name in it")
    p.add_argument("--model-version", type=int, help="model version (default: latest)")
    p.add_argument("--data", required=True, help="machine-type folder with train/ and labelled test/ (e.g. dev_data/ToyCar)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for enrolment.md, enrolment.json, enrolment.png")
    p.add_argument("--ks", default="0,3,5,10,20,40", metavar="K,K", help="clips enrolled (default 0,3,5,10,20,40)")
    p.add_argument("--draws", type=_positive_int, default=10, help="random draws per k > 0 (default 10)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--threshold-rule", choices=("base", "refit_all", "refit_training"), default="base",
                   help="the enlarged bank's decision threshold: the version's own (default), or refitted on all "
                        "bank clips or on the training clips (asd.enrolment.bank_threshold)")
    p.set_defaults(func=cmd_enroll_curve)

    p = sub.add_parser("baseline-curve", help="a healthy baseline per machine (issue 29): k of each machine's normal "
                       "test clips as its baseline, the rest scored against the bank plus the baseline; AUC per clip "
                       "and per window, and false alarms and recall at thresholds fitted from the baseline alone")
    p.add_argument("--model", required=True, metavar="DIR", help="models directory (or a version directory)")
    p.add_argument("--name", help="model name in it")
    p.add_argument("--model-version", type=int, help="model version (default: latest)")
    p.add_argument("--data", required=True, help="machine-type folder with labelled test/ clips (e.g. dev_data/ToyCar)")
    p.add_argument("--out", required=True, metavar="DIR", help="folder for baselines.md, baselines.json, baselines.png")
    p.add_argument("--ks", default="0,3,5,8", metavar="K,K", help="baseline clips per machine (default 0,3,5,8)")
    p.add_argument("--windows", default="1,5", metavar="W,W", help="clips per window score (default 1,5)")
    p.add_argument("--draws", type=_positive_int, default=10, help="random draws per k > 0 (default 10)")
    p.add_argument("--rules", metavar="RULE[:C],...", help="threshold rules measured, each optionally with its "
                   "constant (asd.monitoring.baselines.RULES; default: all, with their default constants)")
    p.add_argument("--seed", type=int, default=0, help="seed of the draws (default 0)")
    p.add_argument("--cache", metavar="FILE", help="keep the clips' served scores and embeddings in this .npz "
                   "(e.g. runs/baseline_curve/toycar.npz; reused when the version and clips match)")
    p.set_defaults(func=cmd_baseline_curve)

    p = sub.add_parser("robustness", help="score the labelled test clips clean and through the recording chain "
                       "(resampling, gain, bit depth, DC, noise, low-pass); write a report")
    _add_backend_options(p)
    p.add_argument("--data", required=True, help="machine-type folder with test/ (e.g. dev_data/ToyCar)")
    p.add_argument("--out", required=True, help="folder for robustness.md and robustness.json")
    p.add_argument("--perturbations", metavar="A,B", help="only these (clean always runs); default: all")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("benchmark", help="train and evaluate several detectors on the same split; write a table and plots")
    p.add_argument("--data", required=True, help="machine-type folder with a labelled test/ folder and normal "
                   "training clips: its train/ folder's, or any other clips in it (any names, as asd train --data)")
    p.add_argument("--detectors", default="all", help="comma-separated entries of the config, or 'all' (default)")
    p.add_argument("--out", required=True, metavar="DIR", help="where results.md, results.json, scores.csv and plots/ go")
    p.add_argument("--config", default=DEFAULT_BENCHMARK_CONFIG, help=f"benchmark YAML (default {DEFAULT_BENCHMARK_CONFIG})")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a setting, e.g. detectors.conv_ae.training.epochs=2")
    p.add_argument("--seeds", type=int, help="use the first N seeds of the config for neural detectors (default: all)")
    p.add_argument("--max-train-clips", type=int, help="use this many training clips (quick runs)")
    p.add_argument("--update", action="store_true", help="keep the other rows of the report already in --out (same "
                   "data and seeds); the rows run now replace theirs: long rows can run one at a time. A row run again with the "
                   "same settings keeps its earlier seeds' runs and trains only new seeds")
    p.add_argument("--retrain", action="store_true", help="with --update: train every seed of the rows named again, "
                   "also those an earlier run of the same settings has (after a change to the training code)")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("loadtest", help="many concurrent scoring requests per backend: none lost or wrong; latency report")
    p.add_argument("--model", required=True, metavar="DIR", help="models directory in TF Serving's layout (or a model or version directory)")
    p.add_argument("--name", help="model name in the models directory")
    p.add_argument("--model-version", type=int, help="model version (default: latest)")
    p.add_argument("--requests", type=int, default=1000, help="scoring requests per backend (default 1000)")
    p.add_argument("--threads", type=int, default=16, help="client threads sending them (default 16)")
    p.add_argument("--clips", nargs="+", default=[], metavar="PATH",
                   help="more WAV/FLAC files or directories, besides the sample clips production/samples/*/*.wav")
    p.add_argument("--backends", help="comma-separated: inprocess, rest (stand-in server started here), grpc "
                   "(default: all this installation has)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds a request may take before it counts as lost (default 30)")
    p.add_argument("--out", required=True, metavar="DIR", help="where load_test.md and load_test.json go")
    p.set_defaults(func=cmd_loadtest)

    p = sub.add_parser("bench", help="speed and memory against the targets: scoring, serving, training, the app; "
                       "writes a Markdown and JSON report")
    p.add_argument("--data", required=True, help="machine-type folder with train/ and labelled test/ (e.g. dev_data/ToyCar)")
    p.add_argument("--out", required=True, metavar="FILE", help="the Markdown report (e.g. benchmarks/speed/report.md); "
                   "the JSON goes next to it")
    p.add_argument("--model", default="production/models", metavar="DIR",
                   help="models directory in TF Serving's layout (default production/models)")
    p.add_argument("--name", default="toycar", help="model name in it (default toycar); every version is measured")
    p.add_argument("--repeats", type=int, help="repeated runs of each throughput figure (default 5; quick 2)")
    p.add_argument("--requests", type=int, help="requests per serving figure (default 200; quick 10)")
    p.add_argument("--max-clips", type=int, help="score only the first N test clips")
    p.add_argument("--config", help="training config measured (default development/configs/toycar_conv_ae.yaml)")
    p.add_argument("--epochs", type=int, help="override its epochs (default: the config's; quick 2)")
    p.add_argument("--max-train-clips", type=int, help="train on N clips only")
    p.add_argument("--quick", action="store_true",
                   help="reduced mode for CI: small numbers; reports the targets but never judges them")
    p.add_argument("--sections", metavar="LIST", help="comma-separated, what to measure: scoring, serving (REST, gRPC, "
                   "the app), training, ingest (asd monitor --once vs asd score) (default: all); with fewer than all, "
                   "an existing report at --out keeps its other sections and gets these replaced")
    p.add_argument("--ingest-clips", type=int, help="clips of the ingest measurement: the test clips copied round "
                   "(default 1000; quick 16)")
    p.add_argument("--ingest-machines", type=int, help="machine folders they are spread over (default 50; quick 2)")
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("resave", help="write a model version again with the installed TensorFlow (the serving "
                       "image's), its signatures, variables and assets.extra unchanged; checks the outputs are identical")
    p.add_argument("--model", required=True, metavar="DIR", help="models, model or version directory in TF Serving's layout")
    p.add_argument("--name", help="model name in a models directory")
    p.add_argument("--model-version", type=int, help="model version (default: latest)")
    where = p.add_mutually_exclusive_group()
    where.add_argument("--out", metavar="DIR", help="write the re-saved version to DIR (must not exist)")
    where.add_argument("--in-place", action="store_true",
                       help="replace saved_model.pb, fingerprint.pb and variables/ of the version itself")
    where.add_argument("--add-embedding", action="store_true",
                       help="write the next version beside it: the same graph and variables, serving_default with the "
                            "clip embedding as the output 'embedding' (reference-bank models); checks the other outputs "
                            "are unchanged")
    p.set_defaults(func=cmd_resave)
    from .monitoring.cli import add_commands as add_monitoring_commands

    add_monitoring_commands(sub, _add_backend_options, _detector)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.func in (cmd_benchmark, cmd_bench, cmd_loadtest, cmd_enroll_curve, cmd_enroll, cmd_baseline_curve):  # they import TensorFlow at once
            import_tensorflow()
        return args.func(args)
    except USER_ERRORS as exc:
        return _fail(str(exc))
    except KeyboardInterrupt:
        return _fail("interrupted")


if __name__ == "__main__":
    sys.exit(main())
