"""A trained LoRA adapter (peft, safetensors) in llama.cpp's GGUF LoRA format ([6/7], step 5).

llama.cpp reads an adapter GGUF with ``general.type = adapter``, ``adapter.type = lora``,
``adapter.lora.alpha``, and for each adapted weight ``blk.N.<tensor>.weight.lora_a`` (rank × in) and
``…lora_b`` (out × rank), named as in the base GGUF (``gguf.get_tensor_name_map``); it scales by
alpha / rank as peft does. This is what llama.cpp's own ``convert_lora_to_gguf.py`` writes, done
here with the ``gguf`` package so the export needs no llama.cpp checkout.

One detail decides whether the adapter means the same thing in both engines: the GGUF stores the
query and key projections with their rows permuted for llama.cpp's rotary layout, and transformers
undoes that when it loads the GGUF. An adapter trained in transformers therefore has its ``lora_b``
rows of ``q_proj`` and ``k_proj`` permuted the same way on export (``lora_a`` acts on the input side
and is unchanged). :func:`drift` checks the result: next-token log-probabilities from transformers
with the adapter against llama.cpp with the exported adapter.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

import numpy as np

#: prompts of the drift check: a chat turn as the graph sends it, and plain text
DRIFT_PROMPTS = [
    "<|im_start|>user\nName a product type this household may buy next.<|im_end|>\n<|im_start|>assistant\n",
    "The customer often buys milk, bread and",
    "<|im_start|>user\nPRODUCT TYPES: «hot cocoa mix», «frozen pizza». Pick one.<|im_end|>\n<|im_start|>assistant\n{\"tag\":\"",
]
_NAME = re.compile(r"layers\.(\d+)\.(self_attn|mlp)\.(\w+_proj)\.lora_([AB])\.weight$")


def permute_rows(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's Q/K row permutation (``LlamaModel.permute`` in its converter) for ``n_head`` heads."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _base_heads(gguf_path: Path) -> tuple[int, int, int]:
    import gguf

    r = gguf.GGUFReader(str(gguf_path))

    def field(key: str) -> int:
        f = r.fields[key]
        return int(f.parts[f.data[0]][0])

    return field("llama.block_count"), field("llama.attention.head_count"), field("llama.attention.head_count_kv")


def export_gguf_lora(adapter_dir: str | Path, out_path: str | Path, *, base_gguf: str | Path | None = None) -> dict[str, Any]:
    """Write ``adapter_dir`` (peft's ``adapter_model.safetensors`` and ``adapter_config.json``) as a GGUF
    LoRA adapter at ``out_path``. Returns what was written (tensors, rank, alpha, bytes, sha256)."""
    import gguf
    from safetensors.numpy import load_file

    from core.paths import default_gguf_path

    adapter_dir = Path(adapter_dir)
    cfg = json.loads((adapter_dir / "adapter_config.json").read_text())
    rank, alpha = int(cfg["r"]), float(cfg["lora_alpha"])
    n_blocks, n_head, n_head_kv = _base_heads(Path(base_gguf) if base_gguf else default_gguf_path())
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_blocks)
    weights = load_file(str(adapter_dir / "adapter_model.safetensors"))
    writer = gguf.GGUFWriter(str(out_path), arch="llama")
    writer.add_string(gguf.Keys.General.TYPE, gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    written = 0
    for key in sorted(weights):
        m = _NAME.search(key)
        if m is None:
            raise ValueError(f"{adapter_dir}: unexpected tensor {key!r} (only LoRA A/B of projections are exported)")
        layer, part, proj, ab = m.groups()
        base = names.get_name(f"model.layers.{layer}.{part}.{proj}.weight", try_suffixes=(".weight",))
        if base is None:
            raise ValueError(f"{adapter_dir}: no GGUF name for {key!r}")
        w = weights[key].astype(np.float32)
        if ab == "B" and proj == "q_proj":
            w = permute_rows(w, n_head)
        elif ab == "B" and proj == "k_proj":
            w = permute_rows(w, n_head_kv)
        writer.add_tensor(f"{base}.lora_{ab.lower()}", np.ascontiguousarray(w))
        written += 1
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    data = Path(out_path).read_bytes()
    return {"out": str(out_path), "tensors": written, "rank": rank, "alpha": alpha, "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


#: the drift check passes when llama.cpp + adapter is within this much (log-prob, on transformers'
#: top tokens) of transformers + adapter beyond what the two engines differ on the base model itself
#: (llama.cpp runs the GGUF's quantised weights, transformers their float32 dequantisation)
DRIFT_TOLERANCE = 0.15


def drift(adapter_dir: str | Path, gguf_adapter: str | Path, prompts: list[str], *, top: int = 5,
          base: tuple[Any, Any] | None = None) -> dict[str, Any]:
    """Next-token log-probabilities after each prompt: transformers + the peft adapter against llama.cpp
    + the exported GGUF adapter, and both against their base models. Per prompt: whether the top token
    agrees, and the largest absolute log-prob difference over the transformers top ``top`` tokens."""
    import torch
    from llama_cpp import Llama
    from peft import PeftModel

    from core.paths import default_gguf_path
    from learning.sft import load_base

    model, tok = base or load_base()
    peft_model = PeftModel.from_pretrained(model, str(adapter_dir))
    peft_model.eval()
    gguf_path = str(default_gguf_path())
    tuned = Llama(model_path=gguf_path, lora_path=str(gguf_adapter), n_ctx=512, logits_all=True, verbose=False)
    plain = Llama(model_path=gguf_path, n_ctx=512, logits_all=True, verbose=False)
    rows = []
    for text in prompts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            hf = torch.log_softmax(peft_model(torch.tensor([ids])).logits[0, -1].float(), -1).numpy()
            with peft_model.disable_adapter():
                hf_base = torch.log_softmax(peft_model(torch.tensor([ids])).logits[0, -1].float(), -1).numpy()
        lc, lc_base = _llama_logprobs(tuned, ids), _llama_logprobs(plain, ids)
        best = np.argsort(-hf)[:top]
        rows.append({"prompt": text[:60], "tokens": len(ids),
                     "top_agrees": int(np.argmax(hf)) == int(np.argmax(lc)),
                     "max_abs_diff": float(np.max(np.abs(hf[best] - lc[best]))),
                     "base_diff": float(np.max(np.abs(hf_base[best] - lc_base[best]))),
                     "adapter_effect_hf": float(np.max(np.abs(hf[best] - hf_base[best]))),
                     "adapter_effect_llama": float(np.max(np.abs(lc[best] - lc_base[best])))})
    tuned.close()
    plain.close()
    excess = max(r["max_abs_diff"] - r["base_diff"] for r in rows)
    return {"prompts": rows, "max_abs_diff": max(r["max_abs_diff"] for r in rows),
            "max_base_diff": max(r["base_diff"] for r in rows), "excess": excess,
            "top_agrees": sum(r["top_agrees"] for r in rows), "tolerance": DRIFT_TOLERANCE,
            "passed": excess <= DRIFT_TOLERANCE and all(r["top_agrees"] for r in rows)}


def _llama_logprobs(llama: Any, ids: list[int]) -> np.ndarray:
    llama.reset()
    llama.eval(ids)
    logits = np.asarray(llama.scores[llama.n_tokens - 1], dtype=np.float64)
    logits -= logits.max()
    return logits - np.log(np.exp(logits).sum())


__all__ = ["DRIFT_PROMPTS", "DRIFT_TOLERANCE", "drift", "export_gguf_lora", "permute_rows"]
