"""Initial catalogue: subjects, versions, tags with history, known base models.

Revision ID: 0001_initial
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001_initial"
down_revision = None
branch_labels = None
depends_on = None

TS = sa.DateTime(timezone=True)


def upgrade() -> None:
    op.create_table(
        "subjects",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(129), nullable=False),
        sa.Column("word", sa.String(128), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_subjects"),
        sa.UniqueConstraint("name", name="uq_subjects_name"),
    )
    op.create_table(
        "base_models",
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("hidden_size", sa.Integer(), nullable=True),
        sa.Column("first_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", name="pk_base_models"),
    )
    op.create_table(
        "base_model_ids",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(64), nullable=False),
        sa.Column("model_id", sa.String(512), nullable=False),
        sa.Column("first_seen", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_base_model_ids"),
        sa.ForeignKeyConstraint(["fingerprint"], ["base_models.fingerprint"], name="fk_base_model_ids_fingerprint_base_models", ondelete="CASCADE"),
        sa.UniqueConstraint("fingerprint", "model_id", name="uq_base_model_ids_fingerprint_model_id"),
    )
    op.create_table(
        "versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("size", sa.Integer(), nullable=False),
        sa.Column("dtype", sa.String(16), nullable=False),
        sa.Column("shape", sa.String(64), nullable=False),
        sa.Column("word", sa.String(128), nullable=False),
        sa.Column("token_ids", sa.Text(), nullable=False),
        sa.Column("base_fingerprint", sa.String(64), nullable=False),
        sa.Column("base_model", sa.String(512), nullable=True),
        sa.Column("base_revision", sa.String(128), nullable=True),
        sa.Column("metadata_json", sa.Text(), nullable=False),
        sa.Column("provenance_kind", sa.String(16), nullable=False),
        sa.Column("remote_name", sa.String(128), nullable=True),
        sa.Column("remote_repo", sa.String(256), nullable=True),
        sa.Column("remote_commit", sa.String(64), nullable=True),
        sa.Column("created_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_versions"),
        sa.ForeignKeyConstraint(["subject_id"], ["subjects.id"], name="fk_versions_subject_id_subjects", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["base_fingerprint"], ["base_models.fingerprint"], name="fk_versions_base_fingerprint_base_models"),
        sa.UniqueConstraint("subject_id", "version", name="uq_versions_subject_id_version"),
    )
    op.create_table(
        "tags",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("updated_at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tags"),
        sa.ForeignKeyConstraint(["subject_id"], ["subjects.id"], name="fk_tags_subject_id_subjects", ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"], name="fk_tags_version_id_versions", ondelete="CASCADE"),
        sa.UniqueConstraint("subject_id", "name", name="uq_tags_subject_id_name"),
    )
    op.create_table(
        "tag_events",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("subject_id", sa.Integer(), nullable=False),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.Column("action", sa.String(16), nullable=False),
        sa.Column("version", sa.Integer(), nullable=True),
        sa.Column("sha256", sa.String(64), nullable=True),
        sa.Column("at", TS, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_tag_events"),
        sa.ForeignKeyConstraint(["subject_id"], ["subjects.id"], name="fk_tag_events_subject_id_subjects", ondelete="CASCADE"),
    )
    op.create_index("ix_tag_events_subject_id_tag", "tag_events", ["subject_id", "tag"])


def downgrade() -> None:
    op.drop_index("ix_tag_events_subject_id_tag", table_name="tag_events")
    for table in ("tag_events", "tags", "versions", "base_model_ids", "base_models", "subjects"):
        op.drop_table(table)
