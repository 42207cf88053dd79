"""HFVLA: an OpenVLA-style action-token policy over a Hugging Face vision-language model.

The VLM is loaded from a local directory (``from_pretrained(path, local_files_only=True)`` through
``AutoModelForImageTextToText``; never a download). One decision, one forward:

  input ids = [<s>] [image tokens x n_cams] "In: What action should the robot take to {instr}?\\nOut:"
              [proprio slot] [query slot x K*A]

  - images: resized to the checkpoint's image processor size, rescaled and normalized in torch,
    one block of image placeholder tokens per camera (the VLM splices its vision features there),
  - the instruction is lower-cased, as OpenVLA does,
  - proprio slot (when ``state_dim`` is given and ``use_proprio``): the embedding of the slot is
    replaced by a linear projection of ``state`` (OpenVLA-OFT's proprio projector),
  - OFT-style parallel decoding: K*A query slots follow the prompt; every query's input embedding is
    the placeholder token's (the pad token, usually a zero "empty" embedding) plus a learned slot
    embedding (zero at init). All K*A action tokens come out of one forward.
    Attention stays the VLM's own *causal* attention (portable across HF model families, no custom
    4-D masks): a query sees the prompt and the earlier query slots, whose inputs carry no action
    information, so the K*A token distributions are conditionally independent given the
    observation, which is exactly the factorization ``act`` samples and ``evaluate`` scores,
  - the final hidden state of each query slot is scored against the LM-head rows of the **last 256
    ids of the tokenizer vocabulary** only (log-softmax over that slice, divided by
    ``temperature``): 256 bins per action dimension,
  - a value MLP reads the mean of the query slots' final hidden states.

Bins: the normalized action x in [-1, 1] falls in bin ``floor((x + 1) / 2 * 256)`` (clamped to
0..255); sampled actions are bin centers ``-1 + (i + 0.5) * 2 / 256``, un-normalized per dimension
with ``action_stats.json``: ``a = low + (x + 1) / 2 * (high - low)`` (``low/high`` or ``q01/q99``).
``bin_order: descending`` (default, OpenVLA's convention) maps bin i to token ``end - 1 - i``;
``ascending`` to ``end - 256 + i``, where ``end`` is the tokenizer's ``vocab_size``.

Placement: built in float32 on the CPU; ``on_placed`` moves the copy to CUDA when available
(``device: auto``); with ``dtype: auto`` a CUDA rollout worker casts the VLM to bfloat16, the trainer
keeps float32 master weights and runs under bfloat16 autocast. Heads always compute in float32.
The VLM is kept in eval mode even while training (no dropout), so ``act`` and ``evaluate`` compute
the same function. Optional LoRA (``lora_rank > 0``) through ``peft``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from asyncvla.envs.base import ObsBatch
from asyncvla.policies import POLICIES
from asyncvla.policies.base import ActOutput, EvalOutput, Policy
from asyncvla.policies.heads import bins_distribution, sample_bins

PROMPT = "In: What action should the robot take to {instruction}?\nOut:"
N_BINS = 256
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CheckpointError(FileNotFoundError, ValueError):
    """A checkpoint directory or one of its files is missing or malformed (one-line message)."""


def load_action_stats(directory: str | Path, action_dim: int, unnorm_key: str | None = None) -> np.ndarray:
    """Per-dimension (low, high) [2, A] float64 from ``action_stats.json`` (``low``/``high`` or
    ``q01``/``q99``), or from OpenVLA's ``dataset_statistics.json`` (``[unnorm_key]["action"]``)."""
    d = Path(directory)
    path = d / "action_stats.json"
    if not path.is_file():
        alt = d / "dataset_statistics.json"
        if not alt.is_file():
            raise CheckpointError(f"{d} has no action_stats.json (per-dimension low/high of the actions)")
        path = alt
    try:
        stats = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{path} is not valid JSON: {e}") from None
    if unnorm_key is not None:
        if unnorm_key not in stats:
            raise CheckpointError(f"{path} has no key {unnorm_key!r} (unnorm_key); keys: {sorted(stats)}")
        stats = stats[unnorm_key]
    if "action" in stats and isinstance(stats["action"], dict):
        stats = stats["action"]
    for lo_key, hi_key in (("low", "high"), ("q01", "q99")):
        if lo_key in stats and hi_key in stats:
            bounds = np.asarray([stats[lo_key], stats[hi_key]], dtype=np.float64)
            break
    else:
        raise CheckpointError(f"{path} needs 'low'/'high' or 'q01'/'q99' lists, got keys {sorted(stats)}")
    if bounds.ndim != 2 or bounds.shape[1] != action_dim:
        raise CheckpointError(
            f"{path}: bounds have {bounds.shape[-1]} dims, the env's action_dim is {action_dim}"
        )
    if not np.isfinite(bounds).all() or not (bounds[0] < bounds[1]).all():
        raise CheckpointError(f"{path}: bounds must be finite with low < high per dimension")
    return bounds


def _hf_dir(checkpoint: str | Path) -> Path:
    d = Path(checkpoint).expanduser()
    if not d.is_dir():
        raise CheckpointError(f"hf_vla checkpoint directory {d} does not exist")
    if not (d / "config.json").is_file():
        raise CheckpointError(f"{d} is not a Hugging Face checkpoint (no config.json)")
    return d.resolve()


@POLICIES.register("hf_vla")
class HFVLA(Policy):
    """OpenVLA-style action tokens over a local Hugging Face VLM; see the module docstring.

    The generic env kwargs ``vocabulary``, ``image_size``, ``action_low`` and ``action_high`` are
    accepted and not used (the VLM has its own tokenizer and image size; ``action_stats.json`` sets
    the action range).
    """

    def __init__(
        self,
        checkpoint: str,
        chunk_size: int = 4,
        action_dim: int = 3,
        image_keys: Sequence[str] = ("image",),
        state_dim: int | None = None,
        use_proprio: bool = True,
        temperature: float = 1.0,
        bin_order: str = "descending",
        action_vocab_end: int | None = None,
        unnorm_key: str | None = None,
        value_hidden: int = 256,
        cost_critic: bool = False,
        lora_rank: int = 0,
        lora_alpha: float | None = None,
        lora_target_modules: str | list[str] = "all-linear",
        freeze_vision: bool = False,
        dtype: str = "auto",
        device: str = "auto",
        trust_remote_code: bool = False,
        vocabulary: list[str] | None = None,
        image_size: int | None = None,
        action_low: float | list[float] | None = None,
        action_high: float | list[float] | None = None,
    ) -> None:
        super().__init__()
        d = _hf_dir(checkpoint)
        image_keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
        if not image_keys or len(set(image_keys)) != len(image_keys):
            raise ValueError(f"image_keys must be a non-empty list of distinct strings, got {image_keys!r}")
        for name, v in (("chunk_size", chunk_size), ("action_dim", action_dim)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
            raise ValueError(f"temperature must be a positive float, got {temperature!r}")
        if bin_order not in ("descending", "ascending"):
            raise ValueError(f"bin_order must be 'descending' or 'ascending', got {bin_order!r}")
        if dtype not in ("auto", *DTYPES):
            raise ValueError(f"dtype must be one of {['auto', *DTYPES]}, got {dtype!r}")
        if not isinstance(lora_rank, int) or lora_rank < 0:
            raise ValueError(f"lora_rank must be an int >= 0, got {lora_rank!r}")
        self._kwargs: dict[str, Any] = {
            "checkpoint": str(d),
            "chunk_size": int(chunk_size),
            "action_dim": int(action_dim),
            "image_keys": image_keys,
            "state_dim": None if state_dim is None else int(state_dim),
            "use_proprio": bool(use_proprio),
            "temperature": float(temperature),
            "bin_order": bin_order,
            "action_vocab_end": action_vocab_end,
            "unnorm_key": unnorm_key,
            "value_hidden": int(value_hidden),
            "cost_critic": bool(cost_critic),
            "lora_rank": int(lora_rank),
            "lora_alpha": lora_alpha,
            "lora_target_modules": lora_target_modules,
            "freeze_vision": bool(freeze_vision),
            "dtype": dtype,
            "device": device,
            "trust_remote_code": bool(trust_remote_code),
        }
        self.chunk_size = int(chunk_size)
        self.action_dim = int(action_dim)
        self.image_keys = image_keys
        self.temperature = float(temperature)
        self.n_queries = self.chunk_size * self.action_dim
        self.state_dim = int(state_dim) if (state_dim is not None and use_proprio) else None

        bounds = load_action_stats(d, self.action_dim, unnorm_key)
        self.register_buffer("action_lo", torch.as_tensor(bounds[0], dtype=torch.float32), persistent=False)
        self.register_buffer("action_hi", torch.as_tensor(bounds[1], dtype=torch.float32), persistent=False)

        self.tokenizer, model = _load_hf(d, trust_remote_code)
        _untie_output_embeddings(model)
        self.model = model
        cfg = model.config
        text_cfg = getattr(cfg, "text_config", cfg)
        hidden = int(text_cfg.hidden_size)
        end = int(action_vocab_end) if action_vocab_end is not None else int(self.tokenizer.vocab_size)
        n_rows = model.get_output_embeddings().weight.shape[0]
        if not N_BINS <= end <= n_rows:
            raise ValueError(f"action_vocab_end {end} must be in [{N_BINS}, {n_rows}] (LM-head rows)")
        bins = torch.arange(N_BINS)
        token_ids = end - 1 - bins if bin_order == "descending" else end - N_BINS + bins
        self.register_buffer("bin_token_ids", token_ids, persistent=False)

        self.image_token_id = _image_token_id(cfg)
        self.query_token_id = _placeholder_id(self.tokenizer)
        self._image_hw, mean, std = _image_preprocessing(d, cfg)
        self.register_buffer("pix_mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pix_std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.n_image_tokens = self._count_image_tokens()
        self._prompt_cache: dict[str, list[int]] = {}

        # OFT-style query slots and proprio projector, both added to the input embeddings.
        self.query_emb = nn.Parameter(torch.zeros(self.n_queries, hidden))
        self.proprio = nn.Linear(self.state_dim, hidden) if self.state_dim is not None else None
        if self.proprio is not None:
            nn.init.normal_(self.proprio.weight, std=0.02)
            nn.init.zeros_(self.proprio.bias)
        self.value_head = nn.Sequential(
            nn.Linear(hidden, value_hidden), nn.GELU(), nn.Linear(value_hidden, 1)
        )
        nn.init.normal_(self.value_head[-1].weight, std=0.01 / math.sqrt(value_hidden))
        nn.init.zeros_(self.value_head[-1].bias)
        self.cost_head: nn.Module | None = None
        if cost_critic:  # constrained RL: a cost critic beside the value head
            self.cost_head = nn.Sequential(
                nn.Linear(hidden, value_hidden), nn.GELU(), nn.Linear(value_hidden, 1)
            )
            nn.init.normal_(self.cost_head[-1].weight, std=0.01 / math.sqrt(value_hidden))
            nn.init.zeros_(self.cost_head[-1].bias)
        self._cost_values: torch.Tensor | None = None

        if freeze_vision:
            vision = getattr(self._base(), "vision_tower", None)
            if vision is None:
                raise ValueError("freeze_vision: this model has no vision_tower module")
            vision.requires_grad_(False)
        if lora_rank > 0:
            self.model = _with_lora(model, lora_rank, lora_alpha, lora_target_modules, freeze_vision)
        self._extra: torch.Tensor | None = None
        self.model.get_input_embeddings().register_forward_hook(self._add_slot_embeddings)
        self._device = device
        self._dtype = dtype
        self._autocast: torch.dtype | None = None
        self.model.eval()

    # ------------------------------------------------------------------ structure

    def init_kwargs(self) -> dict[str, Any]:
        return dict(self._kwargs)

    @property
    def device(self) -> torch.device:
        return self.query_emb.device

    def _hf(self) -> nn.Module:
        """The transformers model (under the peft wrapper when LoRA is on)."""
        get_base = getattr(self.model, "get_base_model", None)
        return get_base() if get_base is not None else self.model

    def _base(self) -> nn.Module:
        """The VLM without its LM head (``LlavaModel`` for Llava): returns last hidden states."""
        hf = self._hf()
        base = getattr(hf, hf.base_model_prefix, None) if hf.base_model_prefix else None
        return base if base is not None else hf.model

    def train(self, mode: bool = True) -> HFVLA:
        """Heads follow ``mode``; the VLM stays in eval mode (no dropout: act == evaluate)."""
        super().train(mode)
        self.model.eval()
        return self

    def on_placed(self, role: str) -> None:
        if self._device == "auto":
            dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        else:
            dev = torch.device(self._device)
        self.to(dev)
        dtype = DTYPES.get(self._dtype) or (torch.bfloat16 if dev.type == "cuda" else torch.float32)
        self._autocast = None if dtype == torch.float32 else dtype
        if role == "rollout" and self._autocast is not None:
            self.model.to(dtype)  # inference only: half the memory; the trainer keeps float32 masters

    def _count_image_tokens(self) -> int:
        h, w = self._image_hw
        dummy = torch.zeros(1, 3, h, w)
        with torch.no_grad():
            try:
                out = self._base().get_image_features(pixel_values=dummy)
            except (AttributeError, TypeError):
                n = getattr(self._hf().config, "image_seq_length", None)
                if n is None:
                    raise ValueError(
                        "cannot count the model's image tokens (no get_image_features)"
                    ) from None
                return int(n)
        feats = getattr(out, "pooler_output", out)
        if isinstance(feats, (list, tuple)):
            return int(feats[0].shape[0])
        return int(feats.shape[-2])

    # ------------------------------------------------------------------ inputs

    def _prompt_ids(self, instruction: str) -> list[int]:
        ids = self._prompt_cache.get(instruction)
        if ids is None:
            text = PROMPT.format(instruction=instruction.lower())
            ids = list(self.tokenizer(text).input_ids)
            image = [self.image_token_id] * (self.n_image_tokens * len(self.image_keys))
            bos = self.tokenizer.bos_token_id
            ids = [ids[0], *image, *ids[1:]] if ids and ids[0] == bos else [*image, *ids]
            ids += [self.query_token_id] * ((self.proprio is not None) + self.n_queries)
            if len(self._prompt_cache) < 4096:
                self._prompt_cache[instruction] = ids
        return ids

    def _text(self, obs: ObsBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Left-padded ids and attention mask, long [B, L]: the query slots are the last K*A."""
        rows = [self._prompt_ids(str(s)) for s in obs["instruction"]]
        length = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else 0
        ids = torch.full((len(rows), length), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), length), dtype=torch.long)
        for i, r in enumerate(rows):
            ids[i, length - len(r) :] = torch.tensor(r)
            mask[i, length - len(r) :] = 1
        return ids.to(self.device), mask.to(self.device)

    def _pixels(self, obs: ObsBatch) -> torch.Tensor:
        """Normalized float [B * n_cams, 3, H, W], sample-major (the order of the image blocks)."""
        frames = []
        for key in self.image_keys:
            if key not in obs:
                raise KeyError(
                    f"observation has no {key!r} (image_keys={self.image_keys}, got {sorted(obs)})"
                )
            img = obs[key]
            img = torch.as_tensor(img if torch.is_tensor(img) else np.asarray(img))
            frames.append(img.to(self.device, non_blocking=True))
        x = torch.stack(frames, dim=1).flatten(0, 1).permute(0, 3, 1, 2).float().div_(255.0)
        if tuple(x.shape[-2:]) != self._image_hw:
            x = F.interpolate(x, size=self._image_hw, mode="bilinear", antialias=True, align_corners=False)
        return (x - self.pix_mean) / self.pix_std

    def _state(self, obs: ObsBatch) -> torch.Tensor:
        state = obs["state"]
        state = torch.as_tensor(state if torch.is_tensor(state) else np.asarray(state, dtype=np.float32))
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state must be [B, {self.state_dim}], got {tuple(state.shape)}")
        return state.to(self.device, torch.float32)

    def _add_slot_embeddings(self, module: nn.Module, args: Any, output: torch.Tensor) -> torch.Tensor:
        """Forward hook of the input embeddings: add the proprio / query slot embeddings."""
        extra = self._extra
        if extra is None or output.shape[:2] != extra.shape[:2]:
            return output
        return output + extra.to(output.dtype)

    @contextlib.contextmanager
    def _slots(self, extra: torch.Tensor) -> Iterator[None]:
        self._extra = extra
        try:
            yield
        finally:
            self._extra = None

    # ------------------------------------------------------------------ model

    def _autocast_ctx(self) -> contextlib.AbstractContextManager[Any]:
        if self._autocast is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast)

    def _cacheable_vision(self) -> bool:
        """The vision tower is frozen (no LoRA adapters in it either) and the model takes
        precomputed image features (a LLaVA-style ``multi_modal_projector`` and transformers'
        ``mm_encoder_outputs``)."""
        base = self._base()
        vision = getattr(base, "vision_tower", None)
        if vision is None or not hasattr(base, "multi_modal_projector"):
            return False
        if "mm_encoder_outputs" not in inspect.signature(base.forward).parameters:
            return False
        return not any(p.requires_grad for p in vision.parameters())

    def frozen_features(self, obs: ObsBatch) -> dict[str, torch.Tensor] | None:
        """With a frozen vision tower: its selected hidden states per observation, ``vision``
        [B, n_cams, T, D_vision] (before the projector, which may train). None otherwise."""
        if not self._cacheable_vision():
            return None
        base = self._base()
        projector = base.multi_modal_projector
        base.multi_modal_projector = nn.Identity()  # get_image_features then returns its input
        try:
            with torch.no_grad(), self._autocast_ctx():
                feats = base.get_image_features(pixel_values=self._pixels(obs), return_dict=True)
        finally:
            base.multi_modal_projector = projector
        vision = torch.stack(list(feats.pooler_output))  # [B * n_cams, T, D], sample-major
        return {"vision": vision.view(-1, len(self.image_keys), *vision.shape[1:])}

    def forward_heads(
        self, obs: ObsBatch, features: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Bin logits float32 [B, K, A, 256] (divided by ``temperature``) and values [B];
        ``features``: ``frozen_features`` rows of ``obs`` (the vision tower is then skipped)."""
        ids, mask = self._text(obs)
        b, length = ids.shape
        if features is None:
            image_kw: dict[str, Any] = {"pixel_values": self._pixels(obs)}
        else:
            from transformers.modeling_outputs import BaseModelOutputWithPooling

            vision = features["vision"].to(self.device)
            with self._autocast_ctx():
                projected = self._base().multi_modal_projector(vision.flatten(0, 1))
            image_kw = {
                "mm_encoder_outputs": {"image": BaseModelOutputWithPooling(pooler_output=list(projected))}
            }
        slots = [self.query_emb.expand(b, -1, -1)]
        if self.proprio is not None:
            slots.insert(0, self.proprio(self._state(obs))[:, None])
        tail = torch.cat(slots, dim=1)
        extra = torch.cat([tail.new_zeros(b, length - tail.shape[1], tail.shape[2]), tail], dim=1)
        position_ids = (mask.cumsum(-1) - 1).clamp_(min=0)
        with self._autocast_ctx(), self._slots(extra):
            out = self._base()(
                input_ids=ids,
                **image_kw,
                attention_mask=mask,
                position_ids=position_ids,
                use_cache=False,
            )
        h = out.last_hidden_state[:, -self.n_queries :].float()  # [B, K*A, D]
        w = self._hf().get_output_embeddings().weight[self.bin_token_ids].float()  # [256, D]
        logits = (h @ w.T) / self.temperature
        pooled = h.mean(dim=1)
        values = self.value_head(pooled).squeeze(-1)
        # The cost critic's output of the same forward, read by act / evaluate.
        self._cost_values = None if self.cost_head is None else self.cost_head(pooled).squeeze(-1)
        return logits.view(b, self.chunk_size, self.action_dim, N_BINS), values

    # ------------------------------------------------------------------ bins

    def to_bins(self, actions: torch.Tensor) -> torch.Tensor:
        """Bin ids long [..., A] of continuous actions [..., A] (outside the stats: the end bins)."""
        x = 2.0 * (actions - self.action_lo) / (self.action_hi - self.action_lo) - 1.0
        return torch.floor((x + 1.0) * (N_BINS / 2.0)).clamp_(0, N_BINS - 1).long()

    def from_bins(self, ids: torch.Tensor) -> torch.Tensor:
        """Continuous actions [..., A] at the centers of bins ``ids`` [..., A], un-normalized."""
        x = -1.0 + (ids.float() + 0.5) * (2.0 / N_BINS)
        return self.action_lo + (x + 1.0) * 0.5 * (self.action_hi - self.action_lo)

    # ------------------------------------------------------------------ interface

    @torch.inference_mode()
    def act(self, obs: ObsBatch, deterministic: bool = False, with_features: bool = False) -> ActOutput:
        logits, values = self.forward_heads(obs)
        dist = bins_distribution(logits)
        ids = sample_bins(dist.logits, deterministic)
        log_probs = dist.log_prob(ids)
        return ActOutput(
            actions=self.from_bins(ids).cpu().numpy().astype(np.float32),
            log_probs=log_probs.cpu().numpy().astype(np.float32),
            values=values.float().cpu().numpy(),
            version=self.version,
            cost_values=None if self._cost_values is None else self._cost_values.float().cpu().numpy(),
        )

    def evaluate(
        self,
        obs: ObsBatch,
        actions: np.ndarray | torch.Tensor,
        features: dict[str, torch.Tensor] | None = None,
    ) -> EvalOutput:
        actions = torch.as_tensor(
            actions if torch.is_tensor(actions) else np.asarray(actions, dtype=np.float32)
        ).to(self.device, torch.float32)
        logits, values = self.forward_heads(obs, features)
        expected = (logits.shape[0], self.chunk_size, self.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must be {list(expected)}, got {list(actions.shape)}")
        dist = bins_distribution(logits)
        return EvalOutput(
            log_probs=dist.log_prob(self.to_bins(actions)),
            entropy=dist.entropy(),
            values=values,
            cost_values=self._cost_values,
        )


# ---------------------------------------------------------------------- loading helpers


def _load_hf(d: Path, trust_remote_code: bool) -> tuple[Any, nn.Module]:
    try:
        import transformers
        from transformers import AutoModelForImageTextToText, AutoTokenizer
    except ImportError:
        raise ImportError("hf_vla needs transformers: pip install 'asyncvla[hf]'") from None
    transformers.utils.logging.disable_progress_bar()
    transformers.utils.logging.set_verbosity_error()
    tokenizer = AutoTokenizer.from_pretrained(d, local_files_only=True, trust_remote_code=trust_remote_code)
    try:
        # float32 master weights (transformers 5 would otherwise load the checkpoint's dtype).
        dtype_kw = "dtype" if int(transformers.__version__.split(".")[0]) >= 5 else "torch_dtype"
        model = AutoModelForImageTextToText.from_pretrained(
            d, local_files_only=True, trust_remote_code=trust_remote_code, **{dtype_kw: torch.float32}
        )
    except (ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"{d}: cannot load as an image-text-to-text model: {first}") from None
    return tokenizer, model


def _untie_output_embeddings(model: nn.Module) -> None:
    """Give the LM head its own copy of tied input embeddings: safetensors refuses shared tensors,
    and action fine-tuning may then move the two apart."""
    out, inp = model.get_output_embeddings(), model.get_input_embeddings()
    if out is not None and inp is not None and out.weight.data_ptr() == inp.weight.data_ptr():
        out.weight = nn.Parameter(out.weight.detach().clone())
        if hasattr(model.config, "tie_word_embeddings"):
            model.config.tie_word_embeddings = False


def _image_token_id(cfg: Any) -> int:
    for name in ("image_token_id", "image_token_index"):
        v = getattr(cfg, name, None)
        if v is not None:
            return int(v)
    raise CheckpointError("model config has no image_token_id / image_token_index")


def _placeholder_id(tokenizer: Any) -> int:
    for name in ("pad_token_id", "unk_token_id", "eos_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            return int(v)
    return 0


def _image_preprocessing(d: Path, cfg: Any) -> tuple[tuple[int, int], list[float], list[float]]:
    """(height, width), mean, std from ``preprocessor_config.json`` (else the vision config, 0.5/0.5)."""
    vision = getattr(cfg, "vision_config", None)
    side = int(getattr(vision, "image_size", 224))
    hw, mean, std = (side, side), [0.5] * 3, [0.5] * 3
    path = d / "preprocessor_config.json"
    if path.is_file():
        pc = json.loads(path.read_text())
        pc = pc.get("image_processor", pc)
        size = pc.get("size")
        if isinstance(size, dict) and "height" in size and "width" in size:
            hw = (int(size["height"]), int(size["width"]))
        elif isinstance(size, dict) and "shortest_edge" in size:
            hw = (int(size["shortest_edge"]),) * 2
        elif isinstance(size, int):
            hw = (size, size)
        if pc.get("do_normalize", True):
            mean = [float(v) for v in pc.get("image_mean", mean)]
            std = [float(v) for v in pc.get("image_std", std)]
        else:
            mean, std = [0.0] * 3, [1.0] * 3
    return hw, mean, std


def _with_lora(
    model: nn.Module, rank: int, alpha: float | None, targets: str | list[str], skip_vision: bool
) -> nn.Module:
    """peft LoRA adapters on ``targets``; ``skip_vision``: none inside the (frozen) vision tower."""
    try:
        from peft import LoraConfig, get_peft_model
    except ImportError:
        raise ImportError("lora_rank > 0 needs peft: pip install 'asyncvla[hf]'") from None
    cfg = LoraConfig(
        r=rank,
        lora_alpha=float(alpha) if alpha is not None else float(rank),
        lora_dropout=0.0,
        target_modules=targets,
        exclude_modules=r".*\bvision_tower\b.*" if skip_vision else None,
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # peft calls a deprecated transformers alias
        return get_peft_model(model, cfg)
