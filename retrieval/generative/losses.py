"""The three training losses: next-token prediction, listwise DPO (Plackett-Luce) and the RSP's
sampled softmax."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ntp_loss(log_probs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood: log_probs (N, V) per target position, targets (N,)."""
    return -log_probs.gather(1, targets[:, None]).mean()


def listwise_dpo_loss(policy: torch.Tensor, reference: torch.Tensor, valid: torch.Tensor, beta: float
                      ) -> torch.Tensor:
    """Plackett-Luce DPO over lists ordered best first: with ``r = beta * (log pi - log pi_ref)``,
    ``-sum_k [r_k - logsumexp_{j >= k} r_j]`` over the valid items, averaged over lists with at least
    two valid items (0 if there is none). All inputs (B, K); ``valid`` bool."""
    r = (beta * (policy - reference)).masked_fill(~valid, -1e9)  # finite: no NaN gradients
    tail = torch.logcumsumexp(r.flip(-1), dim=-1).flip(-1)  # logsumexp over j >= k
    terms = torch.where(valid, r - tail, torch.zeros_like(r))
    lists = valid.sum(-1) >= 2
    if not lists.any():
        return policy.sum() * 0.0
    return -(terms.sum(-1)[lists]).mean()


def rsp_loss(scores: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Softmax cross-entropy of the positive (column 0) against the valid others; rows with a
    positive and at least one negative. scores, valid (B, R)."""
    rows = valid[:, 0] & (valid[:, 1:].sum(-1) >= 1)
    if not rows.any():
        return scores.sum() * 0.0
    s = scores[rows].masked_fill(~valid[rows], float("-inf"))
    return F.cross_entropy(s, torch.zeros(s.shape[0], dtype=torch.long, device=s.device))
