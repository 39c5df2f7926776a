"""The saltext-distmon wheel: built from the repo's loader directories, installed, used with no file_roots.

The wheel is built with ``python -m build`` from tools/saltext and installed into a
fresh virtualenv, which gets Salt 3008.4 and the other dependencies from the
project's venv through a ``.pth`` file: installing Salt from the package index
into each new venv took 3-5 minutes on this machine, the rest of this test about a
minute. The fresh venv's interpreter then runs ``salt-call --local`` with a minimal
minion config (``file_client: local``, an empty file_roots, nothing synced): every
module it finds comes from the installed package's ``salt.loader`` entry point.
"""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import textwrap
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO_ROOT
from tools.storage_host import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PACKAGED = {"_modules": "modules", "_runners": "runners", "_returners": "returners", "_output": "output",
            "_utils": "utils"}
# The console script salt-call, run by the fresh venv's interpreter (the script lives in the project venv).
SALT_CALL = "import sys; from salt.scripts import salt_call; sys.argv[0] = 'salt-call'; salt_call()"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "build", "--wheel", "--no-isolation", "--outdir", str(out),
                    str(REPO_ROOT / "tools" / "saltext")], check=True, capture_output=True, text=True, timeout=300)
    (built,) = out.glob("saltext_distmon-*.whl")
    return built


@pytest.fixture(scope="module")
def saltext_python(wheel, tmp_path_factory) -> Path:
    """The interpreter of a new venv where saltext-distmon is installed (and Salt reachable)."""
    venv = tmp_path_factory.mktemp("saltext-venv")
    subprocess.run([sys.executable, "-m", "venv", "--clear", "--without-pip", str(venv)], check=True, timeout=120)
    python = venv / "bin" / "python"
    site = subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()
    (Path(site) / "project-venv.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                    "--disable-pip-version-check", "-q", str(wheel)], check=True, capture_output=True, text=True,
                   timeout=300)
    return python


@pytest.fixture(scope="module")
def minion_config(tmp_path_factory) -> Path:
    """A masterless minion: local file client, empty file_roots, its own root_dir; no distmon module synced."""
    root = tmp_path_factory.mktemp("saltext-minion")
    (root / "srv").mkdir()
    known_hosts = root / "known_hosts"
    known_hosts.write_text("")
    key = root / "client_key"
    key.write_text("not used: nothing listens on the port\n")
    conf = root / "conf"
    conf.mkdir()
    (conf / "minion").write_text(textwrap.dedent(f"""\
        id: saltext-minion
        root_dir: {root}
        file_client: local
        file_roots:
          base: [{root / "srv"}]
        log_file: {root / "minion.log"}
        log_level_logfile: info
        distmon.host: 127.0.0.1
        distmon.port: {free_port()}
        distmon.user: distmon
        distmon.key: {key}
        distmon.known_hosts: {known_hosts}
        distmon.remote_inbox: /inbox
        distmon.deadline: 5
        distmon.sign: false
        """))
    return conf


def salt_call(python: Path, conf: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(python), "-c", SALT_CALL, "--local", "-c", str(conf), *args], capture_output=True,
                          text=True, timeout=300, stdin=subprocess.DEVNULL)


def test_the_wheel_holds_each_module_once_byte_for_byte_from_the_repo(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = [name for name in archive.namelist() if name.endswith(".py")]
        expected = {"saltext/distmon/__init__.py", "saltext/distmon/loader.py"}
        for source, target in PACKAGED.items():
            for path in (REPO_ROOT / source).glob("*.py"):
                expected.add(f"saltext/distmon/{target}/{path.name}")
                assert archive.read(f"saltext/distmon/{target}/{path.name}") == path.read_bytes()
        assert sorted(names) == sorted(expected)
        entry_points = archive.read("saltext_distmon-0.1.0.dist-info/entry_points.txt").decode()
    assert "[salt.loader]" in entry_points and "saltext.distmon.loader:loader_dirs" in entry_points


def test_salt_call_local_runs_pytestrun_from_the_installed_package(saltext_python, minion_config):
    assert not (minion_config.parent / "var" / "cache" / "salt" / "minion" / "extmods").exists()
    sample = REPO_ROOT / "sample_tests" / "test_passing.py"
    ran = salt_call(saltext_python, minion_config, "pytestrun.run", str(sample), "--out", "json")
    assert ran.returncode == 0, ran
    result = json.loads(ran.stdout)["local"]
    assert result["status"] == "passed" and result["counts"]["passed"] >= 1, result
    # The outputter and the shared library come from the package too.
    shown = salt_call(saltext_python, minion_config, "pytestrun.run", str(sample), "--out", "distmon")
    assert shown.returncode == 0, shown
    assert shown.stdout.startswith("local: passed: "), shown
    # Nothing was synced: the modules were found through the entry point.
    extmods = minion_config.parent / "var" / "cache" / "salt" / "minion" / "extmods"
    assert not list(extmods.rglob("*.py"))


def test_the_returner_spools_through_the_installed_module_and_library(saltext_python, minion_config):
    returned = salt_call(saltext_python, minion_config, "pytestrun.run",
                         str(REPO_ROOT / "sample_tests" / "test_passing.py"), "--return", "distmon", "--out", "json")
    assert returned.returncode == 0, returned
    listing = salt_call(saltext_python, minion_config, "distmon.spool", "--out", "json")
    assert listing.returncode == 0, listing
    (waiting,) = json.loads(listing.stdout)["local"]
    assert "cannot reach distmon@127.0.0.1" in waiting["last_error"]  # spooled; the storage host is not there


def test_the_runner_loads_from_the_installed_package(saltext_python, tmp_path):
    probe = textwrap.dedent(f"""\
        import json, salt.config, salt.loader
        opts = salt.config.master_config(None)
        opts.update(root_dir={str(tmp_path)!r}, cachedir={str(tmp_path / "cache")!r},
                    extension_modules={str(tmp_path / "extmods")!r})
        runners = salt.loader.runner(opts, utils=salt.loader.utils(opts))
        print(json.dumps(sorted(name for name in runners if name.startswith("distmon."))))
        """)
    done = subprocess.run([str(saltext_python), "-c", probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done
    assert json.loads(done.stdout.strip().splitlines()[-1]) == ["distmon.rerun", "distmon.results", "distmon.run",
                                                               "distmon.status"]
