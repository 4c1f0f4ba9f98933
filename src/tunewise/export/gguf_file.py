"""A Llama-architecture model written as one GGUF file with the `gguf` package: weights (f32, f16 or q8_0),
hyperparameters, the BPE tokenizer, its special tokens and the chat template in the metadata.

The tensor names and the rotary layout follow llama.cpp's converter (convert_hf_to_gguf.py): Hugging Face
stores each attention head's query and key rows as two halves (rotate_half), llama.cpp interleaves them, so
q_proj and k_proj rows are permuted on the way in (and transformers' GGUF loader permutes them back).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tunewise.errors import TunewiseError

QUANTS = ("f32", "f16", "q8_0")
EXACT_QUANTS = ("f32", "f16")  # exports whose greedy tokens must equal the trained model's
Q8_BLOCK = 32  # q8_0 packs rows in blocks of 32 values


def permute_rotary(weights: Any, n_head: int) -> Any:
    """Hugging Face's rotate_half row order -> llama.cpp's interleaved one, per head.

    >>> import numpy as np
    >>> permute_rotary(np.arange(8).reshape(8, 1), 2)[:, 0].tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    rows = weights.shape[0]
    return (
        weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:])
        .swapaxes(1, 2)
        .reshape(weights.shape)
    )


def tensor_names(layers: int) -> dict[str, str]:
    """Hugging Face Llama parameter name -> GGUF tensor name.

    >>> tensor_names(1)["model.layers.0.self_attn.q_proj.weight"]
    'blk.0.attn_q.weight'
    """
    names = {
        "model.embed_tokens.weight": "token_embd.weight",
        "model.norm.weight": "output_norm.weight",
        "lm_head.weight": "output.weight",
    }
    per_layer = {
        "input_layernorm": "attn_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "post_attention_layernorm": "ffn_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    for i in range(layers):
        for hf, gg in per_layer.items():
            names[f"model.layers.{i}.{hf}.weight"] = f"blk.{i}.{gg}.weight"
    return names


def rope_theta(config: Any) -> float:
    """The RoPE base, wherever this transformers version keeps it (`rope_parameters` since 5.0)."""
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", 10000.0))


def _vocab(
    tokenizer: Any, tokenizer_json: dict[str, Any], vocab_size: int
) -> tuple[list[str], list[int], list[str]]:
    """Tokens by id, their llama.cpp types (1 normal, 3 control, 4 user-defined, 5 unused padding) and the BPE
    merges, from a fast tokenizer's tokenizer.json."""
    import gguf

    model = tokenizer_json.get("model", {})
    if model.get("type") != "BPE":
        raise TunewiseError(
            f"GGUF export writes byte-level BPE tokenizers; this one is {model.get('type')}",
            hint="export --to merged, and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    by_id = {i: t for t, i in tokenizer.get_vocab().items()}
    added = {a["id"]: a for a in tokenizer_json.get("added_tokens", [])}
    tokens, types = [], []
    for i in range(vocab_size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(gguf.TokenType.UNUSED)
        else:
            tokens.append(by_id[i])
            special = added.get(i, {}).get("special")
            types.append(
                gguf.TokenType.CONTROL
                if special
                else gguf.TokenType.USER_DEFINED
                if i in added
                else gguf.TokenType.NORMAL
            )
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    return tokens, [int(t) for t in types], merges


def write_gguf(
    model: Any, tokenizer: Any, path: Path, quant: str, *, name: str, pre: str = "default"
) -> Path:
    """Write `model` (a Llama-architecture causal LM, LoRA already merged) and `tokenizer` as the GGUF file
    `path`. `pre` is llama.cpp's pre-tokenizer name (tokenizer.ggml.pre)."""
    import tempfile

    import gguf
    import numpy as np

    if quant not in QUANTS:
        raise TunewiseError(f"unknown --quant '{quant}'", hint=f"use one of {', '.join(QUANTS)}")
    config = model.config
    if getattr(config, "model_type", None) != "llama":
        raise TunewiseError(
            f"GGUF export writes Llama-architecture models; this one is '{getattr(config, 'model_type', '?')}'",
            hint="export --to merged, and convert that folder with llama.cpp's convert_hf_to_gguf.py",
        )
    n_head, n_kv = config.num_attention_heads, config.num_key_value_heads or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // n_head
    with tempfile.TemporaryDirectory() as folder:
        tokenizer.save_pretrained(folder)
        tokenizer_json = json.loads((Path(folder) / "tokenizer.json").read_text(encoding="utf-8"))
    vocab_size = model.get_input_embeddings().weight.shape[0]
    tokens, types, merges = _vocab(tokenizer, tokenizer_json, vocab_size)

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_file_type(
        {
            "f32": gguf.LlamaFileType.ALL_F32,
            "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
        }[quant]
    )
    writer.add_block_count(config.num_hidden_layers)
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_rope_freq_base(rope_theta(config))
    writer.add_rope_dimension_count(head_dim)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_vocab_size(vocab_size)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, token_id in (
        ("bos", tokenizer.bos_token_id),
        ("eos", tokenizer.eos_token_id),
        ("unk", tokenizer.unk_token_id),
        ("pad", tokenizer.pad_token_id),
    ):
        if token_id is not None:
            getattr(writer, f"add_{key}_token_id")(int(token_id))
    # tunewise encodes rendered chats with add_special_tokens=False: the template writes every special token.
    writer.add_add_bos_token(False)
    writer.add_add_eos_token(False)
    writer.add_chat_template(tokenizer.chat_template)

    names = tensor_names(config.num_hidden_layers)
    state = model.state_dict()
    if "lm_head.weight" not in state:  # tied: llama.cpp and transformers both want the output matrix written
        state["lm_head.weight"] = state["model.embed_tokens.weight"]
    for hf_name, tensor in state.items():
        if hf_name not in names:
            if hf_name.endswith("rotary_emb.inv_freq"):
                continue
            raise TunewiseError(f"GGUF export: no GGUF name for the tensor '{hf_name}'")
        data = tensor.detach().to("cpu").float().numpy()
        if hf_name.endswith("q_proj.weight"):
            data = permute_rotary(data, n_head)
        elif hf_name.endswith("k_proj.weight"):
            data = permute_rotary(data, n_kv)
        gg_name = names[hf_name]
        if data.ndim == 1 or quant == "f32":
            writer.add_tensor(gg_name, np.ascontiguousarray(data, dtype=np.float32))
        elif quant == "q8_0" and data.shape[-1] % Q8_BLOCK == 0:
            packed = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
            writer.add_tensor(
                gg_name, packed, raw_shape=packed.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0
            )
        else:  # f16, and q8_0 rows that do not fill whole blocks (llama.cpp falls back the same way)
            writer.add_tensor(gg_name, np.ascontiguousarray(data, dtype=np.float16))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def read_metadata(path: Path) -> dict[str, Any]:
    """The scalar and string metadata of a GGUF file (token lists left out), for the model card and tests."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    out: dict[str, Any] = {}
    for key, field in reader.fields.items():
        if key.startswith("GGUF.") or key in (
            "tokenizer.ggml.tokens",
            "tokenizer.ggml.merges",
            "tokenizer.ggml.token_type",
        ):
            continue
        try:
            out[key] = field.contents()
        except Exception:  # a field type this gguf version cannot turn into Python: not needed here
            continue
    return out
