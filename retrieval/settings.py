"""Settings for building and serving the three-tower retriever.

Two groups of fields:

* **build fields** change the trained model and the index, so they are part of the cache key under
  ``core.paths.data_dir()/retrieval/`` (see :meth:`RetrievalSettings.build_key`);
* **serving fields** (``beta``, ``per_tag_quota``, ``overfetch``, ``tag_new_items_only``, ``merge``,
  ``repeat_channel``, ``channel_split_path``, ``num_threads``) only change how ``search`` fuses and
  cuts candidates, so a cached build is reused when only they differ.

``cutoff`` builds the retriever "as of" a date: towers train only on behaviours strictly before it
and user vectors summarise only that history, which is what the offline evaluation (and the graph's
own offline evaluation) needs to avoid leaking the test window. ``max_users`` and
``catalogue="seen"`` make a small slice cheap enough for unit tests.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

#: bump when a code change alters what a build produces, so cached builds are not reused across it
BUILD_VERSION = 7

SERVING_FIELDS = frozenset({"beta", "per_tag_quota", "overfetch", "num_threads", "tag_new_items_only", "merge",
                            "repeat_channel", "channel_split_path"})


class RetrievalSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    # ----- model ----------------------------------------------------------------------------------
    dim: int = Field(256, ge=8, description="output dimension of all three towers")
    id_dim: int = Field(64, ge=4, description="width of id / attribute / history embeddings")
    hidden: int = Field(512, ge=8, description="hidden width of each tower's MLP")
    max_history: int = Field(50, ge=1, description="most recent events pooled per behaviour type")
    text_model: str = "all-MiniLM-L6-v2"
    item_text: Literal["auto", "path", "title"] = Field(
        "auto", description="'auto': titles when the category path is coarse (>= 50 items per path text, "
        "retrieval.catalogue.choose_text_source) and titles are distinct, else the path; 'path': short text "
        "from the category path leaf + category; 'title': the item title (one string per item, slow for big "
        "catalogues)")

    # ----- loss -----------------------------------------------------------------------------------
    alpha: float = Field(0.5, ge=0.0, le=1.0, description="L = L_col + alpha*L_tag + (1-alpha)*L_cate")
    temperature: float = Field(0.07, gt=0.0)
    logq: bool = Field(True, description="subtract log item frequency from in-batch logits (Yi et al. 2019)")
    tag_logq: float = Field(
        1.0, ge=0.0, le=1.0, description="weight of the logQ correction in L_tag and L_cate: 1 ranks a tag's "
        "items by p(item|tag) (popular first), 0 by pointwise mutual information (specific, long-tail first)")

    # ----- optimisation ---------------------------------------------------------------------------
    #: 1 pass: chosen by ``python -m evals.retrieval_tuning --build-cost`` (the cheapest tower training that
    #: keeps 98% of the 3-pass build's validation Recall@50 and does not lose new items by a paired sign
    #: test), confirmed on a second validation fold; a 4x batch was slower per sample. docs/retrieval.md
    epochs: int = Field(1, ge=1)
    batch_size: int = Field(1024, ge=2)
    lr: float = Field(1e-3, gt=0.0)
    seed: int = 42

    # ----- data slice -----------------------------------------------------------------------------
    cutoff: datetime | None = Field(None, description="train only on behaviours strictly before this time")
    max_users: int | None = Field(None, ge=1, description="train on a seeded random sample of this many users")
    min_user_events: int = Field(1, ge=1, description="users sampled by max_users need at least this many events")
    catalogue: Literal["full", "seen"] = Field(
        "full", description="'full': index every catalogue item; 'seen': only items in the training slice")
    llm_tags_path: str | None = Field(None, description="JSONL of {'tag', 'item_id'} pairs from logged runs")

    # ----- serving --------------------------------------------------------------------------------
    beta: float = Field(0.6, ge=0.0, le=1.0, description="fused score = beta*user + (1-beta)*tag")
    per_tag_quota: int | None = Field(None, ge=1, description="slots reserved per tag (default: tag share of k / #tags)")
    overfetch: int = Field(3, ge=1, description="each channel fetches overfetch x its quota before merging")
    tag_new_items_only: bool = Field(
        True, description="the tag channel skips items the user already interacted with before the cutoff "
        "(it is the discovery channel; the user channel still returns re-buys)")
    merge: Literal["quota", "sum"] = Field(
        "quota", description="how the user and tag channels are fused: 'quota': each channel fills its reserved "
        "slots, then best fused scores; 'sum': plain top-k of the fused score over the union (kept for ablations)")
    repeat_channel: bool = Field(
        True, description="repeat-aware serving: items the user already bought come from the TIFU-KNN repeat "
        "channel, the fused user/tag channels only bring unseen items, and the channel split model "
        "decides per user how many of each (retrieval/channel_split.py); off: the fused channels alone")
    channel_split_path: str | None = Field(
        None, description="JSON channel split model (default: retrieval/channel_split.json, fitted on validation)")
    num_threads: int | None = Field(None, ge=1, description="torch / faiss threads (default: library default)")

    def build_dict(self) -> dict:
        return {k: v for k, v in self.model_dump(mode="json").items() if k not in SERVING_FIELDS}

    def build_key(self, dataset_fingerprint: str) -> str:
        blob = json.dumps({"version": BUILD_VERSION, "data": dataset_fingerprint, "settings": self.build_dict()},
                          sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]
