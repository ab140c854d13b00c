#!/usr/bin/env python3
"""lint: checks source files for problems reviewers should not have to point
out: trailing whitespace, tabs in Python, lines over 100 characters, and
conflict markers. Input: {"source": <checkout output>}. Fails on errors
(conflict markers); reports the rest as warnings."""

import os

from devcycle_agent import fail, fetch, log, output, read_input

inp = read_input()
src = fetch(inp.get("source") or fail("input.source is required"))
findings = []
for root, _, files in os.walk(src):
    for name in sorted(files):
        if not name.endswith((".py", ".rs", ".go", ".js", ".ts", ".md", ".toml", ".yaml", ".yml")):
            continue
        path = os.path.join(root, name)
        rel = os.path.relpath(path, src)
        with open(path, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.rstrip("\n")
                if line.startswith(("<<<<<<<", ">>>>>>>")):
                    findings.append({"file": rel, "line": n, "severity": "error", "rule": "conflict-marker"})
                if line != line.rstrip():
                    findings.append({"file": rel, "line": n, "severity": "warning", "rule": "trailing-whitespace"})
                if name.endswith(".py") and "\t" in line[: len(line) - len(line.lstrip())]:
                    findings.append({"file": rel, "line": n, "severity": "warning", "rule": "tab-indent"})
                if len(line) > 100:
                    findings.append({"file": rel, "line": n, "severity": "warning", "rule": "line-length"})
for f in findings:
    log(f"{f['file']}:{f['line']}: {f['severity']}: {f['rule']}")
errors = sum(1 for f in findings if f["severity"] == "error")
if errors:
    fail(f"lint found {errors} error(s)")
output({"errors": errors, "warnings": len(findings) - errors, "findings": findings[:100]})
