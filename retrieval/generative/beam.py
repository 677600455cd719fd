"""Constrained beam search over SIDs: every step keeps the ``beam`` best prefixes by summed NTP
log-probability among the digits the prefix trie allows. No temperature, top-k or top-p: the log-
probabilities are the model's own (log-softmax over the level's tokens), and the beam only holds
fewer than ``beam`` prefixes when fewer valid ones exist."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from retrieval.generative.model import KV, RankGRNet, candidate_features
from retrieval.generative.trie import PrefixTrie
from retrieval.generative.vocab import SidVocab


@dataclass
class BeamResult:
    codes: np.ndarray  # (B, beam) item codes, best first; -1 = no item
    log_probs: np.ndarray  # (B, beam) NTP log-probabilities; -inf where no item
    invalid: int  # decoded full SIDs that map to no item (0 with the trie)
    decoded: int  # full SIDs decoded


@torch.no_grad()
def constrained_beam_search(net: RankGRNet, h_last: torch.Tensor, kv: KV, hist_mask: torch.Tensor,
                            trie: PrefixTrie, vocab: SidVocab, beam: int, behaviour: int) -> BeamResult:
    B, D = h_last.shape[0], vocab.depth
    off, sizes = vocab.offsets.tolist(), vocab.sizes
    lp = net.level_log_probs(h_last, 0)[:, off[0]:off[0] + sizes[0]]
    allowed = torch.from_numpy(trie.allowed_mask(np.zeros(B, np.int64), sizes[0]))
    cum, digit = torch.topk(lp.masked_fill(~allowed, float("-inf")), min(beam, sizes[0]), dim=1)
    digits = digit[:, :, None]
    nodes = trie.step(np.zeros(digit.shape, np.int64), digit.numpy())
    nodes = np.where(torch.isfinite(cum).numpy(), nodes, -1)
    for lv in range(1, D):
        R = digits.shape[1]
        tokens = digits + torch.as_tensor(off[:lv])
        hs = net.suffix(candidate_features(tokens, net.cfg.max_len, behaviour), kv, hist_mask)[:, :, -1]
        lp = net.level_log_probs(hs, lv)[..., off[lv]:off[lv] + sizes[lv]]
        allowed = torch.from_numpy(trie.allowed_mask(nodes.reshape(-1), sizes[lv]).reshape(B, R, sizes[lv]))
        scores = (cum[:, :, None] + lp).masked_fill(~allowed, float("-inf")).reshape(B, -1)
        cum, idx = torch.topk(scores, min(beam, scores.shape[1]), dim=1)
        parent, digit = idx // sizes[lv], idx % sizes[lv]
        digits = torch.cat([digits.gather(1, parent[:, :, None].expand(-1, -1, lv)), digit[:, :, None]], dim=2)
        nodes = trie.step(np.take_along_axis(nodes, parent.numpy(), axis=1), digit.numpy())
        nodes = np.where(torch.isfinite(cum).numpy(), nodes, -1)
    codes = np.full(nodes.shape, -1, np.int64)
    invalid = decoded = 0
    for (b, r), node in np.ndenumerate(nodes):
        if node < 0:
            continue
        decoded += 1
        try:  # checked against the SID table itself, not the trie that masked the decode
            codes[b, r] = vocab.sids.item_of(digits[b, r].tolist())
        except KeyError:
            invalid += 1
    lps = np.where(codes >= 0, cum.numpy(), -np.inf)
    return BeamResult(codes, lps, invalid, decoded)
