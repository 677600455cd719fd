"""How many cores this process may use: the default thread count for llama.cpp and torch."""

from __future__ import annotations

import os
from pathlib import Path


def usable_cpus() -> list[int]:
    """The logical CPUs this process may run on (its affinity mask, e.g. under taskset or a cgroup)."""
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(sys_root: str | Path = "/sys/devices/system/cpu") -> int:
    """Physical cores among :func:`usable_cpus` (SMT siblings counted once).

    Read from sysfs topology (``physical_package_id``, ``core_id``); where that is missing, every
    logical CPU counts as a core."""
    cpus = usable_cpus()
    root = Path(sys_root)
    cores = set()
    for cpu in cpus:
        topo = root / f"cpu{cpu}" / "topology"
        try:
            cores.add((topo.joinpath("physical_package_id").read_text().strip(),
                       topo.joinpath("core_id").read_text().strip()))
        except OSError:
            cores.add(("cpu", str(cpu)))
    return max(1, len(cores))
