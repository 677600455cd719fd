"""Parallel sequences: several prompts decoded together as sequences of one llama.cpp context.

Decode on a CPU is bound by reading the weights, not by arithmetic, so one forward pass over a batch
of K tokens (one per sequence) costs little more than over one. The K experts of a run share all
but their persona lines, so their prompts are also evaluated once up to where they differ.

How a round runs (:meth:`ParallelDecoder.generate`):

1. The prompts' common prefix is kept in sequence 0 of a context with ``n_seq_max`` sequences and a
   unified KV cache; only the part not already there from the previous round is evaluated.
2. Sequence 0 is shared into sequences 1..K-1 (``llama_memory_seq_cp``: the cells get another
   sequence id, nothing is copied), and every prompt's own suffix is evaluated in one batch.
3. Each step samples one token per live sequence (the grammar on the most likely tokens first, as
   :class:`llm.grammar_filter.GrammarFilter` does; then top-k, top-p, min-p and temperature, from a
   generator seeded per request) and decodes them all in one batch, until every sequence has ended
   (end-of-generation token) or reached its ``max_tokens``.
4. Everything after the common prefix is removed, so the next round (the arbiter, which starts with
   the same shared context) reuses the prefix.

:class:`SequenceBatcher` turns concurrent calls into rounds: LangGraph runs the K expert tasks of a
``Send`` fan-out in parallel threads; the first one to reach the model waits ``gather_s`` for the
others and decodes them together. A call that arrives alone is a round of one.
"""

from __future__ import annotations

import contextlib
import ctypes
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from llm.errors import ContextLengthError, LLMError
from llm.settings import DEFAULT_MAX_TOKENS


@dataclass
class SeqRequest:
    """One prompt to decode: its tokens, its grammar (or None) and its sampling settings."""

    tokens: list[int]
    grammar: Any = None
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.2
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    seed: int = 42
    shortlist: int = 64  # 0: the grammar on the whole vocabulary for every token
    # filled in by the round
    text: str = ""
    out_tokens: list[int] = field(default_factory=list)
    finish_reason: str = ""
    cached: int = 0  # prompt tokens this request did not evaluate (already in the KV cache or shared)
    batch_size: int = 0  # sequences decoded in the same round
    total_s: float = 0.0
    grammar_full_checks: int | None = None
    error: BaseException | None = None
    done: threading.Event = field(default_factory=threading.Event)


def sample(logits: np.ndarray, req: SeqRequest, rng: np.random.Generator) -> int:
    """One token from ``logits`` (already masked by the grammar: ``-inf`` where forbidden) with
    llama-cpp-python's default chain: top-k, top-p, min-p, temperature. Temperature 0: argmax."""
    finite = np.flatnonzero(np.isfinite(logits))
    if len(finite) == 0:
        raise LLMError("no token is allowed: the grammar and the model's logits have nothing in common")
    if req.temperature <= 0:
        return int(finite[np.argmax(logits[finite])])
    k = min(req.top_k if req.top_k > 0 else len(finite), len(finite))
    top = finite[np.argpartition(logits[finite], -k)[-k:]]
    top = top[np.argsort(-logits[top], kind="stable")]
    z = logits[top].astype(np.float64)
    p = np.exp(z - z[0])
    p /= p.sum()
    if req.top_p < 1.0:  # the smallest prefix whose mass reaches top_p
        keep = int(np.searchsorted(np.cumsum(p), req.top_p) + 1)
        top, z, p = top[:keep], z[:keep], p[:keep]
    if req.min_p > 0:
        keep = p >= req.min_p * p[0]
        top, z = top[keep], z[keep]
    q = np.exp((z - z[0]) / req.temperature)
    q /= q.sum()
    return int(top[rng.choice(len(top), p=q)])


class ParallelDecoder:
    """Its own llama.cpp context (``n_seq_max`` sequences, unified KV cache) over a loaded ``Llama``'s
    weights. Not thread-safe: :class:`SequenceBatcher` serialises the rounds."""

    def __init__(self, llama: Any, *, n_seq_max: int = 4):
        import llama_cpp
        from llama_cpp import _internals

        self._lib = llama_cpp
        self.llama = llama
        self.n_seq_max = int(n_seq_max)
        params = llama_cpp.llama_context_params.from_buffer_copy(llama.context_params)
        params.n_seq_max = self.n_seq_max
        params.kv_unified = True
        self.n_ctx = int(params.n_ctx)
        self.n_batch = int(params.n_batch)
        self._stack = contextlib.ExitStack()
        self._ctx = self._stack.enter_context(contextlib.closing(
            _internals.LlamaContext(model=llama._model, params=params, verbose=False)))
        self.ctx = self._ctx.ctx
        lora = getattr(llama, "_lora_adapter", None)
        if lora is not None:  # the same LoRA adapter as the Llama's own context, at its scale
            adapters = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(lora)
            scales = (ctypes.c_float * 1)(float(getattr(llama, "lora_scale", 1.0)))
            if llama_cpp.llama_set_adapters_lora(self.ctx, adapters, 1, scales):
                raise LLMError("llama.cpp could not apply the LoRA adapter to the parallel context")
        self._batch = llama_cpp.llama_batch_init(self.n_batch, 0, 1)
        self.n_vocab = int(llama.n_vocab())
        self.cached: list[int] = []  # the tokens sequence 0 holds between rounds
        self.rounds = 0

    def reset(self) -> None:
        """An empty KV cache (the next round evaluates its whole prompt)."""
        self._lib.llama_memory_clear(self._mem(), True)
        self.cached = []

    def close(self) -> None:
        if self._batch is not None:
            self._lib.llama_batch_free(self._batch)
            self._batch = None
        self._stack.close()

    # ----- llama.cpp plumbing ---------------------------------------------------------------------
    def _mem(self) -> Any:
        return self._lib.llama_get_memory(self.ctx)

    def _decode(self, entries: list[tuple[int, int, int, bool]]) -> dict[int, int]:
        """Decode (token, pos, seq, wants_logits) entries: those without logits in chunks of
        ``n_batch``, then those with logits (at most one per sequence) as the final batch. Returns each
        such sequence's row in that final batch (read before the next decode)."""
        plain = [e for e in entries if not e[3]]
        wanted = [e for e in entries if e[3]]
        for start in range(0, len(plain), self.n_batch):
            self._decode_batch(plain[start:start + self.n_batch])
        if wanted:
            self._decode_batch(wanted)
        return {seq: j for j, (_, _, seq, _) in enumerate(wanted)}

    def _decode_batch(self, chunk: list[tuple[int, int, int, bool]]) -> None:
        b = self._batch
        for j, (tok, pos, seq, want) in enumerate(chunk):
            b.token[j], b.pos[j], b.n_seq_id[j] = tok, pos, 1
            b.seq_id[j][0] = seq
            b.logits[j] = want
        b.n_tokens = len(chunk)
        rc = self._lib.llama_decode(self.ctx, b)
        if rc != 0:
            raise LLMError(f"llama_decode failed (code {rc}) with {len(chunk)} tokens in the batch")

    def _logits(self, row: int) -> np.ndarray:
        ptr = self._lib.llama_get_logits_ith(self.ctx, row)
        return np.ctypeslib.as_array(ptr, shape=(self.n_vocab,)).astype(np.float32, copy=True)

    # ----- a round --------------------------------------------------------------------------------
    def generate(self, reqs: list[SeqRequest]) -> None:
        """Decode ``reqs`` (at most ``n_seq_max``) together; fills each request's result fields."""
        from llm.grammar_filter import GrammarFilter

        if not reqs or len(reqs) > self.n_seq_max:
            raise ValueError(f"a round holds 1..{self.n_seq_max} requests, not {len(reqs)}")
        t0 = time.perf_counter()
        lib, mem = self._lib, self._mem()
        shared, need = kv_cells(reqs)
        if need > self.n_ctx:
            raise ContextLengthError(f"{len(reqs)} prompts need {need} KV cells, more than n_ctx={self.n_ctx}")
        reuse = common_prefix(self.cached, reqs[0].tokens[:shared])
        for seq in range(1, self.n_seq_max):
            lib.llama_memory_seq_rm(mem, seq, -1, -1)
        lib.llama_memory_seq_rm(mem, 0, reuse, -1)
        self.cached = list(reqs[0].tokens[:reuse])
        # 1. the common prefix on sequence 0; 2. shared into the others; 3. the suffixes in one batch
        head = reqs[0].tokens
        self._decode([(head[p], p, 0, False) for p in range(reuse, shared)])
        self.cached = list(head[:shared])
        for seq in range(1, len(reqs)):
            lib.llama_memory_seq_cp(mem, 0, seq, 0, shared)
        tails = [[(r.tokens[p], p, seq, p == len(r.tokens) - 1) for p in range(shared, len(r.tokens))]
                 for seq, r in enumerate(reqs)]
        rows = self._decode([e for t in tails for e in t])
        for seq, r in enumerate(reqs):
            r.cached = reuse if seq == 0 else shared
            r.batch_size = len(reqs)
        # 4. sampling steps
        filters = [GrammarFilter(self.llama, r.grammar, shortlist=r.shortlist or self.n_vocab) if r.grammar is not None else None
                   for r in reqs]
        rngs = [np.random.default_rng(r.seed) for r in reqs]
        seen = [np.asarray(r.tokens, dtype=np.intc) for r in reqs]
        pos = [len(r.tokens) for r in reqs]
        live = set(range(len(reqs)))
        try:
            while live:
                step = []
                for seq in sorted(live):
                    r = reqs[seq]
                    logits = self._logits(rows[seq])
                    if filters[seq] is not None:
                        logits = filters[seq](seen[seq], logits)
                    tok = sample(logits, r, rngs[seq])
                    if lib.llama_vocab_is_eog(self.llama._model.vocab, tok):
                        r.finish_reason = "stop"
                        live.discard(seq)
                        continue
                    r.out_tokens.append(tok)
                    seen[seq] = np.append(seen[seq], np.intc(tok))
                    if len(r.out_tokens) >= r.max_tokens:
                        r.finish_reason = "length"
                        live.discard(seq)
                        continue
                    step.append((tok, pos[seq], seq, True))
                    pos[seq] += 1
                if step:
                    rows = self._decode(step)
        finally:
            for seq, f in enumerate(filters):
                if f is not None:
                    reqs[seq].grammar_full_checks = f.full_checks if reqs[seq].shortlist else None
                    f.close()
            for seq in range(1, self.n_seq_max):
                lib.llama_memory_seq_rm(mem, seq, -1, -1)
            lib.llama_memory_seq_rm(mem, 0, shared, -1)
        elapsed = time.perf_counter() - t0
        for r in reqs:
            r.text = self.llama.detokenize(r.out_tokens).decode("utf-8", errors="replace")
            r.total_s = elapsed
        self.rounds += 1


def common_prefix(a: Any, b: Any) -> int:
    """How many leading tokens ``a`` and ``b`` share."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    diff = np.nonzero(np.asarray(a[:n]) != np.asarray(b[:n]))[0]
    return int(diff[0]) if len(diff) else n


def kv_cells(reqs: list[SeqRequest]) -> tuple[int, int]:
    """(shared prefix length, KV cells) for decoding ``reqs`` as one round: the common prefix once,
    then each request's suffix and its ``max_tokens``."""
    shared = min(len(r.tokens) for r in reqs) - 1  # every sequence evaluates at least its last token
    for r in reqs[1:]:
        shared = min(shared, common_prefix(reqs[0].tokens, r.tokens))
    shared = max(shared, 0)
    return shared, shared + sum(len(r.tokens) - shared + r.max_tokens for r in reqs)


def fitting_round(queue: list[SeqRequest], n_seq_max: int, n_ctx: int) -> int:
    """How many requests from the head of ``queue`` one round takes: at most ``n_seq_max``, and no
    more than fit ``n_ctx`` together (concurrent calls of different users share no prefix). The first
    always goes, so a request too long on its own gets its own ``ContextLengthError``."""
    n = min(len(queue), n_seq_max)
    while n > 1 and kv_cells(queue[:n])[1] > n_ctx:
        n -= 1
    return n


class SequenceBatcher:
    """Collects concurrent calls into rounds of :class:`ParallelDecoder` (see the module docstring)."""

    def __init__(self, decoder: ParallelDecoder, *, gather_s: float = 0.05):
        self.decoder = decoder
        self.gather_s = gather_s
        self._queue: list[SeqRequest] = []
        self._queue_lock = threading.Lock()
        self._run_lock = threading.Lock()
        self.round_sizes: list[int] = []

    def submit(self, req: SeqRequest) -> SeqRequest:
        """Decode ``req`` (possibly with others that arrive within ``gather_s``) and return it filled."""
        with self._queue_lock:
            self._queue.append(req)
        while not req.done.is_set():
            with self._run_lock:
                if req.done.is_set():
                    break
                self._gather()
                with self._queue_lock:
                    n = fitting_round(self._queue, self.decoder.n_seq_max, self.decoder.n_ctx) if self._queue else 0
                    round_, self._queue = self._queue[:n], self._queue[n:]
                if not round_:
                    continue
                try:
                    self.decoder.generate(round_)
                except BaseException as e:  # every caller in the round gets the error
                    for r in round_:
                        r.error = e
                self.round_sizes.append(len(round_))
                for r in round_:
                    r.done.set()
        if req.error is not None:
            raise req.error
        return req

    def _gather(self) -> None:
        """Wait until no new call has arrived for ``gather_s`` (at most 4 × that), or the round is full."""
        deadline = time.monotonic() + 4 * self.gather_s
        with self._queue_lock:
            n = len(self._queue)
        while n < self.decoder.n_seq_max and time.monotonic() < deadline:
            time.sleep(self.gather_s)
            with self._queue_lock:
                now = len(self._queue)
            if now == n:
                return
            n = now


__all__ = ["ParallelDecoder", "SeqRequest", "SequenceBatcher", "common_prefix", "fitting_round", "kv_cells", "sample"]
