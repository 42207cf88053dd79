"""Random Hugging Face VLM checkpoints for tests and GPU checks (no download, ever).

``build_tiny_checkpoint(dir, size=...)`` writes a complete local checkpoint of a standard
transformers family, ``LlavaForConditionalGeneration`` = SigLIP vision tower + MLP projector + Llama
text model, with random weights:

  - ``config.json`` + ``model.safetensors`` (``save_pretrained``),
  - a word-level tokenizer (``tokenizers``, lowercase + whitespace split, ``<s>`` prepended) wrapped
    in transformers' fast tokenizer class; its vocabulary is the specials, the prompt template's
    words, the env's instruction words, filler tokens up to ``vocab_size`` and, last, the 256 action
    tokens ``<a0>`` .. ``<a255>`` (the slot ``hf_vla`` decodes actions from),
  - ``preprocessor_config.json`` (a SigLIP image processor: resize, rescale, normalize),
  - ``action_stats.json``: ``{"low": [...], "high": [...]}``, the per-dimension un-normalization
    bounds of the action bins.

Sizes: ``tiny`` (~0.2M parameters, 32x32 images, CPU tests) and ``300m`` (~360M parameters, 224x224
images, a GPU check). CLI: ``python -m asyncvla.policies.hf_tiny DIR [--size 300m]``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

N_BINS = 256
PROMPT_WORDS = ["in", ":", "what", "action", "should", "the", "robot", "take", "to", "?", "out"]
SPECIALS = ["<pad>", "<unk>", "<s>", "</s>", "<image>"]

SIZES: dict[str, dict[str, Any]] = {
    "tiny": {
        "vision": {
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "image_size": 32,
            "patch_size": 8,
        },
        "text": {
            "hidden_size": 64,
            "intermediate_size": 128,
            "num_hidden_layers": 2,
            "num_attention_heads": 4,
            "num_key_value_heads": 2,
        },
        "vocab_size": None,  # just what the words and action tokens need
    },
    "300m": {
        "vision": {
            "hidden_size": 768,
            "intermediate_size": 3072,
            "num_hidden_layers": 12,
            "num_attention_heads": 12,
            "image_size": 224,
            "patch_size": 16,
        },
        "text": {
            "hidden_size": 1024,
            "intermediate_size": 2816,
            "num_hidden_layers": 16,
            "num_attention_heads": 16,
            "num_key_value_heads": 16,
        },
        "vocab_size": 32000,
    },
}


def tabletop_vocabulary() -> list[str]:
    from asyncvla.envs import make_env

    env = make_env("tabletop", num_envs=1)
    try:
        return list(env.vocabulary())
    finally:
        env.close()


def build_tokenizer(vocabulary: Sequence[str], vocab_size: int | None = None) -> Any:
    """A word-level fast tokenizer whose last ``N_BINS`` ids are the action tokens."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = list(dict.fromkeys([*PROMPT_WORDS, *(w.lower() for w in vocabulary)]))
    tokens = [*SPECIALS, *words]
    if vocab_size is not None:
        if vocab_size < len(tokens) + N_BINS:
            raise ValueError(f"vocab_size {vocab_size} < {len(tokens) + N_BINS} needed tokens")
        tokens += [f"<extra{i}>" for i in range(vocab_size - len(tokens) - N_BINS)]
    tokens += [f"<a{i}>" for i in range(N_BINS)]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A $B", special_tokens=[("<s>", vocab["<s>"])]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens={"image_token": "<image>"},
    )


def build_tiny_checkpoint(
    directory: str | Path,
    size: str = "tiny",
    vocabulary: Sequence[str] | None = None,
    action_low: float | Sequence[float] = -1.0,
    action_high: float | Sequence[float] = 1.0,
    action_dim: int = 3,
    seed: int = 0,
) -> Path:
    """Write a random ``LlavaForConditionalGeneration`` checkpoint + tokenizer + image processor +
    ``action_stats.json`` to ``directory``; returns it. ``vocabulary``: the instruction words
    (default: the tabletop env's)."""
    import torch
    from transformers import LlamaConfig, LlavaConfig, LlavaForConditionalGeneration, SiglipVisionConfig

    try:  # transformers >= 5 (the default class wants torchvision)
        from transformers import SiglipImageProcessorPil as ImageProcessor
    except ImportError:
        from transformers import SiglipImageProcessor as ImageProcessor

    if size not in SIZES:
        raise ValueError(f"size must be one of {sorted(SIZES)}, got {size!r}")
    preset = SIZES[size]
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(
        tabletop_vocabulary() if vocabulary is None else vocabulary, preset["vocab_size"]
    )
    vocab = tokenizer.get_vocab()
    n_vocab = len(vocab)
    vision = SiglipVisionConfig(**preset["vision"])
    text = LlamaConfig(
        vocab_size=n_vocab,
        max_position_embeddings=2048,
        bos_token_id=vocab["<s>"],
        eos_token_id=vocab["</s>"],
        pad_token_id=vocab["<pad>"],
        tie_word_embeddings=False,
        **preset["text"],
    )
    n_patches = (preset["vision"]["image_size"] // preset["vision"]["patch_size"]) ** 2
    config = LlavaConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=vocab["<image>"],
        image_seq_length=n_patches,
        vision_feature_select_strategy="full",  # SigLIP has no CLS token to drop
        vision_feature_layer=-1,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(config)
    model.save_pretrained(d)
    tokenizer.save_pretrained(d)
    side = preset["vision"]["image_size"]
    ImageProcessor(size={"height": side, "width": side}).save_pretrained(d)
    low = _per_dim(action_low, action_dim)
    high = _per_dim(action_high, action_dim)
    (d / "action_stats.json").write_text(json.dumps({"low": low, "high": high}, indent=2))
    return d


def _per_dim(bound: float | Sequence[float], n: int) -> list[float]:
    if isinstance(bound, (int, float)):
        return [float(bound)] * n
    values = [float(v) for v in bound]
    if len(values) != n:
        raise ValueError(f"action bound {values} must have action_dim={n} values")
    return values


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="Write a random HF VLM checkpoint for the hf_vla policy.")
    p.add_argument("directory")
    p.add_argument("--size", default="tiny", choices=sorted(SIZES))
    p.add_argument("--action-dim", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    d = build_tiny_checkpoint(args.directory, size=args.size, action_dim=args.action_dim, seed=args.seed)
    n = sum(f.stat().st_size for f in d.glob("*.safetensors"))
    print(f"wrote {d} ({n / 1e6:.1f} MB of weights)")


if __name__ == "__main__":
    main()
