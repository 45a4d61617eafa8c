"""The default number of compute threads: the physical cores this process may actually use.

Like llama.cpp, SMT siblings (hyper-threads) count once: ggml's matrix kernels saturate a core's
execution units, so a second thread per core adds contention, not speed. On Linux the count honours the
CPU affinity mask (taskset, numactl, container cpusets) and the cgroup CPU quota (docker --cpus,
Kubernetes limits; v2 `cpu.max` and v1 `cpu.cfs_quota_us`, the tightest level of the hierarchy).
"""
from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path


def default_threads(root: str | os.PathLike[str] = "/", affinity: Iterable[int] | None = None) -> int:
    """Physical cores available to this process, at least 1.

    `root` and `affinity` exist for tests (a fake /sys, /proc and cgroup tree; a fixed CPU set)."""
    if sys.platform.startswith("linux"):
        return _linux(Path(root), affinity)
    if sys.platform == "darwin":
        n = _sysctl("hw.perflevel0.physicalcpu") or _sysctl("hw.physicalcpu")  # performance cores first
        if n:
            return n
    n = os.cpu_count() or 1  # no portable physical-core count: assume 2-way SMT above 4 (as llama.cpp)
    return n if n <= 4 else n // 2


def _linux(root: Path, affinity: Iterable[int] | None) -> int:
    if affinity is None:
        try:
            affinity = os.sched_getaffinity(0)
        except (AttributeError, OSError):
            affinity = range(os.cpu_count() or 1)
    cpus = sorted(set(affinity)) or [0]
    cores = _physical_cores(root / "sys/devices/system/cpu", cpus)
    quota = _cgroup_cpus(root)
    return max(1, min(cores, quota) if quota is not None else cores)


def _physical_cores(cpu_dir: Path, cpus: list[int]) -> int:
    """Distinct cores among `cpus`: by sibling list, else by (package, core id), else one per CPU."""
    seen: set[object] = set()
    for c in cpus:
        topo = cpu_dir / f"cpu{c}" / "topology"
        siblings = _read(topo / "thread_siblings_list") or _read(topo / "core_cpus_list")
        if siblings is not None:
            seen.add(siblings)
            continue
        core, package = _read(topo / "core_id"), _read(topo / "physical_package_id")
        seen.add((package, core) if core is not None else ("cpu", c))
    return len(seen)


def _cgroup_cpus(root: Path) -> int | None:
    """The CPU quota in whole CPUs (rounded down, at least 1), or None when there is none."""
    membership = _read(root / "proc/self/cgroup")
    if membership is None:
        return None
    fs = root / "sys/fs/cgroup"
    limits: list[float] = []
    for line in membership.splitlines():
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        _, controllers, path = parts
        if controllers == "":  # cgroup v2 (unified)
            for d in _levels(fs, path):
                fields = (_read(d / "cpu.max") or "").split()
                if len(fields) == 2 and fields[0] != "max":
                    limits.append(_ratio(fields[0], fields[1]))
        elif "cpu" in controllers.split(","):  # cgroup v1
            for mount in (fs / controllers, fs / "cpu,cpuacct", fs / "cpu"):
                if mount.is_dir():
                    for d in _levels(mount, path):
                        q, p = _read(d / "cpu.cfs_quota_us"), _read(d / "cpu.cfs_period_us")
                        if q is not None and p is not None and q.lstrip("-").isdigit() and int(q) > 0:
                            limits.append(_ratio(q, p))
                    break
    limits = [x for x in limits if x > 0]
    return max(1, math.floor(min(limits))) if limits else None


def _levels(mount: Path, path: str) -> list[Path]:
    """The cgroup directory of `path` under `mount` and every ancestor up to the mount. Inside a container
    the recorded path may not exist in its own cgroup namespace: then only the mount itself is there."""
    parts = [p for p in path.split("/") if p and p != ".."]
    return [d for d in (mount.joinpath(*parts[:i]) for i in range(len(parts), -1, -1)) if d.is_dir()]


def _ratio(quota: str, period: str) -> float:
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return 0.0
    return q / p if q > 0 and p > 0 else 0.0


def _read(p: Path) -> str | None:
    try:
        return p.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None


def _sysctl(name: str) -> int | None:
    try:
        out = subprocess.run(["sysctl", "-n", name], capture_output=True, text=True, timeout=2, check=False)
        return int(out.stdout.strip()) if out.returncode == 0 and int(out.stdout.strip()) > 0 else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None
