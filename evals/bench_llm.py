"""``bench llm``: the local backend's speed through IntentRec's path against llama.cpp called directly.

Both paths use the same process, the same shared ``Llama`` object, the same chat messages (exactly
what ``LocalChatModel.prepare`` hands to llama.cpp: the schema hint included), the same compiled
grammar and the same sampling options and seed, so they generate the same tokens; the result says
whether the outputs were identical. What differs is only IntentRec's wrapping: ``structured_call``
→ ``with_structured_output`` runnable → langchain-core callbacks → ``LocalChatModel._generate``
(lock, prefix-reuse accounting, perf counters, message building) → pydantic validation.

Design decisions:

* **Two modes.** ``cold``: the KV cache is cleared before every call, so each call evaluates the
  whole prompt and then decodes (what a new user costs). ``warm``: the identical prompt is already
  in the KV cache, so the call is almost pure decoding. Warm calls are shorter, so a fixed wrapper
  cost shows up larger there: it is the stricter test of the overhead.
* **Fair order.** Paths alternate which goes first in each repetition, one warm-up round is
  discarded, and medians are reported. ``overhead`` = median latency (IntentRec) / median latency
  (direct) − 1 and ``paired_overhead`` = median of the per-repetition ratios − 1: both end to end,
  and on a busy machine both carry the machine's noise (several % either way).
* **The wrapper's own cost, measured directly.** Inside the IntentRec path the time spent in
  ``create_chat_completion`` is known (``LocalChatModel.last_timings``), so ``wrapper_ms`` =
  structured-call wall time − llama.cpp time, per call; ``wrapper_share`` = its median over the
  direct path's median latency. This is immune to the noise that hits both paths alike, and it
  is what ``overhead_under_5pct`` judges (target < 5%).
* tokens/s = completion tokens / wall time of the call (prompt evaluation included in ``cold``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

from llm.check import CHECK_MESSAGES, ShoppingIntent
from llm.settings import LLMSettings


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def run_llm_bench(settings: LLMSettings | None = None, *, reps: int = 7, warmup: int = 1, max_tokens: int = 96,
                  modes: tuple[str, ...] = ("cold", "warm")) -> dict[str, Any]:
    from llm.factory import make_local
    from llm.structured import structured_call

    settings = (settings or LLMSettings()).model_copy(update={"backend": "local", "max_tokens": max_tokens})
    model = make_local(settings)
    loaded = model.loaded()
    llama = loaded.llama
    messages = list(CHECK_MESSAGES)
    prepared = model.prepare(messages, json_schema=ShoppingIntent.model_json_schema())
    opts = model.completion_kwargs()

    def intentrec() -> tuple[float, int, str, float]:
        t0 = time.perf_counter()
        res = structured_call(model, ShoppingIntent, messages, max_attempts=1)
        dt = time.perf_counter() - t0
        return dt, res.record.completion_tokens, res.record.raw, dt - model.last_timings["total_s"]

    def direct() -> tuple[float, int, str, float]:
        t0 = time.perf_counter()
        r = llama.create_chat_completion(messages=prepared.messages, grammar=prepared.grammar, **opts)
        dt = time.perf_counter() - t0
        return dt, int(r["usage"]["completion_tokens"]), r["choices"][0]["message"]["content"] or "", 0.0

    paths = {"intentrec": intentrec, "direct": direct}
    result: dict[str, Any] = {
        "model": model.model_name, "n_threads": model.n_threads, "n_ctx": model.n_ctx, "max_tokens": max_tokens,
        "reps": reps, "warmup": warmup, "prompt_tokens": None, "load_s": round(loaded.load_s, 4), "modes": {},
    }
    for mode in modes:
        runs: dict[str, list[dict[str, Any]]] = {"intentrec": [], "direct": []}
        outputs: dict[str, set[str]] = {"intentrec": set(), "direct": set()}
        for i in range(warmup + reps):
            order = ["intentrec", "direct"] if i % 2 == 0 else ["direct", "intentrec"]
            for name in order:
                with loaded.lock:
                    if mode == "cold":
                        llama.reset()
                dt, n_out, text, wrapper_s = paths[name]()
                if i >= warmup:
                    runs[name].append({"latency_s": dt, "completion_tokens": n_out, "tokens_per_s": n_out / dt,
                                       "wrapper_s": wrapper_s})
                    outputs[name].add(text)
        summary: dict[str, Any] = {}
        for name, rs in runs.items():
            summary[name] = {
                "median_latency_s": round(_median([r["latency_s"] for r in rs]), 4),
                "median_tokens_per_s": round(_median([r["tokens_per_s"] for r in rs]), 2),
                "completion_tokens": sorted({r["completion_tokens"] for r in rs}),
                "latencies_s": [round(r["latency_s"], 4) for r in rs],
            }
        lat_i, lat_d = summary["intentrec"]["median_latency_s"], summary["direct"]["median_latency_s"]
        wrapper = _median([r["wrapper_s"] for r in runs["intentrec"]])
        summary["overhead"] = round(lat_i / lat_d - 1.0, 4) if lat_d > 0 else None
        summary["paired_overhead"] = round(_median([a["latency_s"] / b["latency_s"] for a, b in
                                                    zip(runs["intentrec"], runs["direct"], strict=True)]) - 1.0, 4)
        summary["tokens_per_s_ratio"] = round(summary["intentrec"]["median_tokens_per_s"]
                                              / summary["direct"]["median_tokens_per_s"], 4)
        summary["wrapper_ms"] = round(wrapper * 1000, 3)
        summary["wrapper_share"] = round(wrapper / lat_d, 5) if lat_d > 0 else None
        summary["identical_outputs"] = outputs["intentrec"] == outputs["direct"] and len(outputs["direct"]) == 1
        summary["overhead_under_5pct"] = summary["wrapper_share"] is not None and summary["wrapper_share"] < 0.05
        result["modes"][mode] = summary
    result["prompt_tokens"] = _prompt_tokens(model, prepared)
    return result


def _prompt_tokens(model: Any, prepared: Any) -> int:
    """Prompt tokens of the benchmark call (one more warm call; its usage says)."""
    r = model.llama.create_chat_completion(messages=prepared.messages, grammar=prepared.grammar,
                                           **{**model.completion_kwargs(), "max_tokens": 1})
    return int(r["usage"]["prompt_tokens"])


def print_llm_bench(res: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"bench llm: {res['model']} ({res['n_threads']} thread(s), {res['prompt_tokens']} prompt tokens, "
                    f"{res['reps']} reps)")
    for col in ("mode", "path", "median latency s", "median tok/s", "completion tokens", "end-to-end overhead",
                "wrapper ms (share)"):
        t.add_column(col)
    for mode, s in res["modes"].items():
        for path in ("direct", "intentrec"):
            p = s[path]
            mine = path == "intentrec"
            t.add_row(mode, path, str(p["median_latency_s"]), str(p["median_tokens_per_s"]),
                      ",".join(map(str, p["completion_tokens"])),
                      f"{s['overhead']:+.2%} (paired {s['paired_overhead']:+.2%})" if mine else "",
                      f"{s['wrapper_ms']} ({s['wrapper_share']:.2%})" if mine else "")
    Console().print(t)
