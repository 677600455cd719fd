"""The LLM layer: one factory, three backends, one structured-call path.

* ``llm.factory.make_chat_model(settings)``: ``local`` (llama.cpp in process, ``llm.local``),
  ``openai`` (any OpenAI-compatible server, ``llm.openai_compat``), ``scripted`` (tests,
  ``llm.scripted``).
* ``llm.structured.structured_call``: the one way agents and judges ask for a pydantic object.
* ``llm.settings.LLMSettings``: CLI > ``INTENTREC_LLM_*`` env > config file > defaults.
* ``llm.errors``: the typed errors.

Nothing is imported here, so ``import llm`` stays cheap (no llama.cpp, no openai client, never vLLM).
See docs/llm.md.
"""
