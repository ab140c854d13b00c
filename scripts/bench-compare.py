#!/usr/bin/env python3
"""Runs `devcycle bench` for two builds, interleaved, and prints medians.

    scripts/bench-compare.py OLD_BIN NEW_BIN [--trials 3] [--postgres URL]
        [--env-new K=V ...] [-- extra bench args]

Figures move between runs on a shared machine, so the builds alternate
(old, new, old, ...) and only their medians and ranges are compared. With
--postgres, each run gets a fresh database on that server (created and
dropped with psql). --env-new sets variables for the new build only (e.g.
OTEL_EXPORTER_OTLP_ENDPOINT=... to measure traces on).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import uuid

FIELDS = [
    ("tasks_per_second", "tasks/s", "{:,.0f}"),
    ("cpu_us_per_task", "CPU µs/task", "{:.0f}"),
    ("p50_ms", "p50 ms", "{:.2f}"),
    ("p99_ms", "p99 ms", "{:.2f}"),
    ("idle_rss_mib", "idle RSS MiB", "{:.1f}"),
]


def psql(url, sql):
    subprocess.run(["psql", "-q", "-X", url, "-c", sql], check=True)


def one_run(binary, pg, env, extra):
    args = [binary, "bench", "--json", *extra]
    db = None
    if pg:
        db = "dc_bench_" + uuid.uuid4().hex[:12]
        psql(pg, f"CREATE DATABASE {db}")
        args += ["--postgres", pg.rsplit("/", 1)[0] + "/" + db]
    try:
        out = subprocess.run(args, check=True, capture_output=True, text=True,
                             env={**os.environ, **env}).stdout
    finally:
        if db:
            psql(pg, f"DROP DATABASE IF EXISTS {db} WITH (FORCE)")
    return json.loads(out)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("old")
    p.add_argument("new")
    p.add_argument("--trials", type=int, default=3)
    p.add_argument("--postgres", help="server URL, e.g. postgres://postgres@127.0.0.1:5432/postgres")
    p.add_argument("--env-new", action="append", default=[], metavar="K=V")
    argv = sys.argv[1:]
    # Everything after `--` goes to `devcycle bench` (argparse cannot take
    # a trailing remainder after two positionals).
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    a = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    a.extra = extra
    env_new = dict(kv.split("=", 1) for kv in a.env_new)
    results = {"old": [], "new": []}
    for i in range(a.trials):
        for name, binary, env in (("old", a.old, {}), ("new", a.new, env_new)):
            r = one_run(binary, a.postgres, env, a.extra)
            results[name].append(r)
            print(f"trial {i + 1} {name}: " + ", ".join(
                f"{label} " + fmt.format(r[k]) for k, label, fmt in FIELDS if k in r),
                file=sys.stderr)
    print("| build | " + " | ".join(label for _, label, _ in FIELDS) + " |")
    print("|---" * (len(FIELDS) + 1) + "|")
    for name in ("old", "new"):
        cells = []
        for k, _, fmt in FIELDS:
            # Older builds may not report every field.
            v = [r[k] for r in results[name] if k in r]
            if not v:
                cells.append("—")
                continue
            cells.append(f"{fmt.format(statistics.median(v))} "
                         f"({fmt.format(min(v))}–{fmt.format(max(v))})")
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
