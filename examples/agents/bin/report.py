#!/usr/bin/env python3
"""report: a Markdown summary of the run from the other tasks' outputs.
Input: {"checkout": ..., "build": ..., "test": ..., "lint": ..., "review": ...}."""

from devcycle_agent import output, read_input

inp = read_input()
c, b, t, l, r = (inp.get(k) or {} for k in ("checkout", "build", "test", "lint", "review"))
lines = [
    f"# CI report for {c.get('repo', '?')} @ {str(c.get('rev', '?'))[:12]}",
    "",
    "| step | result |",
    "|---|---|",
    f"| checkout | {c.get('files', '?')} files |",
    f"| build | {'ok' if b.get('ok') else 'failed'} in {b.get('duration_ms', '?')} ms |",
    f"| test | {t.get('passed', '?')} passed, {t.get('failed', '?')} failed of {t.get('total', '?')} |",
    f"| lint | {l.get('errors', '?')} errors, {l.get('warnings', '?')} warnings |",
    f"| review | {'skipped: ' + r.get('reason', '') if r.get('skipped') else 'done by ' + str(r.get('model'))} |",
]
if r.get("review"):
    lines += ["", "## Review", "", r["review"]]
output({"markdown": "\n".join(lines) + "\n"})
