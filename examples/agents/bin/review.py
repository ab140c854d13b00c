#!/usr/bin/env python3
"""review: asks a language model behind an OpenAI-compatible endpoint to
review the change. The endpoint comes from the executor's environment:
REVIEW_API_URL (e.g. http://localhost:8000/v1/chat/completions),
REVIEW_MODEL, REVIEW_API_KEY. Without REVIEW_API_URL the review is skipped
and says so; it never invents one. Input: {"source": <checkout output>,
"test": ..., "lint": ...}."""

import json
import os
import subprocess
import urllib.request

from devcycle_agent import fail, fetch, log, output, read_input

inp = read_input()
url = os.environ.get("REVIEW_API_URL", "")
if not url:
    log("no review endpoint configured (REVIEW_API_URL); skipping the review")
    output({"skipped": True, "reason": "no review endpoint configured (set REVIEW_API_URL on the executor)"})
    raise SystemExit(0)

src = fetch(inp.get("source") or fail("input.source is required"))
diff = subprocess.run(["git", "show", "--stat", "--patch", "HEAD"], cwd=src, capture_output=True, text=True).stdout
if not diff:
    parts = []
    for root, _, files in os.walk(src):
        for name in sorted(files):
            with open(os.path.join(root, name), errors="replace") as f:
                parts.append(f"--- {os.path.relpath(os.path.join(root, name), src)}\n{f.read()}")
    diff = "\n".join(parts)
diff = diff[:60_000]
prompt = (
    "Review this change as a senior engineer. List concrete problems (bugs, missing tests, unclear code) "
    "with file and line, then a one-line verdict.\n\n"
    f"Test results: {json.dumps(inp.get('test'))}\nLint: {json.dumps(inp.get('lint', {}).get('warnings'))} warnings\n\n{diff}"
)
body = {"model": os.environ.get("REVIEW_MODEL", "default"), "messages": [{"role": "user", "content": prompt}]}
req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
if os.environ.get("REVIEW_API_KEY"):
    req.add_header("Authorization", "Bearer " + os.environ["REVIEW_API_KEY"])
try:
    with urllib.request.urlopen(req, timeout=float(os.environ.get("REVIEW_TIMEOUT_S", "120"))) as resp:
        answer = json.load(resp)
except Exception as e:  # noqa: BLE001 - any failure is reported as the task's error
    fail(f"review endpoint failed: {e}")
content = answer["choices"][0]["message"]["content"]
log(content)
output({"skipped": False, "model": answer.get("model"), "review": content})
