"""Connections to the catalogue database, schema checks and automatic migration.

Two paths share one schema:

* **reads** (list, show, resolve, search) run plain SQL. For a SQLite file they use the
  standard library's ``sqlite3`` directly, so catalogue commands start without importing
  SQLAlchemy (~0.3 s here); for other URLs they go through a SQLAlchemy connection.
* **writes** use the SQLAlchemy ORM (:mod:`.models`) inside a transaction that takes
  the write lock at its start: ``BEGIN IMMEDIATE`` on SQLite (WAL mode, busy timeout),
  a transaction-scoped advisory lock on PostgreSQL. Version numbers are allocated inside
  that transaction, so concurrent writers serialise instead of colliding.

Opening checks the schema revision with one cheap query against ``alembic_version``
and compares it with :data:`SCHEMA_HEAD`; Alembic is imported only when an upgrade is
due. A SQLite file is copied aside (``<file>.<revision>.<time>.bak``) before any
migration runs. A revision this cones2 does not know means a newer cones2 wrote the
catalogue: it is refused.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from ..errors import CatalogueDamagedError, CatalogueVersionError, RegistryError

#: Alembic revisions of the catalogue schema, oldest first. Keep in sync with
#: cones2/migrations/versions (a test checks it).
KNOWN_REVISIONS: tuple[str, ...] = ("0001_initial", "0002_counters_search")
SCHEMA_HEAD = KNOWN_REVISIONS[-1]
DB_FILE = "catalogue.db"
BUSY_TIMEOUT_S = 60.0
PG_LOCK_KEY = 0x636F6E657332  # "cones2": one advisory lock serialises catalogue writers
MIGRATIONS_DIR = Path(__file__).resolve().parent.parent / "migrations"
ROLLING_SUFFIX = ".rolling.bak"
ENV_BACKUP_INTERVAL = "CONES2_BACKUP_INTERVAL_S"
DEFAULT_BACKUP_INTERVAL_S = 600.0


def default_url(home: Path) -> str:
    return f"sqlite:///{home / DB_FILE}"


def sqlite_file(url: str) -> Path | None:
    """The file of a plain ``sqlite:///path`` URL (None for other URLs and memory)."""
    for prefix in ("sqlite:///", "sqlite+pysqlite:///"):
        if url.startswith(prefix):
            rest = url[len(prefix) :]
            if not rest or rest == ":memory:" or "?" in rest or rest.startswith("file:"):
                return None
            return Path(rest)
    return None


def display_url(url: str) -> str:
    """The URL without its password, for messages."""
    if "://" in url and "@" in url.split("://", 1)[1]:
        scheme, rest = url.split("://", 1)
        creds, host = rest.rsplit("@", 1)
        user = creds.split(":", 1)[0]
        return f"{scheme}://{user}:***@{host}"
    return url


def to_iso(value: Any) -> str | None:
    """Timestamps come back as datetimes (PostgreSQL) or text (SQLite): one ISO form, UTC."""
    if value is None:
        return None
    if isinstance(value, str):
        # SQLite text as SQLAlchemy writes it (UTC): "YYYY-MM-DD HH:MM:SS.ffffff".
        if len(value) == 26 and value[10] == " " and value[19] == ".":
            return f"{value[:10]}T{value[11:19]}Z"
        value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    return value.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def sqlite_timestamp(value: datetime) -> str:
    """How SQLAlchemy stores a DateTime in SQLite (for raw bulk inserts)."""
    return value.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M:%S.%f")


class Database:
    """One catalogue database: fast reads, locked ORM writes, schema management."""

    def __init__(self, url: str, home: Path) -> None:
        self.url = url
        self.home = home
        self.path = sqlite_file(url)
        self.read_only = False
        self._conn: sqlite3.Connection | None = None
        self._engine_obj: Any = None

    # ------------------------------------------------------------------ lifecycle

    @property
    def where(self) -> str:
        return str(self.path) if self.path is not None else display_url(self.url)

    def open(self, on_new: Callable[[], None] | None = None) -> None:
        """Connect and bring the schema to :data:`SCHEMA_HEAD`; on any refusal nothing stays open.

        ``on_new`` runs before an empty database gets a fresh schema: it may refuse (a
        catalogue emptied next to a blob store that still holds content).
        """
        try:
            if self.path is not None:
                self._open_sqlite()
            revision = self.current_revision()
            if revision == SCHEMA_HEAD:
                return
            if revision is None and on_new is not None:
                on_new()
            self._check_known(revision)
            if self.read_only:
                raise RegistryError(f"catalogue {self.where} needs a schema upgrade but {self.home} is not writable")
            self.upgrade()
        except BaseException:
            self.close()  # the caller gets no Catalogue to close
            raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None
        if self._engine_obj is not None:
            self._engine_obj.dispose()
            self._engine_obj = None

    def _open_sqlite(self) -> None:
        assert self.path is not None
        path = self.path
        exists = path.exists()
        if not exists:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise RegistryError(f"cannot create the catalogue in {path.parent}: {exc.strerror or exc}") from None
        try:
            conn = sqlite3.connect(str(path), timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False)
            conn.execute("PRAGMA foreign_keys=ON")
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.DatabaseError as exc:
            if exists and not os.access(path.parent, os.W_OK):
                conn = self._open_immutable(path)
            elif exists and "not a database" in str(exc):
                raise self.damaged("is not an SQLite database") from None
            else:
                raise self.damaged(f"cannot be opened ({exc})") from None
        self._conn = conn

    def _open_immutable(self, path: Path) -> sqlite3.Connection:
        """A home we cannot write to can still be read (list, show, export)."""
        self.read_only = True
        try:
            return sqlite3.connect(f"file:{path}?mode=ro&immutable=1", uri=True, isolation_level=None, check_same_thread=False)
        except sqlite3.DatabaseError as exc:
            raise RegistryError(f"cannot open the catalogue {path} read-only: {exc}") from None

    # ------------------------------------------------------------------ schema

    def current_revision(self) -> str | None:
        if self._conn is not None:
            try:
                row = self._conn.execute("SELECT version_num FROM alembic_version").fetchone()
            except sqlite3.OperationalError as exc:
                if "no such table" not in str(exc):
                    raise RegistryError(f"cannot read the catalogue {self.where}: {exc}") from None
                tables = self._conn.execute(
                    "SELECT count(*) FROM sqlite_master WHERE type='table' AND name NOT LIKE 'sqlite_%'"
                ).fetchone()[0]
                if tables:
                    raise self.damaged("is not a cones2 catalogue (no schema revision)") from None
                return None
            except sqlite3.DatabaseError as exc:
                raise self.damaged(f"cannot be read ({exc})") from None
            return row[0] if row else None
        from sqlalchemy import inspect, text

        try:
            with self.engine().connect() as conn:
                if not inspect(conn).has_table("alembic_version"):
                    return None
                row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
        except Exception as exc:
            raise RegistryError(f"cannot open the catalogue {self.where}: {_first_line(exc)}") from None
        return row[0] if row else None

    def _check_known(self, revision: str | None) -> None:
        if revision is not None and revision not in KNOWN_REVISIONS:
            raise CatalogueVersionError(
                f"catalogue {self.where} was written by a newer cones2 (schema revision {revision}); "
                f"this cones2 knows up to {SCHEMA_HEAD}: upgrade cones2"
            )

    def alembic_config(self, connection: Any = None) -> Any:
        from alembic.config import Config

        cfg = Config()
        cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
        cfg.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        if connection is not None:
            cfg.attributes["connection"] = connection
        return cfg

    def upgrade(self, target: str = "head") -> Path | None:
        """Migrate to ``target`` under the write lock; returns the backup file, if any."""
        from alembic import command
        from sqlalchemy import text

        backup = None
        try:
            with self.engine().begin() as conn:
                self._lock_connection(conn)
                if self.path is not None:
                    revision = self.current_revision()  # another process may have upgraded
                else:
                    from sqlalchemy import inspect

                    revision = None
                    if inspect(conn).has_table("alembic_version"):
                        row = conn.execute(text("SELECT version_num FROM alembic_version")).first()
                        revision = row[0] if row else None
                self._check_known(revision)
                if revision == SCHEMA_HEAD or (target != "head" and revision == target):
                    return None
                if revision is not None and self.path is not None:
                    backup = self._backup(revision)
                command.upgrade(self.alembic_config(conn), target)
        except (RegistryError, CatalogueVersionError):
            raise
        except Exception as exc:
            raise RegistryError(f"cannot migrate the catalogue {self.where}: {_first_line(exc)}") from None
        return backup

    def _backup(self, revision: str) -> Path:
        assert self.path is not None and self._conn is not None
        stamp = time.strftime("%Y%m%dT%H%M%S")
        target = self.path.with_name(f"{self.path.name}.{revision}.{stamp}.bak")
        n = 1
        while target.exists():
            n += 1
            target = self.path.with_name(f"{self.path.name}.{revision}.{stamp}-{n}.bak")
        dest = sqlite3.connect(str(target))
        try:
            self._conn.backup(dest)
        finally:
            dest.close()
        return target

    # ------------------------------------------------------------------ backups

    def backups(self) -> list[Path]:
        """Copies to restore from, newest first: the rolling backup and the pre-migration copies."""
        if self.path is None:
            return []
        found = [p for p in self.path.parent.glob(f"{self.path.name}.*.bak") if p.is_file() and p.stat().st_size > 0]
        return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)

    def damaged(self, state: str) -> CatalogueDamagedError:
        """The one error for a catalogue that cannot be trusted, naming what to restore."""
        copies = self.backups()
        if copies:
            hint = f"restore a backup (newest: cp {copies[0]} {self.path}; others: {len(copies) - 1})"
        else:
            hint = "no backup copy found next to it"
        return CatalogueDamagedError(
            f"the catalogue {self.where} {state}: {hint}, or run `cones2 doctor` to rebuild it from the blobs"
        )

    def backup_interval(self) -> float:
        raw = os.environ.get(ENV_BACKUP_INTERVAL, "")
        try:
            return float(raw) if raw.strip() else DEFAULT_BACKUP_INTERVAL_S
        except ValueError:
            return DEFAULT_BACKUP_INTERVAL_S

    def rolling_backup(self, *, force: bool = False) -> Path | None:
        """Copy the catalogue to ``<file>.rolling.bak`` (SQLite online backup) when the last copy is old.

        Called after each successful write; at most one copy per :data:`ENV_BACKUP_INTERVAL`
        seconds (default 10 minutes). Best effort: a failed copy never fails the write.
        """
        if self.path is None or self._conn is None or self.read_only:
            return None
        target = self.path.with_name(self.path.name + ROLLING_SUFFIX)
        try:
            if not force and target.is_file() and time.time() - target.stat().st_mtime < self.backup_interval():
                return None
            tmp = target.with_name(f"{target.name}.{os.getpid()}.tmp")
            dest = sqlite3.connect(str(tmp))
            try:
                self._conn.backup(dest)
            finally:
                dest.close()
            os.replace(tmp, target)
        except (OSError, sqlite3.Error):
            return None
        return target

    # ------------------------------------------------------------------ reads

    def query(self, sql: str, params: dict[str, Any] | None = None) -> list[Sequence[Any]]:
        """Run one read-only statement (``:name`` parameters) and return all rows."""
        params = params or {}
        if self._conn is not None:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.OperationalError as exc:
                raise RegistryError(f"cannot read the catalogue {self.where}: {exc}") from None
            except sqlite3.DatabaseError as exc:  # malformed, truncated
                raise self.damaged(f"cannot be read ({exc})") from None
        from sqlalchemy import text
        from sqlalchemy.exc import SQLAlchemyError

        try:
            with self.engine().connect() as conn:
                return list(conn.execute(text(sql), params).all())
        except SQLAlchemyError as exc:  # as the sqlite3 path above: one line, not a traceback
            raise RegistryError(f"cannot read the catalogue {self.where}: {_first_line(exc)}") from None

    # ------------------------------------------------------------------ writes

    def engine(self) -> Any:
        if self._engine_obj is None:
            self._engine_obj = _make_engine(self.url)
        return self._engine_obj

    def _lock_connection(self, conn: Any) -> None:
        if conn.dialect.name == "postgresql":
            from sqlalchemy import text

            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_LOCK_KEY})

    @contextmanager
    def write(self) -> Iterator[Any]:
        """An ORM session in a transaction holding the catalogue's write lock."""
        if self.read_only:
            raise RegistryError(f"the catalogue {self.where} is read-only: {self.home} is not writable")
        from sqlalchemy.exc import DBAPIError
        from sqlalchemy.orm import Session

        try:
            with Session(self.engine(), expire_on_commit=False) as session, session.begin():
                self._lock_connection(session.connection())
                yield session
            self.rolling_backup()
        except DBAPIError as exc:
            text = _first_line(exc.orig if exc.orig is not None else exc)
            if "readonly" in text or "read-only" in text or "unable to open" in text:
                raise RegistryError(f"cannot write to the catalogue {self.where}: {text} (is {self.home} writable?)") from None
            raise RegistryError(f"cannot write to the catalogue {self.where}: {text}") from None


def _make_engine(url: str) -> Any:
    from sqlalchemy import create_engine, event
    from sqlalchemy.pool import StaticPool

    if url.startswith("sqlite"):
        memory = sqlite_file(url) is None
        kwargs: dict[str, Any] = {"connect_args": {"timeout": BUSY_TIMEOUT_S, "check_same_thread": False}}
        if memory:
            kwargs["poolclass"] = StaticPool
        engine = create_engine(url, **kwargs)

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_conn: Any, _record: Any) -> None:
            dbapi_conn.isolation_level = None  # we issue BEGIN ourselves
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(BUSY_TIMEOUT_S * 1000)}")
            if not memory:
                cur.execute("PRAGMA journal_mode=WAL")
            cur.close()

        @event.listens_for(engine, "begin")
        def _on_begin(conn: Any) -> None:
            conn.exec_driver_sql("BEGIN IMMEDIATE")  # take the write lock now, not mid-way

        return engine
    try:
        return create_engine(url, pool_pre_ping=True)
    except Exception as exc:
        raise RegistryError(f"cannot use the catalogue URL {display_url(url)}: {_first_line(exc)}") from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
