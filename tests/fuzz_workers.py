"""Runs fuzz cases in worker subprocesses: a worker that crashes or hangs is replaced, the case that did it
is recorded, and the run goes on from the next case.

A worker is started as `CMD... CASES_JSON START TMPDIR`. It prints `READY` once its imports are done (start-up
is not a case's time), then for each case i from START: `S i` before it and `R i CLASS JSON-DETAIL` after it.
"""
from __future__ import annotations

import json
import os
import queue
import subprocess
import tempfile
import threading
from collections import Counter
from pathlib import Path

CASE_TIMEOUT_S = 30
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


def report(i: int, cls: str, detail: str) -> None:
    """A worker's line for case i."""
    print(f"R {i} {cls} {json.dumps(detail)}", flush=True)
