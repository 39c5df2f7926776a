"""Load a custom loader module straight from its file, as unit tests need it (no Salt loader)."""

from __future__ import annotations

import importlib.util
import sys
from types import ModuleType

from tests.conftest import REPO_ROOT


def load_loader_module(relative_path: str, name: str) -> ModuleType:
    """Import ``<repo>/<relative_path>`` as module ``name``; dunders (__salt__, ...) are the test's to set."""
    spec = importlib.util.spec_from_file_location(name, REPO_ROOT / relative_path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def fake_config_option(opts: dict, pillar: dict):
    """config.option's lookup order (opts, then pillar), as loader modules see it through __salt__."""

    def option(value, default=None, **_):
        if value in opts:
            return opts[value]
        if value in pillar:
            return pillar[value]
        return "" if default is None else default

    return option
