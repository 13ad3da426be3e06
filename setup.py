"""Build hook: the page and the ready configs travel inside the ``rtc_server`` package.

``web_client/`` and ``configs/`` stay at the repository root (DESIGN.md, layout). A wheel, and so a
non-editable ``pip install .``, gets a copy of each inside the package, as ``rtc_server/web_client/``
and ``rtc_server/configs/``, so an installed server serves the page and runs the shipped configs by
name from any directory (``rtc_server/packaged.py`` looks there first). An editable install copies
nothing: the server then serves the repository's own files, live. Everything else about the build
is in pyproject.toml; MANIFEST.in puts both folders in the sdist, which a wheel may be built from.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

ROOT = Path(__file__).resolve().parent
SHIPPED_DIRS = ("web_client", "configs")  # repository folders copied to rtc_server/<same name>/


def _skipped(relative: Path) -> bool:
    """Editor, OS and interpreter leftovers: hidden files and __pycache__."""
    return any(part.startswith(".") or part == "__pycache__" for part in relative.parts)


class BuildPyWithShippedFiles(build_py):
    """``build_py`` that also copies SHIPPED_DIRS into the built ``rtc_server`` package."""

    def run(self) -> None:
        super().run()
        if self.editable_mode:
            return
        for name in SHIPPED_DIRS:
            source = ROOT / name
            if not source.is_dir():
                raise FileNotFoundError(f"{source}: missing; a wheel without it would not serve the page or configs")
            for path in sorted(source.rglob("*")):
                if path.is_file() and not _skipped(path.relative_to(source)):
                    target = Path(self.build_lib, "rtc_server", name, path.relative_to(source))
                    self.mkpath(str(target.parent))
                    self.copy_file(str(path), str(target))


setup(cmdclass={"build_py": BuildPyWithShippedFiles})
