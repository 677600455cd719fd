"""``eval tags-compare``: two scripted batches on the same real completejourney users, read back from
the run log and compared (figures, paired hits, tag agreement, model calls)."""

from __future__ import annotations

import pytest

from evals.tag_compare import jaccard, paired_counts
from evals.tag_eval import BASELINES, TagEvalError
from tests.test_runlog_support import NOW, make_app, run_cli
from tests.test_tag_eval import _json

USERS = ["1193", "1200", "1213"]


def one_tag_factory(store):
    """``--factory tests.test_tag_compare:one_tag_factory``: the scripted app keeping one tag."""
    return make_app(store, n_tags=1)


def test_jaccard_and_paired_counts_hand_computed():
    assert jaccard(["Milk", "eggs "], ["milk", "bread"]) == pytest.approx(1 / 3)
    assert jaccard([], []) is None
    c = paired_counts([1.0, 1.0, 0.0, 0.0, None, 1.0], [1.0, 0.0, 1.0, 0.0, 1.0, None])
    assert c == {"both": 1, "only_first": 1, "only_second": 1, "neither": 1}


def _batch(tmp_path, factory: str, now: str = NOW) -> str:
    from batch.runner import BatchSpec, execute
    from runlog.batches import BatchStore
    from runlog.store import RunLog

    store = RunLog(tmp_path / "runs.sqlite")
    spec = BatchSpec(now=now, index_cutoff=now, factory=factory, seed=42)
    bid = BatchStore(store).create(USERS, spec=spec.model_dump())
    execute(store, bid, concurrency=1)
    store.close()
    return bid


def test_tags_compare_on_two_scripted_batches(tmp_path, monkeypatch, capsys):
    a = _batch(tmp_path, "tests.test_runlog_support:factory")
    b = _batch(tmp_path, "tests.test_tag_compare:one_tag_factory")
    path = str(tmp_path / "runs.sqlite")
    code, out, err = run_cli(["eval", "tags-compare", "--batch", a, "--batch", b, "--name", "two", "--name", "one",
                              "--runlog", path, "--json"], monkeypatch, capsys)
    assert code == 0, err
    r = _json(out)
    assert r["n_users"] == 3 and r["names"] == ["two", "one"]
    two, one = r["by_batch"]["two"], r["by_batch"]["one"]
    assert two["tags_per_user"] == 2.0 and one["tags_per_user"] == 1.0
    # the one-tag run keeps the first of the two tags: every list differs, and the sets overlap by half
    assert r["agreement"]["identical_tag_lists"] == 0
    assert r["agreement"]["tag_jaccard_mean"] == 0.5
    for label, hits in (("hr@k", "hits"), ("discovery_hr@k", "discovery_hits")):
        c = r["paired"][label]
        assert c["both"] + c["only_first"] == two[hits] and c["both"] + c["only_second"] == one[hits]
        # the experts wrote every tag here, so their own figures and pairs are the lists'
        assert r["paired"][f"expert_{label}"] == c
        assert two["expert_tags"][hits] == two[hits] and one["expert_tags"][hits] == one[hits]
    for side in (two, one):
        calls = side["calls"]
        assert calls["calls"] > 0 and calls["failed_calls"] == 0 and calls["unparsed_calls"] == 0
        assert calls["valid_share"] == 1.0 and calls["users_per_min"] > 0
    assert two["backend"] is None and two["batch_id"] == a and one["batch_id"] == b
    assert set(r["baselines_same_users"]) == set(BASELINES)

    # the same batch against itself agrees everywhere
    code, out, err = run_cli(["eval", "tags-compare", "--batch", a, "--batch", a, "--runlog", path, "--json"],
                             monkeypatch, capsys)
    assert code == 0, err
    r = _json(out)
    assert r["agreement"]["identical_tag_lists"] == 3 and r["agreement"]["tag_jaccard_mean"] == 1.0
    assert r["paired"]["hr@k"]["only_first"] == r["paired"]["hr@k"]["only_second"] == 0

    code, out, err = run_cli(["eval", "tags-compare", "--batch", a, "--batch", b, "--runlog", path], monkeypatch, capsys)
    assert code == 0, err
    assert "identical tag lists 0/3" in out and "users / min" in out and "HR@K, expert-written tags only" in out


def test_tags_compare_refuses_what_it_cannot_compare(tmp_path, monkeypatch, capsys):
    a = _batch(tmp_path, "tests.test_runlog_support:factory")
    path = str(tmp_path / "runs.sqlite")
    code, _out, err = run_cli(["eval", "tags-compare", "--batch", a, "--runlog", path], monkeypatch, capsys)
    assert code == 2 and "exactly two batches" in err
    other = _batch(tmp_path, "tests.test_runlog_support:factory", now="2017-09-03")
    with pytest.raises(TagEvalError, match="different dates T"):
        from evals.tag_compare import run_compare

        run_compare([a, other], runlog=path)
