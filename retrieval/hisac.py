"""HiSAC interest agents: a multi-interest user encoder over the item-tower vectors (numpy + faiss).

**What the paper specifies.** HiSAC (Hierarchical Sparse Activation Compression, Taobao, arXiv
2602.21009) compresses an ultra-long behaviour history into a few personal *interest agents*: every
item gets a multi-level semantic ID under one global hierarchical codebook; hierarchical voting over
the user's history sparsely activates a few fine-grained codes as the user's agents; and soft-routing
attention summarises the *whole* history around each agent, weighting items by their similarity to
the agent, so behaviours that fall just outside an agent's code (quantisation error, long-tail
interests) still contribute.

**What this module does, and the choices made.**

* :class:`SemanticIds` — residual k-means (RQ-KMeans, ``faiss.Kmeans``, seed 42): level 1 clusters
  the item vectors, level 2 the residuals ``v − c1[code1]``, an optional level 3 the next residuals.
  A final *dedup digit* (0, 1, 2, … in item-code order among items with the same codes) makes every
  full ID unique, so ``sid_of`` / ``item_of`` are exact inverses. Level sizes are capped at
  ``min(L, n_items, floor(sqrt(n_items)))`` (at least 1) so tiny catalogues work and no level has
  more codes than it can fill. faiss samples at most 256 training points per centroid, which keeps
  the build to a few seconds for the 92k-item catalogue. **Default levels (32, 8)**: an agent is a
  level-2 cell, so the 32 × 8 = 256 cells should be about as fine as the finest interest we want to
  vote on; on completejourney that is close to the 303 product categories (a cell ≈ 360 items),
  while 32 level-1 codes are department-sized, which is what parent voting needs to separate a
  user's main shopping areas. A third level would only shorten the dedup digit (no voting happens
  there) and is left optional. Codebooks and codes are saved in one safetensors file plus a JSON
  sidecar (levels, sizes, seed, SHA-256 of the tensor file, checked on load); nothing is pickled.
* :func:`activate` — hierarchical voting. Each history item votes its weight (time-decayed purchase
  frequency) for its level-1 code; the ``top_parents`` strongest parents whose vote share of the
  whole history is at least ``min_share`` are active. Inside each active parent the level-2 children
  are voted the same way (a child must hold ``min_share`` of its *parent's* votes, so a parent split
  over many children is not emptied), the ``top_children`` strongest become agents; at most
  ``max_agents`` overall, strongest first. The strongest parent and its strongest child are always
  kept, so a non-empty history always yields at least one agent. :func:`all_agents` is the
  "no voting" ablation (every touched level-2 cell is an agent). ``Agent.share`` is the agent's
  vote share of the whole history.
* :func:`agent_vectors` — ``routing="soft"`` (the paper's soft-routing attention): the agent's query
  is its reconstructed centroid ``c1[l1] + c2[l2]``; attention over the whole history
  ``a_i ∝ w_i · exp(cos(q, v_i) / τ)`` (τ = 0.1), agent vector ``normalise(Σ a_i v_i)``.
  ``routing="hard"``: the weighted mean of the agent's own member items only (the ablation that
  suffers from quantisation error).
* :func:`search_agents` — one FAISS query per agent, merged with per-agent quotas proportional to the
  agents' vote shares (:func:`agent_quotas`: largest-remainder rounding, every agent at least one
  slot while ``k`` allows). Agents pick in turn, each its best candidate not yet taken or excluded;
  slots an agent could not fill go to the best remaining scores of any agent. Each result records
  the agent that brought it, so a recommendation can cite the interest (see :meth:`SemanticIds.labels`
  for readable names of the codes).

History input everywhere: ``codes`` (int64 item codes = rows of ``item_vecs``) and ``weights``
(float, larger = more important). Repeated codes are merged by summing their weights; items with
weight 0 carry no evidence and are dropped; an empty history (or one whose weights are all 0) is
:class:`~retrieval.errors.RetrievalInputError` (a ``ValueError``).
"""

from __future__ import annotations

import json
import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import faiss
import numpy as np
from safetensors import SafetensorError
from safetensors.numpy import load_file, save_file

from retrieval.errors import CorruptIndexError, RetrievalInputError
from retrieval.index import l2_normalise, sha256_file

FORMAT_VERSION = 1
DEFAULT_LEVELS: tuple[int, ...] = (32, 8)
TENSORS_FILE = "semantic_ids.safetensors"
SIDECAR_FILE = "semantic_ids.json"

IndexSearch = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


# --------------------------------------------------------------------------- semantic IDs


def _kmeans(x: np.ndarray, k: int, seed: int, niter: int) -> tuple[np.ndarray, np.ndarray]:
    """Centroids (k, d) and the exact nearest-centroid assignment of every row of ``x``."""
    if k == 1:
        centroids = x.mean(axis=0, keepdims=True).astype(np.float32)
    else:
        km = faiss.Kmeans(x.shape[1], k, niter=niter, seed=seed, verbose=False, min_points_per_centroid=1)
        km.train(x)
        centroids = np.ascontiguousarray(km.centroids, dtype=np.float32)
    index = faiss.IndexFlatL2(x.shape[1])
    index.add(centroids)
    _, assign = index.search(x, 1)
    return centroids, assign[:, 0].astype(np.int64)


def _dedup_digit(prefix: np.ndarray) -> np.ndarray:
    """0, 1, 2, … among rows with equal ``prefix`` rows, in row order."""
    n = prefix.shape[0]
    order = np.lexsort(prefix.T[::-1])  # sort by column 0, then 1, …; stable, so row order within ties
    ordered = prefix[order]
    new_group = np.ones(n, dtype=bool)
    new_group[1:] = np.any(ordered[1:] != ordered[:-1], axis=1)
    starts = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    digit = np.empty(n, dtype=np.int64)
    digit[order] = np.arange(n) - starts
    return digit


def _majority(values: Iterable[str | None]) -> tuple[str | None, float]:
    """Most common non-blank value (ties alphabetical) and its share of *all* values given."""
    values = list(values)
    counts = Counter(v.strip() for v in values if v and v.strip())
    if not counts:
        return None, 0.0
    name, count = min(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    return name, count / len(values)


def _named(value: str | None, share: float) -> str:
    return "(no category)" if value is None else f"{value} ({round(100 * share)}%)"


class SemanticIds:
    """Multi-level semantic IDs of a catalogue: ``codebooks[l]`` (k_l, d) and ``codes`` (n_items,
    n_levels + 1), the last column the dedup digit. Build with :meth:`build`, persist with
    :meth:`save` / :meth:`load`."""

    def __init__(self, codebooks: Sequence[np.ndarray], codes: np.ndarray, *, seed: int = 42,
                 requested_levels: Sequence[int] | None = None):
        self.codebooks = [np.ascontiguousarray(c, dtype=np.float32) for c in codebooks]
        codes = np.array(codes, dtype=np.int64, order="C")  # a copy: it is made read-only below
        if len(self.codebooks) < 2:
            raise ValueError("semantic IDs need at least two levels (agents are level-2 cells)")
        if codes.ndim != 2 or codes.shape[1] != len(self.codebooks) + 1:
            raise ValueError(f"codes must be (n_items, {len(self.codebooks) + 1}), got {codes.shape}")
        dims = {c.shape[1] for c in self.codebooks}
        if len(dims) != 1:
            raise ValueError(f"codebooks disagree on the dimension: {sorted(dims)}")
        for level, book in enumerate(self.codebooks):
            col = codes[:, level]
            if col.size and (col.min() < 0 or col.max() >= book.shape[0]):
                raise ValueError(f"level-{level + 1} codes outside 0..{book.shape[0] - 1}")
        if codes.size and codes[:, -1].min() < 0:
            raise ValueError("negative dedup digit")
        self.codes = codes
        self.codes.setflags(write=False)
        self.seed = int(seed)
        self.levels = tuple(int(c.shape[0]) for c in self.codebooks)
        self.requested_levels = tuple(int(x) for x in (requested_levels or self.levels))
        self._item_of = {tuple(int(x) for x in row): i for i, row in enumerate(codes.tolist())}
        if len(self._item_of) != codes.shape[0]:
            raise ValueError("two items share a full semantic ID")

    # ---- construction
    @classmethod
    def from_prefix_codes(cls, codebooks: Sequence[np.ndarray], prefix: np.ndarray, **kwargs) -> SemanticIds:
        """From per-level codes (n_items, n_levels) without the dedup digit; the digit is added."""
        prefix = np.asarray(prefix, dtype=np.int64)
        return cls(codebooks, np.column_stack([prefix, _dedup_digit(prefix)]), **kwargs)

    @classmethod
    def build(cls, item_vecs: np.ndarray, levels: Sequence[int] = DEFAULT_LEVELS, *, seed: int = 42,
              niter: int = 25) -> SemanticIds:
        """Residual k-means over ``item_vecs`` (n_items, d). Level sizes are capped at
        ``min(L, n_items, floor(sqrt(n_items)))``, at least 1."""
        x = np.ascontiguousarray(item_vecs, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0:
            raise ValueError(f"item_vecs must be a non-empty (n_items, d) array, got shape {x.shape}")
        if not np.isfinite(x).all():
            raise ValueError("item_vecs contain NaN or inf")
        levels = tuple(int(k) for k in levels)
        if len(levels) < 2 or min(levels) < 1:
            raise ValueError(f"levels must be at least two positive sizes, got {levels}")
        n = x.shape[0]
        cap = max(1, min(n, math.isqrt(n)))
        residual = x.copy()
        books, cols = [], []
        for level, k in enumerate(levels):
            centroids, assign = _kmeans(residual, min(k, cap), seed + level, niter)
            books.append(centroids)
            cols.append(assign)
            residual -= centroids[assign]
        return cls.from_prefix_codes(books, np.column_stack(cols), seed=seed, requested_levels=levels)

    @classmethod
    def from_tree(cls, item_vecs: np.ndarray, level1: Sequence[str | None], level2: Sequence[str | None], *,
                  seed: int = 42) -> SemanticIds:
        """Levels 1 and 2 follow a category tree (e.g. department > category) instead of k-means, so an
        agent is a category a person can name: the level-1 centroid is the mean item vector of its
        department, the level-2 codebook the mean residual of each category; a blank label is a code
        of its own. The dedup digit makes IDs unique as in :meth:`build`."""
        x = np.ascontiguousarray(item_vecs, dtype=np.float32)
        if x.ndim != 2 or x.shape[0] == 0 or len(level1) != x.shape[0] or len(level2) != x.shape[0]:
            raise ValueError("item_vecs must be (n_items, d) with one level-1 and one level-2 label per item")
        books, cols = [], []
        residual = x.astype(np.float64)
        for labels in (level1, level2):
            _, code = np.unique(np.array([str(v or "") for v in labels], dtype=object), return_inverse=True)
            code = code.astype(np.int64)
            sums = np.zeros((int(code.max()) + 1, x.shape[1]))
            np.add.at(sums, code, residual)
            book = sums / np.bincount(code)[:, None]
            books.append(book.astype(np.float32))
            cols.append(code)
            residual = residual - book[code]
        return cls.from_prefix_codes(books, np.column_stack(cols), seed=seed)

    # ---- look-ups
    @property
    def n_items(self) -> int:
        return int(self.codes.shape[0])

    @property
    def dim(self) -> int:
        return int(self.codebooks[0].shape[1])

    def sid_of(self, code: int) -> tuple[int, ...]:
        """The full semantic ID (level codes + dedup digit) of item ``code``."""
        code = int(code)
        if not 0 <= code < self.n_items:
            raise KeyError(f"no item with code {code} (catalogue has {self.n_items})")
        return tuple(int(x) for x in self.codes[code])

    def item_of(self, sid: Sequence[int]) -> int:
        """The item code with full semantic ID ``sid``."""
        key = tuple(int(x) for x in sid)
        try:
            return self._item_of[key]
        except KeyError:
            raise KeyError(f"unknown semantic ID {key}") from None

    def cells(self, codes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Level-1 and level-2 codes of the given item codes."""
        return self.codes[codes, 0], self.codes[codes, 1]

    def reconstruct(self, level1: int, level2: int) -> np.ndarray:
        """The centroid of a level-2 cell: level-1 centroid + level-2 residual centroid."""
        return self.codebooks[0][level1] + self.codebooks[1][level2]

    def labels(self, categories: Sequence[str | None], paths: Sequence[str | None] | None = None
               ) -> dict[tuple[int, ...], str]:
        """Readable names of the codes, keyed ``(level1,)`` and ``(level1, level2)`` (a level-2 code
        only means something under its parent). A name is the majority category of the cell's items
        with its share of the cell, e.g. ``"Cold Cereal (82%)"``; with ``paths`` ("Dept > Category >
        …") a level-1 name leads with the majority top of the path: ``"Grocery (64%): Soft Drinks
        (12%)"``. Blank categories count towards the share but never name a cell."""
        if len(categories) != self.n_items or (paths is not None and len(paths) != self.n_items):
            raise ValueError(f"categories/paths must have one entry per item ({self.n_items})")
        tops = None if paths is None else [(p or "").split(">")[0].strip() for p in paths]
        by_cell: dict[tuple[int, ...], list[int]] = {}
        for i, (l1, l2) in enumerate(zip(self.codes[:, 0].tolist(), self.codes[:, 1].tolist(), strict=True)):
            by_cell.setdefault((l1,), []).append(i)
            by_cell.setdefault((l1, l2), []).append(i)
        out = {}
        for key, members in sorted(by_cell.items()):
            name = _named(*_majority(categories[i] for i in members))
            if len(key) == 1 and tops is not None:
                top, share = _majority(tops[i] for i in members)
                if top is not None and top != name.rsplit(" (", 1)[0]:
                    name = f"{_named(top, share)}: {name}"
            out[key] = name
        return out

    # ---- persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``semantic_ids.safetensors`` and ``semantic_ids.json`` under ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {f"codebook.{i}": c for i, c in enumerate(self.codebooks)}
        tensors["codes"] = np.ascontiguousarray(self.codes)
        path = directory / TENSORS_FILE
        save_file(tensors, str(path))
        meta = {"format_version": FORMAT_VERSION, "requested_levels": list(self.requested_levels),
                "levels": list(self.levels), "n_items": self.n_items, "dim": self.dim, "seed": self.seed,
                "sha256": sha256_file(path)}
        (directory / SIDECAR_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, directory: str | Path) -> SemanticIds:
        """Read what :meth:`save` wrote. A missing, edited or inconsistent file is
        :class:`~retrieval.errors.CorruptIndexError` naming it."""
        directory = Path(directory)
        path, sidecar = directory / TENSORS_FILE, directory / SIDECAR_FILE
        for p in (sidecar, path):
            if not p.is_file():
                raise CorruptIndexError(p, "semantic-ID file missing")
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            expected, levels = meta["sha256"], [int(k) for k in meta["levels"]]
        except (ValueError, KeyError, TypeError) as e:
            raise CorruptIndexError(sidecar, f"unreadable sidecar ({e})") from None
        if meta.get("format_version") != FORMAT_VERSION:
            version = meta.get("format_version")
            raise CorruptIndexError(sidecar, f"format version {version}, expected {FORMAT_VERSION}")
        if sha256_file(path) != expected:
            raise CorruptIndexError(path, "SHA-256 does not match the sidecar (truncated or edited)")
        try:
            tensors = load_file(str(path))
            books = [tensors[f"codebook.{i}"] for i in range(len(levels))]
            sids = cls(books, tensors["codes"], seed=meta.get("seed", 42),
                       requested_levels=meta.get("requested_levels"))
        except (SafetensorError, KeyError, ValueError) as e:
            raise CorruptIndexError(path, f"inconsistent semantic IDs ({e})") from None
        if list(sids.levels) != levels or sids.n_items != meta.get("n_items") or sids.dim != meta.get("dim"):
            raise CorruptIndexError(path, "sizes do not match the sidecar")
        return sids


# --------------------------------------------------------------------------- voting


@dataclass(frozen=True)
class Agent:
    """An activated interest: level-2 cell ``(level1, level2)``, its summed history weight
    ``votes``, ``share`` = votes / total history weight, and the history items in the cell
    (heaviest first)."""

    level1: int
    level2: int
    votes: float
    share: float
    members: tuple[int, ...]

    @property
    def key(self) -> tuple[int, int]:
        return (self.level1, self.level2)


def _history(codes, weights, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    codes = np.asarray(codes)
    weights = np.asarray(weights, dtype=np.float64)
    if codes.ndim != 1 or weights.shape != codes.shape:
        raise RetrievalInputError(
            f"codes and weights must be 1-D of equal length, got {codes.shape} and {weights.shape}")
    if codes.size == 0:
        raise RetrievalInputError("empty history: a user needs at least one item to build interest agents")
    if not np.issubdtype(codes.dtype, np.integer):
        raise RetrievalInputError(f"item codes must be integers, got {codes.dtype}")
    if codes.min() < 0 or codes.max() >= n_items:
        raise RetrievalInputError(f"item codes must lie in 0..{n_items - 1}")
    if not np.isfinite(weights).all() or weights.min() < 0:
        raise RetrievalInputError("history weights must be finite and non-negative")
    uniq, inverse = np.unique(codes.astype(np.int64), return_inverse=True)
    summed = np.bincount(inverse, weights=weights, minlength=uniq.size)
    keep = summed > 0
    if not keep.any():
        raise RetrievalInputError("empty history: every history weight is 0")
    return uniq[keep], summed[keep]


def _ranked(votes: dict[int, float]) -> list[int]:
    return sorted(votes, key=lambda c: (-votes[c], c))


def _make_agents(cells: Iterable[tuple[int, int]], codes, w, l1, l2, total: float,
                 max_agents: int | None) -> list[Agent]:
    agents = []
    for a, b in cells:
        m = (l1 == a) & (l2 == b)
        order = np.lexsort((codes[m], -w[m]))
        votes = float(w[m].sum())
        agents.append(Agent(int(a), int(b), votes, votes / total, tuple(int(c) for c in codes[m][order])))
    agents.sort(key=lambda g: (-g.votes, g.level1, g.level2))
    return agents if max_agents is None else agents[:max_agents]


def activate(codes, weights, sids: SemanticIds, *, max_agents: int = 4, top_parents: int = 2,
             top_children: int = 2, min_share: float = 0.05) -> list[Agent]:
    """Hierarchical voting (see the module docstring): at most ``max_agents`` agents, strongest first."""
    if min(max_agents, top_parents, top_children) < 1 or not 0 <= min_share < 1:
        raise RetrievalInputError(
            "max_agents, top_parents and top_children must be >= 1 and min_share in [0, 1)")
    codes, w = _history(codes, weights, sids.n_items)
    l1, l2 = sids.cells(codes)
    total = float(w.sum())
    parent_votes: dict[int, float] = {}
    for p, x in zip(l1.tolist(), w.tolist(), strict=True):
        parent_votes[p] = parent_votes.get(p, 0.0) + x
    ranked = _ranked(parent_votes)
    parents = [p for p in ranked if parent_votes[p] / total >= min_share][:top_parents] or ranked[:1]
    cells = []
    for p in parents:
        child_votes: dict[int, float] = {}
        for c, x in zip(l2[l1 == p].tolist(), w[l1 == p].tolist(), strict=True):
            child_votes[c] = child_votes.get(c, 0.0) + x
        kids = _ranked(child_votes)
        chosen = [c for c in kids if child_votes[c] / parent_votes[p] >= min_share][:top_children] or kids[:1]
        cells += [(p, c) for c in chosen]
    return _make_agents(cells, codes, w, l1, l2, total, max_agents)


def all_agents(codes, weights, sids: SemanticIds) -> list[Agent]:
    """The "no voting" ablation: every level-2 cell the history touches is an agent, strongest first."""
    codes, w = _history(codes, weights, sids.n_items)
    l1, l2 = sids.cells(codes)
    cells = sorted(set(zip(l1.tolist(), l2.tolist(), strict=True)))
    return _make_agents(cells, codes, w, l1, l2, float(w.sum()), None)


# --------------------------------------------------------------------------- agent vectors


def agent_vectors(agents: Sequence[Agent], codes, weights, item_vecs: np.ndarray, sids: SemanticIds, *,
                  routing: Literal["soft", "hard"] = "soft", temperature: float = 0.1) -> np.ndarray:
    """(n_agents, d) float32, L2-normalised. ``soft``: attention of the agent's reconstructed centroid
    over the whole history, ``a_i ∝ w_i·exp(cos(q, v_i)/temperature)``; ``hard``: weighted mean of
    the agent's member items only."""
    if routing not in ("soft", "hard"):
        raise RetrievalInputError(f"routing must be 'soft' or 'hard', got {routing!r}")
    if not temperature > 0:
        raise RetrievalInputError(f"temperature must be > 0, got {temperature}")
    if item_vecs.shape != (sids.n_items, sids.dim):
        raise RetrievalInputError(
            f"item_vecs {item_vecs.shape} do not match the semantic IDs ({sids.n_items}, {sids.dim})")
    codes, w = _history(codes, weights, sids.n_items)
    if not agents:
        return np.zeros((0, sids.dim), dtype=np.float32)
    v = l2_normalise(item_vecs[codes]).astype(np.float64)
    if routing == "soft":
        q = l2_normalise(np.stack([sids.reconstruct(a.level1, a.level2) for a in agents])).astype(np.float64)
        logits = q @ v.T / temperature + np.log(w)[None, :]
        attn = np.exp(logits - logits.max(axis=1, keepdims=True))
        out = (attn / attn.sum(axis=1, keepdims=True)) @ v
    else:
        l1, l2 = sids.cells(codes)
        rows = []
        for a in agents:
            m = (l1 == a.level1) & (l2 == a.level2)
            if not m.any():
                raise RetrievalInputError(
                    f"agent {a.key} has no item in this history; hard routing needs members")
            rows.append(w[m] @ v[m] / w[m].sum())
        out = np.stack(rows)
    return l2_normalise(out)


# --------------------------------------------------------------------------- serving


def agent_quotas(shares: Sequence[float], k: int) -> list[int]:
    """Split ``k`` slots over agents in proportion to ``shares`` (largest remainder; ties to the
    larger share, then the lower index). With ``k >= n_agents`` every agent gets at least one slot,
    taken from the agent most over-served by rounding; with fewer slots than agents the ``k``
    strongest agents get one each."""
    s = np.asarray(shares, dtype=np.float64)
    if s.ndim != 1 or s.size == 0 or not np.isfinite(s).all() or s.min() < 0:
        raise RetrievalInputError("shares must be a non-empty 1-D array of finite, non-negative numbers")
    if k < 1:
        raise RetrievalInputError(f"k must be >= 1, got {k}")
    n = s.size
    if s.sum() <= 0:
        s = np.ones(n)
    by_strength = sorted(range(n), key=lambda i: (-s[i], i))
    if k < n:
        return [int(i in by_strength[:k]) for i in range(n)]
    exact = k * s / s.sum()
    q = np.floor(exact).astype(int)
    frac = exact - q
    for i in sorted(range(n), key=lambda i: (-frac[i], -s[i], i))[: k - int(q.sum())]:
        q[i] += 1
    for j in (i for i in by_strength if q[i] == 0):
        donor = max((i for i in range(n) if q[i] > 1), key=lambda i: (q[i] - exact[i], q[i], -i))
        q[donor] -= 1
        q[j] += 1
    return q.tolist()


def search_agents(index_search: IndexSearch, agent_vecs: np.ndarray, shares: Sequence[float], k: int, *,
                  exclude: Iterable[int] = frozenset(), overfetch: int = 3) -> list[tuple[int, float, int]]:
    """Top-``k`` items for a user's agents: ``[(code, score, agent_index)]``, best score first.

    ``index_search(queries, n) -> (scores, ids)`` has the faiss signature (ids = item codes, -1 =
    padding). Each agent fetches ``max(max_quota·overfetch, k) + len(exclude)`` candidates in one
    batched call, so even one agent's list can fill ``k`` after exclusions."""
    vecs = np.ascontiguousarray(agent_vecs, dtype=np.float32)
    if vecs.ndim != 2 or vecs.shape[0] == 0:
        raise RetrievalInputError(f"agent_vecs must be a non-empty (n_agents, d) array, got {vecs.shape}")
    if len(shares) != vecs.shape[0]:
        raise RetrievalInputError(f"{len(shares)} shares for {vecs.shape[0]} agents")
    if overfetch < 1:
        raise RetrievalInputError(f"overfetch must be >= 1, got {overfetch}")
    quotas = agent_quotas(shares, k)
    exclude = {int(c) for c in exclude}
    n_fetch = max(max(quotas) * overfetch, k) + len(exclude)
    scores, ids = index_search(vecs, n_fetch)
    scores, ids = np.asarray(scores), np.asarray(ids)
    n_agents = vecs.shape[0]
    if ids.shape != scores.shape or ids.ndim != 2 or ids.shape[0] != n_agents:
        raise RetrievalInputError(
            f"index_search returned shapes {scores.shape} / {ids.shape} for {n_agents} queries")
    lists = [[(int(c), float(x)) for c, x in zip(ids[a].tolist(), scores[a].tolist(), strict=True)
              if c >= 0 and c not in exclude] for a in range(n_agents)]

    taken: dict[int, tuple[float, int]] = {}
    pointer, left = [0] * n_agents, list(quotas)
    progress = True
    while progress and len(taken) < k:
        progress = False
        for a in range(n_agents):
            while left[a] > 0 and pointer[a] < len(lists[a]):
                code, score = lists[a][pointer[a]]
                pointer[a] += 1
                if code not in taken:
                    taken[code] = (score, a)
                    left[a] -= 1
                    progress = True
                    break
    if len(taken) < k:  # quota slots nobody could fill: best remaining scores of any agent
        best: dict[int, tuple[float, int]] = {}
        for a, cands in enumerate(lists):
            for code, score in cands:
                if code not in taken and (code not in best or score > best[code][0]):
                    best[code] = (score, a)
        for code, (score, a) in sorted(best.items(), key=lambda kv: (-kv[1][0], kv[0]))[: k - len(taken)]:
            taken[code] = (score, a)
    return sorted(((c, s, a) for c, (s, a) in taken.items()), key=lambda r: (-r[1], r[0]))


def compression_ratio(n_history_events: int, n_agents: int) -> float:
    """How many history events each agent stands for (the paper's compression)."""
    if n_agents < 1:
        raise RetrievalInputError("compression_ratio needs at least one agent")
    return n_history_events / n_agents
