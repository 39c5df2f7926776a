"""Server-rendered SVG charts: visible without JavaScript, and cheap.

Built in Python rather than in Jinja macros: a 200-point chart as a macro costs ~10 ms of
template work, as f-strings well under 1 ms. Every text that comes from data (minion ids,
timestamps) goes through ``markupsafe.escape``; links carry integer run ids only.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

CHART_WIDTH = 960
CHART_HEIGHT = 120
PAD = 6
PASSING = frozenset({"passed", "xpassed", "xfailed", "skipped", "no_tests"})
OK_COLOUR, BAD_COLOUR, LINE_COLOUR = "#3b6fd8", "#c62828", "#3b6fd8"


def _when(value: str | None) -> str:
    # "2026-01-01T10:00:00.000000Z" → "2026-01-01 10:00:00 UTC" without parsing (it is hot here).
    if not value:
        return "–"
    return value[:19].replace("T", " ") + " UTC"


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def series(points: list[dict[str, Any]], key: str, *, max_value: float | None = None,
           width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> dict[str, Any]:
    """Scale ``points[i][key]`` into SVG coordinates: a polyline plus one dot per known value.

    Points whose value is None leave a gap (no dot) but keep their x position.
    """
    values = [p.get(key) for p in points]
    known = [v for v in values if v is not None]
    top = max_value if max_value is not None else (max(known) if known else 0)
    top = top or 1
    n = len(points)
    step = (width - 2 * PAD) / max(1, n - 1)
    dots, line = [], []
    for index, (point, value) in enumerate(zip(points, values, strict=True)):
        if value is None:
            continue
        x = PAD + index * step if n > 1 else width / 2
        y = height - PAD - (value / top) * (height - 2 * PAD)
        state = point.get("status") or point.get("outcome")
        dots.append({"x": x, "y": y, "value": value, "point": point,
                     "run_id": int(point.get("run_id", point.get("id")) or 0), "ok": state in PASSING})
        line.append(f"{x:.1f},{y:.1f}")
    return {"width": width, "height": height, "points": " ".join(line), "dots": dots, "max": top,
            "count": len(known)}


def line_chart(points: list[dict[str, Any]], key: str, title: str, max_value: float | None = None,
               unit: str = "") -> Markup:
    """A <figure> with a line chart of ``key`` over ``points``; each dot links to its run."""
    s = series(points, key, max_value=max_value)
    caption = (f"{escape(title)} <span class=\"muted\">(last {len(points)} runs; top = "
               f"{_number(s['max'])}{escape(unit and ' ' + unit)})</span>")
    if not s["count"]:
        return Markup(f'<figure class="chart"><figcaption>{caption}</figcaption><p class="muted">No data.</p></figure>')  # noqa: S704 (escaped above)
    parts = [
        f'<figure class="chart"><figcaption>{caption}</figcaption>',
        f'<svg viewBox="0 0 {s["width"]} {s["height"]}" width="{s["width"]}" height="{s["height"]}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<rect x="0" y="0" width="{s["width"]}" height="{s["height"]}" fill="#f7f8fa" />',
        f'<polyline points="{s["points"]}" fill="none" stroke="{LINE_COLOUR}" stroke-width="1.5" />',
    ]
    for d in s["dots"]:
        point = d["point"]
        who = f" {escape(point['minion'])}" if point.get("minion") else ""
        parts.append(
            f'<a href="/runs/{d["run_id"]}"><circle cx="{d["x"]:.1f}" cy="{d["y"]:.1f}" r="2.5" '
            f'fill="{OK_COLOUR if d["ok"] else BAD_COLOUR}"><title>#{d["run_id"]}{who} '
            f'{escape(_when(point.get("started_at")))}: {_number(d["value"])}{escape(unit)}</title></circle></a>'
        )
    parts.append("</svg></figure>")
    return Markup("".join(parts))  # noqa: S704 (data values escaped, numbers formatted)


def outcome_timeline(rows: list[dict[str, Any]]) -> Markup:
    """One coloured cell per result (oldest first), each linking to its run."""
    width = max(len(rows) * 8, 8)
    parts = [f'<svg class="timeline" viewBox="0 0 {width} 16" width="100%" height="24" '
             'preserveAspectRatio="none" role="img" aria-label="outcome timeline">']
    for index, row in enumerate(rows):
        outcome = str(row["outcome"])
        parts.append(
            f'<a href="/runs/{int(row["run_id"])}"><rect x="{index * 8}" y="0" width="7" height="16" '
            f'class="o-{escape(outcome)}"><title>{escape(row["minion"])} #{int(row["run_id"])} '
            f'{escape(_when(row["started_at"]))}: {escape(outcome)}</title></rect></a>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))  # noqa: S704 (data values escaped, numbers formatted)


def fleet_matrix_cells(minion: dict[str, Any], files: list[str], row: dict[str, dict]) -> Markup:
    """The <td> cells of one minion's matrix row: one per test file, coloured by latest outcome."""
    name = escape(minion["name"])
    parts = []
    for file in files:
        cell = row.get(file)
        if cell is None:
            parts.append('<td class="cell none"></td>')
            continue
        failing = cell["failing"] or 0
        parts.append(
            f'<td class="cell {cell["state"]}" title="{name} · {escape(file)}: {failing} failing, '
            f'{cell["passing"] or 0} passing of {cell["tests"]}">{failing or ""}</td>'
        )
    return Markup("".join(parts))  # noqa: S704 (data values escaped, numbers formatted)
