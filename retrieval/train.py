"""Training the three towers (kept apart from serving, as in torchrec's two-tower example).

* Fixed seeds (python, numpy, torch) from ``RetrievalSettings.seed``; batches are a seeded
  permutation of the behaviour rows, and each row's tag is drawn from its item's tags with the same
  seeded generator, so a rebuild with the same data and settings gives the same weights.
* One example per behaviour row before the cutoff, weighted by the behaviour type's confidence weight.
* Tag–item pairs for ``L_tag`` / ``L_cate`` come from the batch itself: each row's item contributes one
  of its tags (catalogue bootstrap tag, or an LLM tag from logged runs). Pairs therefore follow the
  purchase distribution. ``L_tag`` has a single positive, the item the tag was drawn for, so other
  items of the same tag in the batch are negatives: with logQ the tag tower then learns
  ``p(item | tag)`` and ranks items *within* a tag by how likely they are to be bought. (A first
  version counted every same-tag item as a positive; the tag loss fell to ~0.3 in one epoch because
  matching a tag to its own category path is trivial, and within-tag order stayed arbitrary: the
  tag-only variant then had explore Recall@50 0.016, below popularity.) ``L_cate`` is the coarse term:
  every batch item of the tag's category is a positive.
* A term with nothing to learn from is off (:func:`loss_terms`): ``L_tag`` when no trained item has a
  tag, ``L_cate`` with fewer than two categories. The log's ``loss_terms`` says which ran and why.
* Progress bars are tqdm; the per-epoch losses, wall time and samples/s are returned as a log.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from tqdm.auto import tqdm

from core.cpus import physical_cores
from retrieval.catalogue import Catalogue
from retrieval.data import Interactions
from retrieval.settings import RetrievalSettings
from retrieval.towers import (
    ThreeTower,
    diagonal_softmax_loss,
    inbatch_logits,
    softmax_loss_from_logits,
    sparse_parameters,
)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@dataclass
class TagTable:
    """Distinct tag texts, their MiniLM embeddings, and each item's tags as a CSR list."""

    texts: list[str]
    embeddings: np.ndarray  # (n_tags, 384)
    ptr: np.ndarray  # (n_items + 1,)
    ids: np.ndarray  # (nnz,)

    @classmethod
    def from_catalogue(cls, catalogue: Catalogue, embed) -> TagTable:
        texts = sorted({t for ts in catalogue.tags for t in ts})
        index = {t: i for i, t in enumerate(texts)}
        counts = np.array([len(ts) for ts in catalogue.tags], dtype=np.int64)
        ptr = np.concatenate([[0], np.cumsum(counts)])
        ids = np.fromiter((index[t] for ts in catalogue.tags for t in ts), dtype=np.int64, count=int(ptr[-1]))
        return cls(texts=texts, embeddings=embed(texts), ptr=ptr, ids=ids)

    def sample(self, items: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """One tag id per item (-1 where the item has no tag)."""
        if len(self.ids) == 0:
            return np.full(len(items), -1, dtype=np.int64)
        start, count = self.ptr[items], self.ptr[items + 1] - self.ptr[items]
        pick = start + np.floor(rng.random(len(items)) * np.maximum(count, 1)).astype(np.int64)
        return np.where(count > 0, self.ids[np.minimum(pick, len(self.ids) - 1)], -1)


def loss_terms(catalogue: Catalogue, inter: Interactions, tags: TagTable) -> dict[str, dict]:
    """Which loss terms train, and why, judged on the items of the training rows.

    ``L_tag`` needs tagged items. ``L_cate`` needs at least two categories: with none its positives
    are only the tag's own item (a copy of ``L_tag``), with one they are the whole batch (loss 0)."""
    items = np.unique(inter.item)
    n_tagged = int(((tags.ptr[items + 1] - tags.ptr[items]) > 0).sum())
    codes = np.unique(catalogue.category_codes[items])
    n_cats = int((codes > 0).sum())
    terms = {"col": {"active": True, "reason": f"{len(inter)} behaviour rows of {len(inter.user_ids)} users"}}
    terms["tag"] = ({"active": True, "reason": f"{n_tagged} of {len(items)} trained items have tags"} if n_tagged
                    else {"active": False, "reason": "no trained item has a tag (no title, category or LLM tag)"})
    if not n_tagged:
        terms["cate"] = {"active": False, "reason": "no tags (see tag)"}
    elif n_cats < 2:
        what = "no category" if n_cats == 0 else "a single category"
        terms["cate"] = {"active": False, "reason": f"the trained items have {what}: nothing to tell apart"}
    else:
        terms["cate"] = {"active": True, "reason": f"{n_cats} categories among the trained items"}
    return terms


@dataclass
class TrainLog:
    epochs: list[dict] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)  # mean loss per block of `block` steps
    block: int = 10
    samples: int = 0
    seconds: float = 0.0
    loss_terms: dict[str, dict] = field(default_factory=dict)  # term -> {"active", "reason"}

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict:
        return {"epochs": self.epochs, "step_losses": self.step_losses, "block": self.block,
                "samples": self.samples, "seconds": round(self.seconds, 3),
                "samples_per_s": round(self.samples_per_s, 1), "loss_terms": self.loss_terms}


def make_model(catalogue: Catalogue, inter: Interactions, text_table: np.ndarray,
               settings: RetrievalSettings) -> ThreeTower:
    return ThreeTower(
        n_users=len(inter.user_ids), n_types=max(len(inter.types), 1), n_items=len(catalogue),
        attr_sizes=catalogue.attr_sizes, text_table=torch.from_numpy(text_table),
        text_index=torch.from_numpy(catalogue.text_index), attr_codes=torch.from_numpy(catalogue.attr_codes),
        text_dim=text_table.shape[1], id_dim=settings.id_dim, hidden=settings.hidden, dim=settings.dim)


def _histories(inter: Interactions, users: np.ndarray, seconds: np.ndarray | None, length: int) -> list[torch.Tensor]:
    hs = inter.history_window(users, seconds, length)
    if not hs:  # no behaviour types at all: one empty history so the tower shape stays fixed
        hs = [np.zeros((len(users), length), dtype=np.int64)]
    return [torch.from_numpy(h) for h in hs]


def train_towers(catalogue: Catalogue, inter: Interactions, text_table: np.ndarray, tags: TagTable,
                 settings: RetrievalSettings, *, progress: bool = True) -> tuple[ThreeTower, TrainLog]:
    if len(inter) < 2:
        raise ValueError("need at least two behaviour rows to train the towers")
    seed_everything(settings.seed)
    torch.set_num_threads(settings.num_threads or physical_cores())
    rng = np.random.default_rng(settings.seed)
    model = make_model(catalogue, inter, text_table, settings)
    sparse, dense = sparse_parameters(model)
    opts = [torch.optim.Adam(dense, lr=settings.lr, fused=True)] + ([torch.optim.SparseAdam(sparse, lr=settings.lr)] if sparse else [])
    freq = inter.item_freq
    log_q_all = torch.from_numpy(np.log(np.maximum(freq, 1.0) / max(freq.sum(), 1.0))).float()
    tag_emb = torch.from_numpy(tags.embeddings).float()
    cat_codes = torch.from_numpy(catalogue.category_codes)
    bs = min(settings.batch_size, len(inter))
    n_batches = max(len(inter) // bs, 1)
    log = TrainLog(loss_terms=loss_terms(catalogue, inter, tags))
    use_tag, use_cate = (log.loss_terms[t]["active"] for t in ("tag", "cate"))
    block: list[float] = []
    for epoch in range(settings.epochs):
        model.train()
        perm = rng.permutation(len(inter))
        sums = {"loss": 0.0, "col": 0.0, "tag": 0.0, "cate": 0.0}
        t0 = time.perf_counter()
        bar = tqdm(range(n_batches), desc=f"towers epoch {epoch + 1}/{settings.epochs}", disable=not progress,
                   leave=False, unit="batch")
        for b in bar:
            rows = perm[b * bs:(b + 1) * bs]
            items_np = inter.item[rows]
            items = torch.from_numpy(items_np)
            users = torch.from_numpy(inter.user[rows])
            hist = _histories(inter, inter.user[rows], inter.seconds[rows], settings.max_history)
            weight = torch.from_numpy(inter.weight[rows])
            u = model.user(users, hist)
            v = model.item(items)
            log_q = log_q_all[items] if settings.logq else None
            tag_log_q = log_q * settings.tag_logq if (log_q is not None and settings.tag_logq > 0) else None
            same_item = items.unsqueeze(0) == items.unsqueeze(1)
            l_col = diagonal_softmax_loss(inbatch_logits(u, v, temperature=settings.temperature, log_q=log_q),
                                          exclude=same_item, weight=weight)
            tag_ids = torch.from_numpy(tags.sample(items_np, rng))
            has_tag = tag_ids >= 0
            l_tag = l_cate = torch.zeros(())
            if use_tag and bool(has_tag.any()):
                t = model.tag(tag_emb[tag_ids.clamp(min=0)])[has_tag]
                pos_tag = same_item[has_tag]  # the exact item the tag was drawn for (and its duplicates)
                # L_tag and L_cate score the same tag-item pairs: one logits matrix and normaliser for both
                logits_t = inbatch_logits(t, v, temperature=settings.temperature, log_q=tag_log_q)
                norm_t = torch.logsumexp(logits_t, dim=1)
                w_t = weight[has_tag]
                l_tag = softmax_loss_from_logits(logits_t, pos_tag, weight=w_t, log_norm=norm_t)
                if use_cate:
                    cats = cat_codes[items]
                    pos_cat = ((cats[has_tag].unsqueeze(1) == cats.unsqueeze(0)) & (cats[has_tag] > 0).unsqueeze(1)) \
                        | pos_tag
                    l_cate = softmax_loss_from_logits(logits_t, pos_cat, weight=w_t, log_norm=norm_t)
            loss = l_col + settings.alpha * l_tag + (1 - settings.alpha) * l_cate
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            lv = float(loss.detach())
            for k_, val in (("loss", lv), ("col", float(l_col.detach())), ("tag", float(l_tag.detach())),
                            ("cate", float(l_cate.detach()))):
                sums[k_] += val
            block.append(lv)
            if len(block) == log.block:
                log.step_losses.append(sum(block) / len(block))
                block = []
            if progress and b % 20 == 0:
                bar.set_postfix(loss=f"{lv:.3f}")
        dt = time.perf_counter() - t0
        n = n_batches * bs
        log.samples += n
        log.seconds += dt
        log.epochs.append({"epoch": epoch + 1, **{k_: round(v_ / n_batches, 5) for k_, v_ in sums.items()},
                           "seconds": round(dt, 2), "samples_per_s": round(n / dt, 1) if dt > 0 else 0.0})
    if block:
        log.step_losses.append(sum(block) / len(block))
    model.eval()
    return model, log


@torch.no_grad()
def item_vectors(model: ThreeTower, n_items: int, chunk: int = 8192) -> np.ndarray:
    model.eval()
    out = [model.item(torch.arange(s, min(s + chunk, n_items))).numpy() for s in range(0, n_items, chunk)]
    return np.ascontiguousarray(np.concatenate(out) if out else np.zeros((0, model.tag.mlp[-1].out_features)),
                                dtype=np.float32)


@torch.no_grad()
def user_vectors(model: ThreeTower, inter: Interactions, settings: RetrievalSettings, chunk: int = 4096) -> np.ndarray:
    """Vectors for every training user from their whole (pre-cutoff) history, in user-code order."""
    model.eval()
    codes = np.arange(1, len(inter.user_ids) + 1, dtype=np.int64)
    out = []
    for s in range(0, len(codes), chunk):
        c = codes[s:s + chunk]
        out.append(model.user(torch.from_numpy(c), _histories(inter, c, None, settings.max_history)).numpy())
    dim = settings.dim
    return np.ascontiguousarray(np.concatenate(out) if out else np.zeros((0, dim)), dtype=np.float32)


@torch.no_grad()
def tag_vectors(model: ThreeTower, text_emb: np.ndarray) -> np.ndarray:
    model.eval()
    if len(text_emb) == 0:
        return np.zeros((0, model.tag.mlp[-1].out_features), dtype=np.float32)
    return np.ascontiguousarray(model.tag(torch.from_numpy(text_emb).float()).numpy(), dtype=np.float32)

