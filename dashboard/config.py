"""Settings of the storage host (ingester + dashboard): one home, documented defaults.

Read from the environment (``DISTMON_*``) by :class:`Settings` (pydantic-settings); nothing
else in ``dashboard/`` reads the environment (tests/unit/test_config.py checks it). There is no
implicit fall-back to the local stack's ``.run/stack.env``: ``make up`` hands its environment
to the dashboard it starts, and the admin CLI reads such a file only when told to
(``python -m dashboard --env-file .run/stack.env ...``, or ``set -a; . .run/stack.env; set +a``).
Variables set in the environment win over the file.

| variable | default | meaning |
| --- | --- | --- |
| DISTMON_DB | .run/host/distmon.sqlite | SQLite database file, or a `postgresql://user@host:port/db` URL |
| DISTMON_INBOX | .run/host/chroot/inbox | where the returner uploads (<inbox>/<minion>/<jid>.json) |
| DISTMON_ARCHIVE | <db dir>/archive | ingested files are moved here ... |
| DISTMON_ARCHIVE_MODE | archive | ... or `delete`d |
| DISTMON_QUARANTINE | <db dir>/quarantine | rejected files, each with a .reason beside it |
| DISTMON_MAX_FILE_BYTES | 20000000 | larger inbox files are quarantined unread |
| DISTMON_PUBKEYS_DIR | (none) | accepted minion public keys (the master's pki/master/minions) |
| DISTMON_REQUIRE_SIGNATURE | 0 | 1: unsigned or forged results are quarantined |
| DISTMON_ACCEPT_JUNIT | 1 | accept JUnit XML dropped in the inbox |
| DISTMON_JUNIT_SOURCES | (none) | comma-separated inbox dirs whose JUnit XML is accepted even with require_signature |
| DISTMON_INGEST | 1 | run the ingester inside the web app |
| DISTMON_INGEST_WORKER | 1 | 0: big ingest passes validate in-process, never in a worker process |
| DISTMON_SCAN_INTERVAL | 0.2 | seconds between inbox scans (the watcher's backstop) |
| DISTMON_REGISTRATION | approval | approval, open or closed |
| DISTMON_SECURE_COOKIES | auto | auto (Secure when the request is https), 1, 0 |
| DISTMON_BCRYPT_ROUNDS | 12 | bcrypt cost (tests lower it; clamped to 4..31) |
| DISTMON_TEST_CRASH_AFTER_COMMIT | 0 | test hook: the ingester exits right after a commit (crash-safety tests) |
| DISTMON_ALLOWED_HOSTS | localhost,127.0.0.1,[::1] | Host header values the app answers (comma-separated; `*.example.com` wildcards; `*` any); others get a 400 (DNS rebinding) |
| DISTMON_TRUSTED_PROXIES | (none) | addresses whose X-Forwarded-For / -Proto are believed (uvicorn's forwarded_allow_ips); none: never |
| DISTMON_LIMIT_CONCURRENCY | 2048 | open connections at most; more are answered 503 and closed (`python -m dashboard serve`) |
| DISTMON_REQUEST_TIMEOUT | 10 | seconds a client has to send a whole request (headers and body) before it is disconnected |
| DISTMON_KEEP_ALIVE_TIMEOUT | 5 | seconds an idle keep-alive connection stays open |
| DISTMON_STALE_UPLOAD_AGE | 3600 | seconds after which a dot-named or `.part` inbox entry is an abandoned upload: quarantined |
| DISTMON_LOGIN_MAX_FAILURES_ACCOUNT | 10 | failed logins per account within the window before its logins answer 429 |
| DISTMON_LOGIN_MAX_FAILURES_ADDRESS | 30 | failed logins per client address within the window before its logins answer 429 |
| DISTMON_LOGIN_FAILURE_WINDOW | 900 | the window of both login-failure limits, seconds |
| DISTMON_PUBLIC_URL | (none) | the dashboard's address as people reach it (links in webhook messages) |
| DISTMON_WEBHOOKS | 1 | run the webhook sender inside the web app (dashboard/webhooks/) |
| DISTMON_WEBHOOK_JOB_WAIT | 900 | seconds a job's message waits for its targeted minions (then names who is missing) |
| DISTMON_WEBHOOK_GROUP_WINDOW | 30 | seconds results without a job manifest are grouped into one message |
| DISTMON_WEBHOOK_RETRY_BASE | 10 | first retry delay in seconds, doubled per attempt ... |
| DISTMON_WEBHOOK_RETRY_MAX | 3600 | ... up to this |
| DISTMON_WEBHOOK_MAX_ATTEMPTS | 12 | attempts before a delivery is given up (the page can retry it) |
| DISTMON_WEBHOOK_TIMEOUT | 10 | seconds per HTTP attempt (connect + answer) |
| DISTMON_WEBHOOK_POLL | 0.5 | seconds between the sender's looks at the outbox |
| DISTMON_TEST_CRASH_AFTER_SEND | 0 | test hook: the sender exits right after a receiver accepted a delivery |

With a database URL instead of a file, ``<db dir>`` above is ``.run/host``.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field, PositiveFloat, PositiveInt, field_validator, model_validator
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    NoDecode,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)
from pydantic_settings.sources.utils import parse_env_vars

from dashboard.dialect import is_postgres

DEFAULT_DB = ".run/host/distmon.sqlite"
DEFAULT_INBOX = ".run/host/chroot/inbox"

# Settings.from_env(mapping): the mapping the environment source reads instead of os.environ.
_ENVIRON: ContextVar[Mapping[str, str] | None] = ContextVar("distmon_settings_environ", default=None)


class _Environment(EnvSettingsSource):
    """The environment, or the mapping given to :meth:`Settings.from_env`."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        environ = _ENVIRON.get()
        if environ is None:
            found = super()._load_env_vars()
        else:
            found = parse_env_vars(environ, self.case_sensitive, self.env_ignore_empty, self.env_parse_none_str)
        # Only DISTMON_* names: a field's aliases (db_path's "db") are for keyword arguments, and a
        # stray DB=... in the environment (make's `DB=postgres`) must not become the database.
        return {key: value for key, value in found.items() if key.lower().startswith("distmon_")}


class Settings(BaseSettings):
    """Every setting of the storage host; build it once and pass it down."""

    model_config = SettingsConfigDict(
        env_prefix="DISTMON_", env_ignore_empty=True, extra="ignore", populate_by_name=True, case_sensitive=False
    )

    # DISTMON_DB; ``db_path`` keeps its historical name. A file path is resolved to an absolute
    # Path; a URL (postgresql://...) stays the string it is.
    db_path: Path | str = Field(
        default=DEFAULT_DB, validation_alias=AliasChoices("db_path", "db", "DISTMON_DB")
    )
    inbox: Path = Path(DEFAULT_INBOX)
    archive: Path | None = None
    archive_mode: Literal["archive", "delete"] = "archive"
    quarantine: Path | None = None
    max_file_bytes: int = 20_000_000
    pubkeys_dir: Path | None = None
    require_signature: bool = False
    accept_junit: bool = True
    junit_sources: Annotated[frozenset[str], NoDecode] = frozenset()
    ingest: bool = True
    ingest_worker: bool = True
    scan_interval: float = 0.2
    registration: Literal["approval", "open", "closed"] = "approval"
    secure_cookies: str = "auto"
    bcrypt_rounds: int = 12
    test_crash_after_commit: bool = False
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = ("localhost", "127.0.0.1", "[::1]")
    trusted_proxies: Annotated[tuple[str, ...], NoDecode] = ()
    limit_concurrency: PositiveInt = 2048
    request_timeout: PositiveFloat = 10.0
    keep_alive_timeout: PositiveFloat = 5.0
    stale_upload_age: PositiveFloat = 3600.0
    login_max_failures_account: PositiveInt = 10
    login_max_failures_address: PositiveInt = 30
    login_failure_window: PositiveFloat = 900.0
    public_url: str = ""
    webhooks: bool = True
    webhook_job_wait: float = 900.0
    webhook_group_window: float = 30.0
    webhook_retry_base: float = 10.0
    webhook_retry_max: float = 3600.0
    webhook_max_attempts: int = Field(default=12, ge=1)
    webhook_timeout: float = 10.0
    webhook_poll: float = 0.5
    test_crash_after_send: bool = False

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Arguments first, then the environment, then an --env-file: never a file found by itself.
        return init_settings, _Environment(settings_cls), dotenv_settings

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, env_file: str | Path | None = None) -> Settings:
        """Settings from ``environ`` (default: the process environment), then ``env_file`` if given.

        With a mapping, only that mapping is read: the process environment is ignored.
        """
        token = _ENVIRON.set(environ)
        try:
            return cls(_env_file=env_file) if env_file is not None else cls()
        finally:
            _ENVIRON.reset(token)

    @field_validator("db_path", mode="before")
    @classmethod
    def _db_location(cls, value: Any) -> Path | str:
        if is_postgres(value):
            return value
        return Path(value).resolve()

    @field_validator("archive_mode", "registration", "secure_cookies", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.strip().lower() if isinstance(value, str) else value

    @field_validator("junit_sources", mode="before")
    @classmethod
    def _comma_separated(cls, value: Any) -> Any:
        if isinstance(value, str):
            return frozenset(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("allowed_hosts", "trusted_proxies", mode="before")
    @classmethod
    def _comma_separated_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("pubkeys_dir", mode="before")
    @classmethod
    def _none_when_empty(cls, value: Any) -> Any:
        return None if value in ("", None) else value

    @field_validator("public_url")
    @classmethod
    def _no_trailing_slash(cls, value: str) -> str:
        return value.strip().rstrip("/")

    @field_validator("bcrypt_rounds")
    @classmethod
    def _bcrypt_range(cls, value: int) -> int:
        return min(max(value, 4), 31)  # bcrypt's own limits; below 4 it refuses

    @model_validator(mode="after")
    def _resolve_paths(self) -> Settings:
        self.inbox = Path(self.inbox).resolve()
        # Beside the SQLite file; with a server, where the local stack keeps it (never the inbox's
        # parent: that may be the SFTP chroot the minions write to).
        base = Path(DEFAULT_DB).parent if is_postgres(self.db_path) else Path(self.db_path).parent
        self.archive = Path(self.archive or base / "archive").resolve()
        self.quarantine = Path(self.quarantine or base / "quarantine").resolve()
        if self.pubkeys_dir is not None:
            self.pubkeys_dir = Path(self.pubkeys_dir).resolve()
        return self
