"""The app's start-up takes what it made out of the cyclic collector's walks (dashboard/app.py)."""

from __future__ import annotations

from dashboard import app as app_module


def test_start_up_freezes_the_objects_alive_once_per_process(monkeypatch):
    frozen = []
    monkeypatch.setattr(app_module, "_startup_frozen", False)
    monkeypatch.setattr(app_module.gc, "freeze", lambda: frozen.append(True))
    app_module._freeze_startup_objects()
    # A second app in the same process (the tests, the bench) freezes nothing more: its garbage stays collectable.
    app_module._freeze_startup_objects()
    assert frozen == [True]
