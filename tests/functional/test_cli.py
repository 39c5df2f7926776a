"""`python -m dashboard`: users, tokens, prune, ingest — real subprocesses on a real database file,
checked against a running app over the same file."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tests.functional.conftest import make_settings, result_document, write_inbox

REPO_ROOT = Path(__file__).resolve().parents[2]


def cli(root: Path, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    settings = make_settings(root)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO_ROOT),
        "DISTMON_DB": str(settings.db_path),
        "DISTMON_INBOX": str(settings.inbox),
        "DISTMON_BCRYPT_ROUNDS": "4",
    }
    # cwd is the tmp dir, so a developer's .run/stack.env never leaks into the test.
    return subprocess.run([sys.executable, "-m", "dashboard", *args], input=stdin, capture_output=True, text=True,
                          env=env, cwd=root, timeout=120)


def test_user_commands(tmp_path):
    created = cli(tmp_path, "user", "create", "alice", "--admin", "--password-stdin", stdin="alice-password\n")
    assert created.returncode == 0, created.stderr
    assert created.stdout.strip() == "created admin alice"
    bob = cli(tmp_path, "user", "create", "bob", "--password-stdin", stdin="bob-password\n")
    assert bob.stdout.strip() == "created user bob"
    again = cli(tmp_path, "user", "create", "alice", "--password-stdin", stdin="alice-password\n")
    assert again.returncode == 2 and "already exists" in again.stderr
    no_stdin = cli(tmp_path, "user", "create", "carol")
    assert no_stdin.returncode == 2 and "--password-stdin" in no_stdin.stderr
    short = cli(tmp_path, "user", "create", "carol", "--password-stdin", stdin="short\n")
    assert short.returncode == 2 and "at least 8" in short.stderr
    long = cli(tmp_path, "user", "create", "carol", "--password-stdin", stdin="x" * 73 + "\n")
    assert long.returncode == 2 and "72 bytes" in long.stderr
    listing = cli(tmp_path, "user", "list")
    lines = listing.stdout.splitlines()
    assert lines[0].split() == ["USERNAME", "STATUS", "ADMIN", "CREATED"]
    assert lines[1].split()[:3] == ["alice", "active", "yes"]
    assert lines[2].split()[:3] == ["bob", "active", "no"]
    assert len(lines) == 3
    disabled = cli(tmp_path, "user", "disable", "bob")
    assert disabled.returncode == 0 and "disabled" in cli(tmp_path, "user", "list").stdout
    missing = cli(tmp_path, "user", "reset-password", "nobody", "--password-stdin", stdin="whatever-123\n")
    assert missing.returncode == 2 and "No user" in missing.stderr


@pytest.mark.anyio
async def test_cli_acts_on_the_running_apps_database(make_app, tmp_path):
    async with make_app(tmp_path) as app:
        created = cli(tmp_path, "user", "create", "ops", "--admin", "--password-stdin", stdin="ops-password-1\n")
        assert created.returncode == 0, created.stderr
        assert (await app.login("ops", "ops-password-1")).status_code == 303
        assert (await app.http.get("/api/me")).json()["username"] == "ops"
        # A reset ends the user's sessions in the running app at once.
        reset = cli(tmp_path, "user", "reset-password", "ops", "--password-stdin", stdin="ops-password-2\n")
        assert reset.returncode == 0, reset.stderr
        assert (await app.http.get("/api/me")).status_code == 401
        assert (await app.login("ops", "ops-password-1")).status_code == 401
        assert (await app.login("ops", "ops-password-2")).status_code == 303
        # A CLI token: its last line is the token, and it authenticates API calls.
        made = cli(tmp_path, "token", "create", "ops", "--label", "deploy")
        assert made.returncode == 0, made.stderr
        token = made.stdout.strip().splitlines()[-1]
        async with app.new_client() as bot:
            me = await bot.get("/api/me", headers={"Authorization": f"Bearer {token}"})
            assert me.status_code == 200 and me.json()["via"] == "token"
        assert cli(tmp_path, "token", "create", "nobody").returncode == 2


def test_ingest_once_and_prune(tmp_path):
    pytest.importorskip("dashboard.retention")
    settings = make_settings(tmp_path)
    now = datetime.now(UTC).replace(microsecond=0)
    old, recent = now - timedelta(days=200), now - timedelta(days=1)
    for jid, started in (("20250101000000000001", old), ("20261127000000000002", recent)):
        write_inbox(settings.inbox, result_document("web-1", jid, started,
                                                    [{"nodeid": "t.py::test_a", "outcome": "passed"}]))
    ingested = cli(tmp_path, "ingest", "--once")
    assert ingested.returncode == 0, ingested.stderr
    assert ingested.stdout.startswith("ingested 2 (2 results)")
    assert not list(settings.inbox.glob("web-1/*.json"))
    pruned = cli(tmp_path, "prune", "--older-than", "90d")
    assert pruned.returncode == 0, pruned.stderr
    assert pruned.stdout.strip() == "pruned 1 runs older than 90d"
    bad = cli(tmp_path, "prune", "--older-than", "soon")
    assert bad.returncode == 2 and bad.stderr.startswith("error:")


def test_ingest_runs_until_signalled(tmp_path):
    settings = make_settings(tmp_path)
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "DISTMON_DB": str(settings.db_path),
           "DISTMON_INBOX": str(settings.inbox), "DISTMON_SCAN_INTERVAL": "0.05"}
    proc = subprocess.Popen([sys.executable, "-m", "dashboard", "ingest"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert "ingesting" in proc.stdout.readline()
        write_inbox(settings.inbox, result_document("web-2", "20261127000000000003", datetime.now(UTC),
                                                    [{"nodeid": "t.py::test_b", "outcome": "failed"}]))
        import time

        from dashboard.db import connect_sync

        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline and not count:
            time.sleep(0.1)
            conn = connect_sync(settings.db_path)
            try:
                count = conn.execute("SELECT COUNT(*) FROM runs").fetchone()[0]
            finally:
                conn.close()
        assert count == 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr.read()


def test_settings_come_from_an_env_file_only_when_asked_and_bad_ones_are_named(tmp_path):
    # A stack.env-like file in the working directory: its database is not used unless --env-file names it.
    elsewhere = tmp_path / "stack" / "distmon.sqlite"
    (tmp_path / ".run").mkdir()
    env_file = tmp_path / ".run" / "stack.env"
    env_file.write_text(f"# Written by `make up`\nDISTMON_DB={elsewhere}\nDISTMON_BCRYPT_ROUNDS=4\n")
    env = {key: value for key, value in os.environ.items() if not key.startswith("DISTMON_")}
    env["PYTHONPATH"] = str(REPO_ROOT)

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dashboard", *args], input="alice-password\n", capture_output=True,
                              text=True, env={**env, **extra}, cwd=tmp_path, timeout=120)

    made = run("--env-file", ".run/stack.env", "user", "create", "alice", "--password-stdin")
    assert made.returncode == 0, made.stderr
    assert elsewhere.exists()
    assert not (tmp_path / ".run" / "host").exists()  # the default database was never created
    listed = run("--env-file", str(env_file), "user", "list")
    assert "alice" in listed.stdout
    # Without --env-file or DISTMON_DB: the default store below the working directory, refused while it does not
    # exist (a new empty store would hide that the wrong one is asked), used and named on stderr once it does.
    refused = run("user", "list")
    assert refused.returncode == 2 and "no store named" in refused.stderr and "--env-file" in refused.stderr
    assert not (tmp_path / ".run" / "host").exists()
    started = run("seed", "--runs", "1", "--tests", "1", "--minions", "1")
    default_store = tmp_path / ".run" / "host" / "distmon.sqlite"
    assert started.returncode == 0 and default_store.exists()
    assert started.stderr.strip() == f"distmon: store sqlite:///{default_store} (default; set DISTMON_DB or --env-file)"
    listed_default = run("user", "list")
    assert "alice" not in listed_default.stdout and "(default; set DISTMON_DB or --env-file)" in listed_default.stderr
    # A named store is used quietly.
    assert run("--env-file", str(env_file), "user", "list").stderr == ""
    # The environment wins over the file.
    other = tmp_path / "other.sqlite"
    assert "alice" not in run("--env-file", str(env_file), "user", "list", DISTMON_DB=str(other)).stdout
    assert other.exists()
    missing = run("--env-file", "no-such.env", "user", "list")
    assert missing.returncode == 2 and "no-such.env" in missing.stderr
    bad = run("user", "list", DISTMON_REGISTRATION="maybe")
    assert bad.returncode == 2 and "DISTMON_REGISTRATION" in bad.stderr and "Traceback" not in bad.stderr


def test_it_runs_from_any_directory_with_the_paths_it_is_given(tmp_path):
    # The checkout is found through the venv (make setup) or PYTHONPATH, never through the working directory;
    # the store is the env file's, whatever the working directory.
    store = tmp_path / "host" / "distmon.sqlite"
    env_file = tmp_path / "host" / "stack.env"
    env_file.parent.mkdir()
    env_file.write_text(f"DISTMON_DB={store}\nDISTMON_BCRYPT_ROUNDS=4\n")
    elsewhere = tmp_path / "somewhere" / "else"
    elsewhere.mkdir(parents=True)
    env = {key: value for key, value in os.environ.items() if not key.startswith("DISTMON_")}
    env["PYTHONPATH"] = str(REPO_ROOT)

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "dashboard", *args], input="alice-password\n",
                              capture_output=True, text=True, env=env, cwd=elsewhere, timeout=120)

    created = run("--env-file", str(env_file), "user", "create", "alice", "--password-stdin")
    assert created.returncode == 0, created.stderr
    assert "alice" in run("--env-file", str(env_file), "user", "list").stdout
    assert store.exists() and list(elsewhere.iterdir()) == []
    # Nothing named from here: a clear refusal that says how to name the store, and nothing created.
    refused = run("user", "list")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"the default {elsewhere}/.run/host/distmon.sqlite" in refused.stderr and "--env-file" in refused.stderr
    assert list(elsewhere.iterdir()) == []


def test_the_formulas_env_file_is_read_when_nothing_names_a_store(tmp_path, monkeypatch, capsys):
    from dashboard.__main__ import CliError, _settings, build_parser

    monkeypatch.delenv("DISTMON_DB", raising=False)
    monkeypatch.chdir(tmp_path)
    formula_env = tmp_path / "etc" / "dashboard.env"
    formula_env.parent.mkdir()
    formula_env.write_text(f"DISTMON_DB={tmp_path}/var/distmon.sqlite\nDISTMON_INBOX={tmp_path}/inbox\n")
    args = build_parser().parse_args(["user", "list"])
    settings = _settings(args, formula_env_file=formula_env)
    assert settings.db_path == tmp_path / "var" / "distmon.sqlite" and settings.inbox == tmp_path / "inbox"
    assert capsys.readouterr().err == f"distmon: store sqlite:///{tmp_path}/var/distmon.sqlite (from {formula_env})\n"
    # --db (or DISTMON_DB, or --env-file) wins and is used quietly.
    named = _settings(build_parser().parse_args(["--db", str(tmp_path / "mine.sqlite"), "user", "list"]),
                      formula_env_file=formula_env)
    assert named.db_path == tmp_path / "mine.sqlite" and capsys.readouterr().err == ""
    # No formula file and no default store: refused, with the way out.
    with pytest.raises(CliError, match="no store named"):
        _settings(args, formula_env_file=tmp_path / "absent.env")


def test_make_setup_puts_the_checkout_on_the_venvs_path(tmp_path):
    # `.venv/bin/python -m dashboard` from any directory needs the checkout importable without a PYTHONPATH:
    # make setup's own line, run by a new bare venv's python, must make `dashboard` importable from elsewhere.
    recipe = re.search(r"^\t@test -L \$\(VENV\) \|\| \$\(PY\) -c '(.+)'$", (REPO_ROOT / "Makefile").read_text(), re.M)
    assert recipe, "make setup no longer writes distmon-checkout.pth"
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    python = str(venv / "bin" / "python")
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    subprocess.run([python, "-c", recipe.group(1)], cwd=REPO_ROOT, env=env, check=True, timeout=60)
    found = subprocess.run([python, "-c", "import dashboard; print(dashboard.__file__)"], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == str(REPO_ROOT / "dashboard" / "__init__.py"), found.stderr


@pytest.mark.parametrize("args", [
    ("seed", "--runs", "-5"), ("seed", "--tests", "0"), ("seed", "--minions", "x"),
    ("backfill-signatures", "--chunk", "0"),  # used to loop for ever over a chunk of no result ids
    ("serve", "--port", "99999"),  # used to end in an OverflowError traceback from bind()
    ("triage", "log", "--limit", "-3"), ("webhook", "deliveries", "--limit", "0"),
])
def test_counts_limits_and_ports_out_of_range_are_refused_by_name(tmp_path, args):
    refused = cli(tmp_path, *args)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert f"argument {args[-2]}:" in refused.stderr, refused.stderr
    assert not list(tmp_path.rglob("*.sqlite"))  # refused before any store was opened
