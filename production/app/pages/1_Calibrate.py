"""Calibrate: teach a model this machine's normal sound from a few recordings (issue 15).

Upload normal recordings of the machine as it runs now (its microphone, placement, load,
room), see how the current version scores them, and publish a new version that has them
in its reference bank (:func:`asd.enrolment.enroll`: same network, no training). The new
version appears in the first page's model picker, with its base version and clip count.

Publishing needs the models folder writable by the app and TensorFlow in its process:
the in-process app (``ASD_MODEL_DIR``), or behind TF Serving an app image with TensorFlow
(built with ``--build-arg ASD_EXTRAS=app,train``) given the models folder writable as
``ASD_PUBLISH_MODELS_DIR``; TF Serving, with its read-only view of the same folder, loads
the new version by itself. Otherwise the page says how to run ``asd enroll`` instead.

Only an admin publishes (:mod:`asd.access`): the check runs in the code path that
writes (:func:`asd.access.guarded.publish_version`), not only by hiding the button.
"""

from __future__ import annotations

import importlib.util
import os
import tempfile
from pathlib import Path

import pandas as pd
import streamlit as st

from asd.access import AccessDenied, may
from asd.access.gate import gate
from asd.access.guarded import publish_version
from asd.audio import AudioError, load_audio
from asd.features import ClipTooShortError
from asd.inference import MAX_CLIP_SECONDS, Detector
from asd.layout import versions
from asd.scoring import ANOMALOUS, UNFAMILIAR
from asd.serving import make_backend
from asd.serving.catalog import Deployment

UPLOAD_TYPES = ("wav", "flac")


def writable_models_dir() -> tuple[Path | None, str]:
    """The models folder this app may publish versions to (``ASD_MODEL_DIR`` in-process,
    ``ASD_PUBLISH_MODELS_DIR`` behind TF Serving), or None and why not."""
    model_dir = os.environ.get("ASD_MODEL_DIR") or os.environ.get("ASD_PUBLISH_MODELS_DIR")
    if not model_dir:
        return None, ("this app reaches the models through TF Serving, which serves them but cannot add one; "
                      "give the app the models folder writable as ASD_PUBLISH_MODELS_DIR (README, \"Sign-in and "
                      "roles\"), or run `asd enroll` where the models folder is writable (TF Serving loads the new "
                      "version within seconds)")
    if importlib.util.find_spec("tensorflow") is None:
        return None, "publishing reads the model's graph, which needs TensorFlow in the app's process"
    if not os.access(model_dir, os.W_OK):
        return None, f"the models folder {model_dir} is read-only for this app"
    return Path(model_dir), ""


@st.cache_resource(show_spinner="Loading the model ...")
def base_detector(model_dir: str, name: str, version: int) -> Detector:
    return Detector(make_backend(model_dir=model_dir, name=name, version=version))


def score_uploads(detector: Detector, uploads) -> pd.DataFrame:
    """Each upload under the base version: score (x threshold), verdict, or why it cannot be used."""
    rows = []
    for upload in uploads:
        try:
            clip = load_audio(upload.getvalue(), detector.features.sample_rate, name=upload.name,
                              max_seconds=MAX_CLIP_SECONDS)
            result = detector.score_features(detector.prepare(clip, display=False))
            rows.append({"file": upload.name, "anomaly score (x threshold)": result.relative_score,
                         "verdict": result.verdict, "problem": ""})
        except (AudioError, ClipTooShortError) as exc:
            rows.append({"file": upload.name, "anomaly score (x threshold)": None, "verdict": "cannot be used",
                         "problem": str(exc)})
    return pd.DataFrame(rows)


def main() -> None:
    st.set_page_config(page_title="Calibrate: machine sound anomaly detector", layout="wide")
    identity = gate()
    st.title("Calibrate")
    st.write("Teach a model how this machine sounds when it is healthy, here and now: its microphone, its place, "
             "its load. Upload recordings of it running normally; they join the model's reference recordings "
             "in a new version (the network stays as it is, no training). On the DCASE toy cars, 20 recordings of "
             "12 s took the false alarms in a new setting from 14 % to about 1 % (README, \"Teaching it a new "
             "normal\").")
    try:
        deployment = Deployment.from_env()
    except ValueError as exc:
        st.error(f"The models are not available: {exc}")
        return
    models_dir, why_not = writable_models_dir()
    name = st.selectbox("Model", deployment.names, key="calibrate_name")
    if models_dir is not None and not may(identity, "publish"):
        models_dir, why_not = None, (f"publishing needs the admin role; you are {identity.name} "
                                     f"({identity.role or 'no role'})" if identity.via != "open" else
                                     "this app is reachable from other machines without sign-in")
    if models_dir is None:
        st.info(f"Publishing from this page is off: {why_not}.")
        st.code(f"asd enroll --model <models folder> --name {name} --domain target recordings/*.wav", language="bash")
        return
    available = versions(models_dir / name)
    if not available:
        st.error(f"No versions of {name} in {models_dir}.")
        return
    base = st.selectbox("Base version", list(reversed(available)), key="calibrate_base",
                        help="The version whose network and reference recordings the new one starts from.")
    detector = base_detector(str(models_dir), name, base)
    uploads = st.file_uploader("Normal recordings of the machine as it runs now", type=list(UPLOAD_TYPES),
                               accept_multiple_files=True, key="calibrate_clips")
    if not uploads:
        st.info("Upload a few normal recordings (WAV or FLAC) to start.")
        return
    table = score_uploads(detector, uploads)
    st.subheader(f"How {name} v{base} scores them")
    st.dataframe(table, hide_index=True)
    unusable = table[table["verdict"] == "cannot be used"]
    flagged = table[table["verdict"].isin([ANOMALOUS, UNFAMILIAR])]
    for _, row in unusable.iterrows():
        st.error(f"{row['file']} cannot be used: {row['problem']}")
    keep_flagged = False
    if len(flagged):
        st.warning(f"{len(flagged)} recording(s) already sound {' or '.join(sorted(set(flagged['verdict'])))} to "
                   f"v{base}: {', '.join(flagged['file'])}. They are left out unless you are sure the machine was "
                   "healthy when they were recorded.")
        keep_flagged = st.checkbox("The machine was healthy: enrol them too", key="calibrate_force")
    chosen = [u for u in uploads if u.name not in set(unusable["file"]) and (keep_flagged or u.name not in set(flagged["file"]))]
    domain = st.text_input("Domain label", "target", key="calibrate_domain",
                           help="A name for this setting: target, or e.g. line-3-mic-b (letters, digits, - and _).")
    if st.button(f"Publish a new version with {len(chosen)} recording(s)", disabled=not chosen, type="primary"):
        from asd.enrolment import EnrolmentError

        with tempfile.TemporaryDirectory() as folder, st.spinner("Publishing ..."):
            paths = []
            for upload in chosen:
                path = Path(folder) / Path(upload.name).name
                path.write_bytes(upload.getvalue())
                paths.append(path)
            try:
                new = publish_version(identity, models_dir, name, paths, domain, base, force=keep_flagged,
                                      db_url=os.environ.get("ASD_DB_URL"))
            except (EnrolmentError, AccessDenied) as exc:
                st.error(f"Not published: {exc}")
                return
        st.cache_data.clear()  # the Check page's list of versions
        st.success(f"Published {name} v{new.name}: {len(paths)} recording(s) of '{domain}' enrolled into v{base}. "
                   "Pick it in the model picker of the app's first page (\"streamlit app\" in the sidebar).")


main()
