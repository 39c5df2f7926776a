"""tools/system_deps.py: what `make setup/up/demo/test` install on a fresh machine.

The machine's own packages are never touched: probe paths point into tmp_path and a
stand-in apt-get (a real script) records its arguments and "installs" by creating the
probe files of the packages it was asked for.
"""

from __future__ import annotations

import io
import subprocess

import pytest

from tests.conftest import REPO_ROOT
from tools import system_deps

FAKE_APT_GET = """#!/bin/sh
echo "$@" >> "{log}"
[ "$1" = install ] || exit 0
for arg in "$@"; do
  case "$arg" in install|-*) ;; *) [ -n "{refuse}" ] && [ "$arg" = "{refuse}" ] || touch "{probes}/$arg" ;; esac
done
"""


@pytest.fixture
def machine(tmp_path):
    """A machine without any package: (probes, apt-get path, its call log)."""
    probe_dir = tmp_path / "probes"
    probe_dir.mkdir()
    probes = {pkg: (str(probe_dir / pkg),) for pkg in system_deps.PROBES}
    log = tmp_path / "apt-get.log"

    def apt_get(refuse: str = "") -> str:
        script = tmp_path / "apt-get"
        script.write_text(FAKE_APT_GET.format(log=log, probes=probe_dir, refuse=refuse))
        script.chmod(0o755)
        return str(script)

    return probes, apt_get, log


def calls(log) -> list[str]:
    return log.read_text().splitlines() if log.exists() else []


def test_the_stack_as_root_installs_the_ssh_server_it_lacks(machine):
    probes, apt_get, log = machine
    out = io.StringIO()
    assert system_deps.check_or_install("stack", probes, apt_get(), lambda: True, out) == 0
    install = calls(log)[-1].split()
    assert install[0] == "install"
    assert {"openssh-server", "openssh-client", "procps"} <= set(install)
    # The demo needs no browser and no cron.
    assert "chromium" not in install and "cron" not in install
    assert system_deps.missing(system_deps.NEEDS["stack"], probes) == []
    assert "installing openssh-server" in out.getvalue()


def test_setup_installs_the_venv_package_before_python_makes_the_venv(machine):
    probes, apt_get, log = machine
    assert system_deps.check_or_install("setup", probes, apt_get(), lambda: True, io.StringIO()) == 0
    assert calls(log)[-1].split()[-1] == system_deps.VENV_PACKAGE


def test_nothing_is_installed_when_every_probe_exists(machine):
    probes, apt_get, log = machine
    for (path,) in probes.values():
        open(path, "w").close()
    assert system_deps.check_or_install("test", probes, apt_get(), lambda: True, io.StringIO()) == 0
    assert calls(log) == []


def test_any_probe_path_counts_as_installed(tmp_path):
    sshd = tmp_path / "local-sshd"
    sshd.touch()
    probes = {"openssh-server": (str(tmp_path / "absent"), str(sshd))}
    assert system_deps.missing(["openssh-server"], probes) == []


def test_not_root_prints_the_command_and_fails_without_calling_apt_get(machine):
    probes, apt_get, log = machine
    out = io.StringIO()
    assert system_deps.check_or_install("stack", probes, apt_get(), lambda: False, out) == 1
    assert calls(log) == []
    assert "sudo apt-get install -y openssh-server openssh-client procps" in out.getvalue()


def test_a_package_still_missing_after_apt_get_fails_and_is_named(machine):
    probes, apt_get, log = machine
    out = io.StringIO()
    assert system_deps.check_or_install("stack", probes, apt_get(refuse="openssh-server"), lambda: True, out) == 1
    assert "still missing after apt-get" in out.getvalue()
    assert out.getvalue().rstrip().endswith("openssh-server")


@pytest.mark.parametrize(("target", "purpose", "before"), [
    ("demo", "stack", "tools/stack.py up"),
    ("up", "stack", "tools/stack.py up"),
    ("test", "test", "-m pytest tests"),
])
def test_make_targets_check_their_packages_first(target, purpose, before):
    # `make -n` prints the recipe without running it: the package check must precede the start.
    plan = subprocess.run(["make", "-n", "-C", str(REPO_ROOT), target], capture_output=True, text=True,
                          check=True).stdout.splitlines()
    check = [i for i, line in enumerate(plan) if f"system_deps.py --check-or-install --for {purpose}" in line]
    start = [i for i, line in enumerate(plan) if before in line]
    assert check and start and check[0] < start[0], plan
