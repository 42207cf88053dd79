#!/usr/bin/env bash
# GPU check of the hf_vla policy: a random few-hundred-million-parameter HF VLA (Llava: SigLIP-B/16
# vision tower + a 16-layer Llama, ~366M parameters) fine-tuned with PPO on the tabletop env, once in
# sync mode and once fully async (`asyncvla compare`), then bench.json with the env steps/s of both.
# Budget: <= 8 minutes on one H100/H200 (~1 min checkpoint build, 2 x ~2-3 min runs).
#
#   bash scripts/gpu_check.sh                 # on the GPU machine, from the repository root
#   SIZE=tiny DEVICE=cpu bash scripts/gpu_check.sh   # CPU dry run of the same steps (~2 min)
#
# Variables: SIZE (300m | tiny), DEVICE (cuda | cpu), ENV (tabletop | libero: only if the libero
# env and its simulator are installed), UPDATES (RL updates per run, 8), OUT (runs/gpu_check),
# PYTHON (python), RUN_TIMEOUT (seconds for both runs together, 420), LORA (LoRA rank, 0: full
# fine-tuning).
#
# Needs PyTorch (CUDA build), transformers >= 5 and peft. Everything else asyncvla imports (ray,
# gymnasium, pydantic, pyyaml, typer, rich, safetensors, tensorboard, matplotlib and their
# dependencies) is installed from ./wheels when that folder exists, without any index:
#   (elsewhere, same Python and platform)  pip download -d wheels ray==2.60.0 gymnasium==1.4.0 \
#       pydantic==2.14.4 PyYAML==6.0.4 typer==0.29.2 rich==15.0.0 safetensors==0.8.0 \
#       tensorboard==2.21.0 matplotlib==3.11.2
#   (here)  the script runs pip install --no-index --find-links wheels/ <those> and pip install --no-deps -e .
set -euo pipefail
cd "$(dirname "$0")/.."

SIZE=${SIZE:-300m}
DEVICE=${DEVICE:-cuda}
ENV=${ENV:-tabletop}
UPDATES=${UPDATES:-8}
OUT=${OUT:-runs/gpu_check}
PY=${PYTHON:-python}
RUN_TIMEOUT=${RUN_TIMEOUT:-420}
LORA=${LORA:-0}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 PYTHONUNBUFFERED=1

if [ -d wheels ]; then
  "$PY" -m pip install -q --no-index --find-links wheels/ ray gymnasium pydantic pyyaml typer rich \
    safetensors tensorboard matplotlib
fi
if ! "$PY" -c "import asyncvla" 2>/dev/null; then
  "$PY" -m pip install -q --no-deps --no-build-isolation -e .
fi
"$PY" - "$DEVICE" <<'PYEOF'
import sys

import peft
import torch
import transformers

print(f"torch {torch.__version__}, transformers {transformers.__version__}, peft {peft.__version__}")
if int(transformers.__version__.split(".")[0]) < 5:
    sys.exit("gpu_check: hf_vla needs transformers >= 5")
if sys.argv[1] == "cuda" and not torch.cuda.is_available():
    sys.exit("gpu_check: DEVICE=cuda but torch sees no GPU (DEVICE=cpu for a dry run)")
import asyncvla.policies  # noqa: F401  (every other dependency is importable)
PYEOF

rm -rf "$OUT"
mkdir -p "$OUT"
T0=$(date +%s)

if [ "$ENV" = libero ]; then
  CONFIG=configs/libero_hf_vla.yaml
  ACTION_DIM=7
  ENV_ARGS=(env.num_envs=4 env.num_managers=2 runtime.num_env_workers=2 policy.chunk_size=8
            env.kwargs.max_episode_steps=64)
else
  CONFIG=configs/tabletop_hf_vla.yaml
  ACTION_DIM=3
  ENV_ARGS=(env.num_envs=16 env.num_managers=2 policy.chunk_size=4 env.kwargs.max_episode_steps=16)
fi
"$PY" -m asyncvla.policies.hf_tiny "$OUT/ckpt" --size "$SIZE" --action-dim "$ACTION_DIM"

if [ "$DEVICE" = cuda ]; then
  # Rollout and trainer share the GPU; the rollout copy is bfloat16, the trainer float32 + autocast.
  DEV_ARGS=(policy.kwargs.device=cuda runtime.rollout.gpus=0.5 runtime.trainer.gpus=0.5
            runtime.rollout.torch_threads=2 runtime.trainer.torch_threads=2)
else
  DEV_ARGS=(policy.kwargs.device=cpu runtime.rollout.gpus=0 runtime.trainer.gpus=0)
fi
# The driver evaluates on its CPU copy (initial and final evaluation of each run): keep that short.
timeout "$RUN_TIMEOUT" "$PY" -m asyncvla.cli compare "$CONFIG" \
  "policy.kwargs.checkpoint=$OUT/ckpt" "policy.kwargs.lora_rank=$LORA" policy.kwargs.dtype=auto \
  "${ENV_ARGS[@]}" "${DEV_ARGS[@]}" \
  train.updates="$UPDATES" train.rollout_steps=4 train.checkpoint_every=1000 \
  algo.epochs=1 algo.minibatch_size=64 \
  eval.episodes=1 eval.num_envs=1 runtime.stall_timeout_s=300 runtime.start_timeout_s=300 \
  --out "$OUT/compare"

"$PY" - "$OUT" "$SIZE" "$ENV" "$DEVICE" "$T0" <<'PYEOF'
import json
import math
import sys
import time
from pathlib import Path

import torch
from safetensors import safe_open

out, size, env, device, t0 = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
cmp = json.loads((out / "compare" / "compare.json").read_text())
with safe_open(str(out / "ckpt" / "model.safetensors"), "pt") as f:
    params = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
keys = ("env_steps", "env_steps_per_s", "wall_s", "samples_trained", "max_staleness", "final_success_rate")
bench = {
    "check": "hf_vla sync vs full async (asyncvla compare)",
    "env": env,
    "size": size,
    "vlm_parameters": int(params),
    "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
    "sync": {k: cmp["sync"].get(k) for k in keys},
    "async": {k: cmp["async"].get(k) for k in keys},
    "async_over_sync_throughput": cmp["async_over_sync_throughput"],
    "total_wall_s": time.time() - t0,
}
(out / "bench.json").write_text(json.dumps(bench, indent=2))
print(json.dumps(bench, indent=2))
PYEOF
echo "written: $OUT/bench.json"
