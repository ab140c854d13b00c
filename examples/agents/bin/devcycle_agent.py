"""Helpers for devcycle's lifecycle agents.

An agent reads its input JSON on stdin, writes its output JSON on stdout and
logs on stderr. Each task has its own workspace (the current directory), so
agents that need the source fetch it themselves from what `checkout`
resolved: a repository and an exact revision.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import time


# The sandbox's user may differ from the repository's owner.
GIT = ["git", "-c", "safe.directory=*"]


def read_input():
    raw = sys.stdin.read().strip()
    return json.loads(raw) if raw else {}


def output(obj):
    json.dump(obj, sys.stdout)
    sys.stdout.write("\n")
    sys.stdout.flush()


def log(*parts):
    print(*parts, file=sys.stderr, flush=True)


def fail(message, code=1):
    log(message)
    sys.exit(code)


def run(cmd, cwd=None, timeout=None):
    """Runs a command, streaming its output to the log; returns (code, text)."""
    log("$ " + " ".join(cmd))
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        line = line.rstrip("\n")
        lines.append(line)
        log(line)
    code = proc.wait(timeout=timeout)
    return code, "\n".join(lines), int((time.monotonic() - started) * 1000)


def is_git(path):
    return os.path.isdir(os.path.join(path, ".git"))


def resolve(repo, rev):
    """The exact commit `rev` names in `repo`, or "worktree" for a plain directory."""
    if os.path.isdir(repo):
        if not is_git(repo):
            return "worktree"
        code, text, _ = run(GIT + ["rev-parse", "--verify", (rev or "HEAD") + "^{commit}"], cwd=repo)
    elif re.fullmatch(r"[0-9a-f]{40}", rev or ""):
        return rev
    else:
        code, text, _ = run(GIT + ["ls-remote", repo, rev or "HEAD"])
    if code != 0 or not text.strip():
        fail(f"cannot resolve {rev or 'HEAD'} in {repo}")
    return text.split()[0]


def fetch(source, dest="src"):
    """Materializes the source `checkout` resolved into ./dest; returns its path."""
    repo, rev = source["repo"], source.get("rev", "worktree")
    dest = os.path.abspath(dest)
    if os.path.exists(dest):
        shutil.rmtree(dest)
    if rev == "worktree":
        if not os.path.isdir(repo):
            fail(f"{repo} is not a directory this agent can see")
        shutil.copytree(repo, dest, ignore=shutil.ignore_patterns(".git", "__pycache__", "target", "node_modules"))
        return dest
    code, _, _ = run(GIT + ["clone", "--quiet", "--no-checkout", repo, dest])
    if code != 0:
        fail(f"cannot clone {repo}")
    code, _, _ = run(GIT + ["-c", "advice.detachedHead=false", "checkout", "--quiet", rev], cwd=dest)
    if code != 0:
        fail(f"cannot check out {rev}")
    return dest
