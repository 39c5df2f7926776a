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


UTILS_LIBRARY = ("distmon_options", "distmon_transport", "distmon_signing", "distmon_summary", "distmon_events")


def load_utils(names=UTILS_LIBRARY) -> dict:
    """``__utils__`` as Salt's loader builds it from ``_utils/``: ``{"<module>.<function>": function}``.

    Only public functions, as the loader hands out (no classes, no constants), so a
    consumer that reaches for anything else fails here as it would in a real minion.
    """
    import inspect

    utils = {}
    for name in names:
        module = load_loader_module(f"_utils/{name}.py", f"distmon_utils_{name}")
        for attr, value in vars(module).items():
            if not attr.startswith("_") and inspect.isfunction(value) and value.__module__ == module.__name__:
                utils[f"{name}.{attr}"] = value
    return utils
