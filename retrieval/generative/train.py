"""``train_rankgr``: NTP warm-up, then NTP + alpha * listwise DPO against the frozen warm-up model
(IAP), with the RSP head trained jointly throughout (sampled softmax over the positive, its graded
list and hard negatives sharing its SID prefixes)."""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, replace
from typing import Any, Protocol

import numpy as np
import polars as pl
import torch
from tqdm.auto import tqdm

from retrieval.generative.config import RankGRConfig
from retrieval.generative.data import Sequences, train_length, window_batch
from retrieval.generative.grades import ItemSampler, graded_lists
from retrieval.generative.losses import listwise_dpo_loss, ntp_loss, rsp_loss
from retrieval.generative.model import RankGRNet, sid_log_probs
from retrieval.generative.trie import PrefixTrie
from retrieval.generative.vectors import ItemVectors
from retrieval.generative.vocab import SidVocab


class SplitLike(Protocol):
    """What RankGR reads of an evaluation split (``evals.protocol.Split`` has it)."""

    train: pl.DataFrame
    cutoff: Any
    users: list[str]
    catalogue: list[str]
    item_pop: dict[str, int]
    category_of: dict[str, str]
    stats: dict


@dataclass
class RankGR:
    """A trained model with what serving needs: SIDs, trie, the histories it reads, fallback items."""

    net: RankGRNet
    vocab: SidVocab
    trie: PrefixTrie
    config: RankGRConfig
    seqs: Sequences | None = None
    popular: tuple[str, ...] = ()  # item ids by training popularity, for filling short lists
    vectors_source: str = ""
    behaviours: tuple[str, ...] = ()  # behaviour names in id order, as trained

    def histories(self, split: SplitLike) -> Sequences:
        """The sequences of ``split`` (those seen in training when the split is the same)."""
        if self.seqs is None or self.seqs.cutoff_days != split.cutoff.timestamp() / 86400.0:
            self.seqs = Sequences.build(split.train, self.vocab, split.cutoff, split.stats["target_behaviors"],
                                        self.config.seed)
            if self.behaviours and tuple(self.seqs.beh_names) != tuple(self.behaviours):
                raise ValueError(f"the split has behaviours {self.seqs.beh_names}, the model was trained on "
                                 f"{list(self.behaviours)}")
        return self.seqs


def popularity_order(split: SplitLike) -> tuple[str, ...]:
    return tuple(sorted(split.catalogue, key=lambda i: (-split.item_pop.get(i, 0), i)))


def build_vocab(split: SplitLike, vectors: ItemVectors, cfg: RankGRConfig) -> SidVocab:
    """SIDs for the items with a training row (any behaviour) that have a vector. Items go in by
    training popularity, so within a cell the dedup digit ranks items by popularity (0 = most
    bought): a digit the model can learn, where item-id order would be arbitrary."""
    rows = split.train.group_by("item_id").len()
    counts = dict(zip(rows["item_id"].to_list(), rows["len"].to_list(), strict=True))
    keep = sorted(counts, key=lambda i: (-split.item_pop.get(i, 0), -counts[i], i))
    sub = vectors.subset(keep)
    if not sub.item_ids:
        raise ValueError("no item with a training row has a vector")
    return SidVocab.build(sub, cfg.levels, cfg.seed)


def _batches(n: int, size: int, rng: np.random.Generator):
    perm = rng.permutation(n)
    return [perm[s:s + size] for s in range(0, n, size)]


def _epoch(net, ref, cfg: RankGRConfig, seqs, vocab, windows, sampler, opt, rng, alpha: float, desc: str,
           progress: bool) -> dict:
    net.train()
    dpo, rsp = graded_lists(seqs, windows, sampler, cfg.behavior_grades, next_window_days=cfg.next_window_days,
                            rsp_hard=cfg.rsp_hard, rsp_random=cfg.rsp_random, rng=rng)
    L, D = train_length(vocab, cfg.max_len), vocab.depth
    cut = L - D  # index of the last history token: the one that predicts the target item's first digit
    item_tokens = torch.from_numpy(vocab.item_tokens)
    tot = {"ntp": 0.0, "ldpo": 0.0, "rsp": 0.0}
    n = 0
    t0 = time.perf_counter()
    for rows in tqdm(_batches(len(windows), cfg.batch_size, rng), desc=desc, disable=not progress, leave=False):
        f, y = (torch.from_numpy(a) for a in window_batch(seqs, vocab, windows[rows], cfg.max_len))
        h, kv, valid = net.encode(f)
        m = y > 0
        loss = ntp = ntp_loss(net.level_log_probs(h[m], net.token_level[y[m]]), y[m])
        hist_mask = valid & (torch.arange(L) <= cut)[None, :]
        h_last = h[:, cut]
        if alpha > 0 and ref is not None:
            slots = torch.from_numpy(dpo[rows])
            ok = slots >= 0
            toks = item_tokens[slots.clamp(min=0)]
            pol = sid_log_probs(net, h_last, kv, hist_mask, toks, seqs.target_beh)
            with torch.no_grad():
                rh, rkv, _ = ref.encode(f)
                ref_lp = sid_log_probs(ref, rh[:, cut], rkv, hist_mask, toks, seqs.target_beh)
            ldpo = listwise_dpo_loss(pol, ref_lp, ok, cfg.dpo_beta)
            loss = loss + alpha * ldpo
            tot["ldpo"] += float(ldpo.detach())
        if cfg.rsp:
            cands = torch.from_numpy(rsp[rows])
            scores = net.rsp(net.item_embedding(item_tokens[cands.clamp(min=0)]), h, hist_mask, h_last)
            r_loss = rsp_loss(scores, cands >= 0)
            loss = loss + cfg.rsp_weight * r_loss
            tot["rsp"] += float(r_loss.detach())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        tot["ntp"] += float(ntp.detach())
        n += 1
    out = {k: round(v / max(n, 1), 4) for k, v in tot.items()}
    out |= {"seconds": round(time.perf_counter() - t0, 2), "batches": n,
            "dpo_lists": int(((dpo >= 0).sum(1) >= 2).sum()), "rsp_lists": int((rsp[:, 0] >= 0).sum())}
    return out


def train_rankgr(split: SplitLike, item_vecs: ItemVectors, config: RankGRConfig | None = None,
                 progress: bool = True, **overrides) -> tuple[RankGR, dict]:
    """Train on the split's rows before its cutoff. ``overrides`` replace config fields, e.g.
    ``iap=False`` (NTP only) or ``rsp=False`` (no RSP head; rank by NTP log-prob)."""
    cfg = replace(config or RankGRConfig(), **overrides)
    t_all = time.perf_counter()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    t0 = time.perf_counter()
    vocab = build_vocab(split, item_vecs, cfg)
    trie = PrefixTrie(vocab.sids.codes)
    sid_seconds = time.perf_counter() - t0
    seqs = Sequences.build(split.train, vocab, split.cutoff, split.stats["target_behaviors"], cfg.seed)
    targets = seqs.beh == seqs.target_beh
    pop = np.bincount(seqs.codes[targets], minlength=vocab.n_items).astype(np.float64)
    sampler = ItemSampler(vocab, split.category_of, pop)
    windows = seqs.windows(cfg.max_len, cfg.max_windows_per_user)
    net = RankGRNet(cfg, vocab.size, vocab.depth, len(seqs.beh_names), torch.from_numpy(vocab.token_level))
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    log = []
    for ep in range(cfg.ntp_epochs):
        log.append({"stage": "ntp", "epoch": ep + 1} | _epoch(
            net, None, cfg, seqs, vocab, windows, sampler, opt, rng, 0.0, f"rankgr ntp {ep + 1}/{cfg.ntp_epochs}",
            progress))
    ref = None
    if cfg.iap and cfg.alpha > 0 and cfg.iap_epochs:
        ref = copy.deepcopy(net).eval()
        for p in ref.parameters():
            p.requires_grad_(False)
    for ep in range(cfg.iap_epochs):
        stage = "iap" if ref is not None else "ntp"
        log.append({"stage": stage, "epoch": ep + 1} | _epoch(
            net, ref, cfg, seqs, vocab, windows, sampler, opt, rng, cfg.alpha if ref is not None else 0.0,
            f"rankgr {stage} {ep + 1}/{cfg.iap_epochs}", progress))
    net.eval()
    model = RankGR(net=net, vocab=vocab, trie=trie, config=cfg, seqs=seqs, popular=popularity_order(split),
                   vectors_source=item_vecs.source, behaviours=tuple(seqs.beh_names))
    info = {"config": cfg.as_dict(), "vectors": item_vecs.source, "levels": list(vocab.sids.levels),
            "depth": vocab.depth, "vocab_size": vocab.size, "sid_items": vocab.n_items,
            "catalogue_items_without_sid": len(split.catalogue) - vocab.n_items, "trie_nodes": trie.n_nodes,
            "max_dedup_digit": vocab.sizes[-1] - 1, "windows": int(len(windows)), "users": len(seqs.users),
            "behaviours": seqs.beh_names, "parameters": sum(p.numel() for p in net.parameters()),
            "epochs": log, "sid_seconds": round(sid_seconds, 2), "threads": torch.get_num_threads(),
            "train_seconds": round(time.perf_counter() - t_all, 2)}
    return model, info
