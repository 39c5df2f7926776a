"""Message bodies: one set of facts rendered per webhook (its events, its format) and signed.

Facts are plain dicts built by the composer (:mod:`dashboard.webhooks.outbox`)::

    {"event": "job" | "group" | "minion_late" | "digest" | "ping",
     "jid": ..., "fun": ..., "tgt": ..., "targeted": [...], "returned": [...], "missing": [...],
     "rerun_of": jid or None,
     "new_failures": [{"nodeid", "minions": [...], "message"}], "fixed": [{"nodeid", "minions": [...]}],
     "quarantined": [{"file", "reason"}], "late": [{"minion", "silent_for", "expected_interval"}],
     "back": [{"minion"}], "digest": {...}}

The signature is ``X-Distmon-Signature: sha256=<hex HMAC-SHA256 of the exact body bytes under the
webhook's secret>`` (docs/webhooks.md shows how a receiver checks it).
"""

from __future__ import annotations

import hashlib
import hmac
import json
from typing import Any
from urllib.parse import quote, urlencode

# At most this many lines per section of a text message ("and N more" after).
TEXT_LINES = 10
# ... and this many minion names per line.
TEXT_MINIONS = 5


def sign_body(secret: str, body: bytes) -> str:
    """The ``X-Distmon-Signature`` header value for ``body``."""
    return "sha256=" + hmac.new(secret.encode("utf-8"), body, hashlib.sha256).hexdigest()


def select(facts: dict[str, Any], events: list[str]) -> dict[str, Any] | None:
    """The part of ``facts`` a webhook subscribed to, or None when nothing of it is left."""
    wanted = set(events)
    if facts["event"] in ("digest", "ping"):
        return facts
    picked = dict(facts)
    picked["new_failures"] = facts.get("new_failures", []) if "new_failure" in wanted else []
    picked["fixed"] = facts.get("fixed", []) if "fixed" in wanted else []
    picked["missing"] = facts.get("missing", []) if "job_incomplete" in wanted else []
    picked["quarantined"] = facts.get("quarantined", []) if "quarantined" in wanted else []
    late_wanted = "minion_late" in wanted
    picked["late"] = facts.get("late", []) if late_wanted else []
    picked["back"] = facts.get("back", []) if late_wanted else []
    if not any(picked[key] for key in ("new_failures", "fixed", "missing", "quarantined", "late", "back")):
        return None
    return picked


def _plural(count: int, word: str, plural: str | None = None) -> str:
    return f"{count} {word if count == 1 else (plural or word + 's')}"


def summary(facts: dict[str, Any]) -> str:
    """One line: "3 new failures on 12 of 40 minions, 1 fixed"."""
    event = facts["event"]
    if event == "ping":
        return "test message from distmon"
    if event == "digest":
        d = facts["digest"]
        return (f"daily digest: {_plural(d['failing_tests'], 'failing test')}, {d['new']} new, {d['fixed']} fixed, "
                f"{d['flaky']} flaky, {_plural(len(d['late']), 'late minion')}")
    parts: list[str] = []
    new, fixed = facts.get("new_failures", []), facts.get("fixed", [])
    if new:
        hit = sorted({m for item in new for m in item["minions"]})
        of = len(facts.get("targeted") or []) or len(facts.get("returned") or [])
        parts.append(f"{_plural(len(new), 'new failure')} on {len(hit)} of {_plural(of, 'minion')}"
                     if of else f"{_plural(len(new), 'new failure')} on {_plural(len(hit), 'minion')}")
    if fixed:
        parts.append(f"{len(fixed)} fixed")
    if facts.get("missing"):
        parts.append(f"{len(facts['missing'])} of {len(facts.get('targeted') or [])} targeted minions did not return")
    if facts.get("quarantined"):
        parts.append(f"{_plural(len(facts['quarantined']), 'file')} quarantined")
    if facts.get("late"):
        parts.append(f"{_plural(len(facts['late']), 'minion')} late")
    if facts.get("back"):
        parts.append(f"{_plural(len(facts['back']), 'minion')} reporting again")
    text = ", ".join(parts) or "no change"
    if facts.get("rerun_of"):
        text = f"re-run of {facts['rerun_of']}: {text}"
    return text


def _link(base: str, path: str) -> str | None:
    return f"{base}{path}" if base else None


def _links(facts: dict[str, Any], base: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if facts.get("jid"):
        out["job"] = _link(base, f"/jobs/{quote(facts['jid'], safe='')}")
    return out


def json_body(facts: dict[str, Any], delivery_id: str, created_at: str, base_url: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "format": "distmon-webhook/1",
        "delivery_id": delivery_id,
        "event": facts["event"],
        "created_at": created_at,
        "summary": summary(facts),
    }
    for key in ("jid", "fun", "tgt", "rerun_of"):
        if facts.get(key) is not None:
            body[key] = facts[key]
    if facts["event"] in ("job", "group"):
        body["targeted"] = facts.get("targeted") or []
        body["returned"] = facts.get("returned") or []
        body["missing"] = facts.get("missing") or []
        body["new_failures"] = [
            {**item, "url": _link(base_url, "/tests?" + urlencode({"nodeid": item["nodeid"]}))}
            for item in facts.get("new_failures", [])
        ]
        body["fixed"] = [
            {**item, "url": _link(base_url, "/tests?" + urlencode({"nodeid": item["nodeid"]}))}
            for item in facts.get("fixed", [])
        ]
        body["quarantined"] = facts.get("quarantined", [])
    if facts["event"] == "minion_late":
        body["late"] = facts.get("late", [])
        body["back"] = facts.get("back", [])
    if facts["event"] == "digest":
        body["digest"] = facts["digest"]
    body["links"] = _links(facts, base_url)
    return body


def _esc(text: Any) -> str:
    """Slack/Mattermost mrkdwn escaping: the three characters that start markup or links."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _minions(names: list[str]) -> str:
    shown = ", ".join(_esc(n) for n in names[:TEXT_MINIONS])
    return shown + (f" (+{len(names) - TEXT_MINIONS})" if len(names) > TEXT_MINIONS else "")


def _section(title: str, lines: list[str]) -> list[str]:
    if not lines:
        return []
    out = [f"*{title}*"] + lines[:TEXT_LINES]
    if len(lines) > TEXT_LINES:
        out.append(f"… and {len(lines) - TEXT_LINES} more")
    return out


def _test_line(item: dict, base: str) -> str:
    nodeid = item["nodeid"]
    label = f"`{_esc(nodeid)}`"
    if base:
        label = f"<{base}/tests?{urlencode({'nodeid': nodeid})}|{_esc(nodeid)}>"
    line = f"• {label}{' (new failure signature)' if item.get('new_signature') else ''} on {_minions(item['minions'])}"
    if item.get("message"):
        line += f": {_esc(str(item['message']).splitlines()[0][:160])}"
    return line


def slack_body(facts: dict[str, Any], base_url: str) -> dict[str, Any]:
    head = f"*distmon* {_esc(summary(facts))}"
    if facts.get("jid"):
        jid = facts["jid"]
        job = f"<{base_url}/jobs/{quote(jid, safe='')}|{_esc(jid)}>" if base_url else f"`{_esc(jid)}`"
        head = f"*distmon* job {job}: {_esc(summary(facts))}"
    lines = [head]
    lines += _section("New failures", [_test_line(item, base_url) for item in facts.get("new_failures", [])])
    lines += _section("Fixed", [_test_line(item, base_url) for item in facts.get("fixed", [])])
    if facts.get("missing"):
        lines += _section("Did not return", [_minions(facts["missing"])])
    lines += _section("Quarantined", [f"• `{_esc(q['file'])}`: {_esc(q['reason'][:160])}"
                                      for q in facts.get("quarantined", [])])
    lines += _section("Late", [f"• {_esc(item['minion'])}: silent for {int(item['silent_for'] or 0) // 60} min "
                               f"(expected every {int(item['expected_interval'] or 0) // 60} min)"
                               for item in facts.get("late", [])])
    lines += _section("Reporting again", [f"• {_esc(item['minion'])}" for item in facts.get("back", [])])
    if facts["event"] == "digest":
        d = facts["digest"]
        lines += _section("Failing now", [f"• `{_esc(t['nodeid'])}` on {t['minions']} minion(s)" for t in d["failing"]])
        lines += _section("Flaky", [f"• `{_esc(t['nodeid'])}` ({t['flips']} flips)" for t in d["flaky_tests"]])
        lines += _section("Late", [f"• {_esc(m)}" for m in d["late"]])
    return {"username": "distmon", "text": "\n".join(lines)}


def render(facts: dict[str, Any], fmt: str, delivery_id: str, created_at: str, base_url: str) -> bytes:
    """The exact bytes to POST (and sign) for one webhook."""
    payload = slack_body(facts, base_url) if fmt == "slack" else json_body(facts, delivery_id, created_at, base_url)
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode("utf-8")
