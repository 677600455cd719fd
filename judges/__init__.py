"""Agent-as-a-judge: deterministic rules and LLM dimension evaluators, the senior reviewer (S/A/B),
plain judging functions for replay, and the LangGraph judge subgraph. See ``docs/judges.md``."""
