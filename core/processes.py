"""Child processes the project starts itself (loopback LLM servers for benchmarks, tests and
``app.py llm vllm serve``): a free port, a readiness wait and a clean stop, in one place."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
from pathlib import Path


def start_ticks(pid: int) -> str:
    """The process's start time in clock ticks (``/proc/PID/stat`` field 22), "" when unknown: with
    the pid it names one process, even after the pid is reused."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    fields = stat.rsplit(")", 1)[-1].split()
    return fields[19] if len(fields) > 19 else ""


def pid_alive(pid: int, ticks: str = "") -> bool:
    """Whether ``pid`` runs (not a zombie) and, given ``ticks``, is the process that started then."""
    if Path("/proc/self/stat").exists():
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            return False
        fields = stat.rsplit(")", 1)[-1].split()
        if not fields or fields[0] in ("Z", "X"):  # zombie or dead
            return False
        return not ticks or (len(fields) > 19 and fields[19] == ticks)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stop(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM ``proc``, wait up to ``timeout_s``, then SIGKILL and reap it."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout_s)


def stop_group(proc: subprocess.Popen, timeout_s: float = 15) -> None:
    """SIGTERM the process group ``proc`` leads (a server and the workers it forked), then SIGKILL it."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=timeout_s)


def free_port() -> int:
    """A loopback TCP port nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout_s: float, proc: subprocess.Popen | None = None, *, name: str = "server",
              log: Path | None = None) -> float:
    """Poll ``url`` until it answers HTTP 200; returns the seconds waited. Raises ``RuntimeError`` if
    ``proc`` exits first and ``TimeoutError`` after ``timeout_s``, each with the tail of ``log``."""
    import httpx

    def tail() -> str:
        if log is None or not log.exists():
            return ""
        return "; log tail: " + log.read_text(errors="replace")[-1500:]

    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"{name} exited early with code {proc.returncode}{tail()}")
        try:
            if httpx.get(url, timeout=1.0).status_code == 200:
                return time.monotonic() - t0
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    raise TimeoutError(f"{url} not ready after {timeout_s}s{tail()}")
