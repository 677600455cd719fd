"""The HiSAC interest channel of a built retriever: a few interest agents per user, one FAISS query each.

:class:`InterestChannel` binds ``retrieval/hisac.py`` to a :class:`retrieval.service.Retriever`:
semantic IDs over the retriever's item-tower vectors whose two levels follow the catalogue's category
tree where it has one (top of the path > category: an agent is a category a person can name) and
come from residual k-means otherwise (``ids="kmeans"`` forces it; both cached beside the index as
``semantic_ids.safetensors`` + ``.json``, the tree IDs in ``semantic_ids_tree/``), the user's history as the repeat channel's bought items
weighted by their TIFU-KNN score (time-decayed frequency), agents by hierarchical voting, agent
vectors by soft routing, and a quota merge over the agents' FAISS results. It is a discovery channel:
items the user already bought are skipped. :meth:`InterestChannel.describe` gives the agents in words
("Cold Cereal (82%) > Kids Cereal (64%)", vote share), which the graph can hand the planner as
persona evidence.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Literal

import numpy as np

from retrieval.errors import RetrievalInputError
from retrieval.hisac import Agent, SemanticIds, activate, agent_vectors, all_agents, search_agents
from retrieval.service import Candidate, Retriever, SearchResult

Routing = Literal["soft", "hard"]


@dataclass(frozen=True)
class AgentView:
    label: str  # the most common category among the user's own items in the agent's cell
    cell: str  # the cell's global name: majority categories of its level-1 and level-2 codes
    share: float  # the agent's vote share of the user's history
    n_items: int  # the user's distinct items in the cell


IdSource = Literal["auto", "tree", "kmeans"]


class InterestChannel:
    def __init__(self, retriever: Retriever, sids: SemanticIds | None = None, *, max_agents: int = 4,
                 top_parents: int = 2, top_children: int = 2, temperature: float = 0.1, ids: IdSource = "auto"):
        if retriever.repeat is None:
            raise RetrievalInputError("the interest channel needs the retriever's purchase histories "
                                      "(load the retriever with its dataset)")
        self.r = retriever
        tree = self.tree_labels() if ids != "kmeans" else None
        if ids == "tree" and tree is None:
            raise RetrievalInputError("semantic IDs from the category tree need a category on at least 90% of "
                                      "the items and two or more categories")
        self.ids = "tree" if tree is not None else "kmeans"
        self.sids = sids or self._load_or_build(tree)
        self.max_agents, self.top_parents, self.top_children = max_agents, top_parents, top_children
        self.temperature = temperature
        self._labels: dict | None = None

    def tree_labels(self) -> tuple[list[str], list[str]] | None:
        """(top of the category path, category) per item when the catalogue has a category tree."""
        cats = self.r.categories
        if sum(1 for c in cats if c) < 0.9 * len(cats) or len(set(cats) - {""}) < 2:
            return None
        return [p.split(" > ")[0].strip() for p in self.r.paths], list(cats)

    def _load_or_build(self, tree: tuple[list[str], list[str]] | None) -> SemanticIds:
        d = self.r.directory
        folder = None if d is None else (d / "semantic_ids_tree" if tree is not None else d)
        if folder is not None and (folder / "semantic_ids.json").exists():
            return SemanticIds.load(folder)
        sids = (SemanticIds.from_tree(self.r.item_vecs, *tree, seed=self.r.settings.seed) if tree is not None
                else SemanticIds.build(self.r.item_vecs, seed=self.r.settings.seed))
        if folder is not None:
            sids.save(folder)
        return sids

    def history(self, user_id: str) -> tuple[np.ndarray, np.ndarray]:
        codes, scores, _ = self.r.repeat.candidates(user_id)
        return codes, scores

    def agents(self, user_id: str, *, voting: bool = True) -> list[Agent]:
        codes, w = self.history(user_id)
        if not len(codes):
            return []
        if not voting:
            return all_agents(codes, w, self.sids)
        return activate(codes, w, self.sids, max_agents=self.max_agents, top_parents=self.top_parents,
                        top_children=self.top_children)

    def describe(self, user_id: str) -> list[AgentView]:
        """The user's agents in words, strongest first."""
        if self._labels is None:
            self._labels = self.sids.labels(self.r.categories)
        out = []
        for a in self.agents(user_id):
            cats = Counter(self.r.categories[c] for c in a.members if self.r.categories[c])
            label = cats.most_common(1)[0][0] if cats else self._labels.get(a.key, "?")
            out.append(AgentView(label=label, cell=f"{self._labels.get((a.level1,), '?')} > {self._labels.get(a.key, '?')}",
                                 share=round(a.share, 3), n_items=len(a.members)))
        return out

    def search(self, user_id: str, k: int, *, routing: Routing = "soft", voting: bool = True,
               exclude_items: set[str] | None = None) -> SearchResult:
        codes, w = self.history(user_id)
        if not len(codes):
            return SearchResult(candidates=[], user_known=self.r.knows_user(user_id), flags=["no_repeat_history"])
        agents = self.agents(user_id, voting=voting)
        vecs = agent_vectors(agents, codes, w, self.r.item_vecs, self.sids, routing=routing,
                             temperature=self.temperature)
        excl = set(codes.tolist()) | {self.r._item_code[i] for i in (exclude_items or ()) if i in self.r._item_code}
        hits = search_agents(self.r.index.search, vecs, [a.share for a in agents], k, exclude=excl)
        cands = [Candidate(item_id=self.r.item_ids[c], title=self.r.titles[c], category=self.r.categories[c],
                           score=float(s), sources=["interest"], channel="discovery") for c, s, _ in hits]
        flags = [] if len(cands) >= k else [f"short_result:{len(cands)}"]
        return SearchResult(candidates=cands, user_known=True, flags=flags)
