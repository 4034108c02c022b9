"""Baselines per machine (issue 29): clips marked healthy with their embeddings, the
commissioning size per machine, and each score's clip score, window score, window and
baseline sizes and the clip's embedding.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-06
"""

import sqlalchemy as sa
from alembic import op

from asd.monitoring.tables import UTCDateTime

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("machines") as batch:
        batch.add_column(sa.Column("baseline_clips", sa.Integer()))
    with op.batch_alter_table("scores") as batch:
        batch.add_column(sa.Column("clip_score", sa.Float()))
        batch.add_column(sa.Column("window_score", sa.Float()))
        batch.add_column(sa.Column("window_size", sa.Integer()))
        batch.add_column(sa.Column("baseline_size", sa.Integer()))
        batch.add_column(sa.Column("embedding", sa.LargeBinary()))
    op.create_table(
        "baseline_clips",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("machine_id", sa.Integer(), sa.ForeignKey("machines.id"), nullable=False),
        sa.Column("clip_id", sa.Integer(), sa.ForeignKey("clips.id"), nullable=False),
        sa.Column("model_name", sa.String(200), nullable=False),
        sa.Column("model_version", sa.Integer(), nullable=False),
        sa.Column("embedding", sa.LargeBinary(), nullable=False),
        sa.Column("model_score", sa.Float(), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.Column("added_by", sa.String(200), nullable=False),
        sa.Column("removed_at", UTCDateTime()),
        sa.Column("removed_by", sa.String(200)),
        sa.UniqueConstraint("machine_id", "clip_id", "model_name", "model_version",
                            name="uq_baseline_clips_machine_clip_model"),
    )
    op.create_index("ix_baseline_clips_machine_id", "baseline_clips", ["machine_id"])


def downgrade() -> None:
    op.drop_index("ix_baseline_clips_machine_id", "baseline_clips")
    op.drop_table("baseline_clips")
    with op.batch_alter_table("scores") as batch:
        for column in ("embedding", "baseline_size", "window_size", "window_score", "clip_score"):
            batch.drop_column(column)
    with op.batch_alter_table("machines") as batch:
        batch.drop_column("baseline_clips")
