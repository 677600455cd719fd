"""Errors the retrieval package raises for input a caller can fix. All derive from IntentRecError, so
the CLI prints them as one line and the graph can catch them by type."""

from __future__ import annotations

from core.errors import IntentRecError


class RetrievalInputError(IntentRecError, ValueError):
    """A bad argument to ``Retriever.search`` (empty tags, k <= 0, beta outside [0, 1], ...)."""


class EmptyTagsError(RetrievalInputError):
    def __init__(self, detail: str = "tags must contain at least one non-blank tag"):
        super().__init__(detail)


class IndexError_(IntentRecError):
    """Base for problems with a saved FAISS index (named with a trailing underscore so it does not
    shadow the builtin ``IndexError``)."""


class CorruptIndexError(IndexError_):
    def __init__(self, path: object, detail: str):
        self.path = str(path)
        super().__init__(f"corrupt or unreadable index {self.path}: {detail}; rebuild it with `app.py index build`")


class IndexMismatchError(IndexError_):
    def __init__(self, path: object, detail: str):
        self.path = str(path)
        super().__init__(f"index {self.path} does not match the model: {detail}; rebuild it with `app.py index build`")
