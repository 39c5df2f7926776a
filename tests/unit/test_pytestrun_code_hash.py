"""pytestrun's code fingerprint (``code_hash``): real pytest runs in tmp, the loader dunders faked."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from tests.loader_support import load_loader_module, load_utils

MODULE_PATH = Path(__file__).resolve().parents[2] / "_modules" / "pytestrun.py"
NO_AUTOLOAD = {"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"}


@pytest.fixture
def pytestrun(tmp_path, monkeypatch):
    module = load_loader_module("_modules/pytestrun.py", "distmon_unit_pytestrun_code_hash")
    monkeypatch.setattr(module, "__utils__", load_utils(), raising=False)
    monkeypatch.setattr(module, "__opts__", {"cachedir": str(tmp_path / "cache"), "id": "unit-minion"}, raising=False)
    monkeypatch.setattr(module, "__salt__", {"config.get": lambda key, default=None: default}, raising=False)
    monkeypatch.setattr(module, "__context__", {}, raising=False)
    return module


@pytest.fixture
def suite(tmp_path) -> Path:
    root = tmp_path / "suite"
    (root / "sub").mkdir(parents=True)
    (root / "pytest.ini").write_text("[pytest]\n")
    (root / "conftest.py").write_text("import pytest\n")
    (root / "sub" / "conftest.py").write_text("VALUE = 1\n")
    (root / "sub" / "test_a.py").write_text("def test_a():\n    pass\n")
    (root / "sub" / "test_b.py").write_text("def test_b():\n    pass\n")
    (root / "other").mkdir()
    (root / "other" / "conftest.py").write_text("VALUE = 2\n")
    (root / "other" / "test_c.py").write_text("def test_c():\n    pass\n")
    return root


def _hash(pytestrun, target: Path, args: str | None = None) -> str:
    result = pytestrun.run(str(target), args=args, env=NO_AUTOLOAD)
    assert result["status"] == "passed", result
    return result["code_hash"]


def test_code_hash_is_stable_and_changes_with_every_file_it_covers(pytestrun, suite):
    first = _hash(pytestrun, suite / "sub")
    assert isinstance(first, str) and len(first) == 32 and int(first, 16) >= 0
    assert _hash(pytestrun, suite / "sub") == first  # same files, same hash
    seen = {first}
    for changed in ("sub/test_a.py", "sub/conftest.py", "conftest.py", "pytest.ini"):
        with open(suite / changed, "a") as handle:
            handle.write("\n# edited\n")
        now = _hash(pytestrun, suite / "sub")
        assert now not in seen, changed
        seen.add(now)


def test_code_hash_ignores_files_that_were_not_collected(pytestrun, suite):
    before = _hash(pytestrun, suite / "sub")
    (suite / "other" / "test_c.py").write_text("def test_c():\n    assert True\n")
    (suite / "other" / "conftest.py").write_text("VALUE = 3\n")
    assert _hash(pytestrun, suite / "sub") == before
    # A narrower selection is different code: test_b.py is no longer part of it.
    assert _hash(pytestrun, suite / "sub" / "test_a.py") != before


def test_code_hash_is_the_same_wherever_the_tree_lives(pytestrun, suite, tmp_path):
    # Paths enter the hash relative to the rootdir: two minions with the tree elsewhere agree.
    moved = tmp_path / "elsewhere" / "suite"
    shutil.copytree(suite, moved)
    assert _hash(pytestrun, moved / "sub") == _hash(pytestrun, suite / "sub")
    (moved / "sub" / "test_b.py").rename(moved / "sub" / "test_b2.py")
    assert _hash(pytestrun, moved / "sub") != _hash(pytestrun, suite / "sub")  # a renamed file is a change


def test_code_hash_is_null_when_collection_never_finished(pytestrun, suite):
    result = pytestrun.run(str(suite / "sub"), args="--definitely-not-an-option", env=NO_AUTOLOAD)
    assert result["status"] == "usage_error"
    assert result["code_hash"] is None
