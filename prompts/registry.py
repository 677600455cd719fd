"""Prompt templates as files, and the registry that loads, validates and renders them.

File format (``prompts/<name>.prompt``)::

    ---
    name: explainer_style
    version: 2
    description: Stage 1 of meta-prompting: write a style guideline.
    variables: [intent, item, situation]
    ---
    <<<system>>>
    You write style guidelines ...
    <<<user>>>
    Intent: {{ intent | data }}
    ...

* The front matter is YAML. ``variables`` is the complete list of variables the body may use; a
  variable used but not declared, or declared but never used, is a load-time error naming the file
  (and the line, for an undeclared use).
* The body is Jinja2, rendered in an ``ImmutableSandboxedEnvironment`` with ``StrictUndefined``:
  templates cannot reach Python internals, and a missing variable at render time is an error.
* ``<<<system>>>`` / ``<<<user>>>`` / ``<<<assistant>>>`` lines split the body into chat messages.
* Values from data (item titles, search queries, model output) are untrusted. Templates pass them
  through the ``data`` filter, which strips control characters and our own section markers, caps the
  length, and fences the text so it reads as quoted data, not as instructions.

Template files are code. The registry loads the built-in folder and override folders that the
caller names explicitly (``--prompts DIR``, ``INTENTREC_PROMPTS_DIR``, or ``Context.prompts_dir``);
it never loads from data. Files that are symlinks pointing outside their folder, or that anyone may
write to (world-writable), are refused. A file in an override folder replaces the built-in file of
the same name.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import yaml
from jinja2 import StrictUndefined, Template, TemplateSyntaxError, nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment
from langchain_core.messages import AIMessage, BaseMessage, HumanMessage, SystemMessage

from core.errors import IntentRecError

BUILTIN_DIR = Path(__file__).resolve().parent / "templates"
SUFFIX = ".prompt"
_ROLE_LINE = re.compile(r"^<<<(system|user|assistant)>>>\s*$", re.MULTILINE)
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
DATA_MAX_CHARS = 400


class PromptError(IntentRecError):
    def __init__(self, problem: str, *, file: Path | str | None = None, line: int | None = None):
        self.file = str(file) if file else None
        self.line = line
        where = self.file or ""
        if line is not None:
            where += f":{line}"
        super().__init__(f"{where}: {problem}" if where else problem)


def fence_untrusted(value: Any, max_chars: int = DATA_MAX_CHARS) -> str:
    """Make a data value safe to embed in a prompt: one line, no control characters, no section
    markers or fence quotes, length-capped, wrapped in «...» so the model reads it as quoted data."""
    text = "" if value is None else str(value)
    text = _CONTROL.sub(" ", text).replace("\r", " ").replace("\n", " ")
    text = text.replace("<<<", "‹‹").replace(">>>", "››").replace("«", '"').replace("»", '"')
    text = re.sub(r"\s+", " ", text).strip()
    if len(text) > max_chars:
        text = text[: max_chars - 1] + "…"
    return f"«{text}»"


def _block(value: Any, max_chars: int = 20000) -> str:
    """Multi-line untrusted text (e.g. a compressed history): control characters and section markers
    removed, length-capped, newlines kept."""
    text = "" if value is None else str(value)
    text = _CONTROL.sub(" ", text).replace("<<<", "‹‹").replace(">>>", "››")
    return text[:max_chars]


def _make_env() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False, trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["data"] = fence_untrusted
    env.filters["block"] = _block
    return env


_ENV = _make_env()
#: names a template may use without declaring them: Jinja's loop variable and globals (range, dict...)
_BUILTINS = frozenset({"loop", "self", "varargs", "kwargs", *_ENV.globals})


@dataclass(frozen=True)
class PromptTemplate:
    name: str
    version: int
    description: str
    variables: tuple[str, ...]
    source: str
    path: Path
    body_line_offset: int
    sha256: str = field(compare=False)

    @property
    def ref(self) -> dict[str, Any]:
        """What a trace records about the template used."""
        return {"name": self.name, "version": self.version, "sha256": self.sha256[:16], "path": str(self.path)}

    def render_text(self, **variables: Any) -> str:
        missing = set(self.variables) - set(variables)
        extra = set(variables) - set(self.variables)
        if missing or extra:
            raise PromptError(
                f"render of {self.name!r}: missing variables {sorted(missing)}, unexpected {sorted(extra)}",
                file=self.path,
            )
        return self.compiled.render(**variables)

    @cached_property
    def compiled(self) -> Template:
        """The template compiled once (Jinja compiles from source each time it is asked to, which
        cost more than the rest of a run's Python work); a compiled template renders from any thread."""
        return _ENV.from_string(self.source)

    def render(self, **variables: Any) -> list[BaseMessage]:
        text = self.render_text(**variables)
        return split_messages(text, self.path)

    def example_texts(self) -> list[str]:
        """The literal text of the template outside its ``{{ ... }}`` and ``{% ... %}`` tags: the
        instructions and few-shot examples a small model may copy. Judges check outputs against it."""
        plain = re.sub(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", " ", self.source, flags=re.S)
        return [ln.strip() for ln in _ROLE_LINE.sub(" ", plain).splitlines() if len(ln.split()) >= 4]


def split_messages(text: str, path: Path | str = "<prompt>") -> list[BaseMessage]:
    parts = _ROLE_LINE.split(text)
    if parts[0].strip():
        raise PromptError("text before the first <<<role>>> line", file=path)
    msgs: list[BaseMessage] = []
    for role, content in zip(parts[1::2], parts[2::2], strict=True):
        content = content.strip()
        cls = {"system": SystemMessage, "user": HumanMessage, "assistant": AIMessage}[role]
        msgs.append(cls(content=content))
    if not msgs:
        raise PromptError("no <<<system>>> or <<<user>>> section", file=path)
    return msgs


def _used_variables(ast: nodes.Template) -> dict[str, int]:
    """Free variables loaded by the template, with the first line each is used on."""
    assigned = {n.name for n in ast.find_all(nodes.Name) if n.ctx in ("store", "param")}
    used: dict[str, int] = {}
    for n in ast.find_all(nodes.Name):
        if n.ctx == "load" and n.name not in assigned and n.name not in used and n.name not in _BUILTINS:
            used[n.name] = n.lineno
    return used


def _check_trusted_file(path: Path, folder: Path) -> None:
    real = path.resolve()
    if path.is_symlink() and folder.resolve() not in real.parents:
        raise PromptError("refusing a template symlinked from outside its folder", file=path)
    mode = real.stat().st_mode
    if mode & stat.S_IWOTH:
        raise PromptError("refusing a world-writable template file (templates are code)", file=path)


def load_template(path: Path) -> PromptTemplate:
    path = Path(path)
    raw = path.read_text(encoding="utf-8")
    if not raw.startswith("---"):
        raise PromptError("missing '---' front matter", file=path, line=1)
    end = raw.find("\n---", 3)
    if end < 0:
        raise PromptError("front matter is not closed by a '---' line", file=path, line=1)
    try:
        meta = yaml.safe_load(raw[3:end]) or {}
    except yaml.YAMLError as e:
        raise PromptError(f"bad front matter: {e}", file=path) from None
    body_start = raw.find("\n", end + 1) + 1 if raw.find("\n", end + 1) >= 0 else len(raw)
    body = raw[body_start:]
    offset = raw[:body_start].count("\n")
    for key in ("name", "version", "variables"):
        if key not in meta:
            raise PromptError(f"front matter lacks {key!r}", file=path)
    variables = meta["variables"] or []
    if not isinstance(variables, list) or not all(isinstance(v, str) for v in variables):
        raise PromptError("'variables' must be a list of names", file=path)
    if meta["name"] != path.stem:
        raise PromptError(f"name {meta['name']!r} does not match the file name {path.stem!r}", file=path)
    try:
        ast = _ENV.parse(body)
    except TemplateSyntaxError as e:
        raise PromptError(f"template syntax error: {e.message}", file=path, line=(e.lineno or 0) + offset) from None
    used = _used_variables(ast)
    undeclared = {v: ln for v, ln in used.items() if v not in variables}
    if undeclared:
        v, ln = min(undeclared.items(), key=lambda kv: kv[1])
        raise PromptError(f"uses undeclared variable {v!r} (declare it under 'variables')", file=path,
                          line=ln + offset)
    unused = [v for v in variables if v not in used]
    if unused:
        raise PromptError(f"declares variables it never uses: {unused}", file=path)
    if not _ROLE_LINE.search(body):
        raise PromptError("no <<<system>>> or <<<user>>> section", file=path)
    return PromptTemplate(
        name=str(meta["name"]),
        version=int(meta["version"]),
        description=str(meta.get("description", "")),
        variables=tuple(variables),
        source=body,
        path=path,
        body_line_offset=offset,
        sha256=hashlib.sha256(raw.encode("utf-8")).hexdigest(),
    )


class PromptRegistry:
    """Loads every template of the built-in folder, then of each override folder in order (later
    folders win). All files are validated when loaded, so a broken override fails fast."""

    def __init__(self, override_dirs: list[Path | str] | None = None, *, builtin_dir: Path = BUILTIN_DIR):
        self.dirs: list[Path] = [Path(builtin_dir)]
        env_dir = os.environ.get("INTENTREC_PROMPTS_DIR")
        extra = list(override_dirs or [])
        if env_dir and not override_dirs:
            extra.append(env_dir)
        for d in extra:
            p = Path(d)
            if not p.is_dir():
                raise PromptError("prompt override folder does not exist", file=p)
            self.dirs.append(p)
        self.templates: dict[str, PromptTemplate] = {}
        self.origin: dict[str, Path] = {}
        for d in self.dirs:
            for f in sorted(d.glob(f"*{SUFFIX}")):
                _check_trusted_file(f, d)
                t = load_template(f)
                self.templates[t.name] = t
                self.origin[t.name] = d

    def get(self, name: str) -> PromptTemplate:
        try:
            return self.templates[name]
        except KeyError:
            raise PromptError(f"no prompt template named {name!r}; known: {sorted(self.templates)}") from None

    def names(self) -> list[str]:
        return sorted(self.templates)

    def refs(self) -> dict[str, dict[str, Any]]:
        return {n: t.ref for n, t in sorted(self.templates.items())}
