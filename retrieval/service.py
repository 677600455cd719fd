"""Serving: :class:`Retriever` fuses the user channel and the tag channel over one FAISS item index.

``search(user_id, tags, k)``:

1. **Channels.** The user channel queries FAISS with the user-tower vector (``k·overfetch``
   candidates); the tag channel queries it once per tag with the tag-tower vector
   (``quota·overfetch`` each). Candidates are de-duplicated by item; each remembers which tag(s)
   and which channel(s) ("user", "tag") brought it.
2. **Per-channel normalisation.** Raw cosines of the two towers live on different scales (a tag vector
   is close to a whole category at once; a user vector is not). Each channel's score is turned into a
   z-score *against the whole catalogue* for that query: ``z(q, i) = (q·i − q·μ) / sqrt(qᵀΣq)`` with μ, Σ
   the mean and covariance of the item vectors, computed once at load. This is exact, cheap (one
   256×256 matrix) and does not depend on which candidates happened to be fetched. The tag z-score of
   an item is the max over the request's tags.
3. **Fusion.** ``score = β·z_user + (1−β)·z_tag`` (β default 0.6). Every candidate gets both scores,
   whichever channel fetched it.
4. **Quota merge** (union with per-channel quotas). ``round((1−β)·k)`` slots are reserved for the
   tag channel, split evenly over the tags (``per_tag_quota`` overrides); the user channel fills the
   other ``k − tag slots`` in its own order; each tag then adds its quota of its own candidates in
   fused-score order (so among a tag's items the ones the user tower also likes win); slots a channel
   could not fill go to the best fused scores left. The final list is sorted by fused score.
   ``merge="sum"`` (plain top-k of the fused score over the union) is kept for the ablation: summing
   z-scores lets whichever channel has the more peaked scores (the tag channel: a tag vector sits
   right on its category) take nearly every slot, which is the "naive tag channel" failure measured before the project began.
5. **Discovery.** With ``tag_new_items_only`` (default) the tag channel skips items the user already
   interacted with before the cutoff: tags name intents, and RecGPT's arbiter steers them away from
   what the user already buys; re-buys still come through the user channel. The evaluation reports
   the fused variant with and without this, so its effect is visible.

Unknown users (not in the training slice) fall back to the tag channel only, with the flags
``unknown_user`` and ``tag_channel_only``. Empty/blank tags raise :class:`EmptyTagsError`, ``k <= 0``
raises :class:`RetrievalInputError`; a corrupt index or one built for other towers raises
:class:`CorruptIndexError` / :class:`IndexMismatchError` from :func:`load_or_build_retriever`.

Artifacts (under ``core.paths.data_dir()/retrieval/<dataset>-<key>/``): ``config.json`` (settings,
data fingerprint, model hash, training log), ``towers.safetensors``, ``users.safetensors`` +
``users.json``, ``tags.safetensors`` + ``tags.json`` (bootstrap tag texts and their MiniLM
embeddings, so serving them needs no model load), ``items.faiss`` + ``items.faiss.json``.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import re
import time
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Literal

import numpy as np
import polars as pl
import torch
from pydantic import BaseModel, Field
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from behavior.schema import Dataset
from core.errors import DataError
from core.logging import get_logger
from core.paths import data_dir
from retrieval.catalogue import add_tag_pairs, build_catalogue, load_llm_tag_pairs
from retrieval.channel_split import DEFAULT_PATH as DEFAULT_SPLIT_PATH
from retrieval.channel_split import ChannelSplit
from retrieval.data import build_interactions
from retrieval.errors import CorruptIndexError, EmptyTagsError, IndexMismatchError, RetrievalInputError
from retrieval.index import ItemIndex, sha256_file
from retrieval.repeat import RepeatScores, TifuParams
from retrieval.settings import SERVING_FIELDS, RetrievalSettings
from retrieval.text_encoder import TextEncoder
from retrieval.towers import TagTower
from retrieval.train import TagTable, item_vectors, train_towers, user_vectors

log = get_logger(__name__)

Source = Literal["user", "tag", "repeat", "interest"]
Channel = Literal["repeat", "discovery", "fused"]


class Candidate(BaseModel):
    item_id: str
    title: str
    category: str
    score: float = Field(description="fused score: beta*z_user + (1-beta)*z_tag (catalogue z-scores)")
    user_score: float | None = Field(None, description="raw user-tower cosine; None for an unknown user")
    tag_score: float | None = Field(None, description="raw tag-tower cosine of the best-matching tag")
    tags: list[str] = Field(default_factory=list, description="tags whose channel retrieved the item")
    sources: list[Source] = Field(default_factory=list, description="channels that retrieved the item")
    channel: Channel = Field("fused", description="repeat-aware serving: 'repeat' (bought before, TIFU-KNN "
                             "score) or 'discovery' (never bought, fused user/tag score); 'fused' without it")
    probability: float | None = Field(None, description="the channel split model's purchase probability")


class SearchResult(BaseModel):
    candidates: list[Candidate]
    user_known: bool
    flags: list[str] = Field(default_factory=list)


# ----- fusion maths (pure functions, unit-tested) -----------------------------------------------------

def catalogue_moments(vectors: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of the item vectors (float64)."""
    v = vectors.astype(np.float64)
    mu = v.mean(axis=0)
    c = v - mu
    return mu, (c.T @ c) / max(len(v) - 1, 1)


def zscores(raw: np.ndarray, queries: np.ndarray, mu: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """Standardise raw scores ``raw[..., j] = queries[j]·item`` against the catalogue distribution of
    each query's scores: mean ``q·μ``, variance ``qᵀΣq``. ``raw`` is (n_items, n_queries)."""
    q = np.atleast_2d(queries).astype(np.float64)
    mean = q @ mu
    std = np.sqrt(np.maximum(np.einsum("qd,de,qe->q", q, cov, q), 1e-12))
    return (raw - mean) / std


def fuse(z_user: np.ndarray | None, z_tag: np.ndarray | None, beta: float) -> np.ndarray:
    """``beta*z_user + (1-beta)*z_tag``; a missing channel contributes nothing (weight moves to the other)."""
    if z_user is None and z_tag is None:
        raise ValueError("need at least one channel")
    if z_user is None:
        return np.asarray(z_tag, dtype=np.float64)
    if z_tag is None:
        return np.asarray(z_user, dtype=np.float64)
    return beta * np.asarray(z_user, np.float64) + (1.0 - beta) * np.asarray(z_tag, np.float64)


def plan_slots(k: int, beta: float, n_tags: int, per_tag_quota: int | None = None) -> tuple[int, int]:
    """(slots reserved for the tag channel, most slots one tag may take).

    β=0 reserves all k, β=1 none, otherwise ``round((1-β)·k)``. The per-tag quota defaults to an even
    split of those slots (rounded up); ``per_tag_quota`` overrides it (a larger quota lets tags compete
    for the channel's slots by fused score)."""
    if n_tags <= 0:
        return 0, 0
    tag_slots = k if beta <= 0 else int(round((1.0 - beta) * k))
    if tag_slots <= 0:
        return 0, 0
    if per_tag_quota is not None:
        return tag_slots, min(per_tag_quota, tag_slots)
    return tag_slots, max(1, math.ceil(tag_slots / n_tags))


def quota_merge(fused: np.ndarray, tag_lists: Sequence[Sequence[int]], k: int, tag_slots: int, quota: int, *,
                user_list: Sequence[int] = (), user_scores: np.ndarray | None = None,
                allowed: np.ndarray | None = None) -> list[int]:
    """Pick ``k`` positions into ``fused`` by union with per-channel quotas.

    1. The user channel fills ``k - tag_slots`` slots with its own candidates (``user_list``) in its own
       order (``user_scores`` descending).
    2. The tag channel fills ``tag_slots`` slots from the union of the tag lists in fused-score order,
       each tag taking at most ``quota`` (an item found by several tags counts for the first of them
       still under quota).
    3. Slots a channel could not fill go to the best fused scores of everything left.

    Returned in fused-score order (ties: lower position first). ``allowed`` masks excluded positions."""
    order = np.lexsort((np.arange(len(fused)), -fused))
    rank = np.empty(len(fused), dtype=np.int64)
    rank[order] = np.arange(len(fused))
    ok = np.ones(len(fused), bool) if allowed is None else allowed
    chosen: list[int] = []
    taken = np.zeros(len(fused), bool)

    def take(p: int) -> None:
        taken[p] = True
        chosen.append(int(p))

    user_slots = k - min(tag_slots, k)
    if user_slots > 0 and len(user_list):
        us = user_scores if user_scores is not None else fused
        for p in sorted(user_list, key=lambda p: (-us[p], p)):
            if len(chosen) >= user_slots:
                break
            if ok[p] and not taken[p]:
                take(p)
    if tag_slots > 0 and quota > 0:
        owners: dict[int, list[int]] = {}
        for t, lst in enumerate(tag_lists):
            for p in lst:
                owners.setdefault(int(p), []).append(t)
        got = [0] * len(tag_lists)
        n_tag = 0
        for p in sorted(owners, key=lambda p: rank[p]):
            if n_tag >= tag_slots or len(chosen) >= k:
                break
            if not ok[p] or taken[p]:
                continue
            t = next((t for t in owners[p] if got[t] < quota), None)
            if t is not None:
                take(p)
                got[t] += 1
                n_tag += 1
    for p in order:
        if len(chosen) >= k:
            break
        if ok[p] and not taken[p]:
            take(p)
    return sorted(chosen, key=lambda p: rank[p])


def clean_tags(tags: Sequence[str] | None, *, allow_empty: bool = False) -> tuple[list[str], list[str]]:
    """Strip, collapse spaces, drop blanks, de-duplicate case-insensitively; returns (tags, flags).
    ``allow_empty`` (collaborative-only requests, β = 1) accepts an empty list."""
    if tags is None or isinstance(tags, str):
        raise EmptyTagsError("tags must be a list of strings" if isinstance(tags, str) else
                             "tags must contain at least one non-blank tag")
    out: list[str] = []
    seen: set[str] = set()
    flags = []
    blanks = 0
    for t in tags:
        s = " ".join(str(t).split())
        if not s:
            blanks += 1
            continue
        if s.lower() in seen:
            continue
        seen.add(s.lower())
        out.append(s)
    if blanks:
        flags.append(f"dropped_blank_tags:{blanks}")
    if len(out) < len(tags) - blanks:
        flags.append("merged_duplicate_tags")
    if not out and not allow_empty:
        raise EmptyTagsError()
    return out, flags


# ----- the retriever ----------------------------------------------------------------------------------

class Retriever:
    def __init__(self, *, index: ItemIndex, user_ids: list[str], user_vecs: np.ndarray, tag_tower: TagTower,
                 encoder: TextEncoder, titles: list[str], categories: list[str], settings: RetrievalSettings,
                 config: dict, directory: Path | None = None, user_item_ptr: np.ndarray | None = None,
                 user_item_idx: np.ndarray | None = None, repeat: RepeatScores | None = None,
                 split: ChannelSplit | None = None, paths: list[str] | None = None):
        self.index = index
        self.paths = paths if paths is not None else [""] * len(titles)
        self._interests = None
        self.repeat = repeat
        self.split = split
        self.settings = settings
        self.config = config
        self.directory = directory
        self.user_ids = list(user_ids)
        self._user_code = {u: i for i, u in enumerate(self.user_ids)}
        self.user_vecs = user_vecs
        self.user_item_ptr = user_item_ptr if user_item_ptr is not None else np.zeros(len(user_ids) + 1, np.int64)
        self.user_item_idx = user_item_idx if user_item_idx is not None else np.zeros(0, np.int64)
        self.tag_tower = tag_tower.eval()
        self.encoder = encoder
        self.titles = titles
        self.categories = categories
        self.item_vecs = index.vectors()
        self.mu, self.cov = catalogue_moments(self.item_vecs)
        self._item_code = {s: i for i, s in enumerate(index.item_ids)}

    def with_serving(self, **updates) -> Retriever:
        """A shallow copy sharing the index and vectors, with different serving settings
        (``beta``, ``per_tag_quota``, ``overfetch``, ``tag_new_items_only``, ``merge``)."""
        bad = set(updates) - SERVING_FIELDS
        if bad:
            raise RetrievalInputError(f"only serving settings can change without a rebuild, not {sorted(bad)}")
        other = copy.copy(self)
        other.settings = RetrievalSettings.model_validate(self.settings.model_dump() | updates)
        if "channel_split_path" in updates:
            other.split = load_channel_split(other.settings)
        return other

    # ----- properties ------------------------------------------------------------------------------
    @property
    def model_hash(self) -> str:
        return self.index.model_hash

    @property
    def item_ids(self) -> list[str]:
        return self.index.item_ids

    def knows_user(self, user_id: str) -> bool:
        return user_id in self._user_code

    def user_vector(self, user_id: str) -> np.ndarray | None:
        c = self._user_code.get(user_id)
        return None if c is None else self.user_vecs[c]

    def seen_items(self, user_id: str) -> np.ndarray:
        """Catalogue codes the user interacted with in the training slice (before the cutoff)."""
        c = self._user_code.get(user_id)
        if c is None:
            return np.zeros(0, dtype=np.int64)
        return self.user_item_idx[self.user_item_ptr[c]:self.user_item_ptr[c + 1]]

    def use_tifu(self, dataset: Dataset, params: TifuParams) -> None:
        """Serve the repeat channel with these TIFU-KNN parameters (cached like the defaults); a no-op
        when the loaded scores already use them."""
        if self.repeat is None or self.repeat.params != params:
            self.repeat = load_repeat_scores(self.directory, dataset, self.settings, self.config, self.item_ids,
                                             params=params)

    def interest_evidence(self, user_id: str, now: datetime | None = None) -> list[str]:
        """The user's HiSAC interest agents in words ("Cold Cereal: 18% of purchases"), strongest first
        (``retrieval/interests.py``); the graph hands them to the planner. [] without purchase histories,
        and for a run "as of" ``now`` before the end of the history the index was built on (it would
        leak the future into the prompt)."""
        if self.repeat is None:
            return []
        if now is not None and now.timestamp() // 86400 < self.repeat.as_of_day:
            return []
        if self._interests is None:
            from retrieval.interests import InterestChannel  # it imports this module

            self._interests = InterestChannel(self)
        shares: dict[str, float] = {}
        for a in self._interests.describe(user_id):  # two cells can share a majority category: one line
            shares[a.label] = shares.get(a.label, 0.0) + a.share
        return [f"{label}: {share:.0%} of purchases" for label, share in sorted(shares.items(), key=lambda x: -x[1])]

    @torch.no_grad()
    def tag_vectors(self, tags: Sequence[str]) -> np.ndarray:
        emb = self.encoder.encode(list(tags))
        if len(emb) == 0:
            return np.zeros((0, self.index.dim), dtype=np.float32)
        return self.tag_tower(torch.from_numpy(emb)).numpy().astype(np.float32)

    # ----- search ----------------------------------------------------------------------------------
    def search(self, user_id: str, tags: list[str], k: int, *, beta: float | None = None,
               per_tag_quota: int | None = None, exclude_items: set[str] | None = None,
               new_items_only: bool | None = None, min_discovery_share: float | None = None) -> SearchResult:
        """Search for one user; see the module docstring. ``new_items_only`` overrides the
        ``tag_new_items_only`` setting and ``min_discovery_share`` the split model's discovery floor
        for this call."""
        return self.search_batch([user_id], [tags], k, beta=beta, per_tag_quota=per_tag_quota,
                                 exclude_items=[exclude_items] if exclude_items else None,
                                 new_items_only=new_items_only, min_discovery_share=min_discovery_share)[0]

    def search_batch(self, user_ids: Sequence[str], tags: Sequence[Sequence[str]], k: int, *,
                     beta: float | None = None, per_tag_quota: int | None = None,
                     exclude_items: Sequence[set[str] | None] | None = None,
                     new_items_only: bool | None = None, min_discovery_share: float | None = None
                     ) -> list[SearchResult]:
        """``search`` for many requests at once (one FAISS call per channel for the whole batch)."""
        b = self.settings.beta if beta is None else beta
        if min_discovery_share is not None and not 0.0 <= min_discovery_share <= 1.0:
            raise RetrievalInputError(f"min_discovery_share must be in [0, 1], got {min_discovery_share}")
        if not (self.settings.repeat_channel and self.repeat is not None and self.split is not None) or b == 0:
            res = self._fused_batch(user_ids, tags, k, beta=beta, per_tag_quota=per_tag_quota,
                                    exclude_items=exclude_items, new_items_only=new_items_only)
            if self.settings.repeat_channel and b != 0:
                for r in res:
                    r.flags.append("no_repeat_channel")
            return res
        excl = list(exclude_items) if exclude_items is not None else [None] * len(user_ids)
        if len(excl) != len(user_ids):
            raise RetrievalInputError("exclude_items must have one entry per user")
        # discovery: the fused channels with every item the user bought excluded
        repeats = [self.repeat.candidates(u) for u in user_ids]  # empty for a user without purchases
        disc_excl = [set(ex or ()) | {self.index.item_ids[c] for c in rep[0]} for ex, rep in zip(excl, repeats, strict=True)]
        disc = self._fused_batch(user_ids, tags, k, beta=beta, per_tag_quota=per_tag_quota, exclude_items=disc_excl,
                                 new_items_only=new_items_only)
        split = self.split if min_discovery_share is None else \
            dataclasses.replace(self.split, min_discovery_share=float(min_discovery_share))
        out = []
        for uid, ex, rep, d in zip(user_ids, excl, repeats, disc, strict=True):
            feats = self.repeat.user_features(uid)
            if feats is None:  # no purchase before the cutoff: discovery only
                for c in d.candidates:
                    c.channel = "discovery"
                out.append(SearchResult(candidates=d.candidates, user_known=d.user_known,
                                        flags=[*d.flags, "no_repeat_history"]))
                continue
            ex_codes = {self._item_code[i] for i in (ex or ()) if i in self._item_code}
            codes, scores, pairs = rep
            keep = np.array([int(c) not in ex_codes for c in codes], dtype=bool)
            rep = [(int(c), float(s)) for c, s in zip(codes[keep], scores[keep], strict=True)]
            by_code = {self._item_code[c.item_id]: c for c in d.candidates}
            merged = split.merge(rep, [(self._item_code[c.item_id], c.score) for c in d.candidates], feats,
                                 min(k, len(self.index)), repeat_pairs=pairs[keep])
            rep_score = dict(rep)
            cands = []
            for code, channel, prob in merged:
                if channel == "discovery":
                    c = by_code[code]
                    c.channel, c.probability = "discovery", prob
                else:
                    c = Candidate(item_id=self.index.item_ids[code], title=self.titles[code],
                                  category=self.categories[code], score=rep_score[code], sources=["repeat"],
                                  channel="repeat", probability=prob)
                cands.append(c)
            flags = [f for f in d.flags if not f.startswith(("short_result", "excluded_items"))]
            if ex_codes:
                flags.append(f"excluded_items:{len(ex_codes)}")
            if len(cands) < k:
                flags.append(f"short_result:{len(cands)}")
            out.append(SearchResult(candidates=cands, user_known=d.user_known, flags=flags))
        return out

    def _fused_batch(self, user_ids: Sequence[str], tags: Sequence[Sequence[str]], k: int, *,
                     beta: float | None = None, per_tag_quota: int | None = None,
                     exclude_items: Sequence[set[str] | None] | None = None,
                     new_items_only: bool | None = None) -> list[SearchResult]:
        """The user and tag channels fused (module docstring, steps 1-5)."""
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)):
            raise RetrievalInputError(f"k must be a positive integer, got {k!r}")
        if k <= 0:
            raise RetrievalInputError(f"k must be a positive integer, got {k}")
        beta = self.settings.beta if beta is None else float(beta)
        if not 0.0 <= beta <= 1.0 or math.isnan(beta):
            raise RetrievalInputError(f"beta must be in [0, 1], got {beta}")
        quota_override = self.settings.per_tag_quota if per_tag_quota is None else per_tag_quota
        if quota_override is not None and (isinstance(quota_override, bool) or int(quota_override) < 1):
            raise RetrievalInputError(f"per_tag_quota must be a positive integer, got {quota_override!r}")
        if len(user_ids) != len(tags):
            raise RetrievalInputError("user_ids and tags must have the same length")
        excl = list(exclude_items) if exclude_items is not None else [None] * len(user_ids)
        novel = self.settings.tag_new_items_only if new_items_only is None else bool(new_items_only)
        n_items = len(self.index)
        k_eff = min(int(k), n_items)
        over = self.settings.overfetch

        reqs = []
        for uid, tg, ex in zip(user_ids, tags, excl, strict=True):
            known = self.knows_user(uid)
            # no tags is a valid request only when it asks for the user channel alone (β = 1) of a known
            # user: the graph's documented collaborative-only fallback
            clean, flags = clean_tags(tg, allow_empty=beta == 1.0 and known)
            if not clean:
                flags = ["collaborative_only", *flags]
            ex_codes = {self._item_code[i] for i in (ex or ()) if i in self._item_code}
            b = beta if known else 0.0
            if not known:
                flags = ["unknown_user", "tag_channel_only", *flags]
            if k_eff < k:
                flags.append(f"k_capped_to_catalogue:{k_eff}")
            tag_slots, quota = plan_slots(k_eff, b, len(clean), quota_override)
            seen = self.seen_items(uid) if (novel and known) else np.zeros(0, np.int64)
            reqs.append({"user": uid, "tags": clean, "flags": flags, "excl": ex_codes, "known": known,
                         "beta": b, "tag_slots": tag_slots, "quota": quota, "seen": seen})

        # --- user channel: one FAISS call for every known user that has weight on it ---
        u_rows = [i for i, r in enumerate(reqs) if r["known"]]
        u_hits: dict[int, np.ndarray] = {}
        if u_rows:
            q = np.stack([self.user_vecs[self._user_code[reqs[i]["user"]]] for i in u_rows])
            fetch = k_eff * over + max(len(reqs[i]["excl"]) for i in u_rows)
            _, ids = self.index.search(q, fetch)
            for j, i in enumerate(u_rows):
                if reqs[i]["beta"] > 0:
                    u_hits[i] = ids[j][ids[j] >= 0]
        # --- tag channel: one FAISS call for every distinct tag ---
        all_tags = list(dict.fromkeys(t for r in reqs for t in r["tags"]))
        tvecs = self.tag_vectors(all_tags)
        tpos = {t: j for j, t in enumerate(all_tags)}
        t_rows = [r for r in reqs if r["tag_slots"] > 0]
        t_hits: dict[str, np.ndarray] = {}
        if t_rows:
            fetch = max(r["quota"] * over + len(r["excl"]) + len(r["seen"]) for r in t_rows)
            need = list(dict.fromkeys(t for r in t_rows for t in r["tags"]))
            _, ids = self.index.search(tvecs[[tpos[t] for t in need]], fetch)
            t_hits = {t: ids[j][ids[j] >= 0] for j, t in enumerate(need)}

        out = []
        for i, r in enumerate(reqs):
            out.append(self._merge(r, u_hits.get(i), t_hits, tvecs[[tpos[t] for t in r["tags"]]], k_eff))
        return out

    def _merge(self, r: dict, u_ids: np.ndarray | None, t_hits: dict[str, np.ndarray], tv: np.ndarray,
               k: int) -> SearchResult:
        quota = r["quota"]
        want_t = quota * self.settings.overfetch
        cand: dict[int, dict] = {}
        if u_ids is not None:
            for c in u_ids:
                cand.setdefault(int(c), {"tags": [], "src": []})["src"].append("user")
        skip = set(r["excl"]) | {int(c) for c in r["seen"]}
        tag_lists_codes: list[list[int]] = []
        if r["tag_slots"] > 0:
            for t in r["tags"]:
                lst = [int(c) for c in t_hits[t] if int(c) not in skip][:want_t]
                tag_lists_codes.append(lst)
                for c in lst:
                    e = cand.setdefault(c, {"tags": [], "src": []})
                    e["tags"].append(t)
                    if "tag" not in e["src"]:
                        e["src"].append("tag")
        codes = np.fromiter(cand, dtype=np.int64, count=len(cand))
        if len(codes) == 0:
            return SearchResult(candidates=[], user_known=r["known"], flags=[*r["flags"], "no_candidates"])
        V = self.item_vecs[codes]
        if r["tags"]:
            raw_t = V @ tv.T  # (n_cand, n_tags)
            z_t_all = zscores(raw_t, tv, self.mu, self.cov)
            best = z_t_all.argmax(axis=1)
            z_t = z_t_all[np.arange(len(codes)), best]
            raw_t_best = raw_t[np.arange(len(codes)), best]
        else:  # collaborative-only request (β = 1): the tag term has weight 0
            z_t, raw_t_best = np.zeros(len(codes)), None
        if r["known"]:
            u = self.user_vecs[self._user_code[r["user"]]]
            raw_u = V @ u
            z_u = zscores(raw_u[:, None], u[None, :], self.mu, self.cov)[:, 0]
        else:
            raw_u = z_u = None
        fused = fuse(z_u, z_t, r["beta"])
        pos = {int(c): j for j, c in enumerate(codes)}
        allowed = np.array([int(c) not in r["excl"] for c in codes], dtype=bool)
        if self.settings.merge == "sum":
            chosen = quota_merge(fused, [], k, 0, 0, allowed=allowed)
        else:
            user_list = [pos[int(c)] for c in u_ids] if u_ids is not None else []
            chosen = quota_merge(fused, [[pos[c] for c in lst] for lst in tag_lists_codes], k, r["tag_slots"],
                                 quota, user_list=user_list, user_scores=z_u, allowed=allowed)
        cands = []
        for p in chosen:
            c = int(codes[p])
            e = cand[c]
            cands.append(Candidate(
                item_id=self.index.item_ids[c], title=self.titles[c], category=self.categories[c],
                score=float(fused[p]), user_score=None if raw_u is None else float(raw_u[p]),
                tag_score=None if raw_t_best is None else float(raw_t_best[p]), tags=e["tags"],
                sources=[s for s in ("user", "tag") if s in e["src"]]))
        flags = list(r["flags"])
        if r["excl"]:
            flags.append(f"excluded_items:{len(r['excl'])}")
        if len(cands) < k:
            flags.append(f"short_result:{len(cands)}")
        return SearchResult(candidates=cands, user_known=r["known"], flags=flags)

    # ----- persistence -----------------------------------------------------------------------------
    @classmethod
    def load(cls, directory: str | Path, dataset: Dataset | None = None, *,
             settings: RetrievalSettings | None = None, encoder: TextEncoder | None = None) -> Retriever:
        directory = Path(directory)
        cfg_path = directory / "config.json"
        try:
            config = json.loads(cfg_path.read_text(encoding="utf-8"))
            stored = RetrievalSettings.model_validate(config["settings"])
        except FileNotFoundError:
            raise CorruptIndexError(directory, "config.json is missing") from None
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptIndexError(directory, f"unreadable config.json ({e})") from None
        if settings is not None:  # serving fields may differ from the build
            stored = stored.model_copy(update={k: getattr(settings, k) for k in
                                               SERVING_FIELDS})
        towers = directory / "towers.safetensors"
        if not towers.exists():
            raise CorruptIndexError(directory, "towers.safetensors is missing")
        model_hash = sha256_file(towers)
        if config.get("model_hash") != model_hash:
            raise IndexMismatchError(directory, "towers.safetensors differs from the one config.json records")
        index = ItemIndex.load(directory / "items.faiss", expected_model_hash=model_hash)
        try:
            state = load_file(str(towers))
            user_file = load_file(str(directory / "users.safetensors"))
            users = user_file["user_vectors"].numpy()
            item_ptr, item_idx = user_file["item_ptr"].numpy(), user_file["item_idx"].numpy()
            tag_emb = load_file(str(directory / "tags.safetensors"))["embeddings"].numpy()
            user_ids = json.loads((directory / "users.json").read_text(encoding="utf-8"))
            tag_texts = json.loads((directory / "tags.json").read_text(encoding="utf-8"))
        except (OSError, ValueError, KeyError, SafetensorError) as e:
            raise CorruptIndexError(directory, f"unreadable artifact ({type(e).__name__}: {e})") from None
        if users.shape != (len(user_ids), index.dim):
            raise IndexMismatchError(directory, f"user vectors {users.shape} vs {len(user_ids)} users, dim {index.dim}")
        tower = TagTower(int(config["text_dim"]), hidden=stored.hidden, dim=stored.dim)
        tower.load_state_dict({k[4:]: v for k, v in state.items() if k.startswith("tag.")})
        if stored.num_threads:
            torch.set_num_threads(stored.num_threads)
            import faiss
            faiss.omp_set_num_threads(stored.num_threads)
        enc = encoder or TextEncoder(stored.text_model)
        enc.remember(tag_texts, tag_emb)
        titles, cats, paths = _item_text_columns(dataset, index.item_ids)
        if len(item_ptr) != len(user_ids) + 1 or (len(item_idx) and item_idx.max() >= len(index)):
            raise IndexMismatchError(directory, "per-user item lists do not match the users or the index")
        repeat = load_repeat_scores(directory, dataset, stored, config, index.item_ids) if dataset is not None else None
        return cls(index=index, user_ids=user_ids, user_vecs=users, tag_tower=tower, encoder=enc, titles=titles, paths=paths,
                   categories=cats, settings=stored, config=config, directory=directory, user_item_ptr=item_ptr,
                   user_item_idx=item_idx, repeat=repeat, split=load_channel_split(stored))


def load_channel_split(settings: RetrievalSettings) -> ChannelSplit:
    """The channel split model the settings name (the packaged, validation-fitted one by default)."""
    return ChannelSplit.load(settings.channel_split_path or DEFAULT_SPLIT_PATH)


def load_repeat_scores(directory: Path, dataset: Dataset, settings: RetrievalSettings, config: dict,
                       item_ids: list[str], params: TifuParams | None = None) -> RepeatScores:
    """The repeat channel's TIFU-KNN scores as of the build's cutoff: cached beside the index
    (``repeat.safetensors`` + ``repeat.json``), computed from the dataset on first use."""
    params = params or TifuParams()
    key = hashlib.sha256(json.dumps({"format": 2, "params": params.as_dict(), "model": config.get("model_hash"),
                                     "data": config.get("fingerprint"), "cutoff": str(settings.cutoff),
                                     "max_users": settings.max_users}, sort_keys=True).encode()).hexdigest()[:16]
    path = directory / "repeat.safetensors"
    cached = RepeatScores.load(path, key)
    if cached is not None:
        return cached
    t0 = time.perf_counter()
    behaviors = slice_behaviors(dataset, settings)
    if settings.cutoff is not None:
        as_of = int(settings.cutoff.timestamp() // 86400)
    else:  # the whole log: it ends on its last day
        as_of = int(behaviors["ts"].max().timestamp() // 86400) + 1 if behaviors.height else 0
    scores = RepeatScores.compute(behaviors, item_ids, params, as_of_day=as_of)
    try:
        scores.save(path, key)
    except OSError as e:  # a read-only artifact folder still serves, recomputing next time
        log.warning("repeat scores not cached", directory=str(directory), error=str(e))
    log.info("repeat scores computed", users=len(scores.user_ids), seconds=round(time.perf_counter() - t0, 2))
    return scores


def _item_text_columns(dataset: Dataset | None, item_ids: list[str]) -> tuple[list[str], list[str], list[str]]:
    """Titles, categories and category paths in index order ("" where missing)."""
    if dataset is None:
        return [""] * len(item_ids), [""] * len(item_ids), [""] * len(item_ids)
    df = pl.DataFrame({"item_id": item_ids}).join(
        dataset.items.select("item_id", "title", "category", "category_path"), on="item_id", how="left",
        maintain_order="left")
    return tuple(df[c].fill_null("").to_list() for c in ("title", "category", "category_path"))


# ----- build / cache ----------------------------------------------------------------------------------

def dataset_fingerprint(dataset: Dataset, settings: RetrievalSettings) -> str:
    b = dataset.behaviors
    parts = [dataset.name, str(dataset.items.height), str(b.height)]
    if b.height:
        parts += [str(b["ts"].min()), str(b["ts"].max())]
    if settings.llm_tags_path:
        p = Path(settings.llm_tags_path)
        parts.append(sha256_file(p) if p.exists() else "missing")
    return "|".join(parts)


def artifact_dir(dataset: Dataset, settings: RetrievalSettings, root: Path | None = None) -> Path:
    key = settings.build_key(dataset_fingerprint(dataset, settings))
    safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", dataset.name)[:40]
    return (root or data_dir() / "retrieval") / f"{safe}-{key}"


def slice_behaviors(dataset: Dataset, settings: RetrievalSettings) -> pl.DataFrame:
    """The behaviour rows the towers train on: before the cutoff, optionally a seeded user sample."""
    b = dataset.behaviors
    if settings.cutoff is not None:
        b = b.filter(pl.col("ts") < settings.cutoff)
    if settings.max_users is not None:
        counts = b.group_by("user_id").len().filter(pl.col("len") >= settings.min_user_events).sort("user_id")
        users = counts["user_id"].to_list()
        if len(users) > settings.max_users:
            rng = np.random.default_rng(settings.seed)
            users = sorted(rng.choice(np.array(users, dtype=object), size=settings.max_users, replace=False).tolist())
        b = b.filter(pl.col("user_id").is_in(users))
    return b


def build_retriever(dataset: Dataset, settings: RetrievalSettings, directory: Path, *, progress: bool = True,
                    encoder: TextEncoder | None = None) -> Retriever:
    t_start = time.perf_counter()
    behaviors = slice_behaviors(dataset, settings)
    if behaviors.height < 2:
        raise DataError(f"dataset {dataset.name!r} has {behaviors.height} behaviour rows before the cutoff; "
                        "need at least 2 to train the towers")
    items = dataset.items
    if settings.catalogue == "seen":
        items = items.filter(pl.col("item_id").is_in(behaviors["item_id"].unique().implode()))
    catalogue = build_catalogue(items, text_source=settings.item_text)
    llm_pairs_used = 0
    if settings.llm_tags_path:
        llm_pairs_used = add_tag_pairs(catalogue, load_llm_tag_pairs(settings.llm_tags_path))
    enc = encoder or TextEncoder(settings.text_model, progress=progress)
    t0 = time.perf_counter()
    text_table = enc.encode_cached(catalogue.texts)
    tags = TagTable.from_catalogue(catalogue, enc.encode_cached)
    t_text = time.perf_counter() - t0
    inter = build_interactions(behaviors, catalogue.code_map(), len(catalogue), dataset.weights)
    model, train_log = train_towers(catalogue, inter, text_table, tags, settings, progress=progress)

    directory.mkdir(parents=True, exist_ok=True)
    towers = directory / "towers.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(towers))
    model_hash = sha256_file(towers)
    ItemIndex.build(item_vectors(model, len(catalogue)), catalogue.item_ids, model_hash).save(directory / "items.faiss")
    ptr, idx = inter.user_item_lists()
    save_file({"user_vectors": torch.from_numpy(user_vectors(model, inter, settings)), "item_ptr": torch.from_numpy(ptr),
               "item_idx": torch.from_numpy(idx)}, str(directory / "users.safetensors"))
    (directory / "users.json").write_text(json.dumps(inter.user_ids), encoding="utf-8")
    save_file({"embeddings": torch.from_numpy(tags.embeddings)}, str(directory / "tags.safetensors"))
    (directory / "tags.json").write_text(json.dumps(tags.texts), encoding="utf-8")
    config = {
        "dataset": dataset.name,
        "fingerprint": dataset_fingerprint(dataset, settings),
        "settings": settings.model_dump(mode="json"),
        "model_hash": model_hash,
        "text_model": settings.text_model,
        "text_dim": int(text_table.shape[1]),
        "n_items": len(catalogue),
        "n_users": len(inter.user_ids),
        "n_train_rows": len(inter),
        "behavior_types": inter.types,
        "n_item_texts": len(catalogue.texts),
        "item_text": catalogue.text_source,
        "n_tags": len(tags.texts),
        "llm_tag_pairs_used": llm_pairs_used,
        "text_embedding_seconds": round(t_text, 2),
        "train": train_log.as_dict(),
        "build_seconds": round(time.perf_counter() - t_start, 2),
        "built_at": datetime.now().isoformat(timespec="seconds"),
    }
    (directory / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    log.info("retriever built", directory=str(directory), seconds=config["build_seconds"])
    return Retriever.load(directory, dataset, settings=settings, encoder=enc)


def load_or_build_retriever(dataset: Dataset, settings: RetrievalSettings | None = None, progress: bool = True, *,
                            root: Path | None = None, rebuild: bool = False,
                            encoder: TextEncoder | None = None) -> Retriever:
    """Load the retriever cached for this dataset and these build settings, building it if missing.

    A cached build that is corrupt or mismatched raises a clear error (rebuild with ``rebuild=True`` or
    ``app.py index build --rebuild``) rather than being silently replaced.

    The check and the build hold an inter-process file lock beside the build's folder, so the workers
    of a batch that start on a cold cache build it once: the first builds, the others wait and load."""
    from filelock import FileLock

    settings = settings or RetrievalSettings()
    directory = artifact_dir(dataset, settings, root)
    directory.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(directory) + ".lock"):
        if not rebuild and (directory / "config.json").exists():
            return Retriever.load(directory, dataset, settings=settings, encoder=encoder)
        return build_retriever(dataset, settings, directory, progress=progress, encoder=encoder)
