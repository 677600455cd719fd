"""``rankgr_recommend``: constrained beam search per user, the top-lambda outputs re-scored by the RSP
(``RSP + mix * NTP log-prob``; by NTP log-prob alone when the model has no RSP), exactly ``k``
distinct items per user, filled from popularity when the beam yields fewer."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from retrieval.generative.beam import constrained_beam_search
from retrieval.generative.data import Sequences, history_batch
from retrieval.generative.train import RankGR, SplitLike


@dataclass
class Decoded:
    codes: np.ndarray  # (n_users, lam) item codes by NTP log-prob; -1 = none
    log_probs: np.ndarray  # (n_users, lam) NTP log-probabilities
    rsp: np.ndarray | None  # (n_users, lam) RSP scores, None without the head
    stats: dict


@torch.no_grad()
def decode(model: RankGR, seqs: Sequences, users: list[str], *, beam: int | None = None, lam: int | None = None,
           batch: int | None = None) -> Decoded:
    """Beam-decode ``users`` (their histories in ``seqs``; an unknown user decodes from BOS alone)
    and score the top ``lam``."""
    cfg = model.config
    beam, lam = beam or cfg.beam, min(lam or cfg.lam, beam or cfg.beam)
    batch = batch or cfg.decode_batch
    index = seqs.user_index()
    net = model.net.eval()
    codes, lps, rsps = [], [], []
    invalid = decoded = 0
    t0 = time.perf_counter()
    for s in range(0, len(users), batch):
        chunk = [index.get(u, -1) for u in users[s:s + batch]]
        f = torch.from_numpy(history_batch(seqs, model.vocab, chunk, cfg.max_len))
        h, kv, valid = net.encode(f)
        h_last = h[:, -1]
        res = constrained_beam_search(net, h_last, kv, valid, model.trie, model.vocab, beam, seqs.target_beh)
        invalid, decoded = invalid + res.invalid, decoded + res.decoded
        c, lp = res.codes[:, :lam], res.log_probs[:, :lam]
        if cfg.rsp:
            tok = torch.from_numpy(model.vocab.item_tokens[np.maximum(c, 0)])
            rsps.append(net.rsp(net.item_embedding(tok), h, valid, h_last).numpy())
        codes.append(c)
        lps.append(lp)
    seconds = time.perf_counter() - t0
    n = max(len(users), 1)
    stats = {"users": len(users), "beam": beam, "lam": lam, "batch": batch, "decoded_sids": decoded,
             "invalid_sids": invalid, "invalid_rate": invalid / decoded if decoded else 0.0,
             "mean_items_per_user": round(decoded / n, 2), "seconds": round(seconds, 3),
             "ms_per_user": round(1000 * seconds / n, 2), "users_per_s": round(n / seconds, 1) if seconds else None}
    return Decoded(_stack(codes, lam).astype(np.int64), _stack(lps, lam), _stack(rsps, lam) if cfg.rsp else None,
                   stats)


def _stack(parts: list[np.ndarray], width: int) -> np.ndarray:
    return np.concatenate(parts) if parts else np.zeros((0, width))


def final_scores(model: RankGR, dec: Decoded, mix: float | None = None) -> np.ndarray:
    """(n_users, lam): RSP + mix * NTP log-prob, or the log-prob alone without an RSP; -inf = no item."""
    mix = model.config.mix if mix is None else mix
    lp = np.where(dec.codes >= 0, dec.log_probs, 0.0)
    score = lp if dec.rsp is None else dec.rsp + mix * lp
    return np.where(dec.codes >= 0, score, -np.inf)


def rank(model: RankGR, dec: Decoded, users: list[str], k: int, mix: float | None = None
         ) -> tuple[dict[str, list[str]], dict]:
    """Final lists, and how many slots (and users' lists) popularity filled."""
    score = final_scores(model, dec, mix)
    out, filled, users_filled = {}, 0, 0
    ids = model.vocab.item_ids
    for j, u in enumerate(users):
        order = np.argsort(-score[j], kind="stable")
        items = list(dict.fromkeys(ids[c] for c in dec.codes[j][order] if c >= 0))[:k]
        if len(items) < k:
            have = set(items)
            extra = [i for i in model.popular[:k + len(items)] if i not in have][:k - len(items)]
            filled += len(extra)
            users_filled += bool(extra)
            items += extra
        out[u] = items
    return out, {"popularity_fill": filled, "users_filled": users_filled}


def rankgr_recommend(model: RankGR, split: SplitLike, k: int, *, stats: dict | None = None, **decode_kw
                     ) -> dict[str, list[str]]:
    """``{user: [item_id, ...]}`` for every user of the split, exactly ``k`` items when the catalogue
    allows. ``stats`` (a dict) receives the decode figures and the popularity fill count."""
    users = list(split.users)
    dec = decode(model, model.histories(split), users, **decode_kw)
    out, fill = rank(model, dec, users, k)
    if stats is not None:
        stats.update(dec.stats | {"k": k} | fill)
    return out
