"""Runs fuzz cases in worker subprocesses: a worker that crashes or hangs is replaced, the case that did it
is recorded, and the run goes on from the next case.

A worker is started as `CMD... CASES_JSON START TMPDIR`. It prints `READY` once its imports are done (start-up
is not a case's time), then for each case i from START: `S i` before it and `R i CLASS JSON-DETAIL` after it
(serve). The specs ["abort"] and ["hang"] test the harness itself.
"""
from __future__ import annotations

import argparse
import json
import os
import queue
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

CASE_TIMEOUT_S = 30
MEMORY_CAP = 6 << 30   # address space of a worker: far above what the tiny model needs
STARTUP_TIMEOUT_S = 300   # a worker's imports, on a machine busy with other tests
FAILURES = ("exception", "crash", "timeout", "poisoned")


def run_cases(cmd: list[str], specs: list, case_timeout_s: float = CASE_TIMEOUT_S) -> dict:
    """{"counts": Counter of outcome classes, "failures": [{case, spec, outcome, detail}], "n": cases}."""
    results: dict[int, tuple[str, str]] = {}
    with tempfile.TemporaryDirectory() as td:
        cases_path = os.path.join(td, "cases.json")
        Path(cases_path).write_text(json.dumps(specs))
        start = 0
        while start < len(specs):
            p = subprocess.Popen([*cmd, cases_path, str(start), td], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, bufsize=1)
            # lines through a thread and a queue: select() on the pipe would miss lines already sitting in
            # the reader's buffer and report a hang that is not there
            lines: queue.Queue[str] = queue.Queue()
            threading.Thread(target=lambda f=p.stdout: [lines.put(x) for x in f] + [lines.put("")],
                             daemon=True).start()
            current, started = None, False
            while True:
                try:
                    line = lines.get(timeout=case_timeout_s if started else STARTUP_TIMEOUT_S)
                except queue.Empty:
                    p.kill()
                    results[current if current is not None else start] = ("timeout", "")
                    break
                if not line:
                    rc = p.wait()
                    at = current if current is not None else start   # died before its first case: that one
                    if at not in results:
                        results[at] = ("crash", f"worker exit {rc}")
                    break
                if line.strip() == "READY":
                    started = True
                    continue
                kind, rest = line.rstrip("\n").split(" ", 1)
                if kind == "S":
                    current = int(rest)
                elif kind == "R":
                    i, cls, msg = rest.split(" ", 2)
                    results[int(i)] = (cls, json.loads(msg))
            p.wait()
            start = (max(results) + 1) if results else len(specs)
    failures = [{"case": i, "spec": specs[i], "outcome": c, "detail": m} for i, (c, m) in sorted(results.items())
                if c in FAILURES]
    return {"counts": Counter(c for c, _ in results.values()), "failures": failures, "n": len(specs)}


def cap_memory() -> None:
    """A worker's address-space cap: an allocation past it fails instead of taking the machine."""
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_CAP, MEMORY_CAP))


def serve(cases_path: str, start: int, run_one: Callable[[int, Any], tuple[str, str]]) -> None:
    """A worker's loop, once it is set up: READY, then run_one(i, spec) -> (class, detail) for each case."""
    print("READY", flush=True)
    specs = json.loads(Path(cases_path).read_text())
    for i in range(start, len(specs)):
        print(f"S {i}", flush=True)
        if specs[i] == ["abort"]:
            os.abort()
        if specs[i] == ["hang"]:
            while True:
                pass
        cls, detail = run_one(i, specs[i])
        print(f"R {i} {cls} {json.dumps(detail)}", flush=True)


def main(doc: str, source: str, default_cases: int, fuzz: Callable[[Path, int, int], dict],
         worker: Callable[[str, str, int, str], None]) -> int:
    """A fuzzer script's command line: `SOURCE [--cases N] [--seed S]`, or `--worker ...` in a worker."""
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        worker(*sys.argv[2:4], int(sys.argv[4]), sys.argv[5])
        return 0
    ap = argparse.ArgumentParser(description=doc.splitlines()[0])
    ap.add_argument(source, type=Path)
    ap.add_argument("--cases", type=int, default=default_cases)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    res = fuzz(getattr(args, source), args.cases, args.seed)
    print(json.dumps({"cases": res["n"], "counts": res["counts"], "failures": res["failures"][:50]}, indent=1))
    return 1 if res["failures"] else 0
