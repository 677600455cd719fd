"""SASRec (Kang & McAuley, ICDM 2018) in torch, small, as the sequential baseline.

Architecture as in the paper: item embeddings (scaled by sqrt(d)) + learned positions, ``blocks``
pre-LayerNorm causal self-attention blocks with point-wise feed-forward, dropout, a final LayerNorm;
the score of item j after position t is ``h_t · e_j`` (shared input/output embeddings).

Training differs from the paper in one documented way: instead of binary cross-entropy with one
random negative per position, each batch uses a **sampled softmax** over ``negatives`` items drawn
in proportion to training popularity, with the logQ correction (subtract log sampling probability)
and accidental hits masked. This is known to train SASRec much better for full-ranking evaluation
(Petrov & Macdonald, "gSASRec", RecSys 2023; Klenitskiy & Vasilev, RecSys 2023) and keeps CPU
training to seconds per epoch. Sequences are each user's target-behaviour rows before T in time
order (a seeded shuffle inside each basket), cut into non-overlapping windows of ``max_len`` from the
most recent end.

At evaluation the user's last ``max_len`` items give the state; all catalogue items are ranked by
``h · e`` (repeats allowed, as in the protocol).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from evals.protocol import Split


@dataclass
class SASRecConfig:
    dim: int = 64
    blocks: int = 2
    heads: int = 1
    max_len: int = 50
    dropout: float = 0.2
    epochs: int = 10
    batch_size: int = 128
    lr: float = 1e-3
    negatives: int = 1024
    seed: int = 42


class SASRec(nn.Module):
    def __init__(self, n_items: int, cfg: SASRecConfig):
        super().__init__()
        self.cfg = cfg
        self.item = nn.Embedding(n_items + 1, cfg.dim, padding_idx=0)  # code 0 = padding
        nn.init.normal_(self.item.weight, std=cfg.dim ** -0.5)
        with torch.no_grad():
            self.item.weight[0].zero_()
        self.pos = nn.Embedding(cfg.max_len, cfg.dim)
        self.drop = nn.Dropout(cfg.dropout)
        layer = nn.TransformerEncoderLayer(cfg.dim, cfg.heads, dim_feedforward=cfg.dim, dropout=cfg.dropout,
                                           activation="relu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, cfg.blocks, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.dim)
        self.register_buffer("causal", torch.triu(torch.ones(cfg.max_len, cfg.max_len, dtype=torch.bool), 1))

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """``seq`` (B, L) item codes + 1, left-padded with 0 → hidden states (B, L, d)."""
        L = seq.shape[1]
        x = self.item(seq) * math.sqrt(self.cfg.dim) + self.pos(torch.arange(L)).unsqueeze(0)
        pad = seq == 0
        x = self.drop(x) * (~pad).unsqueeze(-1)
        h = self.encoder(x, mask=self.causal[:L, :L], src_key_padding_mask=None)
        return self.norm(h) * (~pad).unsqueeze(-1)


def _sequences(split: Split, item_code: dict[str, int], seed: int = 42) -> dict[str, np.ndarray]:
    """Per user, item codes + 1 in time order. Items of one basket share a timestamp; their order is a
    seeded shuffle, not item id, or the model learns the id order inside baskets (which, with the last
    basket's highest id as the final state, measurably hurt test recall)."""
    targets = split.stats["target_behaviors"]
    t = split.train.filter(pl.col("behavior").is_in(targets) & pl.col("item_id").is_in(list(item_code)))
    t = (t.with_columns(pl.Series("_r", np.random.default_rng(seed).random(t.height)))
         .sort(["user_id", "ts", "_r"]))
    out = {}
    for (u,), g in t.group_by(["user_id"], maintain_order=True):
        out[u] = np.fromiter((item_code[i] + 1 for i in g["item_id"].to_list()), dtype=np.int64, count=g.height)
    return out


def _windows(seqs: dict[str, np.ndarray], L: int) -> tuple[np.ndarray, np.ndarray]:
    """Non-overlapping (input, target) windows of length L, taken from the end of each sequence."""
    xs, ys = [], []
    for s in seqs.values():
        end = len(s)
        while end >= 2:
            start = max(0, end - L - 1)
            w = s[start:end]
            x, y = np.zeros(L, np.int64), np.zeros(L, np.int64)
            x[L - len(w) + 1:] = w[:-1]
            y[L - len(w) + 1:] = w[1:]
            xs.append(x)
            ys.append(y)
            end = start + 1 if start > 0 else 0
    return np.stack(xs), np.stack(ys)


def train_sasrec(split: Split, cfg: SASRecConfig | None = None, *, progress: bool = True, on_epoch=None):
    """Train on the split's training rows; ``on_epoch(model, seqs, epoch)`` is called after each epoch
    (used to pick the epoch count on a validation split)."""
    cfg = cfg or SASRecConfig()
    torch.manual_seed(cfg.seed)
    rng = np.random.default_rng(cfg.seed)
    items = split.catalogue
    item_code = {s: i for i, s in enumerate(items)}
    seqs = _sequences(split, item_code, cfg.seed)
    X, Y = _windows(seqs, cfg.max_len)
    freq = np.zeros(len(items) + 1, np.float64)
    for s in seqs.values():
        np.add.at(freq, s, 1.0)
    q = freq / freq.sum()
    nz = np.flatnonzero(q > 0)
    logq = torch.from_numpy(np.log(np.maximum(q, 1e-12))).float()
    model = SASRec(len(items), cfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=(0.9, 0.98))
    log = []
    n_b = max(len(X) // cfg.batch_size, 1)
    t_all = time.perf_counter()
    for ep in range(cfg.epochs):
        model.train()
        perm = rng.permutation(len(X))
        tot, t0 = 0.0, time.perf_counter()
        for b in tqdm(range(n_b), desc=f"sasrec epoch {ep + 1}/{cfg.epochs}", disable=not progress, leave=False):
            rows = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            x, y = torch.from_numpy(X[rows]), torch.from_numpy(Y[rows])
            h = model(x)
            m = y > 0
            hv, yt = h[m], y[m]
            neg = torch.from_numpy(rng.choice(nz, size=cfg.negatives, p=q[nz] / q[nz].sum()))
            pos_logit = (hv * model.item(yt)).sum(-1, keepdim=True) - logq[yt].unsqueeze(1)
            neg_logit = hv @ model.item(neg).T - logq[neg].unsqueeze(0)
            neg_logit = neg_logit.masked_fill(neg.unsqueeze(0) == yt.unsqueeze(1), float("-inf"))
            logits = torch.cat([pos_logit, neg_logit], dim=1)
            loss = F.cross_entropy(logits, torch.zeros(len(yt), dtype=torch.long))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            tot += float(loss.detach())
        log.append({"epoch": ep + 1, "loss": round(tot / n_b, 4), "seconds": round(time.perf_counter() - t0, 2)})
        if on_epoch is not None:
            model.eval()
            with torch.no_grad():
                log[-1].update(on_epoch(model, seqs, ep + 1) or {})
    model.eval()
    info = {"config": cfg.__dict__, "windows": int(len(X)), "epochs": log,
            "train_seconds": round(time.perf_counter() - t_all, 2)}
    return model, seqs, info


@torch.no_grad()
def sasrec_recommend(model: SASRec, seqs: dict[str, np.ndarray], split: Split, k: int) -> dict[str, list[str]]:
    L = model.cfg.max_len
    items = split.catalogue
    E = model.item.weight[1:]  # (n_items, d)
    out: dict[str, list[str]] = {}
    users = [u for u in split.users if u in seqs]
    for s in range(0, len(users), 256):
        batch = users[s:s + 256]
        x = np.zeros((len(batch), L), np.int64)
        for j, u in enumerate(batch):
            w = seqs[u][-L:]
            x[j, L - len(w):] = w
        h = model(torch.from_numpy(x))[:, -1]
        scores = h @ E.T
        top = torch.topk(scores, k, dim=1).indices.numpy()
        for j, u in enumerate(batch):
            out[u] = [items[c] for c in top[j]]
    for u in split.users:
        out.setdefault(u, [])
    return out
