"""The catalogue schema as typed SQLAlchemy 2 ORM classes (the Alembic head).

JSON values (shape, token ids, metadata) are stored as JSON text so that every
backend stores and searches them the same way and the fast read path can decode them
without SQLAlchemy. Times are UTC.
"""

from __future__ import annotations

from datetime import datetime, timezone

from sqlalchemy import (
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class Subject(Base):
    __tablename__ = "subjects"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(129), unique=True)
    word: Mapped[str | None] = mapped_column(String(128))
    description: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
    # Revision 0002: highest version number ever allocated, so numbers of removed
    # versions are never handed out again to other content.
    last_version: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # Revision 0002: lowercased name, word, description and every version's metadata,
    # so a search scans one short row per subject instead of every version.
    search_text: Mapped[str] = mapped_column(Text, default="", server_default="")

    versions: Mapped[list[Version]] = relationship(back_populates="subject", cascade="all, delete-orphan", passive_deletes=True)


class BaseModel(Base):
    """A base text encoder seen by this catalogue, keyed by its fingerprint."""

    __tablename__ = "base_models"

    fingerprint: Mapped[str] = mapped_column(String(64), primary_key=True)
    hidden_size: Mapped[int | None] = mapped_column(Integer)
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class BaseModelId(Base):
    """A model id or folder that had this fingerprint when cones2 saw it."""

    __tablename__ = "base_model_ids"
    __table_args__ = (UniqueConstraint("fingerprint", "model_id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    fingerprint: Mapped[str] = mapped_column(ForeignKey("base_models.fingerprint", ondelete="CASCADE"))
    model_id: Mapped[str] = mapped_column(String(512))
    first_seen: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class Version(Base):
    """One immutable version of a subject: a blob plus what it was made with."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("subject_id", "version"),
        Index("ix_versions_sha256", "sha256"),  # revision 0002: digest refs, gc, dedupe
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    size: Mapped[int] = mapped_column(Integer)
    dtype: Mapped[str] = mapped_column(String(16))
    shape: Mapped[str] = mapped_column(String(64))  # JSON [tokens, hidden]
    word: Mapped[str] = mapped_column(String(128))
    token_ids: Mapped[str] = mapped_column(Text)  # JSON list
    base_fingerprint: Mapped[str] = mapped_column(ForeignKey("base_models.fingerprint"))
    base_model: Mapped[str | None] = mapped_column(String(512))
    base_revision: Mapped[str | None] = mapped_column(String(128))
    metadata_json: Mapped[str] = mapped_column(Text, default="{}")
    provenance_kind: Mapped[str] = mapped_column(String(16), default="local")
    remote_name: Mapped[str | None] = mapped_column(String(128))
    remote_repo: Mapped[str | None] = mapped_column(String(256))
    remote_commit: Mapped[str | None] = mapped_column(String(64))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)

    subject: Mapped[Subject] = relationship(back_populates="versions")


class Tag(Base):
    """A movable alias of one version of a subject."""

    __tablename__ = "tags"
    __table_args__ = (UniqueConstraint("subject_id", "name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)


class TagEvent(Base):
    """History of a tag: where it pointed and when (``set``, ``moved``, ``removed``)."""

    __tablename__ = "tag_events"
    __table_args__ = (Index("ix_tag_events_subject_id_tag", "subject_id", "tag"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subject_id: Mapped[int] = mapped_column(ForeignKey("subjects.id", ondelete="CASCADE"))
    tag: Mapped[str] = mapped_column(String(64))
    action: Mapped[str] = mapped_column(String(16))
    version: Mapped[int | None] = mapped_column(Integer)
    sha256: Mapped[str | None] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(DateTime(timezone=True), default=utcnow)
