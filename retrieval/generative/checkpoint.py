"""Checkpoints: ``rankgr.safetensors`` (network weights) + ``rankgr.json`` (config, vocabulary sizes,
behaviours, item ids, SHA-256 of the weights) + the semantic IDs (``retrieval.hisac`` format).
Nothing is pickled; loading checks the hash and every tensor's shape."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from retrieval.generative.config import RankGRConfig
from retrieval.generative.model import RankGRNet
from retrieval.generative.train import RankGR
from retrieval.generative.trie import PrefixTrie
from retrieval.generative.vocab import SidVocab
from retrieval.hisac import SemanticIds
from retrieval.index import sha256_file

FORMAT_VERSION = 1
WEIGHTS, SIDECAR = "rankgr.safetensors", "rankgr.json"


def save_rankgr(model: RankGR, directory: str | Path) -> Path:
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / WEIGHTS
    save_file({k: v.contiguous() for k, v in model.net.state_dict().items()}, str(path))
    model.vocab.sids.save(directory)
    meta = {"format_version": FORMAT_VERSION, "config": model.config.as_dict(), "vocab_size": model.vocab.size,
            "depth": model.vocab.depth, "behaviours": list(model.behaviours), "item_ids": model.vocab.item_ids,
            "popular": list(model.popular[:1000]), "vectors_source": model.vectors_source, "sha256": sha256_file(path)}
    (directory / SIDECAR).write_text(json.dumps(meta) + "\n", encoding="utf-8")
    return path


def load_rankgr(directory: str | Path) -> RankGR:
    """The model :func:`save_rankgr` wrote; histories are rebuilt from the split it serves."""
    directory = Path(directory)
    meta = json.loads((directory / SIDECAR).read_text(encoding="utf-8"))
    if meta.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{directory / SIDECAR}: format version {meta.get('format_version')}, "
                         f"expected {FORMAT_VERSION}")
    path = directory / WEIGHTS
    if sha256_file(path) != meta["sha256"]:
        raise ValueError(f"{path}: SHA-256 does not match {SIDECAR}")
    cfg = RankGRConfig.from_dict(meta["config"])
    vocab = SidVocab(meta["item_ids"], SemanticIds.load(directory))
    if vocab.size != meta["vocab_size"] or vocab.depth != meta["depth"]:
        raise ValueError(f"{directory}: semantic IDs do not match {SIDECAR}")
    net = RankGRNet(cfg, vocab.size, vocab.depth, len(meta["behaviours"]), torch.from_numpy(vocab.token_level))
    state = load_file(str(path))
    expected = net.state_dict()
    if set(state) != set(expected):
        raise ValueError(f"{path}: tensors {sorted(set(state) ^ set(expected))} missing or unexpected")
    bad = [k for k in expected if tuple(state[k].shape) != tuple(expected[k].shape)]
    if bad:
        raise ValueError(f"{path}: shape mismatch for {bad}")
    net.load_state_dict(state)
    return RankGR(net=net.eval(), vocab=vocab, trie=PrefixTrie(vocab.sids.codes), config=cfg,
                  popular=tuple(meta["popular"]), vectors_source=meta["vectors_source"],
                  behaviours=tuple(meta["behaviours"]))
