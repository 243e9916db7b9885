"""Never reuse version numbers, fast search, and a digest index.

* ``subjects.last_version``: the highest version number ever allocated, so removing
  the newest version cannot hand its number to different content later.
* ``subjects.search_text``: lowercased name, word, description and the metadata of
  every version, so ``search`` scans one row per subject.
* ``ix_versions_sha256``: ``name@sha256:<prefix>`` refs, dedupe and gc.

Existing rows are backfilled.

Revision ID: 0002_counters_search
Revises: 0001_initial
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_counters_search"
down_revision = "0001_initial"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("subjects", sa.Column("last_version", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("subjects", sa.Column("search_text", sa.Text(), nullable=False, server_default=""))
    op.create_index("ix_versions_sha256", "versions", ["sha256"])
    bind = op.get_bind()
    bind.execute(
        sa.text(
            "UPDATE subjects SET last_version = COALESCE("
            "(SELECT MAX(v.version) FROM versions v WHERE v.subject_id = subjects.id), 0)"
        )
    )
    metas: dict[int, list[str]] = {}
    for subject_id, meta in bind.execute(sa.text("SELECT subject_id, metadata_json FROM versions ORDER BY subject_id, version")):
        metas.setdefault(subject_id, []).append(meta or "")
    rows = bind.execute(sa.text("SELECT id, name, word, description FROM subjects")).all()
    for subject_id, name, word, description in rows:
        text = "\n".join([name, word or "", description or "", *metas.get(subject_id, [])]).lower()
        bind.execute(sa.text("UPDATE subjects SET search_text = :t WHERE id = :i"), {"t": text, "i": subject_id})


def downgrade() -> None:
    op.drop_index("ix_versions_sha256", table_name="versions")
    with op.batch_alter_table("subjects") as batch:
        batch.drop_column("search_text")
        batch.drop_column("last_version")
