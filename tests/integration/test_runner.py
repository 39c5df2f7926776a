"""The distmon runner against real minions: targeting, streaming, timeouts, prompts, exit codes."""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import salt.crypt

from tests.loader_support import load_utils

pytestmark = pytest.mark.integration

SALT_RUN = str(Path(sys.executable).with_name("salt-run"))
MIXED_SUITE = '''
import pytest


def test_passes():
    assert 1 + 1 == 2


def test_fails():
    assert "expected" == "actual", "distmon sample failure"


@pytest.mark.skip(reason="not today")
def test_skipped():
    pass
'''
# The first pytest process to create the marker returns at once; every other one
# waits for the release file, which the test writes only after salt-run has shown
# the first minion's result. That proves results are printed while others still run.
GATED_SUITE = '''
import os
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def test_gate():
    try:
        os.close(os.open(HERE / "first", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
        return
    except FileExistsError:
        pass
    deadline = time.monotonic() + 90
    while not (HERE / "release").exists():
        assert time.monotonic() < deadline, "never released"
        time.sleep(0.05)
'''


@pytest.fixture(scope="module")
def minions(salt_minion, salt_minion_2):
    return [salt_minion.id, salt_minion_2.id]


@pytest.fixture(scope="module")
def suites(tmp_path_factory):
    root = tmp_path_factory.mktemp("runner-suites")
    root.chmod(0o755)
    (root / "passing").mkdir()
    (root / "passing" / "test_ok.py").write_text("def test_one():\n    assert True\n\n\ndef test_two():\n    pass\n")
    (root / "mixed").mkdir()
    (root / "mixed" / "test_mixed.py").write_text(MIXED_SUITE)
    (root / "gated").mkdir()
    (root / "gated" / "test_gated.py").write_text(GATED_SUITE)
    return root


def salt_run_argv(salt_master, *args: str) -> list[str]:
    return [SALT_RUN, "-c", str(salt_master.config_dir), *args]


def run_salt_run(salt_master, *args: str, timeout: float = 180) -> subprocess.CompletedProcess:
    """salt-run without a terminal (stdin from /dev/null), human output."""
    return subprocess.run(
        salt_run_argv(salt_master, *args), stdin=subprocess.DEVNULL, capture_output=True,
        text=True, timeout=timeout,
    )


def jid_of(text: str) -> str:
    match = re.search(r"^jid (\d+): ", text, re.MULTILINE)
    assert match, text
    return match.group(1)


def test_glob_run_reports_every_minion_as_json_and_writes_the_manifest(
    salt_run_cli, minions, suites, storage_host
):
    ret = salt_run_cli.run("distmon.run", f"path={suites / 'passing'}", "tgt=web-*")
    assert ret.returncode == 0, ret
    data = ret.data
    assert data["retcode"] == 0
    for minion in minions:
        row = data[minion]
        assert row["status"] == "passed", row
        assert (row["passed"], row["failed"], row["skipped"], row["errors"]) == (2, 0, 0, 0)
        assert row["duration"] > 0
    # With --out json the progress lines go to stderr: stdout is the data, one document.
    assert re.search(r"^web-1: passed: 2 passed, 0 failed", ret.stderr, re.MULTILINE), ret.stderr
    assert "minion  passed" not in ret.stdout + ret.stderr
    jid = data[minions[0]]["jid"]
    manifest = json.loads((storage_host.inbox / "_jobs" / f"{jid}.json").read_text())
    assert manifest["format"] == "distmon-job/1"
    assert manifest["jid"] == jid
    assert manifest["fun"] == "pytestrun.run"
    assert (manifest["tgt"], manifest["tgt_type"]) == ("web-*", "glob")
    assert set(minions) <= set(manifest["targeted"])
    assert manifest["started_at"].endswith("Z")


@pytest.fixture(scope="module")
def mixed_run(salt_master, minions, suites) -> subprocess.CompletedProcess:
    """One list-targeted run of a suite with a failure, printed for a human (no --out)."""
    return run_salt_run(
        salt_master, "distmon.run", f"path={suites / 'mixed'}", f"tgt={','.join(minions)}", "tgt_type=list",
        "args=-p no:randomly -q",
    )


def test_list_run_with_a_failing_test_prints_a_table_and_exits_non_zero(mixed_run, minions):
    proc = mixed_run
    out = proc.stdout
    assert proc.returncode == 1, (out, proc.stderr)
    for minion in minions:
        assert re.search(rf"^{minion}: failed: 1 passed, 1 failed, 1 skipped, 0 errors", out, re.MULTILINE), out
        assert re.search(rf"^{minion} +1 +1 +1 +0 +[0-9.]+ +failed$", out, re.MULTILINE), out
    assert "FAILED test_mixed.py::test_fails - AssertionError: distmon sample failure" in out
    assert f"{len(minions)} of {len(minions)} targeted minions returned" in out
    # Progress lines (events shown by the distmon outputter), then the table, which IS the
    # output: Salt no longer prints the nested return after it.
    assert out.index(f"{minions[0]}: failed") < out.index("minion  passed")
    assert out.rstrip().endswith(f"{len(minions)} of {len(minions)} targeted minions returned"), out
    assert "retcode:" not in out and "suffix:" not in out and "outputter:" not in out
    assert "Traceback" not in out + proc.stderr


def test_results_are_printed_as_they_arrive(salt_master, minions, suites):
    gated = suites / "gated"
    proc = subprocess.Popen(
        salt_run_argv(salt_master, "distmon.run", f"path={gated}", f"tgt={','.join(minions)}",
                      "tgt_type=list", "timeout=5"),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, bufsize=1,
    )
    seen: list[str] = []
    try:
        first = None
        deadline = time.monotonic() + 120
        for line in proc.stdout:
            seen.append(line)
            match = re.match(r"^(\S+): passed: 1 passed", line)
            if match and first is None:
                first = match.group(1)
                # Only now may the other minion's test finish.
                (gated / "release").write_text("go")
            assert time.monotonic() < deadline, seen
        assert proc.wait(timeout=60) == 0, seen
    finally:
        if proc.poll() is None:
            proc.kill()
    output = "".join(seen)
    assert first in minions, output
    (other,) = set(minions) - {first}
    assert output.index(f"{first}: passed") < output.index(f"{other}: passed"), output


def accepted_minion_that_never_runs(salt_master, minion_id: str) -> str:
    """A minion the master has accepted (its public key in ``pki/minions``, where ``salt-key -a`` puts
    it) and that is not running. A list target is matched against the accepted keys, so the job is
    published to it and nobody answers: what a stopped minion is to the master. Starting a real
    minion only to stop it again cost ~15-25 s on a loaded machine."""
    _, public_pem = salt.crypt.gen_keys(2048)
    (Path(salt_master.config["pki_dir"]) / "minions" / minion_id).write_text(public_pem)
    return minion_id


def test_stopped_minion_is_reported_not_returned_and_exit_is_non_zero(salt_master, salt_run_cli, minions, suites):
    down = accepted_minion_that_never_runs(salt_master, "runner-down-1")
    try:
        started = time.monotonic()
        ret = salt_run_cli.run(
            "distmon.run", f"path={suites / 'passing'}", f"tgt={minions[0]},{down}", "tgt_type=list",
            "timeout=3", "gather_job_timeout=3",
        )
        elapsed = time.monotonic() - started
    finally:
        salt_master.salt_key_cli().run("-d", down, "-y")
    assert ret.returncode == 1, ret
    assert ret.data[down]["status"] == "no_return"
    assert ret.data[minions[0]]["status"] == "passed"
    assert ret.data["retcode"] == 1
    assert re.search(rf"^{down}: did not return \(no answer within the timeout", ret.stderr, re.MULTILINE), ret.stderr
    assert elapsed < 60, "a down minion must not be waited on for long"


def test_results_reads_an_earlier_run_from_the_job_cache(salt_run_cli, mixed_run, minions):
    jid = jid_of(mixed_run.stdout)
    again = salt_run_cli.run("distmon.results", f"jid={jid}")
    assert again.returncode == 1, again
    for minion in minions:
        row = again.data[minion]
        assert (row["passed"], row["failed"], row["skipped"], row["status"]) == (1, 1, 1, "failed")
        assert row["jid"] == jid
    missing = salt_run_cli.run("distmon.results", "jid=20000101000000000000")
    assert missing.returncode == 1
    assert "not in the job cache" in missing.stdout


def _read_until(fd: int, pattern: str, buffer: bytearray, deadline: float) -> str:
    """Read from a pty until ``pattern`` shows up (or EOF/deadline); return what was read."""
    while re.search(pattern, buffer.decode(errors="replace")) is None:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"timed out waiting for {pattern!r}: {buffer.decode(errors='replace')}"
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            continue
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            chunk = b""
        if not chunk:
            break
        buffer.extend(chunk)
    return buffer.decode(errors="replace")


def test_missing_arguments_are_asked_for_on_a_terminal(salt_master, minions, suites):
    argv = salt_run_argv(salt_master, "distmon.run")
    pid, fd = pty.fork()
    if pid == 0:  # the child: salt-run with the pty as its terminal
        try:
            os.execv(argv[0], argv)
        finally:
            os._exit(127)
    buffer = bytearray()
    deadline = time.monotonic() + 120
    output = None
    try:
        _read_until(fd, r"Test path .*\): ", buffer, deadline)
        os.write(fd, f"{suites / 'passing'}\n".encode())
        _read_until(fd, r"Target minions .*\): ", buffer, deadline)
        os.write(fd, f"{minions[0]}\n".encode())
        output = _read_until(fd, r"(?!x)x", buffer, deadline)  # everything, until EOF
    finally:
        waited, status = os.waitpid(pid, os.WNOHANG)
        if waited == 0:  # still running (e.g. waiting at a prompt): never hang the suite
            deadline_exit = time.monotonic() + (30 if output is not None else 0)
            while waited == 0 and time.monotonic() < deadline_exit:
                time.sleep(0.1)
                waited, status = os.waitpid(pid, os.WNOHANG)
            if waited == 0:
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
        os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert re.search(rf"{minions[0]}: passed: 2 passed", output), output


def test_missing_arguments_without_a_terminal_is_a_usage_error(salt_master):
    proc = run_salt_run(salt_master, "distmon.run", "tgt=web-*")
    assert proc.returncode != 0
    assert "path missing (and no terminal to ask on)" in proc.stdout
    assert "usage: salt-run distmon.run path=" in proc.stdout
    assert "Traceback" not in proc.stdout + proc.stderr
    bad = run_salt_run(salt_master, "distmon.run", "path=/x", "tgt=web-1", "tgt_type=nonsense")
    assert bad.returncode != 0
    assert "tgt_type 'nonsense' is not one of" in bad.stdout
    assert "Traceback" not in bad.stdout + bad.stderr


def test_status_reports_minions_storage_host_and_spools(salt_run_cli, minions, storage_host):
    ret = salt_run_cli.run("distmon.status", "tgt=web-*")
    data = ret.data
    assert set(minions) <= set(data["minions"]["up"]), data
    host = data["storage_host"]
    assert host["reachable"] and host["host_key_verified"] and host["login"], host
    assert host["port"] == storage_host.port
    assert host["inbox"] == storage_host.remote_inbox
    for minion in minions:
        assert minion in data["spool"]
    assert ret.returncode == data["retcode"]


def test_status_refuses_a_storage_host_whose_key_is_not_pinned(storage_host, tmp_path):
    """The same check distmon.status makes, with a known_hosts that pins another key."""
    check_host = load_utils(["distmon_transport"])["distmon_transport.check_host"]
    other = tmp_path / "other_key"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other)], check=True)
    kind, blob = other.with_suffix(".pub").read_text().split()[:2]
    options = storage_host.returner_config()

    (tmp_path / "wrong").write_text(f"[127.0.0.1]:{storage_host.port} {kind} {blob}\n")
    wrong = check_host({**options, "known_hosts": str(tmp_path / "wrong")}, 10.0)
    assert wrong["reachable"] is True and wrong["host_key_verified"] is False and wrong["login"] is False
    assert "CHANGED" in wrong["error"] and "refused" in wrong["error"]

    (tmp_path / "empty").write_text("")
    unknown = check_host({**options, "known_hosts": str(tmp_path / "empty")}, 10.0)
    assert unknown["host_key_verified"] is False and "is not in known_hosts" in unknown["error"]

    pinned = check_host(options, 10.0)
    assert pinned["host_key_verified"] and pinned["login"] and pinned["inbox"] == storage_host.remote_inbox



def test_salt_run_doc_lists_the_public_functions_only(salt_master):
    """``salt-run -d distmon`` listed format_table, summarize_return and build_manifest too."""
    proc = run_salt_run(salt_master, "-d", "distmon")
    assert proc.returncode == 0, proc
    listed = re.findall(r"^(distmon\.\w+):$", proc.stdout, re.MULTILINE)
    assert listed == ["distmon.rerun", "distmon.results", "distmon.run", "distmon.status"], proc.stdout
    assert proc.stdout.count("CLI Example") == 4
