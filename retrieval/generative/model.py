"""The RankGR network: a small decoder-only transformer over SID tokens plus the RSP head.

``encode`` runs the history (causal, left padding masked) and returns its hidden states and every
layer's keys/values; ``suffix`` runs candidate tokens that attend to a history's cached keys/values
and causally to their own earlier tokens, so one history serves many candidates (training lists and
beams alike). Output logits are tied to the token embeddings."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from retrieval.generative.config import RankGRConfig
from retrieval.generative.data import N_GAP

KV = list[tuple[torch.Tensor, torch.Tensor]]


class Block(nn.Module):
    def __init__(self, d: int, heads: int, ff: int, dropout: float):
        super().__init__()
        self.heads, self.dh = heads, d // heads
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.ff = nn.Sequential(nn.Linear(d, ff), nn.GELU(), nn.Linear(ff, d))
        self.drop = nn.Dropout(dropout)

    def _split(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        *lead, n, _ = x.shape
        q, k, v = self.qkv(self.ln1(x)).chunk(3, dim=-1)
        return tuple(t.view(*lead, n, self.heads, self.dh).transpose(-2, -3) for t in (q, k, v))

    def _finish(self, x: torch.Tensor, o: torch.Tensor) -> torch.Tensor:
        o = o.transpose(-2, -3).reshape(x.shape)
        x = x + self.drop(self.proj(o))
        return x + self.drop(self.ff(self.ln2(x)))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (B, L, d); mask (B, 1, L, L) True = may attend."""
        q, k, v = self._split(x)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self._finish(x, o), (k, v)

    def forward_suffix(self, x: torch.Tensor, kv: tuple[torch.Tensor, torch.Tensor], hist_mask: torch.Tensor
                       ) -> torch.Tensor:
        """x (B, R, S, d) attends to the history's (B, h, H, dh) keys where ``hist_mask`` (B, H) and
        causally to its own row."""
        q, k, v = self._split(x)  # (B, R, h, S, dh)
        kh, vh = kv
        S = x.shape[2]
        scale = 1.0 / math.sqrt(self.dh)
        s_hist = torch.einsum("brhsd,bhkd->brhsk", q, kh) * scale
        s_hist = s_hist.masked_fill(~hist_mask[:, None, None, None, :], float("-inf"))
        s_self = torch.einsum("brhsd,brhtd->brhst", q, k) * scale
        causal = torch.ones(S, S, dtype=torch.bool, device=x.device).tril()
        s_self = s_self.masked_fill(~causal, float("-inf"))
        p = torch.softmax(torch.cat([s_hist, s_self], dim=-1), dim=-1)
        H = kh.shape[2]
        o = torch.einsum("brhsk,bhkd->brhsd", p[..., :H], vh) + torch.einsum("brhst,brhtd->brhsd", p[..., H:], v)
        return self._finish(x, o)


class RSPScorer(nn.Module):
    """Target attention of a candidate's SID embedding over history hidden states, then an MLP over
    [candidate, attended history, their product, last hidden state]."""

    def __init__(self, d: int, hidden: int):
        super().__init__()
        self.query = nn.Linear(d, d)
        self.mlp = nn.Sequential(nn.Linear(4 * d, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, cand: torch.Tensor, hist: torch.Tensor, hist_mask: torch.Tensor, last: torch.Tensor
                ) -> torch.Tensor:
        """cand (B, R, d), hist (B, H, d), hist_mask (B, H), last (B, d) -> scores (B, R)."""
        q = self.query(cand)
        att = torch.einsum("brd,bhd->brh", q, hist) / math.sqrt(q.shape[-1])
        att = torch.softmax(att.masked_fill(~hist_mask[:, None, :], float("-inf")), dim=-1)
        ctx = torch.einsum("brh,bhd->brd", att, hist)
        x = torch.cat([cand, ctx, cand * ctx, last[:, None, :].expand_as(cand)], dim=-1)
        return self.mlp(x).squeeze(-1)


class RankGRNet(nn.Module):
    def __init__(self, cfg: RankGRConfig, vocab_size: int, depth: int, n_behaviours: int,
                 token_level: torch.Tensor):
        super().__init__()
        d = cfg.dim
        self.cfg, self.depth = cfg, depth
        self.tok = nn.Embedding(vocab_size, d, padding_idx=0)
        self.digit = nn.Embedding(depth + 2, d, padding_idx=0)
        self.pos = nn.Embedding(cfg.max_len + 2, d)
        self.beh = nn.Embedding(n_behaviours + 1, d, padding_idx=0)
        self.next_beh = nn.Embedding(n_behaviours + 1, d, padding_idx=0)
        self.gap = nn.Embedding(N_GAP, d, padding_idx=0)
        for emb in (self.tok, self.digit, self.beh, self.next_beh, self.gap):
            nn.init.normal_(emb.weight, std=0.02)
            with torch.no_grad():
                emb.weight[0].zero_()
        nn.init.normal_(self.pos.weight, std=0.02)
        self.blocks = nn.ModuleList(Block(d, cfg.heads, cfg.ff, cfg.dropout) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(d)
        self.rsp = RSPScorer(d, cfg.rsp_hidden)
        self.drop = nn.Dropout(cfg.dropout)
        # (depth, V) additive mask: level l's logits keep only level-l tokens
        level_bias = torch.full((depth, vocab_size), float("-inf"))
        for lv in range(depth):
            level_bias[lv, token_level == lv] = 0.0
        self.register_buffer("level_bias", level_bias, persistent=False)
        self.register_buffer("token_level", token_level.clone(), persistent=False)

    def embed(self, f: torch.Tensor) -> torch.Tensor:
        """f (..., N_FEATURES, L) -> (..., L, d)."""
        x = (self.tok(f[..., 0, :]) + self.digit(f[..., 1, :]) + self.pos(f[..., 2, :]) + self.beh(f[..., 3, :])
             + self.next_beh(f[..., 4, :]) + self.gap(f[..., 5, :]))
        return self.drop(x)

    def encode(self, f: torch.Tensor) -> tuple[torch.Tensor, KV, torch.Tensor]:
        """History features (B, N_FEATURES, L) -> hidden (B, L, d), per-layer (k, v), valid mask (B, L)."""
        valid = f[:, 0, :] > 0
        L = f.shape[-1]
        causal = torch.ones(L, L, dtype=torch.bool, device=f.device).tril()
        mask = (causal[None] & valid[:, None, :]) | torch.eye(L, dtype=torch.bool, device=f.device)[None]
        x = self.embed(f)
        kv = []
        for blk in self.blocks:
            x, layer_kv = blk(x, mask[:, None])
            kv.append(layer_kv)
        return self.norm(x), kv, valid

    def suffix(self, f: torch.Tensor, kv: KV, hist_mask: torch.Tensor) -> torch.Tensor:
        """Candidate features (B, R, N_FEATURES, S) -> hidden (B, R, S, d)."""
        x = self.embed(f)
        for blk, layer_kv in zip(self.blocks, kv, strict=True):
            x = blk.forward_suffix(x, layer_kv, hist_mask)
        return self.norm(x)

    def level_log_probs(self, h: torch.Tensor, level: int | torch.Tensor) -> torch.Tensor:
        """Log-softmax over the tokens of ``level`` (other tokens -inf): h (..., d) -> (..., V)."""
        logits = h @ self.tok.weight.T
        return torch.log_softmax(logits + self.level_bias[level], dim=-1)

    def item_embedding(self, tokens: torch.Tensor) -> torch.Tensor:
        """Mean SID-token embedding: tokens (..., depth) -> (..., d)."""
        return self.tok(tokens).mean(dim=-2)


def candidate_features(tokens: torch.Tensor, max_len: int, behaviour: int) -> torch.Tensor:
    """Suffix features of candidate tokens (B, R, S): the item to predict (position ``max_len + 1``)
    with the target behaviour; no next-event features."""
    B, R, S = tokens.shape
    f = torch.zeros(B, R, 6, S, dtype=torch.long, device=tokens.device)
    f[:, :, 0] = tokens
    f[:, :, 1] = torch.arange(S, device=tokens.device) + 2
    f[:, :, 2] = max_len + 1
    f[:, :, 3] = behaviour
    return f


def sid_log_probs(net: RankGRNet, h_last: torch.Tensor, kv: KV, hist_mask: torch.Tensor, tokens: torch.Tensor,
                  behaviour: int) -> torch.Tensor:
    """NTP log-probability of full SIDs ``tokens`` (B, R, depth) after each history: (B, R)."""
    lp = net.level_log_probs(h_last, 0).gather(1, tokens[..., 0])
    D = tokens.shape[-1]
    if D > 1:
        hs = net.suffix(candidate_features(tokens[..., :D - 1], net.cfg.max_len, behaviour), kv, hist_mask)
        for lv in range(1, D):
            lp = lp + net.level_log_probs(hs[:, :, lv - 1], lv).gather(-1, tokens[..., lv:lv + 1]).squeeze(-1)
    return lp
