"""`app.py prompts list | show NAME | diff DIR`: what templates are in force and what an override
folder would change."""

from __future__ import annotations

import difflib
import json
from pathlib import Path

import typer
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from prompts.registry import PromptRegistry

prompts_app = typer.Typer(no_args_is_help=True)
console = Console()


@prompts_app.command("list")
def list_cmd(
    prompts: Path = typer.Option(None, "--prompts", help="Override folder to apply."),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Every template in force: name, version, variables, origin folder and hash."""
    reg = PromptRegistry([prompts] if prompts else None)
    rows = [{**t.ref, "variables": list(t.variables), "origin": str(reg.origin[n]), "description": t.description}
            for n, t in sorted(reg.templates.items())]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    tab = Table(title="Prompt templates")
    for col in ("name", "version", "variables", "sha256", "origin"):
        tab.add_column(col, overflow="fold")
    for r in rows:
        tab.add_row(r["name"], str(r["version"]), ", ".join(r["variables"]), r["sha256"], r["origin"])
    console.print(tab)


@prompts_app.command("show")
def show_cmd(name: str, prompts: Path = typer.Option(None, "--prompts", help="Override folder to apply.")) -> None:
    """Print one template file as it is in force."""
    t = PromptRegistry([prompts] if prompts else None).get(name)
    console.print(f"[bold]{t.name}[/] v{t.version}  {t.path}  sha256 {t.sha256[:16]}")
    console.print(Syntax(t.path.read_text(encoding="utf-8"), "jinja", word_wrap=True))


@prompts_app.command("diff")
def diff_cmd(folder: Path, as_json: bool = typer.Option(False, "--json")) -> None:
    """What an override folder would change: added, replaced (with a unified diff) and unchanged."""
    base = PromptRegistry()
    over = PromptRegistry([folder])
    report = {"added": [], "replaced": {}, "unchanged": []}
    for name, t in sorted(over.templates.items()):
        if over.origin[name] != Path(folder):
            continue
        if name not in base.templates:
            report["added"].append(name)
            continue
        old = base.templates[name]
        if old.sha256 == t.sha256:
            report["unchanged"].append(name)
            continue
        report["replaced"][name] = "".join(difflib.unified_diff(
            old.path.read_text(encoding="utf-8").splitlines(keepends=True),
            t.path.read_text(encoding="utf-8").splitlines(keepends=True),
            fromfile=f"builtin/{name}.prompt", tofile=f"{folder}/{name}.prompt"))
    if as_json:
        print(json.dumps(report, indent=2))
        return
    console.print(f"added: {report['added'] or '-'}   unchanged: {report['unchanged'] or '-'}")
    for name, d in report["replaced"].items():
        console.print(f"[bold]replaced {name}[/]")
        console.print(Syntax(d, "diff"))
