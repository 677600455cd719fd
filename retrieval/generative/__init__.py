"""RankGR: generative retrieval over semantic IDs (SIDs) with listwise DPO and a refined scorer.

One role per module: ``vectors`` (item vectors for the SIDs), ``vocab`` (SIDs as tokens), ``trie``
(valid-SID prefix trie), ``data`` (sequences, token features), ``grades`` (graded lists), ``model`` (decoder + RSP head),
``losses`` (NTP, listwise DPO, RSP softmax), ``beam`` (constrained beam search), ``train``
(``train_rankgr``), ``recommend`` (``rankgr_recommend``), ``checkpoint`` (safetensors + JSON),
``runner`` (the evaluation rows), ``channel`` (a retriever channel). See ``docs/rankgr.md``.
"""

from retrieval.generative.config import RankGRConfig
from retrieval.generative.recommend import rankgr_recommend
from retrieval.generative.train import train_rankgr
from retrieval.generative.vectors import ItemVectors, collaborative_vectors, tower_vectors

__all__ = ["ItemVectors", "RankGRConfig", "collaborative_vectors", "rankgr_recommend", "tower_vectors",
           "train_rankgr"]
