#!/usr/bin/env python3
"""build: builds the source. Input: {"source": <checkout output>,
"command": [...] (optional)}. Without a command it picks one from the
project: make, Cargo, or byte-compiling Python."""

import os

from devcycle_agent import fail, fetch, log, output, read_input, run

inp = read_input()
src = fetch(inp.get("source") or fail("input.source is required"))
cmd = inp.get("command")
if not cmd:
    if os.path.exists(os.path.join(src, "Makefile")):
        cmd = ["make"]
    elif os.path.exists(os.path.join(src, "Cargo.toml")):
        cmd = ["cargo", "build", "--offline"]
    else:
        cmd = ["python3", "-m", "compileall", "-q", "."]
code, text, ms = run(cmd, cwd=src)
if code != 0:
    fail(f"build failed: {' '.join(cmd)} exited with {code}")
log(f"build succeeded in {ms} ms")
output({"ok": True, "command": cmd, "duration_ms": ms})
