"""Where the files shipped beside the code are: the page (``web_client/``) and the ready configs (``configs/``).

A wheel, or a non-editable ``pip install .``, carries both inside this package (setup.py copies them
to ``rtc_server/web_client/`` and ``rtc_server/configs/``); a source checkout or an editable install
has them at the repository root. The packaged copy wins when present.
"""

from __future__ import annotations

from pathlib import Path

from rtc_server.config import ConfigError

__all__ = ["CONFIG_SUFFIXES", "resolve_config_path", "shipped_config_names", "shipped_dir"]

PACKAGE_DIR = Path(__file__).resolve().parent
CONFIG_SUFFIXES = (".yaml", ".yml")


def shipped_dir(name: str) -> Path:
    """``name`` (``"web_client"`` or ``"configs"``): the packaged copy when installed, else the repository's."""
    packaged = PACKAGE_DIR / name
    return packaged if packaged.is_dir() else PACKAGE_DIR.parent / name


def shipped_config_names() -> list[str]:
    """File names of the ready configs, e.g. ``["dev.yaml", ...]``."""
    directory = shipped_dir("configs")
    if not directory.is_dir():
        return []
    return sorted(path.name for path in directory.iterdir() if path.suffix in CONFIG_SUFFIXES and path.is_file())


def resolve_config_path(value: str) -> Path:
    """The file ``--config value`` means: an existing file at that path, else a shipped config by name.

    A bare name (no directory part) that is not a file here is looked up among the shipped configs,
    with or without its ``.yaml`` suffix (``dev.yaml``, ``dev``); an unknown name raises ConfigError
    listing the shipped ones. A path with a directory part is returned as given, for load_config to
    read or to report.
    """
    path = Path(value)
    if path.is_file() or path.name != value:
        return path
    names = shipped_config_names()
    for candidate in (value, *(value + suffix for suffix in CONFIG_SUFFIXES)):
        if candidate in names:
            return shipped_dir("configs") / candidate
    shipped = ", ".join(names) or "none"
    raise ConfigError(f"{value}: no such config file, and no shipped config of that name (shipped: {shipped})")
