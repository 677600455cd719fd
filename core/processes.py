"""Child processes the project starts itself (a loopback LLM server for benchmarks and tests)."""

from __future__ import annotations

import subprocess


def stop(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)
