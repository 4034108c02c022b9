"""The monitoring store: machines, clips, scores, alerts, the clips behind an alert and
alert events (issue 23).

Revision ID: 0001
Revises:
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from asd.monitoring.tables import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "machines",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False, unique=True),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("raise_k", sa.Integer()),
        sa.Column("raise_n", sa.Integer()),
        sa.Column("clear_m", sa.Integer()),
    )
    op.create_table(
        "clips",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("machine_id", sa.Integer(), sa.ForeignKey("machines.id"), nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("pcm_sha256", sa.String(64), nullable=False),
        sa.Column("recorded_at", UTCDateTime(), nullable=False),
        sa.Column("scored_at", UTCDateTime(), nullable=False),
        sa.Column("duration_s", sa.Float()),
        sa.Column("sample_rate", sa.Integer()),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("problem", sa.Text()),
        sa.Column("stored_path", sa.String(1000)),
        sa.UniqueConstraint("path", "pcm_sha256", name="uq_clips_path_pcm_sha256"),
    )
    op.create_index("ix_clips_machine_id", "clips", ["machine_id"])
    op.create_index("ix_clips_recorded_at", "clips", ["recorded_at"])
    op.create_table(
        "scores",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("clip_id", sa.Integer(), sa.ForeignKey("clips.id"), nullable=False, unique=True),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("verdict", sa.String(16), nullable=False),
        sa.Column("unfamiliarity", sa.Float()),
        sa.Column("unfamiliar_threshold", sa.Float()),
    )
    op.create_table(
        "alerts",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("machine_id", sa.Integer(), sa.ForeignKey("machines.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("rule", sa.String(200), nullable=False),
        sa.Column("raised_at", UTCDateTime(), nullable=False),
        sa.Column("acknowledged_at", UTCDateTime()),
        sa.Column("acknowledged_by", sa.String(200)),
        sa.Column("note", sa.Text()),
        sa.Column("cleared_at", UTCDateTime()),
    )
    op.create_index("ix_alerts_machine_id", "alerts", ["machine_id"])
    op.create_table(
        "alert_clips",
        sa.Column("alert_id", sa.Integer(), sa.ForeignKey("alerts.id"), primary_key=True),
        sa.Column("clip_id", sa.Integer(), sa.ForeignKey("clips.id"), primary_key=True),
    )
    op.create_table(
        "alert_events",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("alert_id", sa.Integer(), sa.ForeignKey("alerts.id"), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("at", UTCDateTime(), nullable=False),
        sa.Column("by", sa.String(200)),
        sa.Column("note", sa.Text()),
        sa.Column("notified_at", UTCDateTime()),
        sa.Column("notification", sa.Text()),
    )
    op.create_index("ix_alert_events_alert_id", "alert_events", ["alert_id"])


def downgrade() -> None:
    for table in ("alert_events", "alert_clips", "alerts", "scores", "clips", "machines"):
        op.drop_table(table)
