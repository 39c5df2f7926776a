"""Chart geometry for the server-rendered SVG charts (no JavaScript needed to see them)."""

from __future__ import annotations

from typing import Any

CHART_WIDTH = 960
CHART_HEIGHT = 120
PAD = 6
PASSING = frozenset({"passed", "xpassed", "xfailed", "skipped", "no_tests"})


def series(points: list[dict[str, Any]], key: str, *, max_value: float | None = None,
           width: int = CHART_WIDTH, height: int = CHART_HEIGHT) -> dict[str, Any]:
    """Scale ``points[i][key]`` into SVG coordinates: a polyline plus one dot per point.

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
        dots.append({
            "x": round(x, 1), "y": round(y, 1), "value": value, "point": point,
            "run_id": point.get("run_id", point.get("id")),
            "ok": state in PASSING,
        })
        line.append(f"{x:.1f},{y:.1f}")
    return {"width": width, "height": height, "points": " ".join(line), "dots": dots, "max": top,
            "count": len(known)}
