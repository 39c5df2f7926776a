"""The bench's output line, ratio and target logic (bench/common.py): no timing here."""

from __future__ import annotations

import math

import pytest

from bench.common import Figure, TargetError, format_number, median_pair, meets, percentile, ratio_of


def test_line_has_the_seven_fields_in_order():
    figure = Figure("pipeline_overhead", 12.5, "s", 10.0, "<=1.15x")
    assert figure.line() == "pipeline_overhead 12.50 s 10.00 1.250 <=1.15x SHORT"
    assert len(figure.line().split(" ")) == 7


def test_ratio_is_value_over_floor():
    assert ratio_of(3.0, 2.0) == 1.5
    assert ratio_of(3.0, None) is None
    assert ratio_of(3.0, 0) is None
    assert ratio_of(None, 2.0) is None


@pytest.mark.parametrize(
    ("target", "value", "floor", "unit", "expected"),
    [
        ("<=1.05x+0.1s", 2.15, 2.0, "s", True),  # 1.05 * 2.0 + 0.1 = 2.2
        ("<=1.05x+0.1s", 2.25, 2.0, "s", False),
        ("<=1.15x", 11.5, 10.0, "s", True),
        ("<=1.15x", 11.6, 10.0, "s", False),
        (">=50000&>=0.5x", 60_000, 100_000, "results/s", True),
        (">=50000&>=0.5x", 60_000, 130_000, "results/s", False),  # fast enough, but under half the bare rate
        (">=50000&>=0.5x", 40_000, 50_000, "results/s", False),  # ratio fine, absolute too low
        ("<=1s", 0.99, 0.2, "s", True),
        ("<=1s", 1.01, 0.2, "s", False),
        ("<=100ms", 100.0, 2.0, "ms", True),
        ("<=300MB", 301.0, 60.0, "MB", False),
        ("==20", 20.0, 20.0, "runs", True),
        ("==20", 19.0, 20.0, "runs", False),
        ("-", 123.0, None, "s", True),
    ],
)
def test_meets(target, value, floor, unit, expected):
    assert meets(target, value, floor, unit) is expected


def test_a_failed_measurement_is_short_whatever_the_target():
    assert not meets("<=1s", None, 0.2, "s")
    assert not meets("<=1s", math.nan, 0.2, "s")
    figure = Figure("result_latency_p95", None, "s", None, "<=1s")
    assert figure.line() == "result_latency_p95 - s - - <=1s SHORT"


def test_a_ratio_target_without_a_floor_is_not_met():
    assert not meets("<=1.15x", 1.0, None, "s")


def test_target_unit_must_match_the_figure():
    with pytest.raises(TargetError):
        meets("<=100ms", 5.0, 1.0, "s")


def test_unreadable_target_is_an_error():
    with pytest.raises(TargetError):
        meets("about 1s", 1.0, 1.0, "s")
    with pytest.raises(TargetError):
        meets("<=1+0.1s", 1.0, 1.0, "s")  # '+M' only after a ratio


def test_fields_never_contain_spaces():
    with pytest.raises(ValueError):
        Figure("page p95", 1.0, "ms", 1.0, "<=100ms").line()


@pytest.mark.parametrize(
    ("value", "text"),
    [(123456.7, "123457"), (250.04, "250.0"), (12.345, "12.35"), (0.0421, "0.042"), (None, "-"),
     (math.inf, "-")],
)
def test_format_number(value, text):
    assert format_number(value) == text


def test_record_carries_the_fields_and_the_context():
    record = Figure("ingest_rate", 60_000.0, "results/s", 100_000.0, ">=50000&>=0.5x").record(
        {"machine": "m", "date": "d", "commit": "c"}
    )
    assert record["ratio"] == pytest.approx(0.6)
    assert record["ok"] is True and record["verdict"] == "ok"
    assert record["machine"] == "m" and record["commit"] == "c"
    assert record["line"].endswith(" ok")


def test_percentile_interpolates():
    samples = [float(v) for v in range(1, 101)]
    assert percentile(samples, 50) == pytest.approx(50.5)
    assert percentile(samples, 95) == pytest.approx(95.05)
    assert percentile([7.0], 95) == 7.0
    with pytest.raises(ValueError):
        percentile([], 50)


def test_median_pair_is_one_real_pair_with_the_median_ratio():
    # ratios 0.9, 1.5, 1.1: the median ratio is 1.1, from the third pair
    assert median_pair([9.0, 15.0, 11.0], [10.0, 10.0, 10.0]) == (11.0, 10.0)
    # a slow phase slowing both halves of a pair does not move the ratio
    value, floor = median_pair([4.6, 7.4, 4.6], [4.7, 7.0, 4.4])
    assert value / floor == pytest.approx(4.6 / 4.4)
    assert median_pair([2.0, 4.0], [1.0, 1.0]) == (4.0, 1.0)  # even count: the upper middle
    with pytest.raises(ValueError):
        median_pair([1.0], [])
