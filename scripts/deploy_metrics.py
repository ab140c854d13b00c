#!/usr/bin/env python3
"""Checks the Grafana dashboard parses and that every metric its queries and
the alert rules use is in the catalogue of docs/deploy.md (the table between
the metrics-catalogue markers), so a renamed metric cannot silently blank a
panel or mute an alert.

    deploy_metrics.py docs/deploy.md DASHBOARD.json ALERTS.yml
"""
import json
import re
import sys

import yaml

KEYWORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "group_left", "group_right", "bool",
            "offset", "inf", "nan", "le"}
BUILTIN = {"up"}  # recorded by Prometheus itself


def catalogue(doc):
    text = open(doc).read()
    m = re.search(r"<!-- metrics-catalogue:begin -->(.*?)<!-- metrics-catalogue:end -->", text, re.S)
    if not m:
        sys.exit(f"{doc}: no metrics catalogue between the markers")
    return set(re.findall(r"^\|\s*`([a-z_:][a-z0-9_:]*)`", m.group(1), re.M))


def metrics_in(expr):
    expr = re.sub(r'"[^"]*"', "", expr)                      # label values
    expr = re.sub(r"\{[^}]*\}", "", expr)                    # matchers
    expr = re.sub(r"\b(by|without|on|ignoring)\s*\([^)]*\)", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)                   # ranges
    names = set()
    for m in re.finditer(r"[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
        rest = expr[m.end():].lstrip()
        if rest.startswith("(") or m.group() in KEYWORDS:
            continue                                         # a function or keyword
        names.add(re.sub(r"_(bucket|sum|count)$", "", m.group()))
    return names


def main():
    doc, dashboard, alerts = sys.argv[1:4]
    known = catalogue(doc) | BUILTIN
    dash = json.load(open(dashboard))
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    rules = [r["expr"] for g in yaml.safe_load(open(alerts))["groups"] for r in g["rules"]]
    bad = 0
    for where, lst in (("dashboard", exprs), ("alerts", rules)):
        for e in lst:
            for name in sorted(metrics_in(e) - known):
                bad += 1
                print(f"  {where}: {name} is not in the catalogue ({e})", file=sys.stderr)
    used = set().union(*(metrics_in(e) for e in exprs + rules))
    print(f"metrics: {len(known) - len(BUILTIN)} in the catalogue; dashboard ({len(dash['panels'])} panels, "
          f"{len(exprs)} queries) and {len(rules)} alert rules use {len(used)} metrics, {bad} unknown")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
