"""Schema migrations: head constant, upgrades with data, backups, refusal of newer catalogues."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from _registry_helpers import fingerprint_of, write_residual

from cones2.errors import CatalogueVersionError, RegistryError
from cones2.registry import open_catalogue
from cones2.registry.database import DB_FILE, KNOWN_REVISIONS, SCHEMA_HEAD, Database, default_url


def _script():
    from alembic.script import ScriptDirectory

    db = Database("sqlite://", Path("."))
    return ScriptDirectory.from_config(db.alembic_config())


def test_exactly_one_head_and_constant_matches():
    script = _script()
    assert script.get_heads() == [SCHEMA_HEAD]
    chain = [rev.revision for rev in script.walk_revisions("base", "heads")]
    assert tuple(reversed(chain)) == KNOWN_REVISIONS


def test_upgrade_from_empty_and_models_match_migrations(cones2_home: Path):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from cones2.registry.models import Base

    cat = open_catalogue()
    cat.close()
    db_file = cones2_home / DB_FILE
    assert db_file.exists()
    assert not list(cones2_home.glob("*.bak"))  # nothing to back up for a new catalogue
    conn = sqlite3.connect(db_file)
    assert conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == SCHEMA_HEAD
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    conn.close()
    from sqlalchemy import create_engine

    engine = create_engine(default_url(cones2_home))
    with engine.connect() as c:
        diff = compare_metadata(MigrationContext.configure(c, opts={"compare_type": True}), Base.metadata)
    engine.dispose()
    assert diff == []


def test_upgrade_from_first_revision_keeps_data_and_backs_up(cones2_home: Path, demo_model_dir: Path, tmp_path: Path):
    from alembic import command

    cones2_home.mkdir(parents=True)
    db = Database(default_url(cones2_home), cones2_home)
    from sqlalchemy import text

    with db.engine().begin() as conn:
        command.upgrade(db.alembic_config(conn), "0001_initial")
        fp = "cd" * 32
        conn.execute(text("INSERT INTO subjects (id, name, word, description, created_at) VALUES (1, 'dog', 'dog', 'Max the corgi', '2026-01-01 00:00:00.000000')"))
        conn.execute(text("INSERT INTO base_models (fingerprint, hidden_size, first_seen) VALUES (:f, 32, '2026-01-01 00:00:00.000000')"), {"f": fp})
        for n, sha in ((1, "1" * 64), (2, "2" * 64)):
            conn.execute(
                text(
                    "INSERT INTO versions (subject_id, version, sha256, size, dtype, shape, word, token_ids, base_fingerprint, "
                    "metadata_json, provenance_kind, created_at) VALUES (1, :n, :s, 10, 'float32', '[1, 32]', 'dog', '[643]', :f, "
                    "'{\"trainer\": \"Alice\"}', 'local', '2026-01-01 00:00:00.000000')"
                ),
                {"n": n, "s": sha, "f": fp},
            )
    db.close()

    cat = open_catalogue()
    backups = list(cones2_home.glob(f"{DB_FILE}.0001_initial.*.bak"))
    assert len(backups) == 1
    old = sqlite3.connect(backups[0])
    assert old.execute("SELECT version_num FROM alembic_version").fetchone()[0] == "0001_initial"
    assert old.execute("SELECT count(*) FROM versions").fetchone()[0] == 2
    old.close()
    assert [r.version for r in cat.list_versions("dog")] == [1, 2]
    assert cat.list_subjects()[0].description == "Max the corgi"
    assert [s.name for s in cat.search("alice")] == ["dog"]  # backfilled search text
    assert cat.resolve("dog@sha256:" + "2" * 12).version == 2
    # last_version was backfilled: the next version is 3 even after removing 2.
    cat.remove("dog@2")
    fp_demo = fingerprint_of(demo_model_dir)
    assert cat.add(write_residual(tmp_path / "r.safetensors", fp_demo), "dog").version == 3
    cat.close()


def test_newer_catalogue_is_refused(cones2_home: Path):
    open_catalogue().close()
    conn = sqlite3.connect(cones2_home / DB_FILE)
    conn.execute("UPDATE alembic_version SET version_num = '0099_from_the_future'")
    conn.commit()
    conn.close()
    with pytest.raises(CatalogueVersionError, match="newer cones2.*0099_from_the_future"):
        open_catalogue()
    db = Database(default_url(cones2_home), cones2_home)
    with pytest.raises(CatalogueVersionError):
        db.open()
    assert db._conn is None  # a refused open leaves no connection behind


def test_not_a_catalogue_is_refused(cones2_home: Path):
    cones2_home.mkdir(parents=True)
    (cones2_home / DB_FILE).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(RegistryError, match="is not an SQLite database"):
        open_catalogue()
    other = cones2_home / "other.db"
    conn = sqlite3.connect(other)
    conn.execute("CREATE TABLE foo (x)")
    conn.commit()
    conn.close()
    with pytest.raises(RegistryError, match="not a cones2 catalogue"):
        open_catalogue(url=f"sqlite:///{other}")


def test_opening_at_head_does_not_import_alembic(cones2_home: Path):
    import subprocess
    import sys

    open_catalogue().close()
    code = (
        "import sys\nfrom cones2.registry import open_catalogue\n"
        "open_catalogue().list_subjects()\n"
        "print(sorted(m for m in ('alembic', 'sqlalchemy', 'numpy', 'torch') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
