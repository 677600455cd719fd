"""The user / item / tag towers (torch) and the in-batch losses.

Towers (all outputs L2-normalised, ``dim`` wide, so scores are cosines and FAISS inner product works):

* **User tower**: user-id embedding, plus one mean-pooled vector per behaviour type over the user's
  most recent events of that type (each event = history item-id embedding + the item's leaf-category
  embedding), concatenated and passed through a 2-layer MLP.
* **Item tower**: item-id embedding, embeddings of the category path (top level, category, leaf),
  brand, price bucket and the selected free attributes (``retrieval/catalogue.py``), and a linear projection of the item's frozen MiniLM text embedding,
  concatenated and passed through a 2-layer MLP. Item features are registered buffers, so a
  checkpoint is self-contained.
* **Tag tower**: frozen MiniLM embedding of the tag text through a 2-layer MLP.

Id embeddings (user, item, history item) start at zero: a cold id then contributes nothing and the
attributes carry the item, instead of random noise; gradients still reach them normally. They are
``sparse=True`` tables trained with SparseAdam (see :func:`sparse_parameters`): a dense Adam step over
two 92k×64 tables was ~60% of the step time on completejourney.

Loss ``L = L_col + α·L_tag + (1−α)·L_cate`` (RecGPT V1), every term an in-batch softmax over the
batch's positive items with temperature τ:

* ``L_col``: user → its item; other columns holding the *same* item are masked out (not negatives);
* ``L_tag``: tag → items; the positive is the item the tag was drawn for (fine-grained);
* ``L_cate``: tag → items; positives are the batch items of the same category as the tag's item
  (off when the trained items have fewer than two categories; ``L_tag`` off without tags: ``retrieval/train.py``).

With ``logq`` the log of each column item's training frequency is subtracted from the logits
(sampling-bias correction, Yi et al., RecSys 2019). In-batch negatives are drawn in proportion to
popularity, so without it popular items are over-penalised (a calibration before the project measured Recall@50 0.045
without vs 0.148 with it on completejourney).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def _mlp(d_in: int, hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Linear(hidden, d_out))


class ItemTower(nn.Module):
    def __init__(self, n_items: int, attr_sizes: dict[str, int], text_table: torch.Tensor,
                 text_index: torch.Tensor, attr_codes: torch.Tensor, *, id_dim: int, hidden: int, dim: int):
        super().__init__()
        self.register_buffer("attr_codes", attr_codes.long())
        self.register_buffer("text_index", text_index.long())
        self.register_buffer("text_table", text_table.float())
        self.id_emb = nn.Embedding(n_items, id_dim, sparse=True)
        nn.init.zeros_(self.id_emb.weight)
        self.attr_emb = nn.ModuleList([nn.Embedding(size, id_dim // 2) for size in attr_sizes.values()])
        self.text_proj = nn.Linear(text_table.shape[1], id_dim)
        self.mlp = _mlp(id_dim * 2 + len(attr_sizes) * (id_dim // 2), hidden, dim)

    def forward(self, items: torch.Tensor) -> torch.Tensor:
        a = self.attr_codes[items]
        parts = [self.id_emb(items), self.text_proj(self.text_table[self.text_index[items]])]
        parts += [emb(a[:, j]) for j, emb in enumerate(self.attr_emb)]
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class UserTower(nn.Module):
    def __init__(self, n_users: int, n_types: int, n_items: int, leaf_codes: torch.Tensor, n_leaves: int, *,
                 id_dim: int, hidden: int, dim: int):
        super().__init__()
        # history codes are item code + 1 (0 = padding): leaf_of[0] = 0
        self.register_buffer("leaf_of", torch.cat([torch.zeros(1, dtype=torch.long), leaf_codes.long()]))
        self.user_emb = nn.Embedding(n_users + 1, id_dim, sparse=True)
        nn.init.zeros_(self.user_emb.weight)
        self.hist_item = nn.Embedding(n_items + 1, id_dim, padding_idx=0, sparse=True)
        nn.init.zeros_(self.hist_item.weight)
        self.hist_leaf = nn.Embedding(n_leaves, id_dim, padding_idx=0)
        self.n_types = n_types
        self.mlp = _mlp(id_dim * (1 + n_types), hidden, dim)

    def forward(self, users: torch.Tensor, histories: list[torch.Tensor]) -> torch.Tensor:
        parts = [self.user_emb(users)]
        for h in histories:
            # mean of (item + leaf) embeddings over the valid events: two summing bags (padding rows are
            # zero and get no gradient), without materialising the (B, L, id_dim) event tensor
            count = (h > 0).sum(1, keepdim=True).clamp(min=1)
            items = F.embedding_bag(h, self.hist_item.weight, mode="sum", sparse=True, padding_idx=0)
            leaves = F.embedding_bag(self.leaf_of[h], self.hist_leaf.weight, mode="sum", padding_idx=0)
            parts.append((items + leaves) / count)
        return F.normalize(self.mlp(torch.cat(parts, dim=1)), dim=-1)


class TagTower(nn.Module):
    def __init__(self, text_dim: int, *, hidden: int, dim: int):
        super().__init__()
        self.mlp = _mlp(text_dim, hidden, dim)

    def forward(self, text_emb: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.mlp(text_emb), dim=-1)


class ThreeTower(nn.Module):
    def __init__(self, *, n_users: int, n_types: int, n_items: int, attr_sizes: dict[str, int],
                 text_table: torch.Tensor, text_index: torch.Tensor, attr_codes: torch.Tensor,
                 text_dim: int, id_dim: int, hidden: int, dim: int):
        super().__init__()
        leaf_col = list(attr_sizes).index("leaf")
        self.item = ItemTower(n_items, attr_sizes, text_table, text_index, attr_codes, id_dim=id_dim,
                              hidden=hidden, dim=dim)
        self.user = UserTower(n_users, n_types, n_items, attr_codes[:, leaf_col], attr_sizes["leaf"],
                              id_dim=id_dim, hidden=hidden, dim=dim)
        self.tag = TagTower(text_dim, hidden=hidden, dim=dim)


def sparse_parameters(model: nn.Module) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """(sparse embedding weights, everything else) for a SparseAdam + Adam pair."""
    sparse_ids = {id(m.weight) for m in model.modules() if isinstance(m, nn.Embedding) and m.sparse}
    sparse = [p for p in model.parameters() if id(p) in sparse_ids]
    dense = [p for p in model.parameters() if id(p) not in sparse_ids]
    return sparse, dense


def inbatch_logits(queries: torch.Tensor, keys: torch.Tensor, *, temperature: float,
                   log_q: torch.Tensor | None = None) -> torch.Tensor:
    """``(B, B)`` in-batch scores ``q·k / τ``, with ``log_q`` (B,) subtracted from every column
    (logQ correction). τ scales the ``(B, d)`` queries and the correction is added inside the product
    (``addmm``), so neither costs a pass over the ``(B, B)`` matrix."""
    q = queries / temperature
    if log_q is None:
        return q @ keys.T
    return torch.addmm(-log_q.unsqueeze(0), q, keys.T)


def _weighted_mean(loss: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    if weight is not None:
        return (loss * weight).sum() / weight.sum().clamp(min=1e-8)
    return loss.mean()


def softmax_loss_from_logits(logits: torch.Tensor, positives: torch.Tensor, *, exclude: torch.Tensor | None = None,
                             weight: torch.Tensor | None = None, log_norm: torch.Tensor | None = None) -> torch.Tensor:
    """Multi-positive in-batch softmax: ``-log(Σ_pos exp(s) / Σ_all exp(s))`` averaged over queries.

    ``positives`` and ``exclude`` are bool ``(B, B)`` masks; excluded columns are neither positives nor
    negatives. ``log_norm``: ``logsumexp(logits, 1)`` when the caller already has it (two losses over
    the same logits and no ``exclude`` share it)."""
    if exclude is not None:
        logits = logits.masked_fill(exclude & ~positives, float("-inf"))
        log_norm = None
    if log_norm is None:
        log_norm = torch.logsumexp(logits, dim=1)
    return _weighted_mean(log_norm - torch.logsumexp(logits.masked_fill(~positives, float("-inf")), dim=1), weight)


def diagonal_softmax_loss(logits: torch.Tensor, *, exclude: torch.Tensor | None = None,
                          weight: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`softmax_loss_from_logits` whose one positive per row is the diagonal (query *i* and key *i*
    come from the same example): ``logsumexp_j s_ij − s_ii``, with no second masked pass over the
    ``(B, B)`` matrix. ``exclude``: columns that are neither positive nor negative (its diagonal is ignored)."""
    if exclude is not None:
        mask = exclude.clone()
        mask.fill_diagonal_(False)
        logits = logits.masked_fill(mask, float("-inf"))
    return _weighted_mean(torch.logsumexp(logits, dim=1) - logits.diagonal(), weight)
