"""The monitoring store's tables (SQLAlchemy 2 declarative models).

Every time is stored in UTC (:class:`UTCDateTime`: aware datetimes in, aware UTC
datetimes out, on SQLite and PostgreSQL alike). A clip's identity is its path plus the
SHA-256 of its PCM (:func:`asd.audio.pcm_sha256`), held by a unique constraint, so a clip
is stored once however many monitors run or crash. The schema changes only through
:mod:`asd.monitoring.migrations`, one migration per change.
"""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
from sqlalchemy import DateTime, Float, ForeignKey, Integer, LargeBinary, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship
from sqlalchemy.types import TypeDecorator

#: Clip status: scored (it has a score row), or failed (it cannot be used; never retried)
SCORED, FAILED = "scored", "failed"
#: Alert states, in the order an alert goes through them
RAISED, ACKNOWLEDGED, CLEARED = "raised", "acknowledged", "cleared"
OPEN_STATES = (RAISED, ACKNOWLEDGED)


class UTCDateTime(TypeDecorator):
    """A timestamp stored as naive UTC and returned as an aware UTC datetime.

    SQLite keeps no time zone, so aware datetimes are converted to UTC before they are
    written and marked UTC when read: the same value comes back from either database.

    Raises
    ------
    ValueError
        A naive datetime is written (its zone would be a guess).
    """

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: the store takes times with a time zone")
        return value.astimezone(timezone.utc).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=timezone.utc)


def embedding_bytes(embedding: np.ndarray | None) -> bytes | None:
    """An embedding ``(dim,)`` as float32 bytes (little-endian), as stored on SQLite and
    PostgreSQL alike; None stays None."""
    return None if embedding is None else np.ascontiguousarray(embedding, dtype="<f4").tobytes()


def embedding_array(data: bytes | None) -> np.ndarray | None:
    """Stored float32 bytes back to an embedding ``(dim,)`` float32."""
    return None if data is None else np.frombuffer(data, dtype="<f4").astype(np.float32)


def utc_now() -> datetime:
    """Now, as an aware UTC datetime."""
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    pass


class Machine(Base):
    """One monitored asset (a machine folder's name, or ``--machine``). The alert rule
    columns, when set (in the app), override the rules file for this machine."""

    __tablename__ = "machines"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    first_seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    raise_k: Mapped[int | None] = mapped_column(Integer)
    raise_n: Mapped[int | None] = mapped_column(Integer)
    clear_m: Mapped[int | None] = mapped_column(Integer)
    baseline_clips: Mapped[int | None] = mapped_column(Integer)  # N: clips commissioning takes (None: the monitor's)

    clips: Mapped[list["Clip"]] = relationship(back_populates="machine")


class Clip(Base):
    """One recording, scored or failed. ``recorded_at`` comes from a timestamp in the file
    name when it has one, else the file's modification time; ``duration_s`` and
    ``sample_rate`` (Hz) are the file's own (None when it could not be read)."""

    __tablename__ = "clips"
    __table_args__ = (UniqueConstraint("path", "pcm_sha256", name="uq_clips_path_pcm_sha256"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), index=True)
    path: Mapped[str] = mapped_column(String(1000))
    pcm_sha256: Mapped[str] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    scored_at: Mapped[datetime] = mapped_column(UTCDateTime())
    duration_s: Mapped[float | None] = mapped_column(Float)
    sample_rate: Mapped[int | None] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    problem: Mapped[str | None] = mapped_column(Text)
    stored_path: Mapped[str | None] = mapped_column(String(1000))  # its copy in the clip store, once kept

    machine: Mapped[Machine] = relationship(back_populates="clips")
    score: Mapped["Score | None"] = relationship(back_populates="clip", uselist=False)


class Score(Base):
    """A clip's anomaly score from one model version, with the decision threshold and
    verdict it gave and its unfamiliarity (distance to the nearest training clip, None
    for models without it)."""

    __tablename__ = "scores"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id"), unique=True)
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[int] = mapped_column(Integer)
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    verdict: Mapped[str] = mapped_column(String(16))
    unfamiliarity: Mapped[float | None] = mapped_column(Float)
    unfamiliar_threshold: Mapped[float | None] = mapped_column(Float)
    # with a baseline (issue 29): the clip score against the bank plus the baseline, the
    # mean of the window's clip scores, and the sizes they were computed with; threshold
    # and verdict are then the machine's, on the window score
    clip_score: Mapped[float | None] = mapped_column(Float)
    window_score: Mapped[float | None] = mapped_column(Float)
    window_size: Mapped[int | None] = mapped_column(Integer)
    baseline_size: Mapped[int | None] = mapped_column(Integer)
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary)  # float32 bytes, the model's clip embedding

    clip: Mapped[Clip] = relationship(back_populates="score")


class BaselineClip(Base):
    """A clip marked healthy for its machine's baseline, with its embedding and served
    score from one model version (a new version re-embeds the clip from the clip store).
    Removing it (``asd baseline --reset``) marks it removed: who and when are kept."""

    __tablename__ = "baseline_clips"
    __table_args__ = (UniqueConstraint("machine_id", "clip_id", "model_name", "model_version",
                                       name="uq_baseline_clips_machine_clip_model"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), index=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id"))
    model_name: Mapped[str] = mapped_column(String(200))
    model_version: Mapped[int] = mapped_column(Integer)
    embedding: Mapped[bytes] = mapped_column(LargeBinary)
    model_score: Mapped[float] = mapped_column(Float)
    added_at: Mapped[datetime] = mapped_column(UTCDateTime())
    added_by: Mapped[str] = mapped_column(String(200))
    removed_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    removed_by: Mapped[str | None] = mapped_column(String(200))

    clip: Mapped[Clip] = relationship()


class AuditEntry(Base):
    """Who did what, when (issue 31): an alert acknowledged, a rule changed, a baseline
    changed, a model version published. ``detail`` is JSON."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    who: Mapped[str] = mapped_column(String(200))
    action: Mapped[str] = mapped_column(String(50))
    target: Mapped[str] = mapped_column(String(300))
    detail: Mapped[str | None] = mapped_column(Text)


class Alert(Base):
    """An alarm on one machine: raised by the rule, acknowledged by a person (who,
    when, a note), cleared by the rule. A machine has at most one open alert."""

    __tablename__ = "alerts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    machine_id: Mapped[int] = mapped_column(ForeignKey("machines.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(200))
    raised_at: Mapped[datetime] = mapped_column(UTCDateTime())
    acknowledged_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    acknowledged_by: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    cleared_at: Mapped[datetime | None] = mapped_column(UTCDateTime())

    machine: Mapped[Machine] = relationship()
    clips: Mapped[list["AlertClip"]] = relationship(back_populates="alert", order_by="AlertClip.clip_id")
    events: Mapped[list["AlertEvent"]] = relationship(back_populates="alert", order_by="AlertEvent.id")


class AlertClip(Base):
    """A clip behind an alert (anomalous while it was open); its copy is in the clip store."""

    __tablename__ = "alert_clips"
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), primary_key=True)
    clip_id: Mapped[int] = mapped_column(ForeignKey("clips.id"), primary_key=True)

    alert: Mapped[Alert] = relationship(back_populates="clips")
    clip: Mapped[Clip] = relationship()


class AlertEvent(Base):
    """One state change of an alert (raised, acknowledged, cleared): when, by whom, a note,
    and when its notification went out (None: still to send)."""

    __tablename__ = "alert_events"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    alert_id: Mapped[int] = mapped_column(ForeignKey("alerts.id"), index=True)
    state: Mapped[str] = mapped_column(String(16))
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    by: Mapped[str | None] = mapped_column(String(200))
    note: Mapped[str | None] = mapped_column(Text)
    notified_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    notification: Mapped[str | None] = mapped_column(Text)  # "sent to 2 URL(s)", "no notify URL", or the failure

    alert: Mapped[Alert] = relationship(back_populates="events")
