"""RankGR: prefix trie, listwise DPO, RSP scorer, constrained beam search, a tiny real training run."""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import polars as pl
import pytest
import torch

from behavior.adapters import load_dataset_cached
from behavior.schema import Dataset
from evals.protocol import Protocol, make_split
from retrieval.generative import RankGRConfig, collaborative_vectors, rankgr_recommend, train_rankgr
from retrieval.generative.beam import constrained_beam_search
from retrieval.generative.channel import GenerativeChannel
from retrieval.generative.checkpoint import load_rankgr, save_rankgr
from retrieval.generative.data import history_batch
from retrieval.generative.losses import listwise_dpo_loss, rsp_loss
from retrieval.generative.model import RSPScorer, sid_log_probs
from retrieval.generative.trie import PrefixTrie


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small tensors: one thread is faster, and steady when the cores are shared."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _clustered_digits(rng, n=400, depth=4, width=6):
    """Valid SIDs that share prefixes heavily (few first digits), all distinct."""
    rows = {tuple(int(x) for x in np.minimum(rng.geometric(0.45, size=depth) - 1, width - 1)) for _ in range(n)}
    return np.array(sorted(rows), dtype=np.int64)


def test_trie_admits_exactly_the_valid_sids():
    rng = np.random.default_rng(7)
    digits = _clustered_digits(rng)
    trie = PrefixTrie(digits)
    valid = {tuple(r) for r in digits.tolist()}
    width = int(digits.max()) + 1
    for _ in range(600):  # seeded property loop over random prefixes, half of them near valid ones
        d = int(rng.integers(0, trie.depth + 1))
        if rng.random() < 0.5:
            prefix = list(digits[rng.integers(len(digits))][:d])
            if d and rng.random() < 0.5:
                prefix[int(rng.integers(d))] = int(rng.integers(width))
        else:
            prefix = rng.integers(0, width, size=d).tolist()
        prefix = tuple(int(x) for x in prefix)
        expected = {s[d] for s in valid if s[:d] == prefix} if d < trie.depth else set()
        node = trie.walk(prefix)
        if not any(s[:d] == prefix for s in valid):
            assert node == -1, prefix
            continue
        assert node >= 0 and set(trie.allowed(node)) == expected, prefix
        mask = trie.allowed_mask(np.array([node]), width)[0]
        assert set(np.flatnonzero(mask).tolist()) == expected
        if d == trie.depth:
            assert digits[trie.item_at(node)].tolist() == list(prefix)
    # a bigram table would accept (0, 1, ...) here because 0->? and 1->? both occur; a trie must not
    t = PrefixTrie(np.array([[0, 0, 0], [1, 1, 0]]))
    assert t.walk((0, 1)) == -1 and t.walk((1, 0)) == -1 and t.allowed(t.walk((0,))) == [0]


def test_listwise_dpo_matches_a_hand_computed_three_item_list():
    policy = torch.tensor([[-1.0, -2.0, -3.0]], requires_grad=True)
    ref = torch.tensor([[-1.5, -1.5, -1.5]])
    valid = torch.ones(1, 3, dtype=torch.bool)
    # beta = 1: rewards r = (0.5, -0.5, -1.5); Plackett-Luce, best first:
    # -[0.5 - ln(e^0.5 + e^-0.5 + e^-1.5)] - [-0.5 - ln(e^-0.5 + e^-1.5)] - [0]
    expected = -(0.5 - math.log(math.exp(0.5) + math.exp(-0.5) + math.exp(-1.5))) \
        - (-0.5 - math.log(math.exp(-0.5) + math.exp(-1.5)))
    loss = listwise_dpo_loss(policy, ref, valid, beta=1.0)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert loss.item() == pytest.approx(0.72086, abs=1e-4)
    loss.backward()
    assert policy.grad[0, 0] < 0 < policy.grad[0, 2]  # descent raises the best item, lowers the worst
    # a missing middle item leaves plain DPO on the other two: -log sigmoid(beta * (r1 - r3))
    two = listwise_dpo_loss(policy.detach(), ref, torch.tensor([[True, False, True]]), beta=0.5)
    assert two.item() == pytest.approx(-math.log(1 / (1 + math.exp(-0.5 * 2.0))), abs=1e-6)
    # lists with fewer than two items carry no preference
    assert listwise_dpo_loss(policy.detach(), ref, torch.tensor([[True, False, False]]), 1.0).item() == 0.0


def test_rsp_learns_to_put_the_planted_candidate_first():
    torch.manual_seed(0)
    d, H, R, B = 16, 12, 8, 64

    def batch():
        hist = torch.randn(B, H, d)
        planted = hist[torch.arange(B), torch.randint(0, H, (B,))] + 0.1 * torch.randn(B, d)
        cands = torch.cat([planted[:, None], torch.randn(B, R - 1, d)], dim=1)  # planted at column 0
        return cands, hist, torch.ones(B, H, dtype=torch.bool), hist[:, -1]

    scorer = RSPScorer(d, 32)

    def top1(cands, hist, mask, last):
        perm = torch.randperm(R)
        with torch.no_grad():
            scores = scorer(cands[:, perm], hist, mask, last)
        return (perm[scores.argmax(1)] == 0).float().mean().item()

    test = batch()
    before = top1(*test)
    opt = torch.optim.Adam(scorer.parameters(), lr=5e-3)
    for _ in range(300):
        cands, hist, mask, last = batch()
        loss = rsp_loss(scorer(cands, hist, mask, last), torch.ones(B, R, dtype=torch.bool))
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = top1(*test)
    assert before < 0.5 and after > 0.9, (before, after)


@pytest.fixture(scope="module")
def tiny():
    """A real slice of completejourney (40 households) and a tiny model trained on it."""
    ds = load_dataset_cached("completejourney")
    users = sorted(ds.behaviors["user_id"].unique().to_list())[:40]
    small = Dataset(name="completejourney", items=ds.items, users=ds.users.filter(pl.col("user_id").is_in(users)),
                    behaviors=ds.behaviors.filter(pl.col("user_id").is_in(users)))
    split = make_split(small, Protocol())
    vecs = collaborative_vectors(split.train, split.category_of, dim=16)
    cfg = RankGRConfig(levels=(16, 16, 16), dim=32, ff=64, heads=2, max_len=10, ntp_epochs=2, iap_epochs=2,
                       batch_size=32, beam=20, lam=20, decode_batch=16)
    model, info = train_rankgr(split, vecs, cfg, progress=False)
    return split, model, info


def test_tiny_real_training_both_losses_fall(tiny):
    split, model, info = tiny
    ep = info["epochs"]
    assert [e["stage"] for e in ep] == ["ntp", "ntp", "iap", "iap"]
    assert ep[-1]["ntp"] < ep[0]["ntp"] - 0.2
    assert ep[-1]["ldpo"] < ep[2]["ldpo"] and ep[2]["ldpo"] > 0
    assert ep[-1]["rsp"] < ep[0]["rsp"]
    assert ep[2]["dpo_lists"] > 1000 and info["sid_items"] == model.vocab.n_items > 1000


def test_sid_round_trip_and_beam_gives_valid_distinct_items(tiny, tmp_path):
    split, model, _ = tiny
    vocab = model.vocab
    for c in range(vocab.n_items):
        assert vocab.item_of_tokens(vocab.tokens_of(c)) == c
        assert model.trie.item_at(model.trie.walk(vocab.sids.sid_of(c))) == c
    stats: dict = {}
    lists = rankgr_recommend(model, split, 10, stats=stats)
    assert stats["invalid_sids"] == 0 and stats["decoded_sids"] == 20 * len(split.users)
    assert all(len(v) == 10 == len(set(v)) for v in lists.values()) and set(lists) == set(split.users)
    # exhaustive check on one user: the beam's log-probs are the model's, best first, no SID twice
    seqs = model.histories(split)
    f = torch.from_numpy(history_batch(seqs, vocab, [seqs.user_index()[split.users[0]]], model.config.max_len))
    with torch.no_grad():
        h, kv, valid = model.net.encode(f)
        res = constrained_beam_search(model.net, h[:, -1], kv, valid, model.trie, vocab, 20, seqs.target_beh)
        toks = torch.from_numpy(vocab.item_tokens[res.codes])
        direct = sid_log_probs(model.net, h[:, -1], kv, valid, toks, seqs.target_beh)
        all_lp = sid_log_probs(model.net, h[:, -1], kv, valid, torch.from_numpy(vocab.item_tokens)[None],
                               seqs.target_beh)[0]
    assert len(set(res.codes[0].tolist())) == 20 and (res.codes >= 0).all()
    assert np.allclose(res.log_probs[0], direct[0].numpy(), atol=1e-4)
    assert (np.diff(res.log_probs[0]) <= 1e-6).all()
    best = torch.topk(all_lp, 5).indices.tolist()
    assert set(best) <= set(res.codes[0].tolist())  # the true top 5 survive a 20-wide beam
    # checkpoint: safetensors + JSON, same lists after loading
    save_rankgr(model, tmp_path)
    again = load_rankgr(tmp_path)
    assert rankgr_recommend(again, split, 10) == lists


def test_generative_channel(tiny):
    split, model, _ = tiny
    item_ids = list(model.vocab.item_ids)
    stub = SimpleNamespace(item_ids=item_ids, titles=[f"t{i}" for i in item_ids], categories=["c"] * len(item_ids))
    ch = GenerativeChannel(stub, model, split.train, split.cutoff)
    res = ch.search(split.users[0], 5)
    assert len(res.candidates) == 5 and res.user_known
    assert all(c.channel == "generative" and c.sources == ["generative"] for c in res.candidates)
    assert [c.item_id for c in res.candidates] == rankgr_recommend(model, split, 5)[split.users[0]]
    assert ch.search("no-such-user", 3).flags[0] == "unknown_user"


def test_ablation_switches(tiny):
    split, model, _ = tiny
    vecs = collaborative_vectors(split.train, split.category_of, dim=16)
    plain, info = train_rankgr(split, vecs, model.config, progress=False, iap=False, rsp=False, ntp_epochs=1,
                               iap_epochs=1)
    assert [e["stage"] for e in info["epochs"]] == ["ntp", "ntp"]
    assert all(e["ldpo"] == 0.0 and e["rsp"] == 0.0 for e in info["epochs"])
    from retrieval.generative.recommend import decode

    u = split.users[:3]
    dec = decode(plain, plain.histories(split), u)
    assert dec.rsp is None
    lists = rankgr_recommend(plain, split, 10)
    for j, user in enumerate(u):  # without the RSP the list is the beam's NTP order
        assert lists[user] == [plain.vocab.item_ids[c] for c in dec.codes[j][:10]]


def test_choose_mix_scores_every_setting_from_one_decode(tiny):
    from retrieval.generative.runner import choose_mix

    split, model, _ = tiny
    seen = []

    def metric(lists):
        seen.append(lists)
        return sum(len(set(v) & split.relevant[u]["all"]) for u, v in lists.items())

    res = choose_mix(model, split, 5, metric, grid=(0.0, 1.0), lams=(5, 10))
    assert len(res["scores"]) == 4 and len(seen) == 5  # 2 lambdas x 2 mixes + NTP alone
    assert res["best"]["score"] == max(res["scores"].values()) and res["decode"]["invalid_sids"] == 0
    assert all(len(v) == 5 for lists in seen for v in lists.values())
