"""The monitoring store: the only module that speaks SQL (SQLAlchemy 2).

A SQLite file by default (:func:`default_db_url`; works with no server), PostgreSQL in a
plant (``postgresql+psycopg://user@host/db``, psycopg 3). ``asd monitor`` and the app
open it with :func:`open_store`, which refuses a database whose schema is older than this
code's (``asd db upgrade`` fixes it) and creates the schema in a database that has no
tables at all.
"""

from __future__ import annotations

import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable, Iterator, TypeVar

from sqlalchemy import create_engine, event, func, inspect, select
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError, OperationalError
from sqlalchemy.orm import Session, selectinload, sessionmaker

from . import migrations
from .tables import (ACKNOWLEDGED, CLEARED, FAILED, OPEN_STATES, RAISED, SCORED, Alert, AlertClip, AlertEvent,
                     AuditEntry, BaselineClip, Clip, Machine, Score, utc_now)

T = TypeVar("T")
#: Seconds between retries of a database that went away: 1, 2, 4, ... at most this
MAX_BACKOFF_S = 30.0


class StoreError(ValueError):
    """The database cannot be used as it is: a bad URL, an older schema, unreachable."""


def data_home() -> Path:
    """Where the monitor keeps its SQLite file and clip store by default:
    ``$ASD_HOME``, else ``$XDG_DATA_HOME/asd``, else ``~/.local/share/asd``."""
    if os.environ.get("ASD_HOME"):
        return Path(os.environ["ASD_HOME"])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "asd"


def default_db_url() -> str:
    """``$ASD_DB_URL``, else ``sqlite:///<data home>/monitoring.db`` (:func:`data_home`)."""
    return os.environ.get("ASD_DB_URL") or f"sqlite:///{data_home() / 'monitoring.db'}"


def default_clip_store(db_url: str) -> Path:
    """``$ASD_CLIP_STORE``, else ``clip-store/`` beside a SQLite file, else under :func:`data_home`."""
    if os.environ.get("ASD_CLIP_STORE"):
        return Path(os.environ["ASD_CLIP_STORE"])
    url = make_url(db_url)
    if url.get_backend_name() == "sqlite" and url.database not in (None, "", ":memory:"):
        return Path(url.database).resolve().parent / "clip-store"
    return data_home() / "clip-store"


def redacted(url: str) -> str:
    """``url`` with any password hidden, for messages."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return url


def make_engine(url: str) -> Engine:
    """An engine for ``url``; a SQLite file's folder is created, and SQLite runs in WAL
    mode (the app reads while the monitor writes) with foreign keys on.

    Raises
    ------
    StoreError
        Not a database URL, or one whose driver is not installed.
    """
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() == "sqlite":
            if parsed.database not in (None, "", ":memory:"):
                Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
            engine = create_engine(parsed, connect_args={"timeout": 30})

            @event.listens_for(engine, "connect")
            def _sqlite_settings(connection, _record):
                cursor = connection.cursor()
                cursor.execute("PRAGMA journal_mode=WAL")
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

            return engine
        # pre-ping: a connection from before a database restart is replaced, not used
        return create_engine(parsed, pool_pre_ping=True)
    except (ArgumentError, NoSuchModuleError, ValueError) as exc:
        raise StoreError(f"{url}: not a database URL this monitor can use ({exc}); "
                         "e.g. sqlite:////var/lib/asd/monitoring.db or postgresql+psycopg://asd@db-host/asd") from None


def _first_line(exc: Exception) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def schema_status(engine: Engine) -> tuple[str | None, str, bool]:
    """``(current revision, head revision, empty)``: where the database is, where this
    code is, and whether it has no tables (Alembic's own aside).

    Raises
    ------
    StoreError
        The database cannot be reached.
    """
    try:
        with engine.connect() as connection:
            tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
            return migrations.current_revision(connection), migrations.head_revision(), not tables
    except DBAPIError as exc:
        raise StoreError(f"cannot reach the database {redacted(str(engine.url))}: {_first_line(exc)}") from None


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str]:
    """Run the migrations on ``url`` up to ``revision`` (this code's head by default);
    returns ``(before, after)``.

    Raises
    ------
    StoreError
        A bad URL, or the database cannot be reached.
    """
    engine = make_engine(url)
    before, head, _ = schema_status(engine)
    try:
        with engine.begin() as connection:
            migrations.upgrade(connection, revision)
            after = migrations.current_revision(connection)
    except DBAPIError as exc:
        raise StoreError(f"upgrading {redacted(url)} failed: {_first_line(exc)}") from None
    finally:
        engine.dispose()
    return before, after


def open_store(url: str) -> "Store":
    """Open the store at ``url`` for reading and writing.

    A database with no tables at all gets the schema (a new SQLite file needs no extra
    step); one whose schema is older than this code's is refused.

    Raises
    ------
    StoreError
        A bad URL, an unreachable database, an older schema (the message names ``asd db
        upgrade --db URL``), or a newer one (this code is older than the database).
    """
    engine = make_engine(url)
    current, head, empty = schema_status(engine)
    if current is None and empty:
        with engine.begin() as connection:
            migrations.upgrade(connection)
    elif current != head:
        engine.dispose()
        known = _known_revisions()
        if current in known and known.index(current) < known.index(head):
            raise StoreError(f"the database {redacted(url)} has schema {current}, older than this version's {head}: "
                             f"run asd db upgrade --db '{redacted(url)}'")
        if current is None:
            raise StoreError(f"the database {redacted(url)} holds tables but no monitoring schema: "
                             "point --db at an empty database or at one asd db upgrade made")
        raise StoreError(f"the database {redacted(url)} has schema {current}, which this version of asd does not "
                         f"know (it expects {head}): upgrade asd")
    return Store(engine)


def _known_revisions() -> list[str]:
    from alembic.script import ScriptDirectory

    script = ScriptDirectory.from_config(migrations.alembic_config())
    return [rev.revision for rev in reversed(list(script.walk_revisions()))]


@dataclass
class HistoryRow:
    """One clip of a machine's history, as ``asd history`` prints it."""

    machine: str
    clip_id: int
    path: str
    recorded_at: datetime
    scored_at: datetime
    status: str
    model_name: str | None
    model_version: int | None
    score: float | None
    threshold: float | None
    verdict: str | None
    unfamiliarity: float | None
    problem: str | None
    stored_path: str | None = None
    clip_score: float | None = None
    window_score: float | None = None
    baseline_size: int | None = None


@dataclass
class BaselineStatus:
    """Where a machine's baseline stands for the model version that scored it last."""

    size: int
    target: int | None  # N of commissioning; 0: no baseline
    model: str | None  # "toycar v5"

    def describe(self) -> str:
        """"commissioning (3 of 10)", "baseline of 10 clips (toycar v5)", "no baseline"."""
        if not self.target and not self.size:
            return "no baseline"
        if self.size < (self.target or 0):
            return f"commissioning ({self.size} of {self.target})"
        return f"baseline of {self.size} clips" + (f" ({self.model})" if self.model else "")


@dataclass
class MachineStatus:
    """A machine at a glance (the app's machines table)."""

    name: str
    n_clips: int
    last_recorded_at: datetime | None
    last_verdict: str | None  # the newest clip's verdict, or "failed"
    open_alert_id: int | None
    open_alert_state: str | None
    open_alert_raised_at: datetime | None
    rule_override: dict  # {"k", "n", "m"}: what the app set, None where it set nothing
    baseline: BaselineStatus | None = None


class Store:
    """Reads and writes the monitoring tables. Each method opens its own transaction
    unless it takes a ``session``; :meth:`transaction` groups several writes."""

    def __init__(self, engine: Engine):
        self.engine = engine
        self._sessions = sessionmaker(engine, expire_on_commit=False)

    @property
    def url(self) -> str:
        return redacted(str(self.engine.url))

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """A session committed at the end of the block (rolled back on an exception)."""
        with self._sessions.begin() as session:
            yield session

    def retrying(self, action: Callable[[], T], should_stop: Callable[[], bool] = lambda: False,
                 attempts: int | None = None, log=lambda message: print(message, file=sys.stderr)) -> T:
        """Run ``action`` (one or more transactions), again after 1, 2, 4 ... (at most
        :data:`MAX_BACKOFF_S`) seconds while the database is unreachable (a restart, a
        network cut); ``attempts`` bounds the tries (None: until ``should_stop()``).

        Raises
        ------
        StoreError
            Still unreachable after ``attempts`` tries, or asked to stop meanwhile.
        """
        delay, attempt = 1.0, 0
        while True:
            attempt += 1
            try:
                return action()
            except (OperationalError, DBAPIError) as exc:
                if not (isinstance(exc, OperationalError) or exc.connection_invalidated):
                    raise
                if (attempts is not None and attempt >= attempts) or should_stop():
                    raise StoreError(f"the database {self.url} is unavailable: {_first_line(exc)}") from None
                log(f"asd: the database {self.url} is unavailable ({_first_line(exc)}); retrying in {delay:.0f} s")
                end = time.monotonic() + delay * random.uniform(0.9, 1.1)
                while time.monotonic() < end and not should_stop():
                    time.sleep(0.1)
                delay = min(delay * 2, MAX_BACKOFF_S)

    # -- the audit log -------------------------------------------------------------------

    def audit(self, session: Session, who: str, action: str, target: str, **detail) -> None:
        """Record that ``who`` did ``action`` to ``target`` now (``detail`` as JSON)."""
        import json

        session.add(AuditEntry(at=utc_now(), who=who, action=action, target=target,
                               detail=json.dumps(detail, default=str) if detail else None))

    def record(self, who: str, action: str, target: str, **detail) -> None:
        """:meth:`audit` in its own transaction (e.g. a model version published)."""
        with self.transaction() as session:
            self.audit(session, who, action, target, **detail)

    def audit_log(self, limit: int = 200) -> list[AuditEntry]:
        """The newest ``limit`` audit entries, newest first."""
        with self.transaction() as session:
            return list(session.scalars(select(AuditEntry).order_by(AuditEntry.id.desc()).limit(limit)))

    # -- writing clips and scores ------------------------------------------------------

    def machine(self, session: Session, name: str) -> Machine:
        """The machine called ``name``, added on first sight (two monitors adding it at
        once get the same row)."""
        found = session.scalar(select(Machine).where(Machine.name == name))
        if found is None:
            statement = self._insert(Machine).values(name=name, first_seen_at=utc_now())
            session.execute(statement.on_conflict_do_nothing(index_elements=["name"]))
            found = session.scalar(select(Machine).where(Machine.name == name))
        return found

    def _insert(self, table):
        if self.engine.dialect.name == "postgresql":
            from sqlalchemy.dialects.postgresql import insert
        else:
            from sqlalchemy.dialects.sqlite import insert
        return insert(table)

    def known(self, session: Session, path: str, pcm_sha256: str) -> bool:
        """True when this clip (path and PCM hash) is already stored, scored or failed."""
        return session.scalar(select(Clip.id).where(Clip.path == path, Clip.pcm_sha256 == pcm_sha256)) is not None

    def add_clip(self, session: Session, machine: Machine, score: dict | None = None, **clip) -> Clip | None:
        """Store a clip (``clip``: the :class:`~asd.monitoring.tables.Clip` columns but
        machine, status and scored time) with its ``score`` (the
        :class:`~asd.monitoring.tables.Score` columns), or as failed when ``score`` is
        None (``clip["problem"]`` says why). Returns None, storing nothing, when the
        clip (path and PCM hash) is already there: the unique constraint decides, so
        two monitors or a restarted one never store a clip twice."""
        values = {**clip, "machine_id": machine.id, "scored_at": utc_now(), "status": SCORED if score else FAILED}
        statement = (self._insert(Clip).values(**values)
                     .on_conflict_do_nothing(index_elements=["path", "pcm_sha256"]).returning(Clip.id))
        clip_id = session.scalar(statement)
        if clip_id is None:
            return None
        if score:
            session.add(Score(clip_id=clip_id, **score))
            session.flush()
        return session.get(Clip, clip_id)

    def recent_clip_scores(self, session: Session, machine: Machine, n: int, model_name: str,
                           model_version: int) -> list[float]:
        """The clip scores (against bank plus baseline) of the machine's last ``n`` clips
        scored with a baseline by this model version, oldest first: a window's others."""
        rows = session.scalars(
            select(Score.clip_score).join(Clip, Score.clip_id == Clip.id)
            .where(Clip.machine_id == machine.id, Score.window_score.is_not(None), Score.model_name == model_name,
                   Score.model_version == model_version)
            .order_by(Clip.recorded_at.desc(), Clip.id.desc()).limit(n)).all()
        return list(reversed(rows))

    def recent_verdicts(self, session: Session, machine: Machine, n: int) -> list[tuple[int, str]]:
        """The machine's last ``n`` scored clips as ``(clip id, verdict)``, oldest first
        (by recorded-at time, then arrival)."""
        rows = session.execute(
            select(Clip.id, Score.verdict).join(Score, Score.clip_id == Clip.id).where(Clip.machine_id == machine.id)
            .order_by(Clip.recorded_at.desc(), Clip.id.desc()).limit(n)).all()
        return [(row[0], row[1]) for row in reversed(rows)]

    # -- baselines -----------------------------------------------------------------------

    def baseline(self, session: Session, machine: Machine, model_name: str | None = None,
                 model_version: int | None = None) -> list[BaselineClip]:
        """The machine's baseline clips not removed, oldest first; of one model version
        when given."""
        query = select(BaselineClip).where(BaselineClip.machine_id == machine.id, BaselineClip.removed_at.is_(None))
        if model_name is not None:
            query = query.where(BaselineClip.model_name == model_name, BaselineClip.model_version == model_version)
        return list(session.scalars(query.order_by(BaselineClip.id).options(selectinload(BaselineClip.clip))))

    def baseline_key(self, session: Session, machine: Machine, model_name: str, model_version: int) -> tuple[int, int]:
        """``(size, newest row id)`` of the machine's baseline for a model version: one
        aggregate query, which changes whenever clips are added or the baseline is reset,
        so that the rows themselves are read only then."""
        size, newest = session.execute(
            select(func.count(), func.max(BaselineClip.id)).where(
                BaselineClip.machine_id == machine.id, BaselineClip.removed_at.is_(None),
                BaselineClip.model_name == model_name, BaselineClip.model_version == model_version)).one()
        return int(size), int(newest or 0)

    def add_baseline_clip(self, session: Session, machine: Machine, clip: Clip, model_name: str, model_version: int,
                          embedding: bytes, model_score: float, by: str) -> bool:
        """Mark ``clip`` healthy in the machine's baseline for a model version (its
        embedding as float32 bytes, its served score). Returns False when it already is;
        a clip removed before is put back (who and when updated)."""
        row = session.scalar(select(BaselineClip).where(
            BaselineClip.machine_id == machine.id, BaselineClip.clip_id == clip.id,
            BaselineClip.model_name == model_name, BaselineClip.model_version == model_version))
        if row is not None and row.removed_at is None:
            return False
        if row is None:
            session.add(BaselineClip(machine_id=machine.id, clip_id=clip.id, model_name=model_name,
                                     model_version=model_version, embedding=embedding, model_score=model_score,
                                     added_at=utc_now(), added_by=by))
        else:
            row.removed_at, row.removed_by, row.added_at, row.added_by = None, None, utc_now(), by
        session.flush()
        return True

    def remove_baseline(self, session: Session, machine: Machine, by: str) -> int:
        """Mark every baseline clip of the machine removed (kept, with who and when);
        returns how many. The machine is commissioned again from its next clips."""
        rows = self.baseline(session, machine)
        now = utc_now()
        for row in rows:
            row.removed_at, row.removed_by = now, by
        return len(rows)

    def _baseline_status(self, session: Session, machine: Machine) -> BaselineStatus:
        newest = session.execute(
            select(Score.model_name, Score.model_version).join(Clip, Score.clip_id == Clip.id)
            .where(Clip.machine_id == machine.id).order_by(Score.id.desc()).limit(1)).first()
        if newest is None:
            return BaselineStatus(0, machine.baseline_clips, None)
        rows = self.baseline(session, machine, newest[0], newest[1])
        return BaselineStatus(len(rows), machine.baseline_clips, f"{newest[0]} v{newest[1]}")

    def baseline_report(self, machine: str) -> tuple[BaselineStatus, list[dict]]:
        """A machine's baseline status and its clips (every model version's), for
        ``asd baseline --show``.

        Raises
        ------
        StoreError
            No such machine.
        """
        with self.transaction() as session:
            row = self.machine_named(session, machine)
            clips = [{"clip_id": r.clip_id, "recorded_at": r.clip.recorded_at, "model_name": r.model_name,
                      "model_version": r.model_version, "model_score": r.model_score, "added_at": r.added_at,
                      "added_by": r.added_by, "path": r.clip.stored_path or r.clip.path}
                     for r in self.baseline(session, row)]
            return self._baseline_status(session, row), clips

    def reset_baseline(self, machine: str, by: str) -> int:
        """Remove a machine's baseline (kept, marked removed by ``by``); returns how many
        clips. Raises :class:`StoreError` for an unknown machine."""
        with self.transaction() as session:
            removed = self.remove_baseline(session, self.machine_named(session, machine), by)
            self.audit(session, by, "reset baseline", f"machine {machine}", clips_removed=removed)
            return removed

    def mark_baseline(self, machine: str, by: str, keep: Callable[[Clip], str | None] | None = None,
                      ids: list[int] | None = None, paths: list[str] | None = None, expect: int | None = None,
                      since: datetime | None = None, until: datetime | None = None) -> tuple[int, int]:
        """Mark a machine's scored clips healthy (by ids or paths, or recorded between
        ``since`` and ``until``) in the baseline of the model version that scored each,
        with the embedding stored with its score; ``keep(clip)`` copies it to the clip
        store and returns the copy's path. Returns ``(added, already there)``.

        Raises
        ------
        StoreError
            No such machine; fewer clips found than ``expect`` (the missing named); a
            clip scored by a model without an embedding output; no clip in the range.
        """
        with self.transaction() as session:
            row = self.machine_named(session, machine)
            found = self.scored_clips(session, row, since, until, ids, paths)
            if expect is not None and len(found) < expect:
                known = {str(c.id) for c, _ in found} | {c.path for c, _ in found}
                missing = [str(x) for x in (ids or []) if str(x) not in known]
                raise StoreError(f"{machine}: no scored clip {', '.join(missing) or 'with those paths'} in {self.url}: "
                                 "asd monitor scores a clip first; asd history lists them")
            if not found:
                raise StoreError(f"{machine}: no scored clip in that time range")
            no_embedding = [c.path for c, s in found if s.embedding is None]
            if no_embedding:
                raise StoreError(f"{no_embedding[0]} was scored by {found[0][1].model_name} v{found[0][1].model_version}, "
                                 "which has no embedding output: a baseline needs a reference-bank model (e.g. toycar v5)")
            added = 0
            for clip, score in found:
                if keep is not None:
                    clip.stored_path = keep(clip) or clip.stored_path
                added += self.add_baseline_clip(session, row, clip, score.model_name, score.model_version,
                                                score.embedding, score.score, by)
            self.audit(session, by, "add to baseline", f"machine {machine}", clips=[c.id for c, _ in found],
                       added=added)
            return added, len(found) - added

    def machines_in(self, session: Session) -> list[Machine]:
        """Every machine, by name, in ``session``."""
        return list(session.scalars(select(Machine).order_by(Machine.name)))

    def machine_named(self, session: Session, name: str) -> Machine:
        """The machine called ``name``.

        Raises
        ------
        StoreError
            No such machine (the message lists the known ones).
        """
        found = session.scalar(select(Machine).where(Machine.name == name))
        if found is None:
            known = ", ".join(session.scalars(select(Machine.name).order_by(Machine.name))) or "none yet"
            raise StoreError(f"no machine {name!r} in {self.url} (machines: {known})")
        return found

    def scored_clips(self, session: Session, machine: Machine, since: datetime | None = None,
                     until: datetime | None = None, ids: list[int] | None = None,
                     paths: list[str] | None = None) -> list[tuple[Clip, Score]]:
        """The machine's scored clips with their scores, oldest first: recorded between
        ``since`` and ``until``, or with these ids or paths."""
        query = (select(Clip, Score).join(Score, Score.clip_id == Clip.id).where(Clip.machine_id == machine.id)
                 .order_by(Clip.recorded_at, Clip.id))
        if since:
            query = query.where(Clip.recorded_at >= since)
        if until:
            query = query.where(Clip.recorded_at <= until)
        if ids is not None or paths is not None:
            query = query.where(Clip.id.in_(ids or []) | Clip.path.in_(paths or []))
        return [(c, s) for c, s in session.execute(query).all()]

    # -- alerts ------------------------------------------------------------------------

    def open_alert(self, session: Session, machine: Machine) -> Alert | None:
        """The machine's raised or acknowledged alert, if any."""
        return session.scalar(select(Alert).where(Alert.machine_id == machine.id, Alert.state.in_(OPEN_STATES))
                              .order_by(Alert.id.desc()).limit(1))

    def raise_alert(self, session: Session, machine: Machine, rule: str) -> Alert:
        """A new raised alert on ``machine`` (and its event, to notify)."""
        alert = Alert(machine_id=machine.id, state=RAISED, rule=rule, raised_at=utc_now())
        session.add(alert)
        session.flush()
        session.add(AlertEvent(alert_id=alert.id, state=RAISED, at=alert.raised_at))
        return alert

    def attach_clip(self, session: Session, alert: Alert, clip: Clip, stored_path: str) -> None:
        """Record ``clip`` as behind ``alert``, kept at ``stored_path`` in the clip store."""
        if session.get(AlertClip, (alert.id, clip.id)) is None:
            session.add(AlertClip(alert_id=alert.id, clip_id=clip.id))
        clip.stored_path = stored_path

    def clear_alert(self, session: Session, alert: Alert) -> None:
        """Clear an open alert (the rule saw enough normal verdicts)."""
        alert.state, alert.cleared_at = CLEARED, utc_now()
        session.add(AlertEvent(alert_id=alert.id, state=CLEARED, at=alert.cleared_at))

    def acknowledge(self, alert_id: int, by: str, note: str | None = None) -> Alert:
        """Acknowledge alert ``alert_id``: who, now, a note.

        Raises
        ------
        StoreError
            No such alert, or it is not raised (acknowledged or cleared already).
        """
        by = (by or "").strip()
        if not by:
            raise StoreError("acknowledging needs a name (--by NAME): the alert records who acknowledged it")
        with self.transaction() as session:
            alert = session.get(Alert, alert_id)
            if alert is None:
                raise StoreError(f"no alert {alert_id} in {self.url}")
            if alert.state != RAISED:
                raise StoreError(f"alert {alert_id} is {alert.state}, not raised: only a raised alert is acknowledged")
            alert.state, alert.acknowledged_at, alert.acknowledged_by, alert.note = ACKNOWLEDGED, utc_now(), by, note
            session.add(AlertEvent(alert_id=alert.id, state=ACKNOWLEDGED, at=alert.acknowledged_at, by=by, note=note))
            self.audit(session, by, "acknowledge alert", f"alert {alert.id}", note=note)
        return alert

    def set_rule(self, machine: str, k: int | None, n: int | None, m: int | None, by: str = "unknown") -> None:
        """Set (None: unset) a machine's alert rule override, as the app does; ``by`` is
        recorded in the audit log.

        Raises
        ------
        StoreError
            No such machine.
        """
        with self.transaction() as session:
            row = session.scalar(select(Machine).where(Machine.name == machine))
            if row is None:
                raise StoreError(f"no machine {machine!r} in {self.url}")
            before = {"k": row.raise_k, "n": row.raise_n, "m": row.clear_m}
            row.raise_k, row.raise_n, row.clear_m = k, n, m
            self.audit(session, by, "change alert rule", f"machine {machine}", before=before,
                       after={"k": k, "n": n, "m": m})

    def pending_events(self) -> list[AlertEvent]:
        """Alert events whose notification has not gone out, oldest first (alert and
        machine loaded)."""
        with self.transaction() as session:
            return list(session.scalars(
                select(AlertEvent).where(AlertEvent.notified_at.is_(None)).order_by(AlertEvent.id)
                .options(selectinload(AlertEvent.alert).selectinload(Alert.machine))))

    def mark_notified(self, event_id: int, outcome: str) -> None:
        """Record that event ``event_id``'s notification went out (``outcome`` says how)."""
        with self.transaction() as session:
            event_row = session.get(AlertEvent, event_id)
            event_row.notified_at, event_row.notification = utc_now(), outcome

    # -- reading -------------------------------------------------------------------------

    def alerts(self, open_only: bool = False, machine: str | None = None) -> list[Alert]:
        """Alerts, newest first, with their machine, clips and events loaded."""
        query = (select(Alert).join(Machine).order_by(Alert.id.desc())
                 .options(selectinload(Alert.machine), selectinload(Alert.clips).selectinload(AlertClip.clip),
                          selectinload(Alert.events)))
        if open_only:
            query = query.where(Alert.state.in_(OPEN_STATES))
        if machine:
            query = query.where(Machine.name == machine)
        with self.transaction() as session:
            return list(session.scalars(query))

    def machines(self) -> list[Machine]:
        """Every machine, by name."""
        with self.transaction() as session:
            return list(session.scalars(select(Machine).order_by(Machine.name)))

    def history(self, machine: str | None = None, since: datetime | None = None, until: datetime | None = None,
                limit: int | None = None) -> list[HistoryRow]:
        """Clips (scored and failed) of one machine or all, by recorded-at time, oldest
        first; ``since``/``until`` bound the recorded-at time (aware datetimes);
        ``limit`` keeps the newest so many."""
        query = (select(Machine.name, Clip, Score).join(Clip.machine).outerjoin(Score, Score.clip_id == Clip.id)
                 .order_by(Clip.recorded_at.desc(), Clip.id.desc()))
        if machine:
            query = query.where(Machine.name == machine)
        if since:
            query = query.where(Clip.recorded_at >= since)
        if until:
            query = query.where(Clip.recorded_at <= until)
        if limit:
            query = query.limit(limit)
        with self.transaction() as session:
            rows = session.execute(query).all()
        return [HistoryRow(name, c.id, c.path, c.recorded_at, c.scored_at, c.status,
                           s.model_name if s else None, s.model_version if s else None, s.score if s else None,
                           s.threshold if s else None, s.verdict if s else None, s.unfamiliarity if s else None,
                           c.problem, c.stored_path, s.clip_score if s else None, s.window_score if s else None,
                           s.baseline_size if s else None) for name, c, s in reversed(rows)]

    def overview(self) -> list[MachineStatus]:
        """Every machine with its newest clip and open alert: machines with an open alert
        first, then by name."""
        statuses = []
        with self.transaction() as session:
            for machine in session.scalars(select(Machine).order_by(Machine.name)):
                n_clips = session.scalar(select(func.count()).select_from(Clip).where(Clip.machine_id == machine.id))
                last = session.execute(
                    select(Clip, Score).outerjoin(Score, Score.clip_id == Clip.id).where(Clip.machine_id == machine.id)
                    .order_by(Clip.recorded_at.desc(), Clip.id.desc()).limit(1)).first()
                alert = self.open_alert(session, machine)
                statuses.append(MachineStatus(
                    machine.name, n_clips, last[0].recorded_at if last else None,
                    (last[1].verdict if last[1] else FAILED) if last else None,
                    alert.id if alert else None, alert.state if alert else None, alert.raised_at if alert else None,
                    {"k": machine.raise_k, "n": machine.raise_n, "m": machine.clear_m},
                    self._baseline_status(session, machine)))
        return sorted(statuses, key=lambda s: (s.open_alert_id is None, s.name))

    def counts(self) -> dict[str, int]:
        """Rows per table (clips, scores, alerts), for summaries and tests."""
        with self.transaction() as session:
            return {name: session.scalar(select(func.count()).select_from(table))
                    for name, table in (("clips", Clip), ("scores", Score), ("alerts", Alert))}
