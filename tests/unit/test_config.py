"""dashboard/config.py: one Settings, read from the environment by pydantic-settings and
nowhere else in dashboard/; no file read unless asked for."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from dashboard import config
from dashboard.config import Settings

DASHBOARD = Path(__file__).resolve().parents[2] / "dashboard"
# os.environ / os.getenv / environ.get / from os import environ / os.environb ...
ENVIRONMENT_READ = re.compile(r"\benviron\b|\benvironb\b|\bgetenv\b|\bgetenvb\b")


def environment_reads(root: Path) -> list[str]:
    found = []
    for path in sorted(root.rglob("*.py")):
        if path == root / "config.py":
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if ENVIRONMENT_READ.search(line):
                found.append(f"{path.relative_to(root.parent)}:{number}: {line.strip()}")
    return found


def test_nothing_in_dashboard_but_config_reads_the_environment():
    assert environment_reads(DASHBOARD) == []


def test_the_environment_scan_finds_a_read(tmp_path):
    # The scan itself can fail: a module that reads the environment is reported, config.py is not.
    (tmp_path / "config.py").write_text("import os\nos.environ.get('DISTMON_DB')\n")
    (tmp_path / "sneaky.py").write_text("import os\n\nROUNDS = os.getenv('DISTMON_BCRYPT_ROUNDS')\n")
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "inner.py").write_text("from os import environ\n")
    assert environment_reads(tmp_path) == [
        f"{tmp_path.name}/pkg/inner.py:1: from os import environ",
        f"{tmp_path.name}/sneaky.py:3: ROUNDS = os.getenv('DISTMON_BCRYPT_ROUNDS')",
    ]


def test_documented_defaults(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    settings = Settings.from_env({})
    assert settings.db_path == tmp_path / ".run/host/distmon.sqlite"
    assert settings.inbox == tmp_path / ".run/host/chroot/inbox"
    assert settings.archive == tmp_path / ".run/host/archive"
    assert settings.quarantine == tmp_path / ".run/host/quarantine"
    assert (settings.archive_mode, settings.max_file_bytes, settings.pubkeys_dir) == ("archive", 20_000_000, None)
    assert (settings.require_signature, settings.accept_junit, settings.junit_sources) == (False, True, frozenset())
    assert (settings.ingest, settings.ingest_worker, settings.scan_interval) == (True, True, 0.2)
    assert (settings.registration, settings.secure_cookies, settings.bcrypt_rounds) == ("approval", "auto", 12)
    assert settings.test_crash_after_commit is False


def test_every_documented_variable_is_read(tmp_path):
    env = {
        "DISTMON_DB": str(tmp_path / "d.sqlite"), "DISTMON_INBOX": str(tmp_path / "in"),
        "DISTMON_ARCHIVE": str(tmp_path / "a"), "DISTMON_ARCHIVE_MODE": "DELETE",
        "DISTMON_QUARANTINE": str(tmp_path / "q"), "DISTMON_MAX_FILE_BYTES": "1000",
        "DISTMON_PUBKEYS_DIR": str(tmp_path / "keys"), "DISTMON_REQUIRE_SIGNATURE": "1",
        "DISTMON_ACCEPT_JUNIT": "0", "DISTMON_JUNIT_SOURCES": " ci, other ,", "DISTMON_INGEST": "0",
        "DISTMON_INGEST_WORKER": "0", "DISTMON_SCAN_INTERVAL": "1.5", "DISTMON_REGISTRATION": "Closed",
        "DISTMON_SECURE_COOKIES": "1", "DISTMON_BCRYPT_ROUNDS": "5", "DISTMON_TEST_CRASH_AFTER_COMMIT": "1",
        "DISTMON_ALLOWED_HOSTS": "dash.example, *.ci.example", "DISTMON_TRUSTED_PROXIES": "10.0.0.5",
        "DISTMON_LIMIT_CONCURRENCY": "300", "DISTMON_REQUEST_TIMEOUT": "4", "DISTMON_KEEP_ALIVE_TIMEOUT": "2",
        "DISTMON_STALE_UPLOAD_AGE": "60", "DISTMON_LOGIN_MAX_FAILURES_ACCOUNT": "3",
        "DISTMON_LOGIN_MAX_FAILURES_ADDRESS": "7", "DISTMON_LOGIN_FAILURE_WINDOW": "120",
        "DISTMON_PUBLIC_URL": "https://distmon.example.com/", "DISTMON_WEBHOOKS": "0",
        "DISTMON_WEBHOOK_JOB_WAIT": "60", "DISTMON_WEBHOOK_GROUP_WINDOW": "5", "DISTMON_WEBHOOK_RETRY_BASE": "2",
        "DISTMON_WEBHOOK_RETRY_MAX": "30", "DISTMON_WEBHOOK_MAX_ATTEMPTS": "3", "DISTMON_WEBHOOK_TIMEOUT": "4",
        "DISTMON_WEBHOOK_POLL": "0.25", "DISTMON_TEST_CRASH_AFTER_SEND": "1",
    }  # fmt: skip
    s = Settings.from_env(env)
    assert (s.db_path, s.inbox, s.archive, s.quarantine, s.pubkeys_dir) == (
        tmp_path / "d.sqlite", tmp_path / "in", tmp_path / "a", tmp_path / "q", tmp_path / "keys"
    )
    assert (s.archive_mode, s.max_file_bytes, s.require_signature, s.accept_junit) == ("delete", 1000, True, False)
    assert s.junit_sources == {"ci", "other"}
    assert (s.ingest, s.ingest_worker, s.scan_interval, s.registration) == (False, False, 1.5, "closed")
    assert (s.secure_cookies, s.bcrypt_rounds, s.test_crash_after_commit) == ("1", 5, True)
    assert (s.allowed_hosts, s.trusted_proxies) == (("dash.example", "*.ci.example"), ("10.0.0.5",))
    assert (s.limit_concurrency, s.request_timeout, s.keep_alive_timeout, s.stale_upload_age) == (300, 4, 2, 60)
    assert (s.login_max_failures_account, s.login_max_failures_address, s.login_failure_window) == (3, 7, 120)
    assert (s.public_url, s.webhooks, s.webhook_job_wait, s.webhook_group_window) == (
        "https://distmon.example.com", False, 60, 5)
    assert (s.webhook_retry_base, s.webhook_retry_max, s.webhook_max_attempts, s.webhook_timeout, s.webhook_poll) == (
        2, 30, 3, 4, 0.25)
    assert s.test_crash_after_send is True
    # The table in the docstring names every field's variable.
    documented = set(re.findall(r"^\| (DISTMON_\w+) \|", config.__doc__, re.M))
    assert documented == set(env)


def test_bcrypt_rounds_are_clamped_to_what_bcrypt_accepts():
    assert Settings.from_env({"DISTMON_BCRYPT_ROUNDS": "1"}).bcrypt_rounds == 4
    assert Settings.from_env({"DISTMON_BCRYPT_ROUNDS": "99"}).bcrypt_rounds == 31


@pytest.mark.parametrize(
    ("variable", "value"),
    [("DISTMON_REGISTRATION", "maybe"), ("DISTMON_ARCHIVE_MODE", "shred"), ("DISTMON_REQUIRE_SIGNATURE", "perhaps"),
     ("DISTMON_MAX_FILE_BYTES", "lots")],
)
def test_a_bad_value_is_refused_not_guessed(variable, value):
    with pytest.raises(ValidationError):
        Settings.from_env({variable: value})


def test_a_database_url_stays_a_url_and_files_default_outside_any_inbox(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    url = "postgresql://distmon@127.0.0.1:5432/distmon"
    settings = Settings.from_env({"DISTMON_DB": url, "DISTMON_INBOX": str(tmp_path / "chroot" / "inbox")})
    assert settings.db_path == url
    assert settings.archive == tmp_path / ".run/host/archive"


def test_a_given_mapping_is_all_that_is_read(tmp_path, monkeypatch):
    monkeypatch.setenv("DISTMON_REQUIRE_SIGNATURE", "1")
    assert Settings.from_env({}).require_signature is False
    assert Settings.from_env().require_signature is True
    assert Settings().require_signature is True


def test_no_env_file_is_read_unless_asked_and_the_environment_wins_over_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("DISTMON_DB", "DISTMON_REQUIRE_SIGNATURE", "DISTMON_REGISTRATION"):
        monkeypatch.delenv(name, raising=False)
    (tmp_path / ".run").mkdir()
    stack_env = tmp_path / ".run" / "stack.env"
    stack_env.write_text(
        "# Written by `make up`\nDISTMON_DB='/srv/the stack/distmon.sqlite'\nDISTMON_REQUIRE_SIGNATURE=1\n"
        "DISTMON_REGISTRATION=open\nDISTMON_SSH_PORT=14522\n"
    )
    assert Settings().require_signature is False  # .run/stack.env right here, and not read
    from_file = Settings(_env_file=stack_env)
    assert from_file.db_path == Path("/srv/the stack/distmon.sqlite")
    assert (from_file.require_signature, from_file.registration) == (True, "open")
    monkeypatch.setenv("DISTMON_REGISTRATION", "closed")
    assert Settings(_env_file=stack_env).registration == "closed"
    # Arguments win over both (the CLI's --db).
    assert Settings(_env_file=stack_env, db_path=tmp_path / "x.sqlite").db_path == tmp_path / "x.sqlite"


def test_only_distmon_variables_are_read_not_a_fields_bare_alias(tmp_path, monkeypatch):
    # `make up DB=postgres` exports DB=postgres to every recipe: it once became the database path.
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DB", "postgres")
    monkeypatch.setenv("DB_PATH", "elsewhere.sqlite")
    monkeypatch.delenv("DISTMON_DB", raising=False)
    assert Settings().db_path == (tmp_path / ".run/host/distmon.sqlite").resolve()
    assert Settings(db="given.sqlite").db_path == (tmp_path / "given.sqlite").resolve()
