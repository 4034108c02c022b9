"""Machines: what ``asd monitor`` has seen, machine by machine (issue 23).

Reads the monitoring database ``asd monitor`` writes, at ``ASD_DB_URL`` (default: the
SQLite file in the data folder, :func:`asd.monitoring.store.default_db_url`). A table of
machines comes first, open alerts at the top; then one machine's score trend (threshold
line, points coloured by verdict, the window score, model-version changes marked), its
baseline status, a clip's spectrogram and audio with a button to mark it healthy
baseline, its open alert with an Acknowledge button, and its alert rule.
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import streamlit as st

from asd.access import AccessDenied, may
from asd.access.gate import gate
from asd.access.guarded import acknowledge_alert, mark_baseline, set_rule
from asd.audio import AudioError
from asd.monitoring.alerts import AlertRule
from asd.monitoring.figures import clip_spectrogram, score_trend
from asd.monitoring.store import StoreError, default_db_url, open_store

# Clips drawn in one machine's trend (the newest): a year of hourly clips is 8,760 points,
# which plotly draws but a person cannot read; older ones are in asd history.
TREND_CLIPS = 2000


@st.cache_resource(show_spinner=False)
def store_at(url: str):
    return open_store(url)


def ago(when: datetime | None) -> str:
    """``when`` as a duration before now: "42 s", "5 min", "3 h", "2 d"."""
    if when is None:
        return "never"
    seconds = max(0.0, (datetime.now(timezone.utc) - when).total_seconds())
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def machines_table(statuses) -> pd.DataFrame:
    return pd.DataFrame([{
        "machine": s.name,
        "alert": f"{s.open_alert_state} (#{s.open_alert_id}, {ago(s.open_alert_raised_at)} ago)" if s.open_alert_id else "",
        "latest verdict": s.last_verdict or "",
        "baseline": s.baseline.describe() if s.baseline else "",
        "since the last clip": ago(s.last_recorded_at),
        "clips": s.n_clips,
    } for s in statuses])


def show_alert(store, machine: str, identity) -> None:
    """The machine's open alert, its clips, and the Acknowledge form (operators and admins)."""
    alerts = store.alerts(open_only=True, machine=machine)
    if not alerts:
        st.success(f"No open alert on {machine}.")
        return
    alert = alerts[0]
    text = (f"Alert #{alert.id} on {machine} ({alert.state}): raised {alert.raised_at:%Y-%m-%d %H:%M:%S} UTC "
            f"({alert.rule}); {len(alert.clips)} clip(s) kept.")
    if alert.acknowledged_by:
        st.warning(f"{text} Acknowledged by {alert.acknowledged_by} at {alert.acknowledged_at:%Y-%m-%d %H:%M:%S} UTC"
                   + (f": {alert.note}" if alert.note else "."))
        return
    st.error(text)
    if not may(identity, "acknowledge"):
        st.caption("Acknowledging needs the operator role.")
        return
    with st.form(f"ack-{alert.id}"):
        by = None if identity.via == "sign-in" else st.text_input("Your name", key=f"ack-by-{alert.id}")
        note = st.text_input("Note (what you checked or did)", key=f"ack-note-{alert.id}")
        if st.form_submit_button("Acknowledge", type="primary"):
            try:
                acknowledge_alert(identity, store, alert.id, note or None, name=by)
            except (StoreError, AccessDenied) as exc:
                st.error(str(exc))
                return
            st.rerun()


def describe_clip(row) -> str:
    """What the monitor stored of a clip, in a sentence."""
    name = f"**{Path(row.path).name}**: recorded {row.recorded_at:%Y-%m-%d %H:%M:%S} UTC, {row.verdict or 'failed'}"
    if row.score is None:
        return f"{name}: {row.problem}"
    if row.baseline_size and row.window_score is not None:
        return (f"{name}: window score {row.window_score:.4f} against this machine's threshold {row.threshold:.4f} "
                f"(clip score {row.clip_score:.4f} against the bank and a baseline of {row.baseline_size} clips; "
                f"{row.model_name} v{row.model_version})")
    return f"{name}, anomaly score {row.score:.4f} (threshold {row.threshold:.4f}, {row.model_name} v{row.model_version})"


def mark_healthy(store, db_url: str, machine: str, row, identity) -> None:
    """A form to mark the selected clip as healthy baseline (operators and admins; who is
    recorded)."""
    if not may(identity, "mark_baseline"):
        return
    with st.form(f"baseline-{row.clip_id}"):
        by = (identity.name if identity.via == "sign-in" else
              st.text_input("Marked healthy by (your name)", key=f"baseline-by-{row.clip_id}"))
        if st.form_submit_button("Mark as healthy baseline"):
            from asd.monitoring.clips import baseline_keeper
            from asd.monitoring.store import default_clip_store

            keep = baseline_keeper(default_clip_store(db_url), machine)

            if not by.strip():
                st.error("Give your name: the baseline records who marked each clip.")
                return
            try:
                added, _ = mark_baseline(identity, store, machine, [row.clip_id], keep, name=by)
            except (StoreError, AccessDenied) as exc:
                st.error(str(exc))
                return
            st.success(f"{Path(row.path).name} is in {machine}'s baseline." if added
                       else f"{Path(row.path).name} was in {machine}'s baseline already.")


def show_clip(row) -> None:
    """The selected clip: what the monitor stored, its spectrogram and its audio (from the
    clip store when kept there, else where it arrived)."""
    st.markdown(describe_clip(row))
    source = row.stored_path if row.stored_path and Path(row.stored_path).is_file() else row.path
    if not Path(source).is_file():
        st.info(f"The recording is no longer at {row.path} (the incoming folder was cleaned); clips behind an alert "
                "are kept in the clip store.")
        return
    st.audio(Path(source).read_bytes())
    try:
        st.plotly_chart(clip_spectrogram(source), width="stretch")
    except (AudioError, OSError) as exc:
        st.info(f"No spectrogram: {exc}")


def show_rule(store, status, identity) -> None:
    """The machine's alert rule, as the app overrides it (the rules file gives the rest);
    admins change it."""
    if not may(identity, "change_rules"):
        return
    with st.expander("Alert rule"):
        current = AlertRule(**{k: v for k, v in status.rule_override.items() if v is not None})
        st.caption("Set here, it overrides the monitor's rules file for this machine.")
        with st.form(f"rule-{status.name}"):
            k = st.number_input("anomalous verdicts (k) ...", 1, 100, current.k)
            n = st.number_input("... of the last n", 1, 100, current.n)
            m = st.number_input("normal verdicts in a row that clear it (m)", 1, 100, current.m)
            if st.form_submit_button("Save rule"):
                try:
                    rule = AlertRule(k=k, n=n, m=m)
                except ValueError as exc:
                    st.error(str(exc).splitlines()[-1])
                    return
                try:
                    set_rule(identity, store, status.name, rule.k, rule.n, rule.m)
                except (StoreError, AccessDenied) as exc:
                    st.error(str(exc))
                    return
                st.success(f"Saved: {rule.describe()}.")


def main() -> None:
    st.set_page_config(page_title="Machines: machine sound anomaly detector", layout="wide")
    identity = gate()
    st.title("Machines")
    url = default_db_url()
    try:
        store = store_at(url)
        statuses = store.overview()
    except StoreError as exc:
        st.error(f"The monitoring database is not available: {exc}")
        return
    if not statuses:
        st.info(f"No machine in {store.url} yet: `asd monitor` fills it (README, \"Monitoring over time\").")
        return
    st.caption(f"From {store.url}, as `asd monitor` wrote it.")
    st.dataframe(machines_table(statuses), hide_index=True)
    names = [s.name for s in statuses]
    machine = st.selectbox("Machine", names, key="machine")
    status = statuses[names.index(machine)]
    if status.baseline:
        st.markdown(f"Baseline: **{status.baseline.describe()}**" + (
            ": each verdict is on the mean of the last clip scores against the bank and this machine's baseline, "
            "against a threshold fitted from the baseline alone" if status.baseline.size and
            status.baseline.size >= (status.baseline.target or 0) else ""))
    show_alert(store, machine, identity)
    rows = store.history(machine, limit=TREND_CLIPS)
    chart = st.plotly_chart(score_trend(rows, machine), width="stretch", on_select="rerun", selection_mode="points",
                            key=f"trend-{machine}")
    by_id = {r.clip_id: r for r in rows}
    points = (chart.selection.points if chart and chart.selection else []) or []
    picked = next((by_id.get(p["customdata"][0]) for p in points if p.get("customdata")), None)
    if picked is None and rows:
        newest_first = list(reversed(rows))
        labels = [f"{r.recorded_at:%Y-%m-%d %H:%M:%S}  {Path(r.path).name}  ({r.verdict or 'failed'})" for r in newest_first]
        st.caption("Select a point in the plot, or pick a clip:")
        picked = newest_first[st.selectbox("Clip", range(len(labels)), format_func=labels.__getitem__, key="clip")]
    if picked is not None:
        show_clip(picked)
        if picked.score is not None:
            mark_healthy(store, url, machine, picked, identity)
    show_rule(store, status, identity)


main()
