"""A toy expert task for the learning-loop tests: a short prompt, its vocabulary and categories, a
bag-of-words embedding and answers in the expert's shape."""

from __future__ import annotations

import json

import numpy as np

VOCAB = ["white bread", "rye bread", "potato chips", "green tea", "whole milk", "tomato salsa", "frozen pizza",
         "hot cocoa"]
CATS = {"white bread": "Bakery", "rye bread": "Bakery", "potato chips": "Snacks", "green tea": "Drinks",
        "whole milk": "Dairy", "tomato salsa": "Sauces", "frozen pizza": "Frozen", "hot cocoa": "Drinks"}


def row(targets=("Drinks", "Frozen"), new=("Frozen",)) -> dict:
    return {"prompt": [{"role": "system", "content": "You choose grocery product types. Answer with JSON only."},
                       {"role": "user", "content": "PRODUCT TYPES: " + ", ".join(VOCAB) +
                        ".\nWrite 5 different tags from PRODUCT TYPES for a family that likes tea."}],
            "completion": [{"role": "assistant", "content": "{}"}],
            "meta": {"stage": "task", "vocabulary": VOCAB, "phrase_categories": CATS,
                     "target_categories": list(targets), "new_categories": list(new), "recent": []}}


def embed(tags):
    words = sorted({w for t in VOCAB for w in t.split()})
    return np.array([[1.0 if w in t.split() else 0.0 for w in words] for t in tags])


def answer(*tags):
    return json.dumps({"intents": [{"interest": "tea", "reason": "habit"}], "tags": [{"tag": t, "intent": 0} for t in tags]})
