#!/usr/bin/env python3
"""Build the embedded demo model: a tiny random GLM-4.5-architecture checkpoint (with an MTP layer) and a
byte-level BPE tokenizer that carries every GLM special token (glm.md section 5.2) by its real string.

The weights are random: the demo exercises the whole serving path (templates, parsers, batching, routing,
metrics) on any CPU in milliseconds; its text is not meaningful. `glmfleet` embeds the files at build
time (ops/cli/src/demo.rs), so `glmfleet up` needs no downloads.

Run: python3 model/demo/make_demo.py   (needs: pip install torch transformers tokenizers safetensors)
"""
import json
import os
import sys

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "..", "tests", "fixtures"))
import generate as fx  # noqa: E402  (fixture helpers: randomize, split_experts, to_storage, build_mtp)

from safetensors.torch import save_file  # noqa: E402
from transformers import Glm4MoeConfig, Glm4MoeForCausalLM  # noqa: E402

SPECIALS = [
    "<|endoftext|>", "[MASK]", "[gMASK]", "[sMASK]", "<sop>", "<eop>", "<|system|>", "<|user|>",
    "<|assistant|>", "<|observation|>", "<|begin_of_image|>", "<|end_of_image|>", "<|begin_of_video|>",
    "<|end_of_video|>", "<|begin_of_audio|>", "<|end_of_audio|>", "<|begin_of_transcription|>",
    "<|end_of_transcription|>", "<|code_prefix|>", "<|code_middle|>", "<|code_suffix|>", "<think>",
    "</think>", "<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>", "<arg_key>",
    "</arg_key>", "<arg_value>", "</arg_value>", "/nothink", "<|begin_of_box|>", "<|end_of_box|>",
    "<|image|>", "<|video|>",
]
CORPUS = [
    "glmfleet serves GLM-4.x mixture-of-experts language models on GPUs, with continuous batching, "
    "chunked prefill, a paged KV cache with prefix caching, and an OpenAI-compatible API.",
    "The router sends requests that share a prompt prefix to the replica whose cache already holds it.",
    "Hello! How can I help you today? The weather in Paris is sunny, 21 degrees. Tomorrow it will rain.",
    "def add(a, b):\n    return a + b\n\nprint(add(2, 3))\n",
    '{"city": "Paris", "days": 3, "unit": "celsius"} get_weather search_web read_file',
    "Les modèles de langage générent du texte. 日本語のテキストも扱えます。 Ünïcödé ✓ 🚀",
    "The quick brown fox jumps over the lazy dog. 0123456789 + - * / = < > ( ) [ ] { }",
]


def build_tokenizer():
    tok = Tokenizer(models.BPE(unk_token=None, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(CORPUS * 20, trainer=trainer)
    tok.add_special_tokens(SPECIALS)
    return tok


def main():
    torch.set_grad_enabled(False)
    tok = build_tokenizer()
    n_tok = tok.get_vocab_size()
    vocab = ((n_tok + 63) // 64) * 64  # padded rows, like GLM's 151552 > 151365
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    eos = [ids["<|endoftext|>"], ids["<|user|>"], ids["<|observation|>"]]
    kw = dict(vocab_size=vocab, hidden_size=64, intermediate_size=128, moe_intermediate_size=32,
              num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16,
              first_k_dense_replace=1, n_routed_experts=8, num_experts_per_tok=2, n_group=1, topk_group=1,
              routed_scaling_factor=1.0, norm_topk_prob=True, n_shared_experts=1, use_qk_norm=False,
              attention_bias=True, rms_norm_eps=1e-5, max_position_embeddings=16384,
              tie_word_embeddings=False, num_nextn_predict_layers=1,
              rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "partial_rotary_factor": 0.5})
    cfg = Glm4MoeConfig(**kw)
    model = Glm4MoeForCausalLM(cfg).float()
    fx.randomize(model, 7)
    _, mtp_sd = fx.build_mtp(model, cfg, 8)
    sd = dict(model.state_dict())
    sd.update(mtp_sd)
    sd = fx.split_experts(sd, cfg)
    d = HERE
    save_file(fx.to_storage(sd), os.path.join(d, "model.safetensors"), metadata={"format": "pt"})
    cj = {"architectures": ["Glm4MoeForCausalLM"], "model_type": "glm4_moe", **kw, "eos_token_id": eos,
          "pad_token_id": eos[0], "hidden_act": "silu", "dtype": "bfloat16"}
    with open(os.path.join(d, "config.json"), "w") as f:
        json.dump(cj, f, indent=2)
    with open(os.path.join(d, "generation_config.json"), "w") as f:
        json.dump({"eos_token_id": eos, "pad_token_id": eos[0]}, f, indent=2)
    tok.save(os.path.join(d, "tokenizer.json"))
    added = {str(ids[s]): {"content": s, "special": True} for s in SPECIALS}
    with open(os.path.join(d, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "eos_token": "<|endoftext|>",
                   "pad_token": "<|endoftext|>", "model_max_length": 16384,
                   "added_tokens_decoder": added}, f, indent=2)
    print("demo: vocab", vocab, "tokens", n_tok, "eos", eos)


if __name__ == "__main__":
    main()
