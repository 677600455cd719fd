"""Human labels for the judge (RecGPT's human–LLM cooperative judge): export a labelling file of
logged outputs with the judge's verdicts, import what people filled in.

**File formats.** CSV (one row per judged output) or JSONL (one object per line), chosen by the file
suffix (``.csv``, ``.jsonl``). Both carry: ``run_id``, ``pass`` (the judge pass within the run: a
regenerated explanation is judged again in a later pass), ``subject_id``, ``kind``, the text judged
and its context (intent, item), the judge's grade and dimension outcomes, and empty human fields:

* CSV: ``human_grade`` (S/A/B) and ``human_<dimension>`` (good/ok/defect) columns, ``labeler``, ``note``;
* JSONL: ``"human": {"grade": null, "dimensions": {"relevance": null, ...}}``, ``labeler``, ``note``.

Blank human fields are "not labelled". **Import validates the whole file before writing anything**
(one transaction): an unknown run, a subject the run never had judged, a grade or outcome outside
the allowed values, a dimension that does not belong to the subject's kind, bad JSON or a missing
column is a :class:`LabelsError` naming the file and the line.
"""

from __future__ import annotations

import csv
import io
import json
import random
from pathlib import Path
from typing import Any

from core.errors import IntentRecError
from judges.agreement import GRADES, outcomes
from judges.llm_judges import item_line
from judges.schemas import EXPLANATION_DIMENSIONS, TAG_DIMENSIONS, ItemFacts, dimensions_for
from runlog.store import RunLog, RunLogError

ALL_DIMENSIONS: tuple[str, ...] = tuple(dict.fromkeys(TAG_DIMENSIONS + EXPLANATION_DIMENSIONS))
OUTCOMES = ("good", "ok", "defect")
FORMATS = ("csv", "jsonl")


class LabelsError(IntentRecError):
    def __init__(self, problem: str, *, file: str | Path, line: int | None = None):
        self.file = str(file)
        self.line = line
        super().__init__(f"{file}:{line}: {problem}" if line is not None else f"{file}: {problem}")


def _csv_columns() -> list[str]:
    return (["run_id", "pass", "subject_id", "kind", "text", "intent", "item", "judge_grade"]
            + [f"judge_{d}" for d in ALL_DIMENSIONS] + ["human_grade"] + [f"human_{d}" for d in ALL_DIMENSIONS]
            + ["labeler", "note"])


def export_rows(store: RunLog, run_ids: list[str], *, sample: int | None = None, seed: int = 0,
                source: str = "graph") -> list[dict[str, Any]]:
    """Judged outputs of ``run_ids`` from each run's ``graph`` (or latest ``replay``) verdict set;
    a fixed-seed sample of ``sample`` of them (all when fewer)."""
    rows: list[dict[str, Any]] = []
    for rid in run_ids:
        s = store.graph_set(rid) if source == "graph" else store.latest_set(rid, "replay")
        if s is None:
            continue
        for j in store.judgements(s["set_id"]):
            req, v = j.get("request") or {}, j.get("verdict") or {}
            item = req.get("item")
            rows.append({
                "run_id": rid, "pass": j["pass_no"], "subject_id": j["subject_id"], "kind": j["kind"],
                "text": req.get("text", ""), "intent": req.get("intent", ""),
                "item": item_line(ItemFacts.model_validate(item)) if item else "",
                "judge": {"grade": v.get("grade"), "dimensions": outcomes(v)},
                "human": {"grade": None, "dimensions": dict.fromkeys(dimensions_for(j["kind"] or "tag"))},
                "labeler": None, "note": "",
            })
    if sample is not None and sample < len(rows):
        keep = sorted(random.Random(seed).sample(range(len(rows)), sample))
        rows = [rows[i] for i in keep]
    return rows


def write_labelling_file(rows: list[dict[str, Any]], fmt: str) -> str:
    if fmt not in FORMATS:
        raise RunLogError(f"labelling file format must be one of {FORMATS}, not {fmt!r}")
    if fmt == "jsonl":
        return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_csv_columns(), lineterminator="\n")
    w.writeheader()
    for r in rows:
        flat = {k: r[k] for k in ("run_id", "pass", "subject_id", "kind", "text", "intent", "item")}
        flat["judge_grade"] = r["judge"]["grade"]
        for d in ALL_DIMENSIONS:
            flat[f"judge_{d}"] = r["judge"]["dimensions"].get(d, "")
            flat[f"human_{d}"] = ""
        flat.update(human_grade="", labeler="", note="")
        w.writerow(flat)
    return buf.getvalue()


def format_for(path: str | Path, fmt: str | None = None) -> str:
    if fmt:
        return fmt
    suffix = Path(path).suffix.lower()
    return "jsonl" if suffix in (".jsonl", ".ndjson", ".json") else "csv"


# ------------------------------------------------------------------------------------------------
# import

def _records(path: Path, fmt: str) -> list[tuple[int, dict[str, Any]]]:
    """(line number, flat record with run_id, pass, subject_id, human_grade, human_<dim>, labeler)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise LabelsError(f"cannot read the labels file: {e.strerror}", file=path) from None
    except UnicodeDecodeError as e:
        raise LabelsError(f"not UTF-8 text: {e}", file=path) from None
    out: list[tuple[int, dict[str, Any]]] = []
    if fmt == "jsonl":
        for no, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise LabelsError(f"not valid JSON: {e.msg} (column {e.colno})", file=path, line=no) from None
            if not isinstance(obj, dict):
                raise LabelsError("each line must be a JSON object", file=path, line=no)
            human = obj.get("human") or {}
            if not isinstance(human, dict) or not isinstance(human.get("dimensions") or {}, dict):
                raise LabelsError("'human' must be an object with 'grade' and 'dimensions'", file=path, line=no)
            flat = {k: obj.get(k) for k in ("run_id", "pass", "subject_id", "labeler")}
            flat["human_grade"] = human.get("grade")
            for d, v in (human.get("dimensions") or {}).items():
                flat[f"human_{d}"] = v
            out.append((no, flat))
        return out
    reader = csv.DictReader(io.StringIO(text))
    missing = [c for c in ("run_id", "pass", "subject_id") if c not in (reader.fieldnames or [])]
    if missing:
        raise LabelsError(f"missing column(s) {missing} in the header", file=path, line=1)
    prev = reader.line_num
    for row in reader:
        start = prev + 1
        prev = reader.line_num
        if None in row:
            raise LabelsError(f"{len(row[None])} more field(s) than the header has", file=path, line=start)
        out.append((start, dict(row)))
    return out


def _blank(v: Any) -> bool:
    return v is None or (isinstance(v, str) and not v.strip())


def read_labels(store: RunLog, path: str | Path, *, labeler: str = "human",
                fmt: str | None = None) -> tuple[list[tuple[str, int, str, str, str, str]], int]:
    """Validate a labels file against the run log. Returns the label rows to store and the number of
    records that carried no label. Raises :class:`LabelsError` on the first bad line."""
    path = Path(path)
    fmt = format_for(path, fmt)
    kinds: dict[str, dict[tuple[int, str], str]] = {}
    rows: list[tuple[str, int, str, str, str, str]] = []
    seen: dict[tuple[str, int, str, str], int] = {}
    unlabelled = 0
    for no, rec in _records(path, fmt):
        run_id = str(rec.get("run_id") or "").strip()
        subject = str(rec.get("subject_id") or "").strip()
        if not run_id or not subject:
            raise LabelsError("run_id and subject_id are required", file=path, line=no)
        try:
            pass_no = int(str(rec.get("pass")).strip())
        except ValueError:
            raise LabelsError(f"pass must be a whole number, not {rec.get('pass')!r}", file=path, line=no) from None
        if run_id not in kinds:
            try:
                store.get_run(run_id)
            except RunLogError:
                raise LabelsError(f"unknown run id {run_id!r}", file=path, line=no) from None
            table: dict[tuple[int, str], str] = {}
            for s in store.verdict_sets(run_id):
                for j in store.judgements(s["set_id"]):
                    table[(j["pass_no"], j["subject_id"])] = j["kind"]
            kinds[run_id] = table
        kind = kinds[run_id].get((pass_no, subject))
        if kind is None:
            raise LabelsError(f"run {run_id} has no judged subject {subject!r} in pass {pass_no}", file=path, line=no)
        who = str(rec.get("labeler") or "").strip() or labeler
        labels: list[tuple[str, str]] = []
        grade = rec.get("human_grade")
        if not _blank(grade):
            g = str(grade).strip().upper()
            if g not in GRADES:
                raise LabelsError(f"human_grade {grade!r} is not one of {', '.join(GRADES)}", file=path, line=no)
            labels.append(("grade", g))
        for key, val in rec.items():
            if not key or not key.startswith("human_") or key == "human_grade" or _blank(val):
                continue
            dim = key.removeprefix("human_")
            if dim not in ALL_DIMENSIONS:
                raise LabelsError(f"unknown dimension {dim!r}", file=path, line=no)
            if dim not in dimensions_for(kind):  # type: ignore[arg-type]
                raise LabelsError(f"{dim!r} is not a {kind} dimension ({', '.join(dimensions_for(kind))})",  # type: ignore[arg-type]
                                  file=path, line=no)
            o = str(val).strip().lower()
            if o not in OUTCOMES:
                raise LabelsError(f"{key} {val!r} is not one of {', '.join(OUTCOMES)}", file=path, line=no)
            labels.append((dim, o))
        if not labels:
            unlabelled += 1
            continue
        for dim, value in labels:
            key4 = (run_id, pass_no, subject, dim + "|" + who)
            if key4 in seen:
                raise LabelsError(f"duplicate label for {subject!r} pass {pass_no} ({dim}, labeler {who}); first on "
                                  f"line {seen[key4]}", file=path, line=no)
            seen[key4] = no
            rows.append((run_id, pass_no, subject, dim, value, who))
    return rows, unlabelled


def import_labels(store: RunLog, path: str | Path, *, labeler: str = "human", fmt: str | None = None) -> dict[str, int]:
    rows, unlabelled = read_labels(store, path, labeler=labeler, fmt=fmt)
    store.add_labels(rows, source=str(path))
    return {"labels": len(rows), "subjects": len({(r[0], r[1], r[2]) for r in rows}), "unlabelled": unlabelled}
