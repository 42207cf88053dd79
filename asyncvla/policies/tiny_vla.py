"""TinyVLA: a small vision-language-action transformer trainable from scratch on a CPU.

Inputs (an ``ObsBatch``): ``image_keys`` images uint8 [B, H, W, 3], ``state`` float32 [B, S] and
``instruction`` list[str]. Pipeline:
  - instruction: word + position embeddings (padding masked); an attention-pooled summary drives
    FiLM and the keypoint queries,
  - each image: CoordConv CNN (3 stride-2 stages, ReLU, FiLM-conditioned on the instruction summary)
    -> a g x g feature map (g = min(image_grid, image_size / 8)) -> g*g patch tokens (average-pooled
    to ``fusion_grid`` x ``fusion_grid`` when that is smaller; + learned position and camera
    embeddings; the CNN is shared across cameras),
  - language-queried spatial soft-argmax keypoints (``point`` exposes them for grounding
    pretraining) over a twice-finer map (``fine_keypoints``: the second CNN stage next to the last
    one upsampled, 16 x 16 at 64x64) with a learned sub-cell offset per cell,
  - state: linear -> one token,
  - fusion: a pre-norm transformer encoder over [CLS, state, instruction, image tokens],
  - a value MLP -> [B] on concat(CLS output, mean image-token output, keypoint features, keypoints,
    state); the action head (``heads.TokenHead`` or ``heads.GaussianHead``) -> a distribution over
    the chunk [B, K, A] reads the geometric part (keypoint features, keypoints, state).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from asyncvla.envs.base import ObsBatch
from asyncvla.policies import POLICIES
from asyncvla.policies.base import ActOutput, EvalOutput, Policy
from asyncvla.policies.heads import ActionHead, GaussianHead, TokenHead
from asyncvla.policies.tokenizer import PAD_ID, WordTokenizer

# Presets override width / depth / n_heads and the CNN stage widths. Parameter counts with the
# default chunk (K=4, A=3, 256 bins, tokens head) are checked in tests/policies/test_tiny_vla.py.
PRESETS: dict[str, dict[str, Any]] = {
    "nano": {"width": 64, "depth": 2, "n_heads": 4, "cnn_channels": (16, 32, 64)},
    "tiny": {"width": 128, "depth": 4, "n_heads": 4, "cnn_channels": (32, 64, 128)},
    "small": {"width": 256, "depth": 10, "n_heads": 8, "cnn_channels": (64, 128, 256)},
    "base": {"width": 512, "depth": 14, "n_heads": 8, "cnn_channels": (128, 256, 512)},
}

HEADS = ("tokens", "gaussian")
RELATIVE_GAIN = 10.0
"""Slope of keypoint-minus-end-effector features at 0: a 0.05 offset (one step of the tabletop arm) -> 0.5."""
RELATIVE_BOUND = 2.0
"""Those features saturate at +-RELATIVE_BOUND (``bound * tanh(gain * d / bound)``): far offsets only
say "which way", so a far-off keypoint does not swamp the head's inputs."""


class FiLMCoordCNN(nn.Module):
    """CoordConv CNN: float images [N, 3, H, W] in [0, 1] -> feature map [N, C, g, g].

    CoordConv: two normalized x/y coordinate channels are appended to the input so convolutions can
    localize objects. Every stage is ``conv3x3/2 -> GroupNorm -> FiLM -> ReLU``, where FiLM scales
    and shifts the channels from a conditioning vector (the instruction), letting the language pick
    what the visual features keep before fusion.
    """

    def __init__(self, channels: Sequence[int], cond_dim: int, image_size: int, grid: int) -> None:
        super().__init__()
        self.channels = list(channels)
        self.convs = nn.ModuleList()
        self.norms = nn.ModuleList()
        c_in = 3
        for c in self.channels:
            self.convs.append(nn.Conv2d(c_in, c, kernel_size=3, stride=2, padding=1))
            self.norms.append(nn.GroupNorm(math.gcd(8, c), c))
            c_in = c
        # The first conv over [image, x, y] is conv(image) + conv(x, y), and the second term does not
        # depend on the batch: computing it once per forward avoids concatenating 2 channels to
        # every image (same function as CoordConv, less memory traffic).
        self.coord_conv = nn.Conv2d(2, self.channels[0], kernel_size=3, stride=2, padding=1, bias=False)
        coords = torch.linspace(-1.0, 1.0, image_size)
        yy, xx = torch.meshgrid(coords, coords, indexing="ij")
        self.register_buffer("coords", torch.stack([xx, yy])[None], persistent=False)
        self.film = nn.Linear(cond_dim, 2 * sum(self.channels))
        # Zero init: FiLM starts as the identity and the language path is learned from there.
        nn.init.zeros_(self.film.weight)
        nn.init.zeros_(self.film.bias)
        # Three stride-2 stages give a ceil(image_size / 8) map; pool only when that exceeds the grid.
        self.pool = nn.AdaptiveAvgPool2d(grid) if math.ceil(image_size / 8) > grid else nn.Identity()

    def forward(self, images: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images float [N, 3, H, W] in [0, 1], cond [N, cond_dim] -> the last stage's map
        [N, C_last, g, g] and the one before it [N, C_mid, g', g'] (g' = ceil(H / 4), twice as fine)."""
        film = self.film(cond).split([c for c in self.channels for _ in range(2)], dim=-1)
        x = mid = images
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms, strict=True)):
            mid = x
            x = conv(x)
            if i == 0:
                x = x + self.coord_conv(self.coords)
            gamma, beta = film[2 * i], film[2 * i + 1]
            x = F.relu(norm(x) * (1.0 + gamma[:, :, None, None]) + beta[:, :, None, None])
        return self.pool(x), mid


class FusionBlock(nn.Module):
    """Pre-norm transformer encoder layer: ``x + MHA(LN(x))`` then ``x + MLP(LN(x))``, no dropout.

    Equivalent to ``nn.TransformerEncoderLayer(norm_first=True, dropout=0, activation="gelu")``, but
    without its eval-mode "fast path": on CPU with a padding mask that path is ~30% slower and not
    bit-compatible with the training path, which would make ``act`` log-probs drift from ``evaluate``.
    """

    def __init__(self, width: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads = n_heads
        self.norm1 = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = nn.Sequential(nn.Linear(width, 4 * width), nn.GELU(), nn.Linear(4 * width, width))

    def forward(self, x: torch.Tensor, attend: torch.Tensor) -> torch.Tensor:
        """x [B, L, W], attend bool [B, 1, 1, L] (False: padding key) -> [B, L, W]."""
        b, n, w = x.shape
        q, k, v = (
            self.qkv(self.norm1(x)).view(b, n, 3, self.n_heads, w // self.n_heads).permute(2, 0, 3, 1, 4)
        )
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=attend)
        x = x + self.proj(attn.transpose(1, 2).reshape(b, n, w))
        return x + self.mlp(self.norm2(x))


@POLICIES.register("tiny_vla")
class TinyVLA(Policy):
    """Small VLA policy with a token (discretized) or Gaussian action head; see the module docstring.

    ``size`` (``"nano"``, ``"tiny"``, ``"small"``, ``"base"``) overrides ``width``, ``depth``,
    ``n_heads`` and the CNN widths; without it the CNN stages have widths (W/4, W/2, W).
    ``image_grid`` caps the side of the patch grid per camera (8: 64 image tokens at 64x64); the
    fusion transformer dominates CPU cost, so 4 (16 tokens) is ~3x faster at some loss of detail.
    ``fusion_grid`` pools only the transformer's image tokens, leaving the CNN map and the keypoints
    as they are (the action head reads the keypoints; the transformer feeds the value head).
    """

    def __init__(
        self,
        vocabulary: list[str],
        image_size: int = 64,
        image_keys: Sequence[str] = ("image",),
        state_dim: int = 4,
        action_dim: int = 3,
        chunk_size: int = 4,
        action_low: float | list[float] = -1.0,
        action_high: float | list[float] = 1.0,
        head: str = "tokens",
        n_bins: int = 256,
        width: int = 64,
        depth: int = 2,
        n_heads: int = 4,
        max_instruction_len: int = 24,
        init_log_std: float = -1.0,
        size: str | None = None,
        image_grid: int = 8,
        freeze_encoder: bool = False,
        fine_keypoints: bool = True,
        ee_xy_dims: Sequence[int] | None = None,
        ee_keypoint: int | None = None,
        n_keypoints: int = 8,
        fusion_grid: int | None = None,
        cost_critic: bool = False,
    ) -> None:
        super().__init__()
        image_keys = [image_keys] if isinstance(image_keys, str) else list(image_keys)
        low, high = _validate(locals())
        self._kwargs: dict[str, Any] = {
            "vocabulary": list(vocabulary),
            "image_size": int(image_size),
            "image_keys": image_keys,
            "state_dim": int(state_dim),
            "action_dim": int(action_dim),
            "chunk_size": int(chunk_size),
            "action_low": _jsonable(action_low),
            "action_high": _jsonable(action_high),
            "head": head,
            "n_bins": int(n_bins),
            "width": int(width),
            "depth": int(depth),
            "n_heads": int(n_heads),
            "max_instruction_len": int(max_instruction_len),
            "init_log_std": float(init_log_std),
            "size": size,
            "image_grid": int(image_grid),
            "freeze_encoder": bool(freeze_encoder),
            "fine_keypoints": bool(fine_keypoints),
            "ee_xy_dims": None if ee_xy_dims is None else [int(d) for d in ee_xy_dims],
            "ee_keypoint": None if ee_keypoint is None else int(ee_keypoint),
            "n_keypoints": int(n_keypoints),
            "fusion_grid": None if fusion_grid is None else int(fusion_grid),
            "cost_critic": bool(cost_critic),
        }
        if size is not None:
            width, depth, n_heads = (PRESETS[size][k] for k in ("width", "depth", "n_heads"))
            cnn_channels = PRESETS[size]["cnn_channels"]
        else:
            cnn_channels = (max(8, width // 4), max(8, width // 2), width)

        self.chunk_size = int(chunk_size)
        self.action_dim = int(action_dim)
        self.state_dim = int(state_dim)
        self.image_size = int(image_size)
        self.image_keys = image_keys
        self.width = width
        self.tokenizer = WordTokenizer(vocabulary, max_instruction_len)

        grid = min(image_grid, math.ceil(image_size / 8))
        self.cnn = FiLMCoordCNN(cnn_channels, width, image_size, grid)
        self.patch_proj = nn.Linear(cnn_channels[-1], width)
        tokens_side = grid if fusion_grid is None else min(int(fusion_grid), grid)
        self.fusion_pool = nn.AdaptiveAvgPool2d(tokens_side) if tokens_side < grid else nn.Identity()
        self.patch_pos = nn.Parameter(torch.randn(tokens_side * tokens_side, width) * 0.02)
        self.camera_emb = nn.Parameter(torch.randn(len(image_keys), 1, width) * 0.02)
        self.word_emb = nn.Embedding(self.tokenizer.vocab_size, width, padding_idx=PAD_ID)
        nn.init.normal_(self.word_emb.weight, std=0.02)
        self.word_emb.weight.data[PAD_ID].zero_()
        # Attention pooling of the instruction for FiLM and keypoint queries: a mean would drown the
        # few words that pick the object ("yellow", "cross") in the template words shared by all.
        self.pool_heads = 4
        self.word_score = nn.Linear(width, self.pool_heads)
        self.pool_proj = nn.Linear(self.pool_heads * width, width)
        self.instr_norm = nn.LayerNorm(width)
        self.word_pos = nn.Parameter(torch.randn(max_instruction_len, width) * 0.02)
        self.state_proj = nn.Linear(state_dim, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        # No dropout anywhere, so act() and evaluate() see the same function in train and eval mode.
        self.blocks = nn.ModuleList(FusionBlock(width, n_heads) for _ in range(depth))
        self.final_norm = nn.LayerNorm(width)

        # Spatial soft-argmax keypoints (Levine et al. 2016) over the language-conditioned feature
        # map: each keypoint is the expected (x, y) of a softmax attention map, a direct route from
        # "where is the named object" to the action, which pixels-to-actions learning needs most.
        # Grounding pretraining supervises the first ones (named object, goal); the rest are free.
        self.n_keypoints = self._kwargs["n_keypoints"]
        # The keypoint map: with ``fine_keypoints`` a feature-pyramid step, the second CNN stage
        # (twice as fine) concatenated with the last stage upsampled to it. An 8x8 map's cells are
        # 0.125 wide, as wide as the errors the grasp radius allows.
        kp_side = min(2 * grid, math.ceil(image_size / 4)) if fine_keypoints else grid
        kp_channels = cnn_channels[-1] + (cnn_channels[-2] if fine_keypoints else 0)
        self.kp_side = kp_side
        self.kp_pool = nn.AdaptiveAvgPool2d(kp_side) if fine_keypoints else None
        # Keypoint queries come from the instruction (a linear map of its pooled embedding), so an
        # attention map can lock onto "the yellow cross" directly: logits = <q_k(instr), f(cell)>.
        self.keypoint_query = nn.Linear(width, self.n_keypoints * kp_channels)
        # Sub-cell offsets (as in CenterNet): each cell also says where in the cell its keypoint lies,
        # so a peaked attention map still points between cell centres.
        self.kp_offset = nn.Conv2d(kp_channels, 2 * self.n_keypoints, 1) if fine_keypoints else None
        if self.kp_offset is not None:
            nn.init.zeros_(self.kp_offset.weight)
            nn.init.zeros_(self.kp_offset.bias)
        kp_grid = (torch.arange(kp_side, dtype=torch.float32) + 0.5) / kp_side  # cell centres in [0, 1]
        ky, kx = torch.meshgrid(kp_grid, kp_grid, indexing="ij")
        self.register_buffer("kp_xy", torch.stack([kx.flatten(), ky.flatten()], -1), persistent=False)
        # ``ee_xy_dims``: the state entries holding the end effector's (x, y) in the first camera's
        # image coordinates. The head then also reads every keypoint of that camera relative to it
        # (slope RELATIVE_GAIN, bounded by RELATIVE_BOUND): "object minus gripper" is what the
        # controller acts on (behaviour cloning on 500 `object` demos over frozen keypoints: 0.87
        # success with these features, 0.44 from absolute keypoints and state alone).
        #
        # ``ee_keypoint`` (exclusive with ``ee_xy_dims``): the index of the keypoint that tracks the
        # end effector in the first camera (grounding pretraining supervises it with the gripper's
        # image position). The relative features are then image minus image: under a camera shift
        # by t every keypoint p_k moves to p_k + t (the encoder is trained shift-equivariant by
        # ``pretrain.augment_shift``) and p_k - p_ee is unchanged, while p_k - state[ee] would be off
        # by t. For the same reason the first camera's absolute keypoints are left out of the
        # geometry (other cameras keep theirs): only shift-invariant inputs, the relative
        # keypoints and the state, reach the action head.
        self.ee_xy_dims = self._kwargs["ee_xy_dims"]
        self.ee_keypoint = self._kwargs["ee_keypoint"]
        # Grounding labels come as (object, goal, gripper): the gripper's only when a keypoint reads it.
        self.pointing_labels = 2 if self.ee_keypoint is None else max(2, self.ee_keypoint + 1)
        relative = self.ee_xy_dims is not None or self.ee_keypoint is not None
        n_rel = 2 * self.n_keypoints if relative else 0
        n_abs = 2 * self.n_keypoints * (len(image_keys) - (self.ee_keypoint is not None))
        geo = n_abs + n_rel + state_dim
        self.keypoint_mlp = nn.Sequential(nn.Linear(geo, width), nn.GELU())

        # The head also sees the raw keypoints and state: relative geometry ("object minus gripper")
        # is one linear layer away, instead of being re-learned through the fusion transformer.
        feat = 3 * width + geo
        # The action head reads [keypoint features, keypoints, state]: the geometry it needs, and
        # nothing to memorize few-shot demos with; the value head reads all features.
        self.action_from = 2 * width
        act_feat = feat - self.action_from
        self.value_head = nn.Sequential(nn.Linear(feat, width), nn.GELU(), nn.Linear(width, 1))
        # Small final init: initial values ~0 keep the first advantage estimates sane.
        nn.init.normal_(self.value_head[-1].weight, std=0.01 / math.sqrt(width))
        nn.init.zeros_(self.value_head[-1].bias)
        self.head: ActionHead
        if head == "tokens":
            self.head = TokenHead(act_feat, width, self.chunk_size, self.action_dim, n_bins, low, high)
        else:
            self.head = GaussianHead(act_feat, width, self.chunk_size, self.action_dim, init_log_std)
        # The cost critic (``cost_critic``, for constrained RL) mirrors the value head; built last, so
        # the other modules' initial weights do not depend on whether it exists.
        self.cost_head: nn.Module | None = None
        if cost_critic:
            self.cost_head = nn.Sequential(nn.Linear(feat, width), nn.GELU(), nn.Linear(width, 1))
            nn.init.normal_(self.cost_head[-1].weight, std=0.01 / math.sqrt(width))
            nn.init.zeros_(self.cost_head[-1].bias)
        if freeze_encoder:
            # Like freezing a VLA's vision-language backbone: fine-tuning on a few demos otherwise
            # overwrites the grounding (README, "Training workflow").
            for module in self.encoder_modules():
                module.requires_grad_(False)

    def encoder_modules(self) -> list[nn.Module]:
        """The vision-language encoder: CNN, word embeddings, instruction pooling, keypoint queries."""
        return [
            self.cnn,
            self.word_emb,
            self.word_score,
            self.pool_proj,
            self.instr_norm,
            self.keypoint_query,
            *([self.kp_offset] if self.kp_offset is not None else []),
        ]

    def init_kwargs(self) -> dict[str, Any]:
        return dict(self._kwargs)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ preprocessing

    def _images(self, obs: ObsBatch) -> torch.Tensor:
        """Stack the ``image_keys`` images camera-major: float [n_cams * B, 3, S, S] in [0, 1]."""
        frames = []
        for key in self.image_keys:
            if key not in obs:
                raise KeyError(
                    f"observation has no {key!r} (image_keys={self.image_keys}, got {sorted(obs)})"
                )
            # Move uint8 to the device first: 4x less to transfer than float32.
            img = torch.as_tensor(np.asarray(obs[key]) if not torch.is_tensor(obs[key]) else obs[key])
            frames.append(img.to(self.device, non_blocking=True))
        x = torch.cat(frames, dim=0).permute(0, 3, 1, 2)
        # uint8 from the env; float images (``mean_action``) are already in [0, 1] and keep their graph.
        x = x if x.is_floating_point() else x.float().div_(255.0)
        if x.shape[-2:] != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x

    def _state(self, obs: ObsBatch) -> torch.Tensor:
        """float [B, S] on the device."""
        state = obs["state"]
        state = torch.as_tensor(state if torch.is_tensor(state) else np.asarray(state, dtype=np.float32))
        if state.ndim != 2 or state.shape[1] != self.state_dim:
            raise ValueError(f"state must be [B, {self.state_dim}], got {tuple(state.shape)}")
        return state.to(self.device, torch.float32)

    # ------------------------------------------------------------------ model

    def features(self, obs: ObsBatch) -> torch.Tensor:
        """Fused features [B, 3 * width]: concat(CLS output, mean image-token output, keypoints)."""
        return self._encode(obs)[0]

    def point(self, obs: ObsBatch) -> torch.Tensor:
        """Keypoints [B, n_keypoints, 2] of the first camera, (x, y) in [0, 1] image coordinates.

        Grounding pretraining supervises the first keypoints with "where is the named object" labels.
        Keypoints do not depend on the fusion transformer, so this skips it.
        """
        return self._ground(obs)[-1][0]

    def _ids(self, obs: ObsBatch, b: int) -> torch.Tensor:
        """Instruction token ids long [B, max_instruction_len] (padded at the end)."""
        ids = self.tokenizer.encode_batch(list(obs["instruction"]))
        if ids.shape[0] != b:
            raise ValueError(f"got {ids.shape[0]} instructions for a batch of {b}")
        return ids

    def _words(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Word embeddings [B, L, W] and padding mask [B, L] of ids [B, L_max]. Padding is at the
        end; dropping the all-pad columns of the batch changes nothing (they are masked) but
        shortens the sequence the transformer runs on."""
        n_words = max(1, int((ids != PAD_ID).sum(1).max()))
        ids = ids[:, :n_words].to(self.device)
        return self.word_emb(ids), ids == PAD_ID

    def _ground(self, obs: ObsBatch) -> tuple[torch.Tensor, ...]:
        """The vision-language part: state [B, S], instruction ids [B, L_max], word embeddings
        [B, L, W] and padding [B, L], the last CNN map [n_cams * B, C, g, g] and keypoints
        [n_cams, B, n_kp, 2]."""
        state = self._state(obs)
        b = state.shape[0]
        ids = self._ids(obs, b)
        words, pad = self._words(ids)
        pooled = self.pool_instruction(words, pad)

        n_cams = len(self.image_keys)
        fmap, mid = self.cnn(self._images(obs), pooled.repeat(n_cams, 1))
        kp_map = fmap
        if self.kp_pool is not None:
            mid = self.kp_pool(mid)
            kp_map = torch.cat([mid, F.interpolate(fmap, size=mid.shape[-2:], mode="nearest")], dim=1)
        c = kp_map.shape[1]
        query = self.keypoint_query(pooled).view(b, self.n_keypoints, c).repeat(n_cams, 1, 1)
        attn = (query @ kp_map.flatten(2) / math.sqrt(c)).softmax(-1)  # [n_cams * B, n_kp, cells]
        if self.kp_offset is None:
            points = attn @ self.kp_xy
        else:  # sum over cells of attn * (cell centre + offset), offsets within half a cell
            offset = self.kp_offset(kp_map).view(-1, self.n_keypoints, 2, kp_map.shape[-1] ** 2)
            offset = torch.tanh(offset).transpose(2, 3) * (0.5 / self.kp_side)
            points = attn @ self.kp_xy + (attn[..., None] * offset).sum(2)
        return state, ids, words, pad, fmap, points.view(n_cams, b, self.n_keypoints, 2)

    def frozen_features(self, obs: ObsBatch) -> dict[str, torch.Tensor] | None:
        """With ``freeze_encoder`` the whole vision-language part is frozen: its outputs per
        observation are the instruction ids [B, L_max], the pooled image-token maps
        [B, n_cams, C, s, s] and the keypoints [B, n_cams, n_kp, 2] (``_encode`` reads them back)."""
        if not self._kwargs["freeze_encoder"]:
            return None
        with torch.no_grad():
            _, ids, _, _, fmap, points = self._ground(obs)
            return self._frozen_rows(ids, self.fusion_pool(fmap), points)

    def _frozen_rows(
        self, ids: torch.Tensor, tokens_map: torch.Tensor, points: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        n_cams, b = len(self.image_keys), ids.shape[0]
        return {
            "ids": ids,
            "tokens_map": tokens_map.view(n_cams, b, *tokens_map.shape[1:]).transpose(0, 1).contiguous(),
            "points": points.transpose(0, 1).contiguous(),
        }

    def _encode(
        self,
        obs: ObsBatch,
        cached: dict[str, torch.Tensor] | None = None,
        keep_frozen: bool = False,
    ) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor] | None]:
        """Fused features [B, F], keypoints of the first camera and, with ``keep_frozen``, the
        ``frozen_features`` rows of ``obs`` (else None)."""
        n_cams = len(self.image_keys)
        frozen = None
        if cached is None:
            state, ids, words, pad, fmap, points = self._ground(obs)
            tokens_map = self.fusion_pool(fmap)
            if keep_frozen:
                frozen = self._frozen_rows(ids, tokens_map, points)
        else:  # the same tensors, rebuilt camera-major from ``frozen_features`` rows
            state = self._state(obs)
            words, pad = self._words(cached["ids"])
            tm = cached["tokens_map"].to(self.device)
            tokens_map = tm.transpose(0, 1).reshape(n_cams * tm.shape[0], *tm.shape[2:])
            points = cached["points"].to(self.device).transpose(0, 1).contiguous()
        b, n_words = state.shape[0], words.shape[1]
        # One memory layout whichever way the map came (the CNN's output is channels-last, as its
        # input images are): the projection then runs the same kernel, bit for bit, in both paths.
        tokens_map = tokens_map.contiguous(memory_format=torch.channels_last)
        patches = self.patch_proj(tokens_map.flatten(2).transpose(1, 2)) + self.patch_pos
        # [n_cams * B, P, W] -> [B, n_cams * P, W], with a per-camera embedding.
        patches = (patches.view(n_cams, b, -1, self.width) + self.camera_emb[:, None]).transpose(0, 1)
        patches = patches.reshape(b, -1, self.width)

        tokens = torch.cat(
            [
                self.cls.expand(b, -1, -1),
                self.state_proj(state)[:, None],
                words + self.word_pos[:n_words],
                patches,
            ],
            dim=1,
        )
        attend = torch.ones(b, 1, 1, tokens.shape[1], dtype=torch.bool, device=tokens.device)
        attend[:, 0, 0, 2 : 2 + n_words] = ~pad
        for block in self.blocks:
            tokens = block(tokens, attend)
        out = self.final_norm(tokens)
        # Absolute keypoints [B, n_abs] (the first camera's dropped with ``ee_keypoint``).
        keypoints = (points[1:] if self.ee_keypoint is not None else points).transpose(0, 1).reshape(b, -1)
        geo = [4.0 * (keypoints - 0.5)]
        ee = None
        if self.ee_keypoint is not None:
            ee = points[0, :, self.ee_keypoint]  # [B, 2], in the image
        elif self.ee_xy_dims is not None:
            ee = state[:, self.ee_xy_dims]  # [B, 2], from the state
        if ee is not None:
            rel = (points[0] - ee[:, None]) * (RELATIVE_GAIN / RELATIVE_BOUND)
            geo.append((RELATIVE_BOUND * torch.tanh(rel)).flatten(1))
        geo.append(state)
        kp_feat = self.keypoint_mlp(torch.cat([keypoints, *geo[1:]], dim=-1))
        feats = torch.cat([out[:, 0], out[:, 2 + n_words :].mean(1), kp_feat, *geo], dim=-1)
        return feats, points[0], frozen

    def pool_instruction(self, words: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """Word embeddings [B, L, W] and padding mask [B, L] -> a normalized summary [B, W].

        The LayerNorm matters: word embeddings start tiny (std 0.02), and the zero-initialised FiLM
        layers learn at a rate proportional to this vector's scale.
        """
        scores = self.word_score(words).masked_fill(pad[..., None], float("-inf")).softmax(dim=1)
        pooled = torch.einsum("blh,blw->bhw", scores, words).flatten(1)
        return self.instr_norm(self.pool_proj(pooled))

    @torch.inference_mode()
    def act(self, obs: ObsBatch, deterministic: bool = False, with_features: bool = False) -> ActOutput:
        """Sample an action chunk: actions / log_probs float32 [B, K, A], values [B] (numpy);
        ``with_features`` (and ``freeze_encoder``): the frozen features too."""
        keep = with_features and self._kwargs["freeze_encoder"]
        feats, _, frozen = self._encode(obs, keep_frozen=keep)
        actions, log_probs = self.head.sample(self.head(feats[:, self.action_from :]), deterministic)
        values = self.value_head(feats).squeeze(-1)
        return ActOutput(
            actions=actions.float().cpu().numpy(),
            log_probs=log_probs.float().cpu().numpy(),
            values=values.float().cpu().numpy(),
            version=self.version,
            features=None if frozen is None else {k: v.cpu().numpy() for k, v in frozen.items()},
            cost_values=None
            if self.cost_head is None
            else self.cost_head(feats).squeeze(-1).float().cpu().numpy(),
        )

    def evaluate(
        self,
        obs: ObsBatch,
        actions: np.ndarray | torch.Tensor,
        features: dict[str, torch.Tensor] | None = None,
    ) -> EvalOutput:
        """Differentiable log-probs / entropy [B, K, A] of ``actions`` [B, K, A] and values [B]."""
        actions = torch.as_tensor(
            actions if torch.is_tensor(actions) else np.asarray(actions, dtype=np.float32)
        )
        actions = actions.to(self.device, torch.float32)
        feats = self._encode(obs, features)[0]
        expected = (feats.shape[0], self.chunk_size, self.action_dim)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must be {list(expected)}, got {list(actions.shape)}")
        log_probs, entropy = self.head.log_prob_entropy(self.head(feats[:, self.action_from :]), actions)
        return EvalOutput(
            log_probs=log_probs,
            entropy=entropy,
            values=self.value_head(feats).squeeze(-1),
            cost_values=None if self.cost_head is None else self.cost_head(feats).squeeze(-1),
        )

    def mean_action(self, obs: ObsBatch, images: dict[str, torch.Tensor] | None = None) -> torch.Tensor:
        """The head's mean chunk [B, K, A] (``ActionHead.mean``), differentiable in ``images``
        (float [B, H, W, 3] in [0, 1] per camera key, in place of ``obs[key]``)."""
        feats = self._encode({**obs, **(images or {})})[0]
        return self.head.mean(self.head(feats[:, self.action_from :]))


def _jsonable(bound: float | Sequence[float]) -> float | list[float]:
    """A scalar or per-dimension bound as plain Python floats (numpy arrays are accepted too)."""
    arr = np.asarray(bound, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else [float(v) for v in arr.reshape(-1)]


def _validate(args: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """Check the constructor arguments (ValueError naming the argument); return (low, high) [A]."""

    def positive(name: str) -> None:
        if not isinstance(args[name], (int, np.integer)) or isinstance(args[name], bool) or args[name] < 1:
            raise ValueError(f"{name} must be a positive int, got {args[name]!r}")

    for name in (
        "image_size",
        "state_dim",
        "action_dim",
        "chunk_size",
        "n_bins",
        "width",
        "depth",
        "n_heads",
        "image_grid",
        "n_keypoints",
    ):
        positive(name)
    positive("max_instruction_len")
    if args["n_bins"] < 2:
        raise ValueError(f"n_bins must be >= 2, got {args['n_bins']}")
    if args["image_size"] < 8:
        raise ValueError(f"image_size must be >= 8, got {args['image_size']}")
    vocab = args["vocabulary"]
    if isinstance(vocab, str) or not all(isinstance(w, str) for w in vocab):
        raise ValueError("vocabulary must be a list of strings")
    keys = args["image_keys"]
    if not keys or not all(isinstance(k, str) for k in keys) or len(set(keys)) != len(keys):
        raise ValueError(f"image_keys must be a non-empty list of distinct strings, got {keys!r}")
    if args["head"] not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {args['head']!r}")
    size = args["size"]
    if size is not None and size not in PRESETS:
        raise ValueError(f"size must be None or one of {sorted(PRESETS)}, got {size!r}")
    if size is None and args["width"] % args["n_heads"]:
        raise ValueError(f"width ({args['width']}) must be divisible by n_heads ({args['n_heads']})")
    if args["fusion_grid"] is not None:
        positive("fusion_grid")
    kp = args["ee_keypoint"]
    if kp is not None and (
        isinstance(kp, bool) or not isinstance(kp, (int, np.integer)) or not 0 <= kp < args["n_keypoints"]
    ):
        raise ValueError(
            f"ee_keypoint must be None or a keypoint index in [0, {args['n_keypoints']}), got {kp!r}"
        )
    if kp is not None and args["ee_xy_dims"] is not None:
        raise ValueError(
            "ee_keypoint and ee_xy_dims are exclusive (the end effector from the image or from the "
            "state); set one to None"
        )
    dims = args["ee_xy_dims"]
    if dims is not None and (
        isinstance(dims, str)
        or len(dims) != 2
        or not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) for d in dims)
        or not all(0 <= d < args["state_dim"] for d in dims)
    ):
        raise ValueError(
            f"ee_xy_dims must be None or two state indices in [0, {args['state_dim']}), got {dims!r}"
        )
    if not math.isfinite(float(args["init_log_std"])):
        raise ValueError(f"init_log_std must be finite, got {args['init_log_std']!r}")
    a = args["action_dim"]
    bounds = []
    for name in ("action_low", "action_high"):
        arr = np.asarray(args[name], dtype=np.float64)
        if arr.ndim > 1 or (arr.ndim == 1 and arr.shape[0] != a) or not np.isfinite(arr).all():
            raise ValueError(f"{name} must be a finite float or a list of {a} floats, got {args[name]!r}")
        bounds.append(torch.as_tensor(np.broadcast_to(arr, (a,)).copy(), dtype=torch.float32))
    low, high = bounds
    if not bool((low < high).all()):
        raise ValueError(
            f"action_low must be < action_high elementwise, got {args['action_low']!r}, {args['action_high']!r}"
        )
    return low, high
