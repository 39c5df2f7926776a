"""The admin CLI of the storage host: users, tokens, pruning, ingesting, seeding, triage.

It acts on the database of ``--db``, else of the environment's ``DISTMON_DB`` (dashboard/config.py);
``--env-file FILE`` reads settings from a file of ``KEY=value`` lines (variables set in the
environment still win). Next to the local stack: ``--env-file .run/stack.env``. When none of these
names a store, it reads ``/etc/distmon/dashboard.env`` (what the distmon.host formula installs) if
that exists, else uses ``.run/host/distmon.sqlite`` below the current directory, and says on stderr
which; a default store that does not exist is refused (``serve``, ``ingest`` and ``seed`` create it).
It runs from any directory: ``make setup`` makes the checkout importable from its ``.venv``.
Writes use their own ``BEGIN IMMEDIATE`` transactions, so running it next to the app is safe.

CLI Example:

.. code-block:: bash

    echo 's3cret-passw0rd' | python -m dashboard user create alice --admin --password-stdin
    echo 'new-passw0rd!' | python -m dashboard user reset-password alice --password-stdin
    python -m dashboard user list
    python -m dashboard user approve bob
    python -m dashboard token create alice          # the token is the last line printed
    python -m dashboard prune --older-than 90d
    python -m dashboard ingest                      # run the ingester alone (Ctrl-C stops it)
    python -m dashboard ingest --once
    python -m dashboard --env-file .run/stack.env ingest --once   # as the local stack's app would
    python -m dashboard serve --host 127.0.0.1 --port 8000   # the web app, with its limits (dashboard/serve.py)
    python -m dashboard backfill-signatures         # signatures for results stored before they existed
    python -m dashboard migrate-to postgresql://distmon@db1:5432/distmon   # copy this SQLite store into PostgreSQL
    python -m dashboard triage known-issue 3f2a9c0d1e4b5a69 --note "kernel 6.1 regression" --url https://bugs/1 --user alice
    python -m dashboard triage mute --signature 3f2a9c0d1e4b5a69 --grain osrelease=11 --expires 7d --user alice
    python -m dashboard triage mute --test "tests/test_net.py::test_dns" --expires 2d --reason "DNS move" --user alice
    python -m dashboard triage unmute 4 --user alice
    python -m dashboard triage mutes --all
    python -m dashboard triage log
    python -m dashboard webhook add https://chat.example.com/hooks/abc --format slack --events new_failure fixed
    python -m dashboard webhook list
    python -m dashboard webhook deliveries 1
    python -m dashboard webhook test 1
    python -m dashboard webhook remove 1
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence
from contextlib import closing
from pathlib import Path

from pydantic import ValidationError

from dashboard import security, users
from dashboard.config import Settings
from dashboard.db import connect_sync, run_transaction


class CliError(Exception):
    """A refusal with a message for stderr (exit code 2)."""


def _read_password(args) -> str:
    if not args.password_stdin:
        raise CliError("Give the password on stdin with --password-stdin (never on the command line).")
    line = sys.stdin.readline()
    password = line.rstrip("\r\n")
    if not password:
        raise CliError("No password on stdin.")
    return password


def _store(settings: Settings) -> closing:
    """The store's connection, closed when the ``with`` block ends."""
    return closing(connect_sync(settings.db_path))


def cmd_user_create(args, settings: Settings) -> int:
    """Create an active user (an admin with --admin)."""
    username = users.check_username(args.name)
    password_hash = security.hash_password_sync(_read_password(args), settings.bcrypt_rounds)
    with _store(settings) as conn:
        outcome = run_transaction(conn, users.create_user_tx, username, password_hash, admin=args.admin, status="active")
    if not outcome["created"]:
        raise CliError(f"User {username!r} already exists, or one whose name looks like it (use reset-password).")
    role = "admin" if outcome["is_admin"] else "user"
    print(f"created {role} {username}")
    return 0


def cmd_user_reset_password(args, settings: Settings) -> int:
    """Set a new password; every session of the user ends."""
    password_hash = security.hash_password_sync(_read_password(args), settings.bcrypt_rounds)
    with _store(settings) as conn:
        user = users.find_user_sync(conn, args.name)
        if user is None:
            raise CliError(f"No user {args.name!r}.")
        run_transaction(conn, users.set_password_tx, user["id"], password_hash, None)
    print(f"password reset for {user['username']}; their sessions ended")
    return 0


def cmd_user_list(args, settings: Settings) -> int:
    """Print every user: name, status, admin flag, creation time."""
    with _store(settings) as conn:
        rows = conn.execute("SELECT username, status, is_admin, created_at FROM users ORDER BY id").fetchall()
    print(f"{'USERNAME':<32} {'STATUS':<9} {'ADMIN':<5} CREATED")
    for row in rows:
        print(f"{row[0]:<32} {row[1]:<9} {'yes' if row[2] else 'no':<5} {row[3]}")
    return 0


def _set_status(status: str):
    def command(args, settings: Settings) -> int:
        with _store(settings) as conn:
            user = users.find_user_sync(conn, args.name)
            if user is None:
                raise CliError(f"No user {args.name!r}.")
            run_transaction(conn, users.set_status_tx, user["id"], status)
        print(f"{user['username']}: {status}")
        return 0

    return command


def cmd_token_create(args, settings: Settings) -> int:
    """Create an API token for a user; the token itself is the last line printed."""
    token = security.new_api_token()
    with _store(settings) as conn:
        user = users.find_user_sync(conn, args.name)
        if user is None:
            raise CliError(f"No user {args.name!r}.")
        run_transaction(conn, users.create_token_tx, user["id"], security.sha256_hex(token), args.label)
    print(f"token {args.label!r} for {user['username']} (shown once; send it as 'Authorization: Bearer <token>'):")
    print(token)
    return 0


def cmd_prune(args, settings: Settings) -> int:
    """Delete runs (and their results) older than --older-than, e.g. 90d."""
    from dashboard.db import Database
    from dashboard.retention import parse_age, prune

    try:
        age = parse_age(args.older_than)
    except ValueError as err:
        raise CliError(str(err)) from err

    async def run() -> int:
        async with Database(settings.db_path) as db:
            return await prune(db, age)

    removed = asyncio.run(run())
    print(f"pruned {removed} runs older than {args.older_than}")
    return 0


def cmd_migrate_to(args, settings: Settings) -> int:
    """Copy this SQLite store (DISTMON_DB / --db) into an empty PostgreSQL database."""
    from dashboard.dialect import redact
    from dashboard.migrate_to import MigrateError, migrate_to

    try:
        copied = migrate_to(settings.db_path, args.url)
    except MigrateError as err:
        raise CliError(str(err)) from err
    for table, rows in copied.items():
        print(f"{table:24} {rows:>12,}")
    print(f"copied {sum(copied.values()):,} rows of {len(copied)} tables into {redact(args.url)}")
    return 0


def cmd_ingest(args, settings: Settings) -> int:
    """Run the ingester alone (until SIGINT/SIGTERM), or one pass with --once."""
    from dashboard.db import Database
    from dashboard.ingest import ingest_pending, run_ingester

    async def run() -> int:
        async with Database(settings.db_path) as db:
            if args.once:
                report = await ingest_pending(db, settings)
                print(f"ingested {report.ingested} ({report.results} results), {report.duplicates} duplicates, "
                      f"{report.quarantined} quarantined")
                return 0
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            print(f"ingesting {settings.inbox} into {settings.db_path} (Ctrl-C stops)", flush=True)
            await run_ingester(db, settings, stop)
            return 0

    return asyncio.run(run())


def cmd_serve(args, settings: Settings) -> int:
    """Run the dashboard (and its ingester) under uvicorn with the limits of dashboard/serve.py."""
    from dashboard.serve import serve

    serve(settings, args.host, args.port, log_level=args.log_level, access_log=not args.no_access_log)
    return 0


def cmd_seed(args, settings: Settings) -> int:
    """Fill the database with deterministic synthetic runs (benchmarks, demos)."""
    from dashboard.seed import seed

    with _store(settings) as conn:
        summary = seed(conn, runs=args.runs, tests=args.tests, minions=args.minions, prefix=args.prefix)
    print(f"seeded {summary['runs']} runs, {summary['results']} results over {summary['minions']} minions")
    return 0


def cmd_backfill_signatures(args, settings: Settings) -> int:
    """Give failure signatures to results stored before they existed (the app also does it at start-up)."""
    from dashboard.failures import backfill_all, backfill_pending

    with _store(settings) as conn:
        pending = backfill_pending(conn)
        chunks = backfill_all(conn, args.chunk)
    print(f"signature backfill: {chunks} chunks over result ids up to {pending}" if chunks else
          "signature backfill: nothing to do")
    return 0


def _who(args) -> str:
    import getpass

    if args.user:
        return users.check_username(args.user)
    # No dashboard user named: the audit log still says who, as the Unix account.
    return f"cli:{getpass.getuser()}"


def _triage_write(settings: Settings, fn, *args, **kwargs):
    with _store(settings) as conn:
        return run_transaction(conn, lambda c: fn(c, *args, **kwargs))


def cmd_triage(args, settings: Settings) -> int:
    """Known issues, mutes and the triage log from the shell (recorded with --user, or cli:<unix user>)."""
    import json

    from dashboard import triage
    from dashboard.ingest.records import utc_now

    action = args.triage_command
    if action == "known-issue":
        if args.remove:
            removed = _triage_write(settings, triage.remove_known_issue, _who(args), args.signature)
            print("removed" if removed else "no known issue on that signature")
        else:
            issue = _triage_write(settings, triage.set_known_issue, _who(args), args.signature, args.note or "", args.url)
            print(f"known issue on {issue['signature']}: {issue['note']}" + (f" ({issue['url']})" if issue["url"] else ""))
        return 0
    if action == "mute":
        if bool(args.signature) == bool(args.test):
            raise CliError("Give exactly one of --signature or --test.")
        grain = grain_value = None
        if args.grain:
            grain, sep, grain_value = args.grain.partition("=")
            if not sep:
                raise CliError("--grain takes name=value, e.g. osrelease=11 or roles=web.")
        mute = _triage_write(
            settings, triage.add_mute, _who(args), kind="signature" if args.signature else "test",
            target=args.signature or args.test, expires=args.expires, grain=grain, grain_value=grain_value,
            reason=args.reason or "",
        )
        where = f"{mute['grain']}={mute['grain_value']}" if mute["grain"] else "all minions"
        print(f"mute {mute['id']}: {mute['kind']} {mute['target']} on {where} until {mute['expires_at']}")
        return 0
    if action == "unmute":
        done = _triage_write(settings, triage.remove_mute, _who(args), args.id)
        print(f"mute {done['id']} removed")
        return 0
    with _store(settings) as conn:
        if action == "mutes":
            sql = ("SELECT id, kind, target, grain, grain_value, reason, created_by, created_at, expires_at, "
                   "removed_by, removed_at FROM mutes")
            rows = conn.execute(sql + ("" if args.all else " WHERE removed_at IS NULL AND expires_at > ?") +
                                " ORDER BY id DESC LIMIT 500",
                                () if args.all else (utc_now(),))
        else:
            rows = conn.execute("SELECT id, at, username, action, signature, test, detail FROM triage_log "
                                "ORDER BY id DESC LIMIT ?", (args.limit,))
        for row in rows:
            print(json.dumps(dict(row), sort_keys=True))
    return 0


def cmd_webhook_add(args, settings: Settings) -> int:
    """Add a webhook; its signing secret is printed once, on the last line."""
    from dashboard.webhooks import registry

    try:
        with _store(settings) as conn:
            created = run_transaction(conn, lambda c: registry.create_webhook_tx(
                c, url=args.url, fmt=args.format, events=args.events, name=args.name, digest_hour=args.digest_hour))
    except registry.WebhookError as err:
        raise CliError(str(err)) from err
    digest = f", digest {created['digest_hour']:02d}:00 UTC" if created["digest_hour"] is not None else ""
    print(f"webhook {created['id']} {created['name']!r}: {created['format']} to {created['url']}, "
          f"events {','.join(created['events'])}{digest}")
    print("signing secret (shown once; receivers check X-Distmon-Signature: sha256=HMAC-SHA256(secret, body)):")
    print(created["secret"])
    return 0


def cmd_webhook_list(args, settings: Settings) -> int:
    """Print every webhook (never its secret)."""
    from dashboard.webhooks import registry

    with _store(settings) as conn:
        hooks = registry.list_webhooks_sync(conn)
    print(f"{'ID':<4} {'NAME':<20} {'FORMAT':<6} {'STATE':<8} {'DIGEST':<6} {'EVENTS':<55} URL")
    for hook in hooks:
        digest = f"{hook['digest_hour']:02d}:00" if hook["digest_hour"] is not None else "off"
        print(f"{hook['id']:<4} {hook['name'][:20]:<20} {hook['format']:<6} "
              f"{'enabled' if hook['enabled'] else 'disabled':<8} {digest:<6} {','.join(hook['events']):<55} "
              f"{hook['url']}")
    return 0


def cmd_webhook_remove(args, settings: Settings) -> int:
    """Remove a webhook and its delivery log."""
    from dashboard.webhooks import registry

    with _store(settings) as conn:
        if not run_transaction(conn, registry.delete_webhook_tx, args.id):
            raise CliError(f"No webhook {args.id}.")
    print(f"webhook {args.id} removed")
    return 0


def cmd_webhook_test(args, settings: Settings) -> int:
    """Queue a test message (the running app's sender delivers it)."""
    from dashboard.webhooks import outbox

    with _store(settings) as conn:
        if not run_transaction(conn, outbox.queue_ping_tx, args.id, settings.public_url):
            raise CliError(f"No webhook {args.id}.")
    print(f"test message queued for webhook {args.id}; see `python -m dashboard webhook deliveries {args.id}`")
    return 0


def cmd_webhook_deliveries(args, settings: Settings) -> int:
    """Print the delivery log (newest first): status, attempts, last error."""
    from dashboard.webhooks import registry

    with _store(settings) as conn:
        rows = registry.list_deliveries_sync(conn, args.id, limit=args.limit)
    print(f"{'CREATED':<28} {'HOOK':<5} {'EVENT':<12} {'STATUS':<10} {'TRIES':<5} {'DELIVERY ID':<37} SUMMARY / LAST ERROR")
    for row in rows:
        detail = row["summary"] or ""
        if row["last_error"]:
            detail += f" / {row['last_error']}"
        print(f"{row['created_at']:<28} {row['webhook_id']:<5} {row['event']:<12} {row['status']:<10} "
              f"{row['attempts']:<5} {row['delivery_id']:<37} {detail}")
    return 0


def _positive_int(text: str) -> int:
    """argparse type: a whole number above zero (a count, a limit, a chunk size)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def _port(text: str) -> int:
    """argparse type: a TCP port, 1-65535."""
    value = _positive_int(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"a port is 1 to 65535, not {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m dashboard", description=__doc__.split("\n")[0])
    parser.add_argument("--db", help="the database (default: DISTMON_DB, else the store of --env-file, else that of "
                        f"{FORMULA_ENV_FILE} if it exists, else .run/host/distmon.sqlite if it exists)")
    parser.add_argument("--env-file", help="read DISTMON_* settings from this file (e.g. .run/stack.env)")
    sub = parser.add_subparsers(dest="command", required=True)

    user = sub.add_parser("user", help="manage users").add_subparsers(dest="user_command", required=True)
    create = user.add_parser("create", help="create an active user")
    create.add_argument("name")
    create.add_argument("--admin", action="store_true")
    create.add_argument("--password-stdin", action="store_true", help="read the password from stdin's first line")
    create.set_defaults(func=cmd_user_create)
    reset = user.add_parser("reset-password", help="set a user's password")
    reset.add_argument("name")
    reset.add_argument("--password-stdin", action="store_true")
    reset.set_defaults(func=cmd_user_reset_password)
    user.add_parser("list", help="list users").set_defaults(func=cmd_user_list)
    for name, status in (("approve", "active"), ("enable", "active"), ("disable", "disabled")):
        action = user.add_parser(name, help=f"set a user {status}")
        action.add_argument("name")
        action.set_defaults(func=_set_status(status))

    token = sub.add_parser("token", help="API tokens").add_subparsers(dest="token_command", required=True)
    token_create = token.add_parser("create", help="create an API token for a user")
    token_create.add_argument("name")
    token_create.add_argument("--label", default="cli", help="a name for the token")
    token_create.set_defaults(func=cmd_token_create)

    prune = sub.add_parser("prune", help="delete old runs")
    prune.add_argument("--older-than", required=True, help="e.g. 90d, 12h")
    prune.set_defaults(func=cmd_prune)

    migrate = sub.add_parser("migrate-to", help="copy this SQLite store into an empty PostgreSQL database")
    migrate.add_argument("url", help="postgresql://user@host:port/database")
    migrate.set_defaults(func=cmd_migrate_to)

    ingest = sub.add_parser("ingest", help="run the ingester alone")
    ingest.add_argument("--once", action="store_true", help="one pass over the inbox, then exit")
    ingest.set_defaults(func=cmd_ingest)

    serve = sub.add_parser("serve", help="run the web app (uvicorn with the dashboard's limits)")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=_port, default=8000)
    serve.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    serve.add_argument("--no-access-log", action="store_true")
    serve.set_defaults(func=cmd_serve)
    webhook = sub.add_parser("webhook", help="webhooks (messages about new failures, fixes, late minions)")
    hooks = webhook.add_subparsers(dest="webhook_command", required=True)
    add = hooks.add_parser("add", help="add a webhook (its secret is printed once)")
    add.add_argument("url", help="http:// or https:// URL")
    add.add_argument("--format", default="json", choices=("json", "slack"),
                     help="json (distmon-webhook/1) or slack (Slack/Mattermost-compatible text)")
    add.add_argument("--events", nargs="+", metavar="EVENT",
                     help="new_failure fixed minion_late job_incomplete quarantined (default: all)")
    add.add_argument("--name", help="a label (default: the URL's host)")
    add.add_argument("--digest-hour", type=int, metavar="H", help="send a daily digest at this UTC hour (default: none)")
    add.set_defaults(func=cmd_webhook_add)
    hooks.add_parser("list", help="list webhooks").set_defaults(func=cmd_webhook_list)
    for name, func, what in (("remove", cmd_webhook_remove, "remove a webhook"),
                             ("test", cmd_webhook_test, "queue a test message")):
        action = hooks.add_parser(name, help=what)
        action.add_argument("id", type=int)
        action.set_defaults(func=func)
    deliveries = hooks.add_parser("deliveries", help="the delivery log")
    deliveries.add_argument("id", type=int, nargs="?", help="one webhook's deliveries only")
    deliveries.add_argument("--limit", type=_positive_int, default=50)
    deliveries.set_defaults(func=cmd_webhook_deliveries)

    seed = sub.add_parser("seed", help="insert synthetic runs (benchmarks)")
    seed.add_argument("--runs", type=_positive_int, default=20_000)
    seed.add_argument("--tests", type=_positive_int, default=50)
    seed.add_argument("--minions", type=_positive_int, default=50)
    seed.add_argument("--prefix", default="")
    seed.set_defaults(func=cmd_seed)

    backfill = sub.add_parser("backfill-signatures", help="failure signatures for results stored before they existed")
    backfill.add_argument("--chunk", type=_positive_int, default=20_000, help="result ids per transaction")
    backfill.set_defaults(func=cmd_backfill_signatures)

    triage = sub.add_parser("triage", help="known issues, mutes, the triage log").add_subparsers(
        dest="triage_command", required=True)
    known = triage.add_parser("known-issue", help="attach (or --remove) a known-issue note to a signature")
    known.add_argument("signature")
    known.add_argument("--note")
    known.add_argument("--url")
    known.add_argument("--remove", action="store_true")
    mute = triage.add_parser("mute", help="mute a signature or a test, on all minions or a grain match")
    mute.add_argument("--signature")
    mute.add_argument("--test", help="a test nodeid")
    mute.add_argument("--grain", help="only minions whose grain matches: name=value (a list grain: contains value)")
    mute.add_argument("--expires", default="7d", help="30m, 12h, 7d, 2w or a date (default 7d)")
    mute.add_argument("--reason")
    unmute = triage.add_parser("unmute", help="end a mute now")
    unmute.add_argument("id", type=int)
    mutes = triage.add_parser("mutes", help="list active mutes (--all: also ended ones), one JSON object a line")
    mutes.add_argument("--all", action="store_true")
    log = triage.add_parser("log", help="the triage log, newest first, one JSON object a line")
    log.add_argument("--limit", type=_positive_int, default=100)
    for command in (known, mute, unmute, mutes, log):
        command.add_argument("--user", help="the dashboard user acting (recorded in the triage log)")
        command.set_defaults(func=cmd_triage)
    return parser


# The settings file the distmon.host formula installs (and its systemd unit reads): found by
# itself when nothing names a store, so an admin on the storage host acts on the service's store.
FORMULA_ENV_FILE = Path("/etc/distmon/dashboard.env")
# Commands that may start a store where none is yet; the others refuse a default that does not exist.
STORE_CREATING_COMMANDS = frozenset({"serve", "ingest", "seed"})


def _load_settings(env_file: str | Path | None, overrides: dict) -> Settings:
    try:
        return Settings(_env_file=env_file, **overrides)
    except ValidationError as err:
        problems = "; ".join(
            f"DISTMON_{str(e['loc'][0]).upper()}: {e['msg']}" if e["loc"] else e["msg"]
            for e in err.errors(include_url=False)
        )
        raise CliError(f"invalid settings: {problems}") from None


def _store_name(settings: Settings) -> str:
    from dashboard.dialect import is_postgres, redact

    return redact(str(settings.db_path)) if is_postgres(settings.db_path) else f"sqlite:///{settings.db_path}"


def _settings(args, formula_env_file: Path = FORMULA_ENV_FILE) -> Settings:
    """Settings from --db, the environment and --env-file; else the formula's file; else the default.

    Whenever the store was not named (--db, DISTMON_DB, --env-file), one line on stderr says which
    store is used and why, and a default store that does not exist is refused, not created.
    """
    if args.env_file and not Path(args.env_file).is_file():
        raise CliError(f"--env-file {args.env_file}: no such file")
    overrides = {"db_path": args.db} if args.db else {}
    settings = _load_settings(args.env_file, overrides)
    if args.env_file or "db_path" in settings.model_fields_set:
        return settings
    if formula_env_file.is_file():
        try:
            formula_env_file.read_bytes()
        except OSError as err:
            raise CliError(f"{formula_env_file} (the distmon formula's settings) is not readable: {err.strerror}; "
                           "run as root or its group, or name the store: --env-file FILE, DISTMON_DB or --db") from None
        settings = _load_settings(formula_env_file, overrides)
        print(f"distmon: store {_store_name(settings)} (from {formula_env_file})", file=sys.stderr)
        return settings
    if args.command not in STORE_CREATING_COMMANDS and not Path(settings.db_path).exists():
        raise CliError(
            f"no store named and none at the default {settings.db_path}: name one with --env-file FILE "
            f"(the local stack's: --env-file <checkout>/.run/stack.env; a storage host installed by the distmon "
            f"formula: {formula_env_file}), DISTMON_DB=... or --db ..."
        )
    print(f"distmon: store {_store_name(settings)} (default; set DISTMON_DB or --env-file)", file=sys.stderr)
    return settings


def main(argv: Sequence[str] | None = None) -> int:
    """Parse the arguments and run one command; returns the exit code."""
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
        return args.func(args, settings)
    except (CliError, users.UserError, security.PasswordPolicyError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
