"""The monitoring commands of ``asd``: ``monitor``, ``db upgrade|status``, ``history``
and ``alerts``. :func:`add_commands` registers them on the main parser (:mod:`asd.cli`).
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import signal
import sys
import threading
from datetime import datetime, timedelta, timezone
from pathlib import Path

from .baselines import DEFAULT_BASELINE_CLIPS, DEFAULT_WINDOW
from .store import StoreError, default_db_url

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days", "w": "weeks"}


def parse_time(text: str, now: datetime | None = None) -> datetime:
    """A point in time from ``--since``/``--until``: ISO 8601 (``2026-11-03``,
    ``2026-11-03T10:00``, with ``Z`` or an offset; without one it is UTC) or an age
    (``30m``, ``24h``, ``7d``, ``2w``: that long before now). Returns an aware UTC datetime.

    Raises
    ------
    ValueError
        Neither form.
    """
    text = text.strip()
    match = _RELATIVE.match(text)
    if match:
        return (now or datetime.now(timezone.utc)) - timedelta(**{_UNITS[match[2]]: float(match[1])})
    try:
        when = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{text!r}: not a time; give ISO 8601 (2026-11-03T10:00, UTC unless an offset is given) "
                         "or an age such as 24h or 7d") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).astimezone(timezone.utc)


def _db_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", metavar="URL", default=None,
                        help="database URL: sqlite:///PATH or postgresql+psycopg://user@host/db "
                             f"(default $ASD_DB_URL, else {default_db_url()})")


def _db(args) -> str:
    return args.db or default_db_url()


def _detector_when_up(args, make_detector, stop):
    """The model; watching, a server not up yet (the stack starting, a restart) is asked
    again after 1, 2, 4 ... 30 s, until ``stop`` is set (then None); with --once it is
    an error at once.

    Raises
    ------
    asd.serving.ServingError
        With --once, or an error that waiting does not fix (no such model).
    """
    from ..serving import ServingError

    delay = 1.0
    while not stop.is_set():
        try:
            return make_detector(args)
        except ServingError as exc:
            if args.once or not exc.retryable:
                raise
            print(f"asd: {exc}; asking again in {delay:.0f} s", file=sys.stderr, flush=True)
            stop.wait(delay)
            delay = min(2 * delay, 30.0)
    return None


def cmd_monitor(args) -> int:
    from .alerts import load_rules
    from .store import default_clip_store, open_store
    from .watch import Monitor, MonitorError

    folders = [Path(f) for f in args.folders]
    for folder in folders:
        if not folder.is_dir():
            raise FileNotFoundError(f"{folder}: no such folder (asd monitor watches folders of machine sub-folders)")
    if args.poll is not None and args.poll <= 0:
        raise ValueError("--poll must be a positive number of seconds")
    rules = load_rules(args.rules)
    rules.notify = rules.notify + (args.notify or [])
    if rules.notify:
        from .notify import make_notifier

        make_notifier(rules.notify)  # a bad URL fails now, not at the first alert
    db = _db(args)
    store = open_store(db)
    # SIGTERM (docker stop, Kubernetes) and Ctrl-C: finish the clip in hand, then exit 0
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    detector = _detector_when_up(args, args.make_detector, stop)
    if detector is None:
        store.close()
        return 0
    monitor = Monitor(detector, store, folders, machine=args.machine, rules=rules,
                      clip_store=Path(args.clip_store) if args.clip_store else default_clip_store(db),
                      batch_size=args.batch_size, server_attempts=args.server_attempts if args.once else None,
                      baseline_clips=args.baseline_clips, window=args.window)
    monitor.stop = stop
    meta = detector.metadata
    print(f"asd: monitoring {', '.join(map(str, folders))} with {meta.name} v{meta.version} into {store.url}"
          + ("" if args.once else " (watching; SIGTERM or Ctrl-C stops)"), file=sys.stderr, flush=True)
    code = 0
    try:
        if args.once:
            monitor.run_once(show_progress=sys.stderr.isatty())
        else:
            monitor.watch(settle_s=args.settle, poll_s=args.poll)
    except MonitorError as exc:
        print(f"asd: error: {exc}", file=sys.stderr)
        code = 1
    finally:
        for machine, summary in sorted(monitor.summary.items()):
            print(f"asd: {summary.line(machine)}", file=sys.stderr)
        store.close()
    return code


def cmd_db(args) -> int:
    from .store import make_engine, redacted, schema_status, upgrade

    db = _db(args)
    if args.action == "upgrade":
        before, after = upgrade(db)
        print(f"{redacted(db)}: schema {before or 'none'} -> {after}" if before != after
              else f"{redacted(db)}: schema {after}, up to date")
        return 0
    engine = make_engine(db)
    try:
        current, head, _ = schema_status(engine)
    finally:
        engine.dispose()
    print(f"{redacted(db)}: schema {current or 'none'}, this version of asd expects {head}"
          + ("" if current == head else f": run asd db upgrade --db '{redacted(db)}'"))
    return 0 if current == head else 1


HISTORY_COLUMNS = ("machine", "clip_id", "recorded_at", "scored_at", "status", "verdict", "score", "threshold",
                   "clip_score", "window_score", "baseline_size", "unfamiliarity", "model_name", "model_version", "path",
                   "problem")


def _value(value):
    if isinstance(value, datetime):
        return value.isoformat().replace("+00:00", "Z")
    return value


def _emit(rows: list[dict], columns: tuple, fmt: str) -> None:
    if fmt == "json":
        print(json.dumps([{c: _value(r[c]) for c in columns} for r in rows], indent=1))
    elif fmt == "csv":
        writer = csv.DictWriter(sys.stdout, columns, lineterminator="\n")
        writer.writeheader()
        for row in rows:
            writer.writerow({c: _value(row[c]) for c in columns})
    else:
        def cell(value):
            value = _value(value)
            if isinstance(value, float):
                return f"{value:.4f}"
            return "" if value is None else str(value)

        table = [[cell(r[c]) for c in columns] for r in rows]
        widths = [max([len(c)] + [len(t[i]) for t in table]) for i, c in enumerate(columns)]
        print("  ".join(c.ljust(w) for c, w in zip(columns, widths)).rstrip())
        for t in table:
            print("  ".join(v.ljust(w) for v, w in zip(t, widths)).rstrip())


def cmd_history(args) -> int:
    from .store import open_store

    since = parse_time(args.since) if args.since else None
    until = parse_time(args.until) if args.until else None
    store = open_store(_db(args))
    try:
        if args.machine and args.machine not in {m.name for m in store.machines()}:
            raise StoreError(f"no machine {args.machine!r} in {store.url} "
                             f"(machines: {', '.join(m.name for m in store.machines()) or 'none yet'})")
        rows = store.history(args.machine, since, until)
    finally:
        store.close()
    _emit([vars(r) for r in rows], HISTORY_COLUMNS, args.format)
    return 0


ALERT_COLUMNS = ("id", "machine", "state", "raised_at", "acknowledged_at", "acknowledged_by", "note", "cleared_at",
                 "clips", "rule")


def alert_record(alert) -> dict:
    """An alert as a flat record of :data:`ALERT_COLUMNS` (``clips``: how many are kept)."""
    return {"id": alert.id, "machine": alert.machine.name, "state": alert.state, "raised_at": alert.raised_at,
            "acknowledged_at": alert.acknowledged_at, "acknowledged_by": alert.acknowledged_by, "note": alert.note,
            "cleared_at": alert.cleared_at, "clips": len(alert.clips), "rule": alert.rule}


def cmd_alerts(args) -> int:
    from .store import open_store

    store = open_store(_db(args))
    try:
        if args.ack is not None:
            alert = store.acknowledge(args.ack, args.by, args.note)
            print(f"alert {alert.id} acknowledged by {alert.acknowledged_by} at {_value(alert.acknowledged_at)}")
            return 0
        if args.by or args.note:
            raise ValueError("--by and --note go with --ack ID")
        alerts = store.alerts(open_only=args.open, machine=args.machine)
    finally:
        store.close()
    _emit([alert_record(a) for a in alerts], ALERT_COLUMNS, args.format)
    return 0


BASELINE_COLUMNS = ("clip_id", "recorded_at", "model_name", "model_version", "model_score", "added_at", "added_by", "path")


def cmd_baseline(args) -> int:
    import getpass

    from .clips import baseline_keeper
    from .store import default_clip_store, open_store

    if args.until and not args.since:
        raise ValueError("--to goes with --from TIME")
    by = args.by or getpass.getuser()
    db = _db(args)
    store = open_store(db)
    try:
        if args.show:
            status, rows = store.baseline_report(args.machine)
            print(f"{args.machine}: {status.describe()}", file=sys.stderr)
            _emit(rows, BASELINE_COLUMNS, args.format)
            return 0
        if args.reset:
            removed = store.reset_baseline(args.machine, by)
            print(f"{args.machine}: {removed} baseline clip(s) removed by {by}; the monitor commissions it again "
                  "from its next clips")
            return 0
        keep = baseline_keeper(Path(args.clip_store) if args.clip_store else default_clip_store(db), args.machine)

        if args.add:
            ids = [int(c) for c in args.add if c.isdigit()]
            named = [c for c in args.add if not c.isdigit()]
            paths = named + [str(Path(c).resolve()) for c in named]
            added, skipped = store.mark_baseline(args.machine, by, keep, ids=ids, paths=paths, expect=len(args.add))
        else:
            added, skipped = store.mark_baseline(args.machine, by, keep, since=parse_time(args.since),
                                                 until=parse_time(args.until) if args.until else None)
        print(f"{args.machine}: {added} clip(s) added to the baseline by {by}"
              + (f"; {skipped} already in it" if skipped else ""))
        return 0
    finally:
        store.close()


MONITOR_DESCRIPTION = """\
Score each machine's clips exactly once into the monitoring database and run the alert
rule. One sub-folder per machine: incoming/press-07/*.wav is machine press-07 (--machine
ID for a flat folder).

Commissioning and baselines. Each machine sounds a little different, so with a
reference-bank model (one with an embedding output, such as toycar v5) a machine's first
--baseline-clips usable clips (default 10) are its healthy baseline: the machine is
"commissioning (3 of 10)" until then, its clips are kept in the clip store, and no alert
is raised. Record the baseline across every way the machine runs (speeds, loads).
`asd baseline` shows, adds to or resets a baseline; a new model version embeds the
baseline clips again from the clip store.

Windows and threshold. Afterwards a clip's score is its cosine distance to the nearest
clip of the model's training bank plus the machine's baseline, and the verdict is on the
window score, the mean of the machine's last --window clip scores (default 5), against
the machine's own threshold fitted from its baseline alone (no test labels): with s the
baseline clips' leave-one-out scores, threshold = mean(s) + 1.75 (max(s) - mean(s)) /
sqrt(window) (asd.monitoring.baselines). The alert rule on window verdicts is the rules
file's windows: entry (default: an anomalous window raises; 5 normal windows in a row
clear); with --baseline-clips 0, or a model without an embedding output, each clip is
judged by the model's threshold and k of the last n clip verdicts raise (default 3 of 5).
"""


AUDIT_COLUMNS = ("id", "at", "who", "action", "target", "detail")


def cmd_audit(args) -> int:
    from .store import open_store

    store = open_store(_db(args))
    try:
        entries = store.audit_log(args.limit)
    finally:
        store.close()
    _emit([{c: getattr(e, c) for c in AUDIT_COLUMNS} for e in entries], AUDIT_COLUMNS, args.format)
    return 0


def add_commands(sub, add_backend_options, make_detector) -> None:
    """Register ``monitor``, ``db``, ``history``, ``alerts``, ``baseline`` and ``audit`` on ``sub`` (the main
    parser's subparsers); ``add_backend_options`` adds ``--model``/``--server``/``--name``,
    ``make_detector(args)`` builds the model from them (both :mod:`asd.cli`'s, passed in so
    that this module does not import it back)."""
    p = sub.add_parser("monitor", help="score every clip of every machine once into a database, and raise alerts",
                       description=MONITOR_DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_backend_options(p)
    _db_option(p)
    p.add_argument("folders", nargs="+", metavar="FOLDER", help="folders of machine sub-folders (or one machine's, with --machine)")
    p.add_argument("--machine", metavar="ID", help="the machine id of every clip (a flat folder)")
    p.add_argument("--once", action="store_true", help="score what is there and exit (cron, tests)")
    p.add_argument("--poll", type=float, metavar="SECONDS",
                   help="poll the folders every SECONDS instead of the system's file events (network shares)")
    p.add_argument("--settle", type=float, default=2.0, metavar="SECONDS",
                   help="a file is scored once it has not changed for this long (default 2: still being written)")
    p.add_argument("--rules", metavar="YAML", help="alert rules and notify URLs (asd.monitoring.alerts; default 3 of 5, clear after 5)")
    p.add_argument("--notify", action="append", metavar="URL", help="an apprise URL to notify (repeatable), e.g. json://host/hook")
    p.add_argument("--clip-store", metavar="DIR", help="where the clips behind alerts are kept (default $ASD_CLIP_STORE, "
                                                       "else clip-store/ beside a SQLite database)")
    p.add_argument("--batch-size", type=int, default=8, metavar="N", help="clips per model request (default 8)")
    p.add_argument("--server-attempts", type=int, default=5, metavar="N",
                   help="with --once: tries of a model server that is down before the run stops (default 5; "
                        "watching retries until stopped)")
    p.add_argument("--baseline-clips", type=int, default=DEFAULT_BASELINE_CLIPS, metavar="N",
                   help=f"commissioning: a machine's first N usable clips are its healthy baseline (default "
                        f"{DEFAULT_BASELINE_CLIPS}; 0: no baselines, each clip judged by the model's threshold). "
                        "Needs a model with an embedding output (reference-bank models, toycar v5)")
    p.add_argument("--window", type=int, default=DEFAULT_WINDOW, metavar="N",
                   help=f"with a baseline, the verdict is on the mean of a machine's last N clip scores (default "
                        f"{DEFAULT_WINDOW}), against its threshold fitted from its baseline alone")
    p.set_defaults(func=cmd_monitor, make_detector=make_detector)

    p = sub.add_parser("baseline", help="a machine's healthy baseline: show it, add clips, or reset it",
                       description="A machine's baseline is the embeddings of clips marked healthy, per model "
                                   "version. asd monitor takes a machine's first --baseline-clips clips (commissioning); "
                                   "here clips the monitor has scored are added by id or path, or by recorded time, "
                                   "or the baseline is reset (its clips are kept, marked removed), after which the "
                                   "monitor commissions the machine again from its next clips.")
    _db_option(p)
    p.add_argument("--machine", required=True, metavar="ID")
    action = p.add_mutually_exclusive_group(required=True)
    action.add_argument("--show", action="store_true", help="the baseline's clips and the machine's status")
    action.add_argument("--add", nargs="+", metavar="CLIP", help="clips (ids or paths as asd history prints them) to mark healthy")
    action.add_argument("--from", dest="since", metavar="TIME", help="mark healthy every clip recorded from TIME (with --to)")
    action.add_argument("--reset", action="store_true", help="remove every baseline clip (kept, marked removed)")
    p.add_argument("--to", dest="until", metavar="TIME", help="... up to TIME (default now)")
    p.add_argument("--by", default=None, metavar="NAME", help="who marks or resets (recorded; default $USER)")
    p.add_argument("--clip-store", metavar="DIR", help="where baseline clips are kept (default as asd monitor)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_baseline)

    p = sub.add_parser("db", help="the monitoring database: upgrade its schema, or show its status")
    p.add_argument("action", choices=["upgrade", "status"], help="upgrade: run the migrations; status: exit 1 if not up to date")
    _db_option(p)
    p.set_defaults(func=cmd_db)

    p = sub.add_parser("history", help="a machine's clips, scores and verdicts from the monitoring database")
    _db_option(p)
    p.add_argument("--machine", metavar="ID", help="one machine (default: all)")
    p.add_argument("--since", metavar="TIME", help="recorded at or after TIME: ISO 8601 (UTC unless an offset is given) or an age: 24h, 7d")
    p.add_argument("--until", metavar="TIME", help="recorded at or before TIME")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_history)

    p = sub.add_parser("alerts", help="list alerts, or acknowledge one (--ack ID --by NAME --note TEXT)")
    _db_option(p)
    p.add_argument("--open", action="store_true", help="only raised and acknowledged alerts")
    p.add_argument("--machine", metavar="ID", help="one machine's alerts")
    p.add_argument("--ack", type=int, metavar="ID", help="acknowledge alert ID")
    p.add_argument("--by", metavar="NAME", help="who acknowledges (with --ack)")
    p.add_argument("--note", metavar="TEXT", help="a note with the acknowledgement")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_alerts)

    p = sub.add_parser("audit", help="who acknowledged alerts, changed rules or baselines, published versions, and when")
    _db_option(p)
    p.add_argument("--limit", type=int, default=200, metavar="N", help="the newest N entries (default 200)")
    p.add_argument("--format", choices=["table", "csv", "json"], default="table")
    p.set_defaults(func=cmd_audit)
