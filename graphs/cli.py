"""`app.py recommend`: run the whole graph for one user and print a table, or JSON."""

from __future__ import annotations

import json
import time
from typing import Any

import typer
from rich.console import Console
from rich.table import Table

console = Console()


def _jsonable(o: Any) -> Any:
    if hasattr(o, "model_dump"):
        return o.model_dump()
    return str(o)


def recommend_cmd(
    user: str = typer.Option(..., "--user", "-u", help="User id, as in the dataset."),
    dataset: str = typer.Option(None, "--dataset", "-d", help="Dataset spec (default completejourney)."),
    backend: str = typer.Option(None, "--backend", help="LLM backend: local (default), openai, scripted."),
    base_url: str = typer.Option(None, "--base-url", help="OpenAI-compatible server URL (openai backend)."),
    model: str = typer.Option(None, "--model", help="Model name (openai) or GGUF path (local)."),
    now: str = typer.Option(None, "--now", help="Environment date (YYYY-MM-DD); history after it is hidden."),
    index_cutoff: str = typer.Option(
        None, "--index-cutoff", help="Use towers and index trained only on behaviours before YYYY-MM-DD (built "
        "and cached on first use; the offline evaluation's build for 2017-10-01 is reused). Default: all data."),
    prompts: str = typer.Option(None, "--prompts", help="Prompt override folder."),
    personas: int = typer.Option(None, "--personas", help="K personas."),
    tags: int = typer.Option(None, "--tags", help="N final tags."),
    items: int = typer.Option(None, "--items", help="Items to recommend."),
    judge_mode: str = typer.Option(None, "--judge-mode", help="joint (default) or per_dimension."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON only."),
) -> None:
    """Run planner → experts → arbiter → retrieval → explainer → judges for one user."""
    from graphs.service import IntentRec
    from llm.settings import LLMSettings

    overrides = {k: v for k, v in {"backend": backend, "base_url": base_url, "model": model}.items() if v}
    settings = LLMSettings(**overrides)
    ctx_over = {k: v for k, v in {"n_personas": personas, "n_tags": tags, "n_items": items,
                                  "judge_mode": judge_mode}.items() if v is not None}
    t0 = time.perf_counter()
    retrieval_settings = None
    if index_cutoff:
        from core.options import parse_date
        from retrieval.settings import RetrievalSettings

        retrieval_settings = RetrievalSettings(cutoff=parse_date(index_cutoff, "--index-cutoff"))
    rec = IntentRec.from_settings(dataset, llm_settings=settings, retrieval_settings=retrieval_settings,
                                  prompts_dir=prompts, progress=not as_json)
    t_load = time.perf_counter() - t0
    seen_nodes: list[str] = []
    final: dict[str, Any] = {}
    t1 = time.perf_counter()
    for ns, update in rec.stream(user, now=now, **ctx_over):
        for node, val in update.items():
            path = "/".join([*(n.split(":")[0] for n in ns), node])
            seen_nodes.append(path)
            if node == "emit" and not ns and isinstance(val, dict):
                final.update(val)
            elif not ns and isinstance(val, dict):
                for k in ("run_id", "personas", "tags", "fallback"):
                    if k in val:
                        final[k] = val[k]
    wall = time.perf_counter() - t1
    out = {
        "user_id": user, "run_id": final.get("run_id"), "status": final.get("status"),
        "fallback": final.get("fallback"), "personas": final.get("personas", []),
        "tags": [{k: t.get(k) for k in ("tag", "persona", "intent", "grade")} for t in final.get("tags", [])],
        "recommendations": final.get("recommendations", []), "node_totals": final.get("node_totals", {}),
        "nodes_seen": sorted(set(seen_nodes)), "wall_s": round(wall, 2), "load_s": round(t_load, 2),
    }
    if as_json:
        print(json.dumps(out, default=_jsonable, ensure_ascii=False, indent=2))
        return
    _print(out)


def _print(out: dict[str, Any]) -> None:
    console.print(f"[bold]user[/] {out['user_id']}  run {out['run_id']}  status {out['status']}"
                  f"  wall {out['wall_s']} s (load {out['load_s']} s)")
    if out.get("fallback"):
        console.print(f"[yellow]fallback:[/] {out['fallback']}")
    for p in out["personas"]:
        console.print(f"  [cyan]persona[/] {p['name']}: {p['focus']}")
    console.print("  [cyan]tags[/] " + ", ".join(f"{t['tag']} ({t.get('grade')})" for t in out["tags"]))
    t = Table(title="Recommendations")
    for col in ("item", "title", "tag", "persona", "score", "grade", "explanation"):
        t.add_column(col, overflow="fold")
    for r in out["recommendations"]:
        t.add_row(r["item_id"], r["title"], r.get("tag") or "-", r.get("persona") or "-", f"{r['score']:.3f}",
                  r["grade"], r["explanation"])
    console.print(t)
    nt = Table(title="Time by node")
    for col in ("node", "runs", "wall s", "llm calls", "tokens in", "tokens out"):
        nt.add_column(col)
    for node, v in sorted(out["node_totals"].items(), key=lambda kv: -kv[1].get("wall_s", 0)):
        nt.add_row(node, str(v.get("runs", 0)), f"{v.get('wall_s', 0):.2f}", str(v.get("calls", 0)),
                   str(v.get("prompt_tokens", 0)), str(v.get("completion_tokens", 0)))
    console.print(nt)
