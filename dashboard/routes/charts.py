"""Server-rendered SVG charts: visible without JavaScript, and cheap.

Built in Python rather than in Jinja macros: a 200-point chart as a macro costs ~10 ms of
template work, as f-strings well under 1 ms. Every text that comes from data (minion ids,
timestamps) goes through ``markupsafe.escape``; links carry integer run ids only.
"""

from __future__ import annotations

from typing import Any

from markupsafe import Markup, escape

CHART_WIDTH = 960
CHART_HEIGHT = 140
PAD = 6
LEFT_AXIS = 56  # room for the y-axis values
BOTTOM_AXIS = 20  # room for the time labels
PASSING = frozenset({"passed", "xpassed", "xfailed", "skipped", "no_tests"})
OK_COLOUR, BAD_COLOUR, LINE_COLOUR = "#3b6fd8", "#c62828", "#3b6fd8"


def _when(value: str | None) -> str:
    # "2026-01-01T10:00:00.000000Z" → "2026-01-01 10:00:00 UTC" without parsing (it is hot here).
    if not value:
        return "–"
    return value[:19].replace("T", " ") + " UTC"


def _number(value: float) -> str:
    return f"{value:.3g}" if abs(value) < 1000 else f"{value:.0f}"


def y_range(known: list[float], *, floor: float | None = 0.0, ceiling: float | None = None) -> tuple[float, float]:
    """A y-range fitted to the data, with a little room: 95-100 % draws as a slope, not a flat line.

    ``floor``/``ceiling`` clamp the range to what the value can be (a rate lies in 0..1).
    """
    if not known:
        return (floor or 0.0, ceiling if ceiling is not None else 1.0)
    low, high = min(known), max(known)
    span = high - low
    pad = span * 0.1 if span else (abs(high) * 0.05 or 0.05)
    low, high = low - pad, high + pad
    if floor is not None:
        low = max(low, floor)
    if ceiling is not None:
        high = min(high, ceiling)
    if high <= low:
        high = low + 1
    return low, high


def _ticks(low: float, high: float, count: int = 4) -> list[float]:
    return [low + (high - low) * index / (count - 1) for index in range(count)]


def series(points: list[dict[str, Any]], key: str, *, max_value: float | None = None,
           width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> dict[str, Any]:
    """Scale ``points[i][key]`` into SVG coordinates inside the axes: a polyline plus one dot per known value.

    The y-range is fitted to the known values (:func:`y_range`), capped at ``max_value``.
    Points whose value is None leave a gap (no dot) but keep their x position.
    """
    values = [p.get(key) for p in points]
    known = [v for v in values if v is not None]
    low, high = y_range(known, ceiling=max_value)
    n = len(points)
    left, right, top, bottom = LEFT_AXIS, width - PAD, PAD, height - BOTTOM_AXIS
    step = (right - left) / max(1, n - 1)
    dots, line = [], []
    for index, (point, value) in enumerate(zip(points, values, strict=True)):
        if value is None:
            continue
        x = left + index * step if n > 1 else (left + right) / 2
        y = bottom - ((value - low) / (high - low)) * (bottom - top)
        state = point.get("status") or point.get("outcome")
        dots.append({"x": x, "y": y, "value": value, "point": point,
                     "run_id": int(point.get("run_id", point.get("id")) or 0), "ok": state in PASSING})
        line.append(f"{x:.1f},{y:.1f}")
    return {"width": width, "height": height, "points": " ".join(line), "dots": dots, "max": high, "min": low,
            "count": len(known), "left": left, "right": right, "top": top, "bottom": bottom, "step": step}


def _format(value: float, unit: str, percent: bool) -> str:
    if percent:
        return f"{value * 100:.1f} %" if value < 0.9995 or value > 1 else "100 %"
    return f"{_number(value)}{unit and ' ' + unit}"


def line_chart(points: list[dict[str, Any]], key: str, title: str, max_value: float | None = None,
               unit: str = "", percent: bool = False, label_key: str = "started_at") -> Markup:
    """A <figure> with a line chart of ``key`` over ``points``: a y-axis with values (range fitted to
    the data), the first/middle/last x labels, and a title per dot (hover) linking to its run."""
    s = series(points, key, max_value=max_value)
    caption = (f"{escape(title)} <span class=\"muted\">({len(points)} points; "
               f"{escape(_format(s['min'], unit, percent))} – {escape(_format(s['max'], unit, percent))})</span>")
    if not s["count"]:
        return Markup(f'<figure class="chart"><figcaption>{caption}</figcaption><p class="muted">No data.</p></figure>')  # noqa: S704 (escaped above)
    left, right, top, bottom = s["left"], s["right"], s["top"], s["bottom"]
    parts = [
        f'<figure class="chart"><figcaption>{caption}</figcaption>',
        f'<svg viewBox="0 0 {s["width"]} {s["height"]}" width="{s["width"]}" height="{s["height"]}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="#f7f8fa" />',
    ]
    for tick in _ticks(s["min"], s["max"]):
        y = bottom - ((tick - s["min"]) / (s["max"] - s["min"])) * (bottom - top)
        parts.append(f'<line class="grid" x1="{left}" x2="{right}" y1="{y:.1f}" y2="{y:.1f}" />'
                     f'<text class="tick" x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">'
                     f'{escape(_format(tick, unit, percent))}</text>')
    parts.append(f'<line class="axis" x1="{left}" x2="{left}" y1="{top}" y2="{bottom}" />'
                 f'<line class="axis" x1="{left}" x2="{right}" y1="{bottom}" y2="{bottom}" />')
    n = len(points)
    labelled = {1: ((0, "middle"),), 2: ((0, "start"), (1, "end"))}.get(n, ((0, "start"), (n // 2, "middle"), (n - 1, "end")))
    for index, anchor in labelled:
        label = points[index].get(label_key)
        x = left + index * s["step"] if n > 1 else (left + right) / 2
        parts.append(f'<text class="tick" x="{x:.1f}" y="{s["height"] - 4}" text-anchor="{anchor}">'
                     f'{escape(_when(label)[:16] if label_key == "started_at" else str(label or ""))}</text>')
    parts.append(f'<polyline points="{s["points"]}" fill="none" stroke="{LINE_COLOUR}" stroke-width="1.5" />')
    for d in s["dots"]:
        point = d["point"]
        who = f" {escape(point['minion'])}" if point.get("minion") else ""
        when = escape(_when(point.get("started_at")) if label_key == "started_at" else str(point.get(label_key) or ""))
        parts.append(
            f'<a href="/runs/{d["run_id"]}"><circle cx="{d["x"]:.1f}" cy="{d["y"]:.1f}" r="2.5" '
            f'fill="{OK_COLOUR if d["ok"] else BAD_COLOUR}"><title>#{d["run_id"]}{who} '
            f'{when}: {escape(_format(d["value"], unit, percent))}</title></circle></a>'
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
