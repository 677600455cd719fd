"""RankGR settings: one dataclass, saved as JSON beside every checkpoint."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields


@dataclass
class RankGRConfig:
    # semantic IDs
    levels: tuple[int, ...] = (256, 256, 256)  # RQ-KMeans level sizes (capped by SemanticIds.build)
    # model
    dim: int = 128
    layers: int = 2
    heads: int = 2
    ff: int = 256
    dropout: float = 0.1
    max_len: int = 30  # history items per sequence (each = its SID tokens)
    rsp_hidden: int = 64
    # training
    ntp_epochs: int = 1  # NTP warm-up (stage 1); the reference model is a frozen copy of its end
    iap_epochs: int = 1  # stage 2: NTP + alpha * LDPO (+ RSP); with iap=False it is NTP (+ RSP) only
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.0
    alpha: float = 0.5  # weight of the listwise DPO loss next to NTP
    dpo_beta: float = 0.5  # DPO temperature on log pi - log pi_ref
    rsp_weight: float = 1.0
    rsp_hard: int = 4  # hard negatives sharing an SID prefix with the positive
    rsp_random: int = 4  # popularity-sampled negatives
    next_window_days: float = 0.0  # 0: the next basket (same timestamp); >0: events within this many days
    max_windows_per_user: int | None = None  # most recent NTP windows kept per user (None: all)
    seed: int = 42
    threads: int | None = None  # torch threads (None: leave as is)
    # switches
    iap: bool = True
    rsp: bool = True
    # decoding
    beam: int = 50
    lam: int = 50  # top-lambda beam outputs re-scored by the RSP
    mix: float = 0.0  # final score = RSP + mix * NTP log-prob (chosen on a validation split)
    decode_batch: int = 32
    behavior_grades: dict[str, int] = field(
        default_factory=lambda: {"purchase": 3, "cart": 2, "favorite": 2, "view": 1})

    def as_dict(self) -> dict:
        d = asdict(self)
        d["levels"] = list(self.levels)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RankGRConfig:
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown RankGR settings {sorted(unknown)}")
        d = dict(d)
        if "levels" in d:
            d["levels"] = tuple(int(x) for x in d["levels"])
        return cls(**d)
