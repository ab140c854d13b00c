#!/usr/bin/env python3
"""test: runs the project's tests and reports real pass/fail counts parsed
from the runner's output. Input: {"source": <checkout output>,
"command": [...] (optional, default: python3 -m unittest discover -v)}.
Fails naming each failing test."""

import re

from devcycle_agent import fail, fetch, log, output, read_input, run

inp = read_input()
src = fetch(inp.get("source") or fail("input.source is required"))
cmd = inp.get("command") or ["python3", "-m", "unittest", "discover", "-v"]
code, text, ms = run(cmd, cwd=src)

# unittest: "Ran 5 tests", "FAILED (failures=1, errors=1)", "FAIL: test_x (mod.Class.test_x)"
ran = re.search(r"^Ran (\d+) tests?", text, re.M)
failing = re.findall(r"^(?:FAIL|ERROR): (\w+) \(([\w.]+)\)", text, re.M)
# cargo test / pytest style summaries, when those runners are used
cargo = re.findall(r"test result: \w+\. (\d+) passed; (\d+) failed", text)
pytest = re.search(r"=+ (?:(\d+) failed)?,? ?(?:(\d+) passed)?", text)
if ran:
    total = int(ran.group(1))
    failed = len(failing)
    names = [f"{cls}.{name}" if not cls.endswith(name) else cls for name, cls in failing]
elif cargo:
    passed = sum(int(p) for p, _ in cargo)
    failed = sum(int(f) for _, f in cargo)
    total = passed + failed
    names = re.findall(r"^test (\S+) \.\.\. FAILED", text, re.M)
else:
    fail(f"cannot find a test summary in the output of {' '.join(cmd)} (exit {code})")
passed = total - failed
log(f"{passed} passed, {failed} failed of {total} in {ms} ms")
if failed or code != 0:
    fail(f"{failed} of {total} tests failed: {', '.join(names) or 'see the log'}")
output({"passed": passed, "failed": failed, "total": total, "duration_ms": ms})
