"""
Where Salt's loader finds distmon's modules when it is installed as ``saltext-distmon``.

Salt calls ``loader_dirs()`` (the package's ``salt.loader`` entry point) and
loads each directory as its own kind. ``utils`` is not listed: Salt 3008 does
not take ``_utils`` directories from entry points, so the modules import the
shared library as ``saltext.distmon.utils`` when ``__utils__`` does not have it.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
LOADER_DIRS = {"modules": "modules", "runners": "runners", "returners": "returners", "output": "output"}


def loader_dirs() -> dict[str, list[str]]:
    """Salt's loader kind -> the package directories holding that kind of module."""
    return {kind: [str(PACKAGE_DIR / directory)] for kind, directory in LOADER_DIRS.items()}
