"""default_threads(): physical cores available to the process, on fake /sys, /proc and cgroup trees."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from pygguf_diffusion._threads import default_threads

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux /sys and cgroup layout")


def put(root: Path, rel: str, text: str) -> None:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_text(text + "\n")


def topology(root: Path, n_cpus: int, smt: int) -> None:
    """n_cpus logical CPUs numbered like Linux on x86: siblings of core c are c and c + n_cpus/smt."""
    cores = n_cpus // smt
    for c in range(n_cpus):
        sibs = ",".join(str(c % cores + k * cores) for k in range(smt))
        put(root, f"sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list", sibs)


def test_smt_siblings_count_once(tmp_path):
    topology(tmp_path, 16, 2)
    assert default_threads(tmp_path, affinity=range(16)) == 8


def test_affinity_restricts_the_cores(tmp_path):
    topology(tmp_path, 16, 2)
    assert default_threads(tmp_path, affinity={0, 8}) == 1  # two hyper-threads of one core
    assert default_threads(tmp_path, affinity={0, 1, 2, 9}) == 3
    assert default_threads(tmp_path, affinity={5}) == 1


def test_no_smt_and_missing_topology(tmp_path):
    topology(tmp_path, 4, 1)
    assert default_threads(tmp_path, affinity=range(4)) == 4
    assert default_threads(tmp_path / "nothing", affinity=range(6)) == 6  # no /sys: one core per CPU


def test_core_id_fallback(tmp_path):
    for c in range(8):  # two packages, two cores each, two threads per core
        put(tmp_path, f"sys/devices/system/cpu/cpu{c}/topology/core_id", str((c // 2) % 2))
        put(tmp_path, f"sys/devices/system/cpu/cpu{c}/topology/physical_package_id", str(c // 4))
    assert default_threads(tmp_path, affinity=range(8)) == 4


def test_cgroup_v2_quota_tightest_level_rounded_down(tmp_path):
    topology(tmp_path, 32, 2)
    put(tmp_path, "proc/self/cgroup", "0::/kubepods/pod1/ctr")
    put(tmp_path, "sys/fs/cgroup/kubepods/cpu.max", "max 100000")
    put(tmp_path, "sys/fs/cgroup/kubepods/pod1/cpu.max", "350000 100000")
    put(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "max 100000")
    assert default_threads(tmp_path, affinity=range(32)) == 3
    put(tmp_path, "sys/fs/cgroup/kubepods/pod1/ctr/cpu.max", "50000 100000")  # half a CPU: still one thread
    assert default_threads(tmp_path, affinity=range(32)) == 1


def test_cgroup_v2_in_a_namespace_reads_the_mount_root(tmp_path):
    topology(tmp_path, 8, 1)
    put(tmp_path, "proc/self/cgroup", "0::/")
    put(tmp_path, "sys/fs/cgroup/cpu.max", "200000 100000")
    assert default_threads(tmp_path, affinity=range(8)) == 2
    put(tmp_path, "proc/self/cgroup", "0::/docker/abc")  # path of the host's hierarchy, absent here
    assert default_threads(tmp_path, affinity=range(8)) == 2


def test_cgroup_v1_quota(tmp_path):
    topology(tmp_path, 8, 1)
    put(tmp_path, "proc/self/cgroup", "4:memory:/x\n3:cpu,cpuacct:/docker/abc\n0::/")
    put(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "600000")
    put(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_period_us", "100000")
    assert default_threads(tmp_path, affinity=range(8)) == 6
    put(tmp_path, "sys/fs/cgroup/cpu,cpuacct/docker/abc/cpu.cfs_quota_us", "-1")  # no quota
    assert default_threads(tmp_path, affinity=range(8)) == 8


def test_quota_above_the_cores_changes_nothing(tmp_path):
    topology(tmp_path, 4, 2)
    put(tmp_path, "proc/self/cgroup", "0::/a")
    put(tmp_path, "sys/fs/cgroup/a/cpu.max", "800000 100000")
    assert default_threads(tmp_path, affinity=range(4)) == 2


def test_this_machine_is_at_least_one():
    assert default_threads() >= 1
