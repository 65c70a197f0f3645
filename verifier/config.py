"""Settings shared by every verinfer command (``VERINFER_`` environment prefix).

Each application extends :class:`Settings` with its own fields (the server's
``ServerSettings`` for instance); the object is built once at the edge (CLI or
app factory) and passed in explicitly, never read from globals.
"""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


def default_home() -> Path:
    """``$XDG_DATA_HOME/verinfer``, else ``~/.local/share/verinfer``."""
    import os

    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "verinfer"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="VERINFER_", extra="ignore", frozen=True)

    home: Path = Field(
        default_factory=default_home,
        description="Data directory: circuit packages, SRS cache, keys, receipt store.",
    )

    @field_validator("home")
    @classmethod
    def _a_folder(cls, home: Path) -> Path:
        if home.exists() and not home.is_dir():  # else commands would say "no models registered"
            raise ValueError(f"{home} is not a folder (VERINFER_HOME is the data directory)")
        return home

    @property
    def packages_dir(self) -> Path:
        """Content-addressed circuit packages, one folder per package id."""
        return self.home / "packages"

    @property
    def names_dir(self) -> Path:
        """One small file per registered model name, holding its package id."""
        return self.home / "names"

    @property
    def srs_dir(self) -> Path:
        """Cached SRS files (development SRS are generated here, per logrows)."""
        return self.home / "srs"

    @property
    def ezkl_dir(self) -> Path:
        """EZKL's own cache (lookup tables), instead of its default ``~/.ezkl``."""
        return self.home / "ezkl"
