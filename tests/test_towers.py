"""The towers' fast paths against the plain formulas they replace (same numbers, same gradients)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from retrieval.towers import (
    UserTower,
    diagonal_softmax_loss,
    inbatch_logits,
    softmax_loss_from_logits,
)


def _batch(seed: int = 0, b: int = 12, d: int = 8):
    g = torch.Generator().manual_seed(seed)
    q = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    k = F.normalize(torch.randn(b, d, generator=g), dim=-1)
    items = torch.tensor([3, 5, 3, 7, 9, 5, 1, 2, 3, 8, 4, 6])[:b]  # duplicates: 3 three times, 5 twice
    log_q = torch.log(torch.rand(b, generator=g) * 0.1 + 1e-3)
    weight = torch.rand(b, generator=g) + 0.5
    return q, k, items, log_q, weight


def test_inbatch_logits_are_scaled_cosines_minus_the_column_log_q():
    q, k, _, log_q, _ = _batch()
    expected = (q @ k.T) / 0.07 - log_q.unsqueeze(0)
    assert torch.allclose(inbatch_logits(q, k, temperature=0.07, log_q=log_q), expected, atol=1e-5)
    assert torch.allclose(inbatch_logits(q, k, temperature=0.5), (q @ k.T) / 0.5, atol=1e-6)


def test_diagonal_loss_equals_the_masked_two_pass_loss_with_duplicates_excluded():
    q, k, items, log_q, weight = _batch()
    q1, q2 = q.clone().requires_grad_(), q.clone().requires_grad_()
    same_item = items.unsqueeze(0) == items.unsqueeze(1)
    eye = torch.eye(len(items), dtype=torch.bool)
    fast = diagonal_softmax_loss(inbatch_logits(q1, k, temperature=0.07, log_q=log_q), exclude=same_item,
                                 weight=weight)
    slow = softmax_loss_from_logits(inbatch_logits(q2, k, temperature=0.07, log_q=log_q), eye, exclude=same_item,
                                    weight=weight)
    # the reference by hand: row i's softmax over the columns that are not another copy of item i
    logits = (q @ k.T) / 0.07 - log_q.unsqueeze(0)
    by_hand = []
    for i in range(len(items)):
        keep = (items != items[i]) | (torch.arange(len(items)) == i)
        by_hand.append(torch.logsumexp(logits[i][keep], 0) - logits[i, i])
    by_hand = (torch.stack(by_hand) * weight).sum() / weight.sum()
    assert torch.allclose(fast, slow, atol=1e-5) and torch.allclose(fast, by_hand, atol=1e-5)
    fast.backward()
    slow.backward()
    assert torch.allclose(q1.grad, q2.grad, atol=1e-5)
    # the caller's mask is left as it was (the diagonal is cleared on a copy)
    assert bool(same_item.diagonal().all())


def test_history_pooling_is_the_masked_mean_and_padding_rows_stay_untrained():
    torch.manual_seed(0)
    leaf_codes = torch.tensor([1, 2, 2, 0, 3, 1])  # item code -> leaf (item 3 has no leaf)
    tower = UserTower(n_users=4, n_types=2, n_items=6, leaf_codes=leaf_codes, n_leaves=4, id_dim=8, hidden=16, dim=8)
    torch.nn.init.normal_(tower.hist_item.weight)
    torch.nn.init.normal_(tower.user_emb.weight)
    with torch.no_grad():
        tower.hist_item.weight[0].zero_()
        tower.hist_leaf.weight[0].zero_()
    users = torch.tensor([1, 2, 3])
    hists = [torch.tensor([[4, 2, 0, 0], [1, 1, 6, 3], [0, 0, 0, 0]]),  # shifted item codes, 0 = padding
             torch.tensor([[5, 0, 0, 0], [0, 0, 0, 0], [2, 4, 4, 0]])]
    out = tower(users, hists)

    def plain(h):
        mask = (h > 0).unsqueeze(-1).float()
        e = tower.hist_item(h) + tower.hist_leaf(tower.leaf_of[h])
        return (e * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    parts = [tower.user_emb(users)] + [plain(h) for h in hists]
    expected = F.normalize(tower.mlp(torch.cat(parts, dim=1)), dim=-1)
    assert torch.allclose(out, expected, atol=1e-5)
    out.sum().backward()
    grad_items = tower.hist_item.weight.grad.coalesce()
    assert 0 not in grad_items.indices()[0].tolist()  # the padding row gets no gradient
    assert set(grad_items.indices()[0].tolist()) == {1, 2, 3, 4, 5, 6}
    assert float(tower.hist_leaf.weight.grad[0].abs().sum()) == 0.0
    assert float(tower.hist_leaf.weight.grad[1:].abs().sum()) > 0.0
