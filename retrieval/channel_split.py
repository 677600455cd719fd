"""How many of a user's k slots go to repeats and how many to discovery: decided per user, per slot.

The served list merges two ranked lists: the **repeat** channel (items the user already bought, by
the TIFU-KNN score of ``retrieval/repeat.py``) and the **discovery** channel (items the user never
bought, by the towers' fused score). Each channel has a small logistic model giving the probability
that its candidate at rank r is bought in the next window, from the rank, the candidate's score
relative to the channel's best, for repeats the (user, item) re-buy features
(``retrieval.repeat.pair_features``: share of baskets, days since the item was last bought and over
its usual interval, bought twice, the item's re-buy rate; so repeats are re-ranked, not only
counted) and the user's history features
(``retrieval.repeat.user_features``: baskets, distinct items, repeat share, baskets per week, days
since the last basket). The list is the k candidates of highest probability, so a household that
re-buys the same staples every week gets mostly repeats, and one with a short or exploratory history
gets more discovery, without a fixed ratio. A share ``min_discovery_share`` of the k slots (rounded)
is always discovery: RecGPT shows intent items beside the collaborative ones, and the floor keeps
them visible for every user. The fit chooses it on validation (the most discovery that keeps
TIFU-KNN's accuracy); the graph asks for more (``Context.discovery_share``).

The models are fitted on a validation split before T (``evals/channel_split_fit.py``) and stored as
JSON (``channel_split.json`` beside this file is the served default; no pickle). Without a fitted
model, :meth:`ChannelSplit.fallback` ranks repeats first by score, then discovery.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from core.errors import DataError

DEFAULT_PATH = Path(__file__).with_name("channel_split.json")
CHANNELS = ("repeat", "discovery")


def candidate_features(ranks: np.ndarray, scores: np.ndarray, user_feats: np.ndarray,
                       pairs: np.ndarray | None = None) -> np.ndarray:
    """Feature rows for one user's candidates of one channel: [log1p(rank), score / best score,
    *pair features (repeat channel: ``retrieval.repeat.pair_features``), *user features]."""
    ranks = np.asarray(ranks, np.float64)
    scores = np.asarray(scores, np.float64)
    n_pair = 0 if pairs is None else np.asarray(pairs).shape[1]
    if not len(ranks):
        return np.zeros((0, 2 + n_pair + len(user_feats)))
    best = scores.max()
    rel = scores / best if best > 0 else np.zeros_like(scores)
    u = np.broadcast_to(np.asarray(user_feats, np.float64), (len(ranks), len(user_feats)))
    cols = [np.log1p(ranks), rel] + ([] if pairs is None else [np.asarray(pairs, np.float64)]) + [u]
    return np.column_stack(cols)


@dataclass
class Logistic:
    """A standardised logistic model: p = σ(((x − mean) / scale) · coef + intercept)."""
    mean: list[float]
    scale: list[float]
    coef: list[float]
    intercept: float

    def predict(self, X: np.ndarray) -> np.ndarray:
        if X.shape[1] != len(self.coef):
            raise DataError(f"channel split model expects {len(self.coef)} features, got {X.shape[1]}")
        z = ((X - np.asarray(self.mean)) / np.asarray(self.scale)) @ np.asarray(self.coef) + self.intercept
        return 1.0 / (1.0 + np.exp(-z))


@dataclass
class ChannelSplit:
    models: dict[str, Logistic] | None
    min_discovery_share: float = 0.1
    fitted_on: dict = field(default_factory=dict)

    @classmethod
    def fallback(cls, min_discovery_share: float = 0.1) -> ChannelSplit:
        return cls(models=None, min_discovery_share=min_discovery_share,
                   fitted_on={"note": "no fitted model: repeats first"})

    @classmethod
    def load(cls, path: str | Path = DEFAULT_PATH) -> ChannelSplit:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
            models = {c: Logistic(**d["models"][c]) for c in CHANNELS} if d.get("models") else None
            return cls(models=models, min_discovery_share=float(d["min_discovery_share"]),
                       fitted_on=d.get("fitted_on", {}))
        except FileNotFoundError:
            raise DataError(f"channel split model {path} is missing") from None
        except (ValueError, KeyError, TypeError) as e:
            raise DataError(f"channel split model {path} is unreadable: {e}") from None

    def as_dict(self) -> dict:
        return {"models": {c: asdict(m) for c, m in self.models.items()} if self.models else None,
                "min_discovery_share": self.min_discovery_share, "fitted_on": self.fitted_on}

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(json.dumps(self.as_dict(), indent=1), encoding="utf-8")
        return path

    def probabilities(self, channel: str, scores: np.ndarray, user_feats: np.ndarray,
                      pairs: np.ndarray | None = None) -> np.ndarray:
        n = len(scores)
        if self.models is None:  # repeats by score first, then discovery in its own order
            base = 2.0 if channel == "repeat" else 1.0
            return base - np.arange(n) / max(n, 1) * 0.5
        return self.models[channel].predict(candidate_features(np.arange(n), scores, user_feats, pairs))

    def merge(self, repeat: list[tuple[int, float]], discovery: list[tuple[int, float]], user_feats: np.ndarray,
              k: int, repeat_pairs: np.ndarray | None = None) -> list[tuple[int, str, float]]:
        """The k candidates of highest probability, as (code, channel, probability), best first. Each list is
        (code, score) best first (``repeat_pairs``: the repeat candidates' pair features, row by row); a
        code in both lists counts once, in the repeat channel; at least
        ``min(round(min_discovery_share·k), len(discovery))`` discovery candidates are kept."""
        rep_codes = {c for c, _ in repeat}
        discovery = [(c, s) for c, s in discovery if c not in rep_codes]
        p_r = self.probabilities("repeat", np.array([s for _, s in repeat]), user_feats, repeat_pairs)
        p_d = self.probabilities("discovery", np.array([s for _, s in discovery]), user_feats)
        pool = ([(float(p), 0, i, c, "repeat") for i, ((c, _), p) in enumerate(zip(repeat, p_r, strict=True))]
                + [(float(p), 1, i, c, "discovery") for i, ((c, _), p) in enumerate(zip(discovery, p_d, strict=True))])
        pool.sort(key=lambda t: (-t[0], t[1], t[2]))
        chosen = pool[:k]
        floor = min(int(round(self.min_discovery_share * k)), len(discovery), k)
        n_disc = sum(1 for t in chosen if t[4] == "discovery")
        if n_disc < floor:
            extra = [t for t in pool[k:] if t[4] == "discovery"][:floor - n_disc]
            keep = [t for t in chosen if t[4] == "discovery"]
            reps = [t for t in chosen if t[4] == "repeat"][:k - len(keep) - len(extra)]
            chosen = sorted(reps + keep + extra, key=lambda t: (-t[0], t[1], t[2]))
        return [(c, ch, p) for p, _, _, c, ch in chosen]
