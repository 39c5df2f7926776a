"""dashboard.serve: the dashboard as every launcher starts it (``python -m dashboard serve``), over
real sockets: slow requests are cut, proxy headers count only from trusted proxies, connections
beyond the limit get a 503, a request head still incomplete after 16 KiB a 400; and the systemd unit of
``distmon.host`` starts it that way."""

from __future__ import annotations

import re
import socket
import time
from pathlib import Path

import httpx
import jinja2
import pytest

from dashboard.config import Settings
from tests.conftest import REPO_ROOT
from tests.faults.helpers import DashboardProcess


@pytest.fixture
def serve(tmp_path):
    """``serve(**settings)``: a started ``python -m dashboard serve`` with those DISTMON_* settings."""
    started: list[DashboardProcess] = []

    def start(**settings) -> DashboardProcess:
        root = tmp_path / f"dashboard-{len(started)}"
        env = {f"DISTMON_{key.upper()}": str(value) for key, value in settings.items()}
        dashboard = DashboardProcess(root, root / "inbox", extra_env=env)
        (root / "inbox").mkdir(parents=True, exist_ok=True)
        started.append(dashboard)
        dashboard.start()
        return dashboard

    yield start
    for dashboard in started:
        dashboard.stop()


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """True when the server closes ``sock`` (recv gives b'') within ``within`` seconds, having answered nothing."""
    sock.settimeout(within)
    try:
        return sock.recv(4096) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def failed_login_address(dashboard: DashboardProcess, forwarded_for: str) -> str:
    """Fail one login with an X-Forwarded-For header; return the address the limit stored."""
    with httpx.Client(base_url=dashboard.url) as client:
        page = client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', page.text).group(1)
        response = client.post("/login", data={"username": "nobody", "password": "wrong-password-1",
                                               "csrf_token": token}, headers={"X-Forwarded-For": forwarded_for})
        assert response.status_code == 401
    with dashboard.read_only() as conn:
        return conn.execute("SELECT key FROM login_failures WHERE scope = 'address'").fetchone()[0]


def test_a_request_that_does_not_arrive_in_time_is_cut_off(serve):
    dashboard = serve(request_timeout=1)
    slow_head = socket.create_connection(("127.0.0.1", dashboard.port))
    slow_head.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Trickle: ")  # the head never ends
    slow_body = socket.create_connection(("127.0.0.1", dashboard.port))
    slow_body.sendall(b"POST /login HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/x-www-form-urlencoded\r\n"
                      b"Content-Length: 100\r\n\r\nusername=")
    try:
        # Without the deadline uvicorn keeps both open for ever (its keep-alive timer only runs between requests).
        assert closed_by_server(slow_head, within=15)
        assert closed_by_server(slow_body, within=15)
        assert httpx.get(f"{dashboard.url}/login").status_code == 200
    finally:
        slow_head.close()
        slow_body.close()


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(serve):
    assert failed_login_address(serve(), "203.0.113.9") == "127.0.0.1"
    assert failed_login_address(serve(trusted_proxies="127.0.0.1"), "203.0.113.9") == "203.0.113.9"


def test_connections_beyond_the_limit_get_a_503_and_are_closed(serve):
    dashboard = serve(limit_concurrency=20, request_timeout=30)
    # A request head still incomplete after 16 KiB is refused: a slow client cannot make it buffer more.
    with socket.create_connection(("127.0.0.1", dashboard.port)) as endless:
        endless.sendall(b"GET /login HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"x" * 20_000)
        endless.settimeout(10)
        assert endless.recv(100).startswith(b"HTTP/1.1 400 ")
    held = [socket.create_connection(("127.0.0.1", dashboard.port)) for _ in range(20)]
    try:
        time.sleep(0.5)  # the server has accepted them all
        over = httpx.get(f"{dashboard.url}/login")
        assert over.status_code == 503
        assert over.headers["x-content-type-options"] == "nosniff" and "retry-after" in over.headers
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.5)
    assert httpx.get(f"{dashboard.url}/login").status_code == 200


def test_the_service_unit_starts_serve_with_descriptor_room(tmp_path):
    files = Path(REPO_ROOT, "states", "distmon", "files")
    unit = jinja2.Template((files / "distmon-dashboard.service.jinja").read_text()).render(
        user="distmon", app_dir="/opt/distmon", venv="/opt/distmon/venv", bind="127.0.0.1", port=8000,
        env_file="/etc/distmon/dashboard.env", limit_nofile=8192,
    )
    assert "ExecStart=/opt/distmon/venv/bin/python -m dashboard serve --host 127.0.0.1 --port 8000" in unit
    assert "LimitNOFILE=8192" in unit and "EnvironmentFile=/etc/distmon/dashboard.env" in unit
    assert not re.search(r"^ExecStart=.*uvicorn", unit, re.M)
    # The settings file the unit reads is one Settings reads too (the admin CLI finds it by itself).
    env_file = tmp_path / "dashboard.env"
    env_file.write_text(jinja2.Template((files / "dashboard.env.jinja").read_text()).render(
        db_path="/var/lib/distmon/distmon.sqlite", inbox="/srv/inbox", archive_dir="/a", quarantine_dir="/q",
        pubkeys_dir="", allowed_hosts="dash.example,[::1]", trusted_proxies="", limit_concurrency=2048,
    ))
    assert "TRUSTED_PROXIES" not in env_file.read_text()
    settings = Settings.from_env({}, env_file=env_file)
    assert settings.db_path == Path("/var/lib/distmon/distmon.sqlite") and settings.inbox == Path("/srv/inbox")
    assert settings.allowed_hosts == ("dash.example", "[::1]") and settings.limit_concurrency == 2048
