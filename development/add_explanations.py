"""Add what the app explains clips with (asd.explanations) to a model exported before it.

    python development/add_explanations.py production/models/toycar/1 ../shared/data/dcase2023t2/dev_data/ToyCar/train \
        --fitted-on "..."

A frame-level model (log-mel input) gains ``frame_threshold`` in
``assets.extra/asd_metadata.json``, fitted on the clips' per-frame errors through the
model itself (loaded in-process); a whole-clip model (waveform input) gains
``assets.extra/band_profiles.npz``. Only files under ``assets.extra/`` are written: the
SavedModel (and the JSON its ``metadata`` signature serves) stay as exported, so a client
that reads the metadata from TF Serving sees the new key only after a re-export.
The other keys of the JSON are kept as they are; an existing ``frame_threshold`` or
profile file is refused unless ``--replace``.
"""

from __future__ import annotations

import argparse
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from asd.data import list_clips
from asd.detectors.base import load_clipset
from asd.explanations import BAND_PROFILES_FILE, BandProfiles, fit_frame_threshold, training_frame_errors
from asd.metadata import METADATA_FILE, WAVEFORM_INPUT_NAME, ModelMetadata


def _refusal(args, whole_clip: bool, has_frame_threshold: bool) -> str | None:
    """Why the model must not be changed as asked, checked before the clips are read; or None."""
    if whole_clip:
        exists = (args.version_dir / BAND_PROFILES_FILE).exists() and not args.replace
        return f"{args.version_dir / BAND_PROFILES_FILE} exists (--replace to replace it)" if exists else None
    if has_frame_threshold and not args.replace:
        return f"{args.version_dir / METADATA_FILE} has a frame_threshold (--replace to replace it)"
    return None if args.fitted_on else "a frame-level model needs --fitted-on (what the clips are, for its metadata)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("version_dir", type=Path, help="a model version directory (<models>/<name>/<version>)")
    parser.add_argument("train_dir", type=Path, help="the folder of normal training clips to fit on")
    parser.add_argument("--fitted-on", help="what the clips are, for the record in a frame-level model's metadata")
    parser.add_argument("--replace", action="store_true", help="replace an existing frame threshold or profile file")
    args = parser.parse_args(argv)
    try:
        metadata = ModelMetadata.read(args.version_dir)
        clips = [c for c in list_clips(args.train_dir, split="train") if c.label != "anomaly"]
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    path = args.version_dir / METADATA_FILE
    raw = json.loads(path.read_text(encoding="utf-8"))
    whole_clip = metadata.input == WAVEFORM_INPUT_NAME
    problem = _refusal(args, whole_clip, "frame_threshold" in raw)
    if problem:
        print(f"error: {problem}", file=sys.stderr)
        return 2
    print(f"computing the log-mel of {len(clips)} clips ...")
    clipset = load_clipset(clips, metadata.features)
    names = [c.path.name for c in clips]
    if whole_clip:
        path = BandProfiles.fit(names, clipset.logmels).save(args.version_dir)
        print(f"wrote {path} ({path.stat().st_size / 1024:.0f} kB)")
        return 0
    from asd.inference import Detector
    from asd.serving.inprocess import InProcessBackend  # imports TensorFlow

    detector = Detector(InProcessBackend(args.version_dir))
    print(f"scoring {len(clips)} clips through {detector.backend.describe()} ...")
    frame_threshold = {
        **fit_frame_threshold(training_frame_errors(detector, names, clipset.logmels)),
        "fitted_on": args.fitted_on,
        "added": f"{datetime.now(timezone.utc):%Y-%m-%d} by development/add_explanations.py, after export "
                 "(so the metadata signature of this SavedModel does not carry it)",
    }
    # placed where an export writes it (ModelMetadata.to_dict): after the decision threshold
    after = "unfamiliar" if "unfamiliar" in raw else "threshold"
    raw.pop("frame_threshold", None)
    raw = {k2: v2 for k, v in raw.items()
           for k2, v2 in ([(k, v), ("frame_threshold", frame_threshold)] if k == after else [(k, v)])}
    ModelMetadata.from_dict(raw)  # what the app will parse
    path.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    print(f"frame threshold {raw['frame_threshold']['value']:.4f} written to {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
