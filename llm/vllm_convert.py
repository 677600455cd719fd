"""Convert the embedded GGUF to the HF-format folder vLLM loads (run by ``llm.vllm_server`` with the
*server's* Python, which has torch and transformers; it imports nothing from this project).

``python vllm_convert.py GGUF OUT_DIR`` writes ``config.json``, ``model.safetensors`` (bfloat16),
the tokenizer and its chat template into ``OUT_DIR``, atomically: into ``OUT_DIR.partial`` first,
renamed when complete, so an interrupted conversion is never mistaken for a finished one.

transformers dequantizes the GGUF blocks at load time (``GgufConfig(dequantize=True)``); without it
the model stays GGUF-quantized and ``save_pretrained`` refuses to serialise it.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def convert(gguf: Path, out: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer, GgufConfig

    partial = out.with_name(out.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=torch.bfloat16,
        quantization_config=GgufConfig(gguf_file=gguf.name, dequantize=True))
    model.save_pretrained(partial)
    tok.save_pretrained(partial)
    shutil.rmtree(out, ignore_errors=True)
    partial.rename(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: vllm_convert.py GGUF OUT_DIR")
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
