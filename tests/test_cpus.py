"""Core counting for the default llama.cpp / torch threads."""

from __future__ import annotations

from core import cpus


def _cpu(root, n, package, core):
    d = root / f"cpu{n}" / "topology"
    d.mkdir(parents=True)
    (d / "physical_package_id").write_text(f"{package}\n")
    (d / "core_id").write_text(f"{core}\n")


def test_smt_siblings_count_once(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [0, 1, 2, 3])
    for n, (pkg, core) in enumerate([(0, 0), (0, 0), (0, 1), (0, 1)]):
        _cpu(tmp_path, n, pkg, core)
    assert cpus.physical_cores(tmp_path) == 2


def test_only_the_cpus_this_process_may_use(tmp_path, monkeypatch):
    for n, (pkg, core) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        _cpu(tmp_path, n, pkg, core)
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [2, 3])
    assert cpus.physical_cores(tmp_path) == 2
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [1])
    assert cpus.physical_cores(tmp_path) == 1


def test_missing_topology_counts_logical_cpus(tmp_path, monkeypatch):
    monkeypatch.setattr(cpus, "usable_cpus", lambda: [0, 1, 2])
    assert cpus.physical_cores(tmp_path / "absent") == 3


def test_default_llama_threads_are_the_physical_cores(monkeypatch):
    from llm import local

    monkeypatch.setattr(cpus, "physical_cores", lambda: 6)
    assert local.default_threads() == 6
