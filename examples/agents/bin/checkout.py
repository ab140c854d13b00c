#!/usr/bin/env python3
"""checkout: resolves a repository (a git URL or path, or a plain directory)
at a revision, copies it into the workspace to prove it is readable, and
reports what it found. Input: {"repo": ..., "rev": "main"}."""

import os

from devcycle_agent import fetch, fail, log, output, read_input, resolve

inp = read_input()
repo = inp.get("repo") or fail("input.repo is required")
rev = resolve(repo, inp.get("rev") or "")
path = fetch({"repo": repo, "rev": rev})
files = sum(len(f) for _, _, f in os.walk(path))
log(f"checked out {repo} at {rev}: {files} files")
output({"repo": repo, "rev": rev, "files": files})
