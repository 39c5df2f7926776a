"""The local distmon stack: `make up`, `make down`, `make demo`, `make status`.

Starts, from the repo root, everything under .run/ (git-ignored):

- a salt-master on 127.0.0.1 (publish/ret ports DISTMON_SALT_PUBLISH_PORT /
  DISTMON_SALT_RET_PORT, default 14505/14506, so a system Salt on 4505/4506 is untouched);
- three salt-minions, web-1, web-2 and db-1, each with its own config and root dir;
- the storage host: OpenSSH sshd on 127.0.0.1:DISTMON_SSH_PORT (default 14522), SFTP only
  into the inbox (tools/storage_host.py);
- the dashboard and its ingester on DISTMON_DASHBOARD_PORT (default 8000);
- its store: SQLite at .run/host/distmon.sqlite, or with ``--db postgres`` (`make up DB=postgres`)
  a PostgreSQL server under .run/pg (tools/postgres.py; port DISTMON_PG_PORT, else a free one
  kept across restarts).

Idempotent: a service whose pid file names a live process is left alone, so `up` also
restarts a service that died. Each service writes .run/<service>.pid and logs to
.run/log/<service>.log. `down` stops exactly what the pid files name.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from string import Template

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools.pidfiles import live_pid  # noqa: E402
from tools.postgres import PostgresError, PostgresServer  # noqa: E402
from tools.storage_host import StorageHost, StorageHostError, port_is_open  # noqa: E402

RUN = REPO / ".run"
LOG = RUN / "log"
VENV_BIN = Path(sys.executable).parent
MINIONS = ("web-1", "web-2", "db-1")
SYNCED_DIRS = ("_modules", "_runners", "_returners", "_utils", "_output", "sample_tests")

PUBLISH_PORT = int(os.environ.get("DISTMON_SALT_PUBLISH_PORT", "14505"))
RET_PORT = int(os.environ.get("DISTMON_SALT_RET_PORT", "14506"))
SSH_PORT = int(os.environ.get("DISTMON_SSH_PORT", "14522"))
DASHBOARD_PORT = int(os.environ.get("DISTMON_DASHBOARD_PORT", "8000"))
DASHBOARD_URL = f"http://127.0.0.1:{DASHBOARD_PORT}"


def say(message: str) -> None:
    print(f"[distmon] {message}", flush=True)


def storage_host() -> StorageHost:
    return StorageHost(root=RUN / "host", port=SSH_PORT, pid_file=RUN / "storage-host.pid")


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise SystemExit(f"[distmon] timed out after {timeout:.0f} s waiting for {what}; see {LOG}/")


# -- configuration -----------------------------------------------------------
def template_values(host: StorageHost) -> dict[str, str]:
    return {
        "REPO": str(REPO),
        "RUN": str(RUN),
        "USER": os.environ.get("USER") or "root",
        "PUBLISH_PORT": str(PUBLISH_PORT),
        "RET_PORT": str(RET_PORT),
        "SSH_PORT": str(SSH_PORT),
        "SSH_USER": host.user,
        "SSH_KEY": str(host.client_key),
        "KNOWN_HOSTS": str(host.known_hosts),
        "REMOTE_INBOX": host.remote_inbox,
        "DASHBOARD_URL": DASHBOARD_URL,
    }


def render(template: str, target: Path, values: dict[str, str]) -> None:
    text = Template((REPO / "salt" / template).read_text()).substitute(values)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(text)


def seed_minion_key(master_pki: Path, minion_root: Path, minion_id: str) -> None:
    """Give one minion a key pair (kept across runs) and accept it, as `salt-key -a` would."""
    from salt.crypt import gen_keys

    accepted = master_pki / "minions"
    accepted.mkdir(parents=True, exist_ok=True)
    os.chmod(master_pki, 0o700)
    pki = minion_root / "pki"
    pki.mkdir(parents=True, exist_ok=True)
    os.chmod(pki, 0o700)
    priv, pub = pki / "minion.pem", pki / "minion.pub"
    if not priv.exists():
        priv_pem, pub_pem = gen_keys(2048)
        priv.write_text(priv_pem)
        os.chmod(priv, 0o400)
        pub.write_text(pub_pem)
    (accepted / minion_id).write_text(pub.read_text())


def seed_minion_keys(master_pki: Path) -> None:
    """Accept exactly the stack's three minions: no auto_accept on the master."""
    for minion_id in MINIONS:
        seed_minion_key(master_pki, RUN / "salt" / minion_id, minion_id)


def prepare(host: StorageHost, db: str | None = None) -> dict[str, str]:
    LOG.mkdir(parents=True, exist_ok=True)
    os.chmod(RUN, 0o755)
    host.prepare()
    values = template_values(host)
    srv = RUN / "srv"
    srv.mkdir(exist_ok=True)
    for name in SYNCED_DIRS:
        link = srv / name
        if not link.is_symlink():
            link.symlink_to(REPO / name, target_is_directory=True)
    # The formula's pillar: `salt '*' state.apply distmon` on the stack writes only under .run/.
    render("pillar_top.sls", RUN / "pillar" / "top.sls", values)
    render("pillar_distmon.sls", RUN / "pillar" / "distmon.sls", values)
    render("master.conf", RUN / "salt" / "master" / "master", values)
    for minion_id in MINIONS:
        render("minion.conf", RUN / "salt" / minion_id / "minion", {**values, "MINION_ID": minion_id})
    seed_minion_keys(RUN / "salt" / "master" / "pki")
    write_stack_env(host, db)
    return values


def postgres_server() -> PostgresServer:
    port = os.environ.get("DISTMON_PG_PORT")
    return PostgresServer(RUN / "pg", port=int(port) if port else None)


def start_postgres() -> str:
    """Start the stack's PostgreSQL (idempotent); its URL."""
    try:
        url = postgres_server().start()
    except PostgresError as err:
        raise SystemExit(f"[distmon] PostgreSQL: {err}") from None
    say(f"PostgreSQL up: {url}")
    return url


def write_stack_env(host: StorageHost, db: str | None = None) -> None:
    env = {
        "DISTMON_DASHBOARD_URL": DASHBOARD_URL,
        "DISTMON_SSH_HOST": "127.0.0.1",
        "DISTMON_SSH_PORT": str(host.port),
        "DISTMON_SSH_USER": host.user,
        "DISTMON_SSH_KEY": str(host.client_key),
        "DISTMON_KNOWN_HOSTS": str(host.known_hosts),
        "DISTMON_REMOTE_INBOX": host.remote_inbox,
        "DISTMON_INBOX": str(host.inbox),
        "DISTMON_DB": db or str(RUN / "host" / "distmon.sqlite"),
        "DISTMON_PUBKEYS_DIR": str(RUN / "salt" / "master" / "pki" / "minions"),
        "DISTMON_REQUIRE_SIGNATURE": "1",
        "DISTMON_SALT_MASTER_CONFIG_DIR": str(RUN / "salt" / "master"),
        # The names the browser may use for the dashboard (anything else: 400, against DNS rebinding).
        "DISTMON_ALLOWED_HOSTS": os.environ.get("DISTMON_ALLOWED_HOSTS", "localhost,127.0.0.1,[::1]"),
    }
    lines = ["# Written by `make up` (tools/stack.py): the local stack's coordinates."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in env.items()]
    (RUN / "stack.env").write_text("\n".join(lines) + "\n")


def read_stack_env(path: Path) -> dict[str, str]:
    """KEY=value lines as :func:`write_stack_env` writes them (shell-quoted); {} when there is no file."""
    values: dict[str, str] = {}
    try:
        text = path.read_text()
    except OSError:
        return values
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, raw = line.partition("=")
        try:
            parts = shlex.split(raw)
        except ValueError:
            continue
        values[key.removeprefix("export ").strip()] = parts[0] if parts else ""
    return values


def stack_env() -> dict[str, str]:
    """The coordinates of the running stack (.run/stack.env)."""
    return read_stack_env(RUN / "stack.env")


# -- services ----------------------------------------------------------------
def start_master() -> None:
    pid_file = RUN / "master.pid"
    if live_pid(pid_file) and port_is_open(RET_PORT):
        say("salt-master already running")
        return
    if port_is_open(RET_PORT) or port_is_open(PUBLISH_PORT):
        raise SystemExit(f"[distmon] ports {PUBLISH_PORT}/{RET_PORT} are taken by another program: set "
                         "DISTMON_SALT_PUBLISH_PORT / DISTMON_SALT_RET_PORT")
    subprocess.run([str(VENV_BIN / "salt-master"), "-c", str(RUN / "salt" / "master"), "-d"], check=True)
    wait_for(lambda: port_is_open(RET_PORT), 60, "salt-master")
    say(f"salt-master up on 127.0.0.1:{PUBLISH_PORT}/{RET_PORT}")


def start_minion(minion_id: str) -> None:
    if live_pid(RUN / f"{minion_id}.pid"):
        say(f"salt-minion {minion_id} already running")
        return
    subprocess.run([str(VENV_BIN / "salt-minion"), "-c", str(RUN / "salt" / minion_id), "-d"], check=True)
    say(f"salt-minion {minion_id} started")


def start_dashboard() -> None:
    pid_file = RUN / "dashboard.pid"
    if live_pid(pid_file) and port_is_open(DASHBOARD_PORT):
        say("dashboard already running")
        return
    if port_is_open(DASHBOARD_PORT):
        raise SystemExit(f"[distmon] port {DASHBOARD_PORT} is taken by another program: set DISTMON_DASHBOARD_PORT")
    env = {**os.environ, **stack_env()}
    log = open(LOG / "dashboard.log", "ab")  # noqa: SIM115 - handed to the child
    # `serve`: uvicorn with the dashboard's limits and no proxy headers trusted (dashboard/serve.py).
    proc = subprocess.Popen(
        [sys.executable, "-m", "dashboard", "serve", "--host", "127.0.0.1",
         "--port", str(DASHBOARD_PORT), "--no-access-log"],
        cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    pid_file.write_text(f"{proc.pid}\n")
    wait_for(lambda: port_is_open(DASHBOARD_PORT) or proc.poll() is not None, 60, "the dashboard")
    if proc.poll() is not None:
        raise SystemExit(f"[distmon] the dashboard exited ({proc.returncode}); see {LOG}/dashboard.log")
    say(f"dashboard up on {DASHBOARD_URL}")


def salt(*argv: str, check: bool = True, capture: bool = True) -> subprocess.CompletedProcess:
    cmd = [str(VENV_BIN / argv[0]), "-c", str(RUN / "salt" / "master"), *argv[1:]]
    return subprocess.run(cmd, check=check, capture_output=capture, text=True, cwd=REPO)


def minions_answering() -> set[str]:
    out = salt("salt", "*", "test.ping", "--out", "json", "--static", "-t", "5", check=False).stdout
    try:
        return {mid for mid, ok in json.loads(out or "{}").items() if ok is True}
    except json.JSONDecodeError:
        return set()


def sync() -> None:
    salt("salt", "*", "saltutil.sync_all", "--out", "json", "-t", "60")
    # Runners, the shared _utils library and the outputter, on the master.
    salt("salt-run", "saltutil.sync_all", "--out", "json")
    say("custom modules, returners and runners synced from file_roots")


def check_root_or_explain() -> None:
    if os.geteuid() != 0:
        say("note: not running as root: the SFTP account is this user and is not chrooted")


def up(db_backend: str = "sqlite") -> None:
    check_root_or_explain()
    host = storage_host()
    db = start_postgres() if db_backend == "postgres" else None
    try:
        prepare(host, db)
        host.start()
    except StorageHostError as err:
        raise SystemExit(f"[distmon] storage host: {err}") from None
    say(f"storage host (sshd, SFTP only) up on 127.0.0.1:{host.port}, inbox {host.inbox}")
    start_master()
    for minion_id in MINIONS:
        start_minion(minion_id)
    wait_for(lambda: minions_answering() >= set(MINIONS), 90, "the minions to answer test.ping", 1.0)
    say("minions answering: " + ", ".join(MINIONS))
    sync()
    start_dashboard()
    say(f"stack up; coordinates in {RUN / 'stack.env'} (admin CLI: .venv/bin/python -m dashboard "
        "--env-file .run/stack.env ...)")


def stop_services(names: list[str], timeout: float = 20.0) -> None:
    """SIGTERM every live service named, then wait for all together (SIGKILL stragglers)."""
    pids = {}
    for name in names:
        pid_file = RUN / f"{name}.pid"
        pid = live_pid(pid_file)
        if pid is None:
            pid_file.unlink(missing_ok=True)
            continue
        os.kill(pid, signal.SIGTERM)
        pids[name] = pid
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and any(live_pid(RUN / f"{n}.pid") for n in pids):
        time.sleep(0.1)
    for name, pid in pids.items():
        if live_pid(RUN / f"{name}.pid"):
            os.kill(pid, signal.SIGKILL)
        (RUN / f"{name}.pid").unlink(missing_ok=True)
        say(f"stopped {name} (pid {pid})")


def leftover_processes() -> list[str]:
    """Processes of this stack (not of test harnesses under .run/pytest) still running."""
    out = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    markers = (f"{RUN}/salt/", f"{RUN}/host/", "dashboard.app:app --host 127.0.0.1 --port "
               f"{DASHBOARD_PORT}")
    return [line.strip() for line in out.splitlines() if any(m in line for m in markers)]


def down() -> None:
    stop_services(["dashboard", *MINIONS])
    stop_services(["master"])
    host = storage_host()
    if host.pid():
        host.kill_sessions()
        host.stop()
        say("stopped the storage host (sshd)")
    if postgres_server().stop():
        say("stopped PostgreSQL")
    # Salt daemons take a moment to reap their workers after SIGTERM.
    deadline = time.monotonic() + 15
    while leftover_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    left = leftover_processes()
    if left:
        say("still running (not stopped by pid file):\n  " + "\n  ".join(left))
        raise SystemExit(1)
    say("stack down: no process left")


def status() -> None:
    host = storage_host()
    rows = [("salt-master", live_pid(RUN / "master.pid"))]
    rows += [(f"salt-minion {m}", live_pid(RUN / f"{m}.pid")) for m in MINIONS]
    rows += [("sshd storage host", host.pid()), ("dashboard", live_pid(RUN / "dashboard.pid"))]
    if (RUN / "pg" / "data").exists():
        rows.append(("postgresql", postgres_server().pid()))
    for name, pid in rows:
        print(f"{name:22} {'up (pid ' + str(pid) + ')' if pid else 'down'}")


# -- demo --------------------------------------------------------------------
def runs_since(db_path: Path | str, since: str) -> dict[str, dict]:
    from dashboard.dialect import DATABASE_ERRORS, connect_postgres, is_postgres

    if is_postgres(db_path):
        try:
            conn = connect_postgres(str(db_path))
        except DATABASE_ERRORS:
            return {}
    elif not Path(db_path).exists():
        return {}
    else:
        conn = sqlite3.connect(f"file:{db_path}?mode=ro", uri=True, timeout=5)
    try:
        rows = conn.execute(
            "SELECT m.name, r.id, r.status, r.passed, r.failed, r.skipped, r.errors FROM runs r "
            "JOIN minions m ON m.id = r.minion_id WHERE r.ingested_at >= ? ORDER BY r.id",
            (since,),
        ).fetchall()
    except DATABASE_ERRORS:
        return {}
    finally:
        conn.close()
    return {name: {"id": rid, "status": st, "passed": p, "failed": f, "skipped": s, "errors": e}
            for name, rid, st, p, f, s, e in rows}


def demo() -> None:
    since = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 1))
    say("running sample_tests/ on every minion: salt-run distmon.run path=salt://sample_tests tgt='*'")
    proc = salt("salt-run", "distmon.run", "path=salt://sample_tests", "tgt=*", check=False, capture=False)
    # sample_tests holds a deliberately failing test, so a non-zero exit is expected here.
    say(f"salt-run distmon.run exited {proc.returncode} (non-zero: some sample tests fail on purpose)")
    db_path = stack_env().get("DISTMON_DB") or str(RUN / "host" / "distmon.sqlite")
    seen: dict[str, dict] = {}

    def all_seen() -> bool:
        seen.update(runs_since(db_path, since))
        return set(MINIONS) <= set(seen)

    try:
        wait_for(all_seen, 60, "every minion's result in the dashboard", 0.5)
    except SystemExit:
        say(f"only these minions' results reached the dashboard: {sorted(seen)}")
        raise
    print()
    print(f"{'minion':8} {'run':>5} {'status':8} {'passed':>6} {'failed':>6} {'skipped':>7} {'errors':>6}")
    for minion_id in MINIONS:
        r = seen[minion_id]
        print(f"{minion_id:8} {r['id']:>5} {r['status']:8} {r['passed']:>6} {r['failed']:>6} "
              f"{r['skipped']:>7} {r['errors']:>6}")
    print()
    say(f"all {len(MINIONS)} minions' results are in the dashboard: {DASHBOARD_URL}/runs")
    say(f"open {DASHBOARD_URL}/register: the first account you register becomes the admin")
    say("or from the shell: .venv/bin/python -m dashboard --env-file .run/stack.env user create NAME --admin "
        "--password-stdin")
    say("stop everything with: make down")


def dashboard_answers() -> bool:
    try:
        with urllib.request.urlopen(f"{DASHBOARD_URL}/login", timeout=2) as resp:  # noqa: S310 - loopback
            return resp.status == 200
    except OSError:
        return False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["up", "down", "status", "demo", "sync", "env"])
    parser.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite",
                        help="the dashboard's store for `up` (default sqlite; postgres starts a server under .run/pg)")
    args = parser.parse_args()
    os.chdir(REPO)
    if args.command == "up":
        up(args.db)
    elif args.command == "down":
        down()
    elif args.command == "status":
        status()
    elif args.command == "demo":
        demo()
    elif args.command == "sync":
        sync()
    elif args.command == "env":
        print((RUN / "stack.env").read_text())


if __name__ == "__main__":
    main()
