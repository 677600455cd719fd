"""A prefix trie over the valid full SIDs: a node per prefix and its allowed next digits, so every
decode step can mask the logits of digits that lead to no item."""

from __future__ import annotations

import numpy as np


class PrefixTrie:
    """Nodes are ints, root 0. Edges are stored sorted by ``parent * width + digit`` so a batch of
    (node, digit) steps is one ``searchsorted``; a leaf at full depth maps to its item code."""

    def __init__(self, digits: np.ndarray):
        digits = np.asarray(digits, dtype=np.int64)
        if digits.ndim != 2 or digits.shape[0] == 0:
            raise ValueError("the trie needs a non-empty (n_items, depth) array of digits")
        self.depth = int(digits.shape[1])
        self.width = int(digits.max()) + 1
        node_of: dict[tuple[int, ...], int] = {(): 0}
        parents, labels, children = [], [], []
        self.node_depth = [0]
        self.leaf_item: dict[int, int] = {}
        for code, row in enumerate(digits.tolist()):
            node = 0
            for d in range(self.depth):
                key = tuple(row[:d + 1])
                child = node_of.get(key)
                if child is None:
                    child = node_of[key] = len(node_of)
                    self.node_depth.append(d + 1)
                    parents.append(node)
                    labels.append(row[d])
                    children.append(child)
                node = child
            if node in self.leaf_item:
                raise ValueError(f"items {self.leaf_item[node]} and {code} share the SID {tuple(row)}")
            self.leaf_item[node] = code
        keys = np.asarray(parents, np.int64) * self.width + np.asarray(labels, np.int64)
        order = np.argsort(keys, kind="stable")
        self._keys = keys[order]
        self._child = np.asarray(children, np.int64)[order]
        self._label = np.asarray(labels, np.int64)[order]
        self.n_nodes = len(node_of)

    def _edge(self, nodes: np.ndarray, digits: np.ndarray) -> np.ndarray:
        keys = np.asarray(nodes, np.int64) * self.width + np.asarray(digits, np.int64)
        pos = np.minimum(np.searchsorted(self._keys, keys), len(self._keys) - 1)
        ok = (self._keys[pos] == keys) & (np.asarray(digits) >= 0) & (np.asarray(digits) < self.width)
        return np.where(ok, self._child[pos], -1)

    def step(self, nodes, digits) -> np.ndarray:
        """Child node per (node, digit); -1 where the digit is not allowed (or the node is -1)."""
        nodes = np.asarray(nodes, np.int64)
        out = self._edge(np.maximum(nodes, 0), digits)
        return np.where(nodes >= 0, out, -1)

    def allowed(self, node: int) -> list[int]:
        """The digits allowed after ``node``, ascending."""
        lo = np.searchsorted(self._keys, node * self.width)
        hi = np.searchsorted(self._keys, (node + 1) * self.width)
        return self._label[lo:hi].tolist()

    def allowed_mask(self, nodes: np.ndarray, n_digits: int) -> np.ndarray:
        """(len(nodes), n_digits) bool: digit allowed after node (all False for node -1)."""
        nodes = np.asarray(nodes, np.int64)
        grid = np.broadcast_to(np.arange(n_digits)[None, :], (len(nodes), n_digits))
        return self.step(np.repeat(nodes[:, None], n_digits, axis=1), grid) >= 0

    def walk(self, digits) -> int:
        """The node reached by a digit sequence from the root, -1 if it leaves the trie."""
        node = 0
        for d in digits:
            node = int(self.step(np.array([node]), np.array([int(d)]))[0])
            if node < 0:
                return -1
        return node

    def item_at(self, node: int) -> int | None:
        return self.leaf_item.get(int(node))
