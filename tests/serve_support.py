"""Helpers for the report, HTTP service and browser tests (this module holds no tests): a logged
scripted run on the real completejourney data with a hostile item title, a B-graded explanation and
a failed model call; a real uvicorn server on a free loopback port; an HTML text extractor."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

from llm.scripted import by_schema
from tests.graph_fakes import FakeRetriever, make_model
from tests.test_runlog_support import NOW, dataset, items, user_id

HOSTILE = "<script>alert(1)</script>"
GOOD_TEXT = "A handy pick that fits the way this household already shops."


def other_user(rank: int = 6) -> str:
    """A real user with a long history before NOW (``rank``-th by purchases), not ``user_id()``."""
    from datetime import datetime

    cj = dataset()
    hist = cj.behaviors.filter(cj.behaviors["ts"] < datetime(2017, 10, 1))
    counts = hist.group_by("user_id").len().sort(["len", "user_id"], descending=[True, False])
    return counts["user_id"][rank]


@dataclass
class HostileRun:
    rec: Any
    run_id: str
    output: dict[str, Any]
    items: list[dict[str, Any]]
    b_item: dict[str, Any]  # graded B by the judge (then dropped)
    failed_item: dict[str, Any]  # its explanation call fails validation (then dropped)


def hostile_items() -> list[dict[str, Any]]:
    its = [dict(i) for i in items()]
    its[0]["title"] = HOSTILE  # what the retriever returns for a real catalogue item id
    return its


def hostile_run(runlog: str | Path, *, user: str | None = None) -> HostileRun:
    """One logged run: 4 items asked for; item 0 carries the hostile title (kept, grade S), item 1's
    explanation is graded B (dropped, regen_limit=0), item 2's explanation call gets invalid JSON on
    every attempt (a failed call; dropped), item 3 is plain."""
    from intentrec.service import IntentRec

    its = hostile_items()
    b_item, failed_item = its[1], its[2]

    def judge(messages, schema):
        text = "\n".join(str(m.content) for m in messages)
        return "defect" if b_item["title"] in text else "good"

    def explanation(messages):
        # the prompt opens with a fixed example item; the item itself comes after "Now your turn"
        text = "\n".join(str(m.content) for m in messages).split("Now your turn", 1)[-1]
        return "not json {{{" if failed_item["title"] in text else {"text": GOOD_TEXT}

    model = make_model(k=2, judge_outcome=judge, extra_rules=[by_schema("Explanation", explanation)])
    rec = IntentRec(dataset=dataset(), retriever=FakeRetriever(its), models={"default": model}, runlog=runlog,
                    n_personas=2, n_tags=2, n_items=4, regen_limit=0)
    out = rec.recommend(user or user_id(), now=NOW)
    return HostileRun(rec=rec, run_id=out["run_id"], output=out, items=its, b_item=b_item, failed_item=failed_item)


class PageText(HTMLParser):
    """Text nodes (outside <style>), start tags, and each <tr>'s class and text."""

    def __init__(self, html: str):
        super().__init__(convert_charrefs=True)
        self.chunks: list[str] = []
        self.tags: list[str] = []
        self.rows: list[dict[str, str]] = []
        self._skip = 0
        self._row: dict[str, Any] | None = None
        self.feed(html)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        if tag in ("style", "script"):
            self._skip += 1
        if tag == "tr":
            self._row = {"class": dict(attrs).get("class") or "", "text": []}
            self.rows.append(self._row)

    def handle_endtag(self, tag):
        if tag in ("style", "script"):
            self._skip = max(0, self._skip - 1)
        if tag == "tr" and self._row is not None:
            self._row["text"] = " ".join(" ".join(self._row["text"]).split())  # whitespace normalised
            self._row = None

    def handle_data(self, data):
        if self._skip:
            return
        self.chunks.append(data)
        if self._row is not None:
            self._row["text"].append(data)

    @property
    def text(self) -> str:
        return " ".join(self.chunks)

    def rows_with(self, cls: str) -> list[dict[str, str]]:
        return [r for r in self.rows if cls in str(r["class"]).split()]


@dataclass
class LiveServer:
    url: str
    server: Any
    thread: threading.Thread
    errors: list[BaseException] = field(default_factory=list)


@contextmanager
def live_server(app: Any, *, start_timeout_s: float = 15.0) -> Iterator[LiveServer]:
    """``app`` under a real uvicorn server on 127.0.0.1 (a socket bound to a free port first, so
    there is no race for the port), in a daemon thread; stopped on exit."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on", access_log=False))
    live = LiveServer(url=f"http://127.0.0.1:{port}", server=server, thread=None)  # type: ignore[arg-type]

    def run() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as e:  # surfaced by the caller's assertions
            live.errors.append(e)

    live.thread = threading.Thread(target=run, name=f"uvicorn-{port}", daemon=True)
    live.thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started:
        assert not live.errors, f"uvicorn failed to start: {live.errors!r}"
        assert time.monotonic() < deadline, "uvicorn did not start in time"
        time.sleep(0.02)
    try:
        yield live
    finally:
        server.should_exit = True
        live.thread.join(timeout=15)
        sock.close()
