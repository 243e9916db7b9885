"""Where cones2 keeps things and which defaults apply.

Precedence, highest first: command-line options, environment variables
(``CONES2_HOME``, ``CONES2_DATABASE_URL``, ``CONES2_BASE_MODEL``), the config file
``$CONES2_HOME/config.toml``, built-in defaults (the platform's user data folder, SQLite,
the demo model).
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass
from pathlib import Path

ENV_HOME = "CONES2_HOME"
ENV_DATABASE_URL = "CONES2_DATABASE_URL"
ENV_BASE_MODEL = "CONES2_BASE_MODEL"
CONFIG_FILE = "config.toml"


def home() -> Path:
    """The cones2 home folder (catalogue, blobs, caches, config)."""
    value = os.environ.get(ENV_HOME)
    if value:
        return Path(value).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("cones2", appauthor=False))


def cache_dir() -> Path:
    return home() / "cache"


def demo_model_path() -> Path:
    """The demo model inside the home folder, built on first use."""
    from .demo_model import DEFAULT_SEED, build_demo_model, is_demo_model

    path = home() / "models" / f"demo-seed{DEFAULT_SEED}"
    if not is_demo_model(path):
        build_demo_model(path, seed=DEFAULT_SEED, overwrite=True)
    return path


@dataclass(frozen=True)
class Config:
    base_model: str | None = None
    database_url: str | None = None
    default_remote: str | None = None


def _read_file(path: Path) -> dict[str, object]:
    if not path.is_file():
        return {}
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        import tomli as tomllib  # type: ignore[no-redef]
    from .errors import UsageError

    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{path}: invalid config file ({exc})") from None


def load_config() -> Config:
    """The effective configuration: environment over config file over defaults."""
    data = _read_file(home() / CONFIG_FILE)
    return Config(
        base_model=os.environ.get(ENV_BASE_MODEL) or _str(data.get("base_model")),
        database_url=os.environ.get(ENV_DATABASE_URL) or _str(data.get("database_url")),
        default_remote=_str(data.get("default_remote")),
    )


def _str(value: object) -> str | None:
    return str(value) if value not in (None, "") else None
