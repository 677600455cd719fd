"""Package import layering: every import between the project's packages, those inside functions
included, must point down the layer list (``LAYERS`` below; the README's "Dependency direction").
Prints each upward or sideways-cycle edge with the file and line; exits 1 if there is any.

    .venv/bin/python scripts/check_imports.py
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
#: lower number = lower layer; a package may import its own layer's packages only if no cycle forms
LAYERS = {
    "core": 1,
    "behavior": 2, "llm": 2, "prompts": 2,
    "retrieval": 3, "judges": 3, "agents": 3, "tools": 3,
    "graphs": 4,
    "runlog": 5,
    "intentrec": 6, "batch": 6, "serve": 6, "report": 6, "evals": 6,
    "app": 7, "commands": 7, "learning": 7,
}


def edges() -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = defaultdict(list)
    files = [ROOT / "app.py", *[p for pkg in LAYERS if pkg != "app" for p in (ROOT / pkg).rglob("*.py")]]
    for f in files:
        src = "app" if f.name == "app.py" and f.parent == ROOT else f.relative_to(ROOT).parts[0]
        for node in ast.walk(ast.parse(f.read_text(), str(f))):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module]
            for n in names:
                dst = n.split(".")[0]
                if dst in LAYERS and dst != src:
                    out[(src, dst)].append(f"{f.relative_to(ROOT)}:{node.lineno}")
    return out


def main() -> int:
    bad = [(s, d, where) for (s, d), where in sorted(edges().items()) if LAYERS[d] > LAYERS[s]]
    graph = defaultdict(set)
    for (s, d) in edges():
        graph[s].add(d)
    same = [(s, d, w) for (s, d), w in sorted(edges().items())
            if LAYERS[d] == LAYERS[s] and s in graph.get(d, set())]
    for s, d, where in bad + same:
        print(f"{s} -> {d} (layer {LAYERS[s]} -> {LAYERS[d]}): {', '.join(where[:4])}"
              + (f" and {len(where) - 4} more" if len(where) > 4 else ""))
    print(f"{len(bad)} upward package edge(s), {len(same)} same-layer cycle edge(s)")
    return 1 if bad or same else 0


if __name__ == "__main__":
    sys.exit(main())
