"""`make bench`: every performance target of distmon, side by side with a floor measured in the same run.

Prints one line per figure on stdout (progress goes to stderr)::

    <name> <value> <unit> <floor> <ratio> <target> ok|SHORT

- ``value``: the measured figure, in ``unit`` (s, ms, results/s, MB, runs).
- ``floor``: a baseline measured in the same run, on the same machine, in the same unit:
  what the same work costs without distmon (or the cheapest thing the same server does).
  Shared machines are noisy; a ratio against a floor taken minutes (or milliseconds) apart
  is what stays comparable between runs.
- ``ratio``: value / floor (``-`` when there is no floor).
- ``target``: ``&``-joined clauses. ``<=Nx`` / ``>=Nx``: ratio bound. ``<=Nx+M<unit>``:
  value <= N*floor + M. ``<=N<unit>`` / ``>=N<unit>`` / ``==N``: bound on the value itself.
  ``-``: informational, no target.
- ``ok`` when the value meets every clause, else ``SHORT`` (a measurement that failed is SHORT).

Timed pairs: where a figure compares two timed things (value and floor), they are timed back
to back in alternating order, several pairs, and the printed value and floor are those of the
pair whose ratio is the median one; so the printed ratio is exactly value/floor, and a slow
phase of the shared machine hits both halves of a pair alike. The raw samples are in
results.json.

The figures, their floors and their targets:

==========================  =============================================  ======================================  ================
figure                      value                                          floor                                   target
==========================  =============================================  ======================================  ================
pytestrun_overhead          ``pytestrun.run`` of sample_tests through the  ``python -m pytest`` of the same suite  ``<=1.05x+0.1s``
                            minion loader (web-1's config), s              with the same interpreter, s
pytestrun_overhead_1000     the same on bench/suites/many (1,000 tests)    the same                                ``<=1.05x+0.1s``
pipeline_overhead           ``salt-run distmon.run`` of sample_tests on    ``salt -L web-1,web-2,db-1 cmd.run      ``<=1.15x``
                            web-1, web-2, db-1 until all 3 runs are in     'python -m pytest sample_tests'``, s
                            ``/api/runs``, s
ingest_rate                 results/s, inbox files -> SQLite by            bare ``executemany`` of the same rows,  ``>=50000&>=0.6x``
                            ``ingest_pending``                             one transaction, results/s
ingest_rate_failures        the same with 10 of 50 tests failing, each     the same for those rows                 ``>=0.5x``
                            with a traceback (signatures, search index)
signature_cost              s of that pass                                 s of the same entries as xfailed (no    ``<=1.1x``
                                                                           failures, signatures, search rows)
ingest_rate_signed          results/s of the ingest_rate documents signed  the same bare load                      ``-``
                            per minion (RSA-PSS) and verified on ingest
result_latency_p95          p95 s from a file's final rename in the inbox  the ingester's scan interval, s         ``<=1s``
                            to its run in ``/api/runs`` (50 samples)
result_latency_p50          p50 of the same samples                        the same                                ``-``
seed_1m                     s to seed 20,000 runs x 50 tests (dashboard/   ``-``                                   ``-``
                            seed.py)
page_p95_<route>            p95 server time of the route (in-process       p95 of ``/api/me`` (authenticated,      ``<=100ms``
                            ASGI, 1,000,000 results seeded), ms            no data query) in the same run, ms
page_p50_<route>            p50 of the same samples, ms                    p50 of ``/api/me``, ms                  ``<=100ms``
page_pg_p95_<route>         the same routes on the same data copied into   p95 of ``/api/me`` on PostgreSQL, ms    ``<=100ms``
                            PostgreSQL by ``migrate-to``, ms
page_pg_rss                 largest RSS of a uvicorn dashboard on that     its RSS right after start-up, MB        ``<=300MB``
                            PostgreSQL store while serving every route
page10k_pg_p95_<route>      every route on 10,000 minions x 500 tests      p95 of ``/api/me`` on PostgreSQL, ms    ``<=100ms``
                            seeded into PostgreSQL by dashboard/seed.py
page10k_pg_rss              largest RSS of a uvicorn dashboard on it       its RSS right after start-up, MB        ``<=300MB``
dashboard_rss               RSS of a uvicorn dashboard on the seeded DB    its RSS right after start-up, MB        ``<=300MB``
                            after serving every route and the latency
                            samples, MB
fanout_20                   ``salt-run distmon.run`` of one trivial test   ``salt 'bench-*' test.ping`` on the     ``-`` (ratio
                            on 20 extra minions until all 20 runs are in   same minions, s                         reported)
                            ``/api/runs``, s
ingest_rate_pg              results/s, inbox files -> PostgreSQL by        a bare load of the same rows (results   ``>=0.5x``
                            ``ingest_pending`` (a server the bench starts  by one ``COPY``), one transaction,
                            with tools/postgres.py)                        results/s
two_ingesters_pg            runs stored by two ingest processes with two   the distinct runs sent                  ``>=1x&<=1x``
                            inboxes (1 file in 10 in both) into one
                            PostgreSQL database, summaries checked
two_ingesters_pg_rate       results/s of those two together                ``ingest_rate_pg``                      ``-``
fanout_20_delivered         fewest runs of one fan-out job in /api/runs    the minions targeted (20)               ``==20``
==========================  =============================================  ======================================  ================

The routes behind ``page_*`` (names -> URLs with real ids of the seeded data) are listed on
stderr, in results.json (``extra.url``) and in bench/LATEST.md.

After a full run the same figures go to bench/results.json (a list of objects: the line's
fields as numbers, ``ok``, the raw samples in ``extra``, plus machine, date, git commit) and to
bench/LATEST.md; a partial (``--only``) or ``--quick`` run writes .run/bench/results.json instead. Exit code: 1 when a measurement could not be taken (with --strict, also when a figure is SHORT), else 0.

CLI Example:

.. code-block:: bash

    make bench                                  # make up, then every benchmark (~10 min)
    .venv/bin/python bench/run.py --only ingest,pages
    .venv/bin/python bench/run.py --quick       # fewer samples: a smoke test of the bench itself
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import BENCH_RUN, REPO, Figure, context, say, write_json  # noqa: E402

BENCH_DIR = REPO / "bench"
# Order matters a little: the cheap in-process figures first, the 20-minion fan-out last.
SECTIONS = ("pytestrun", "ingest", "postgres", "dashboard", "pipeline", "fanout")
# What each section reports when it fails before measuring (so the failure shows as SHORT lines).
EXPECTED = {
    "pytestrun": [("pytestrun_overhead", "s", "<=1.05x+0.1s"), ("pytestrun_overhead_1000", "s", "<=1.05x+0.1s")],
    "ingest": [("ingest_rate", "results/s", ">=50000&>=0.6x"), ("ingest_rate_failures", "results/s", ">=0.5x"),
               ("signature_cost", "s", "<=1.1x"), ("ingest_rate_signed", "results/s", "-")],
    "postgres": [("ingest_rate_pg", "results/s", ">=0.5x"), ("two_ingesters_pg", "runs", ">=1x&<=1x")],
    "dashboard": [("result_latency_p95", "s", "<=1s"), ("page_p95_all", "ms", "<=100ms"),
                  ("page10k_p95_all", "ms", "<=100ms"),
                  ("dashboard_rss", "MB", "<=300MB")],
    "pipeline": [("pipeline_overhead", "s", "<=1.15x")],
    "fanout": [("fanout_20", "s", "-"), ("fanout_20_delivered", "runs", "==20")],
}


def run_section(name: str, quick: bool, options: argparse.Namespace) -> list[Figure]:
    if name == "pytestrun":
        from bench import b_pytestrun

        return b_pytestrun.run(quick=quick)
    if name == "ingest":
        from bench import b_ingest

        return b_ingest.run(quick=quick)
    if name == "postgres":
        from bench import b_postgres

        return b_postgres.run(quick=quick)
    if name == "dashboard":
        from bench import b_dashboard

        return b_dashboard.run(quick=quick, seeded_db=options.seeded_db)
    if name == "pipeline":
        from bench import b_pipeline

        return b_pipeline.run(quick=quick)
    if name == "fanout":
        from bench import b_fanout

        return b_fanout.run(quick=quick)
    raise ValueError(name)


def write_latest(figures: list[Figure], ctx: dict, elapsed: float) -> None:
    lines = [
        "# Latest `make bench` figures",
        "",
        f"Run {ctx['date']} on `{ctx['machine']}` ({ctx['cpus']} cores, 1-min load {ctx['load_1min_at_start']:.2f} "
        f"at start), commit `{ctx['commit']}`, Python {ctx['python']}; the whole bench took {elapsed / 60:.1f} min.",
        "Written by bench/run.py after a full run. Format and meaning of each field: the docstring of "
        "bench/run.py and docs/scaling.md. The machine is shared: compare ratios, not absolute values.",
        "",
        "```",
        *[figure.line() for figure in figures],
        "```",
        "",
        "| figure | what was measured |",
        "| --- | --- |",
        *[f"| {figure.name} | {figure.note.replace('|', '/')} |" for figure in figures if figure.note],
        "",
    ]
    (BENCH_DIR / "LATEST.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="distmon benchmarks: figures with same-run floors")
    parser.add_argument("--only", default="", help="comma-separated sections: " + ",".join(SECTIONS))
    parser.add_argument("--quick", action="store_true", help="fewer samples (checks the bench, not distmon)")
    parser.add_argument("--seeded-db", default=None,
                        help="reuse this already seeded database for the page figures instead of seeding one")
    parser.add_argument("--strict", action="store_true",
                        help="exit 1 when a figure is SHORT (default: only when a measurement failed)")
    options = parser.parse_args(argv)
    sections = [s.strip() for s in options.only.split(",") if s.strip()] or list(SECTIONS)
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {', '.join(SECTIONS)}")

    ctx = context()
    started = time.monotonic()
    say(f"distmon bench: {', '.join(sections)} on {ctx['machine']} ({ctx['cpus']} cores), commit {ctx['commit']}")
    figures: list[Figure] = []
    for section in sections:
        section_started = time.monotonic()
        say(f"== {section}")
        try:
            got = run_section(section, options.quick, options)
        except Exception as err:  # one broken section must not hide the others' figures
            traceback.print_exc(file=sys.stderr)
            got = [Figure(name, None, unit, None, target, note=f"failed: {type(err).__name__}: {err}")
                   for name, unit, target in EXPECTED[section]]
        for figure in got:
            print(figure.line(), flush=True)
        figures.extend(got)
        say(f"== {section} done in {time.monotonic() - section_started:.0f} s")
    elapsed = time.monotonic() - started
    ctx["bench_seconds"] = round(elapsed, 1)
    ctx["quick"] = options.quick
    ctx["sections"] = sections
    records = [figure.record(ctx) for figure in figures]
    if sections == list(SECTIONS) and not options.quick:
        write_json(BENCH_DIR / "results.json", records)
        write_latest(figures, ctx, elapsed)
    else:
        # A partial or quick run never replaces the committed figures of the last full run.
        BENCH_RUN.mkdir(parents=True, exist_ok=True)
        write_json(BENCH_RUN / "results.json", records)
        say(f"partial run: figures written to {BENCH_RUN / 'results.json'}")
    short = [figure.name for figure in figures if not figure.ok]
    say(f"{len(figures)} figures in {elapsed / 60:.1f} min; "
        + (f"SHORT: {', '.join(short)}" if short else "all ok"))
    # A SHORT figure is a finding to read, not a broken bench: speed is judged from the
    # printed ratios. The exit code fails only when a measurement could not be taken.
    failed = [figure.name for figure in figures if figure.value is None]
    if failed:
        say(f"measurements that failed: {', '.join(failed)}")
    return 1 if failed or (options.strict and short) else 0


if __name__ == "__main__":
    sys.exit(main())
