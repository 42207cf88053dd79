"""Weight transport: trainer -> rollout workers, with a version number.

The default transport packs a state dict into plain numpy arrays (Ray moves them through the
object store zero-copy, without pickle) and unpacks them on the rollout side. A collective
(NCCL/gloo broadcast) transport implements the same two functions.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch


def pack(state_dict: dict[str, torch.Tensor]) -> dict[str, Any]:
    arrays, dtypes = {}, {}
    for k, v in state_dict.items():
        t = v.detach().cpu().contiguous()
        dtypes[k] = str(t.dtype).removeprefix("torch.")
        if t.dtype == torch.bfloat16:
            t = t.view(torch.int16)
        arrays[k] = t.numpy()
    return {"arrays": arrays, "dtypes": dtypes}


def unpack(payload: dict[str, Any]) -> dict[str, torch.Tensor]:
    out = {}
    for k, a in payload["arrays"].items():
        t = torch.from_numpy(np.array(a, copy=True))
        if payload["dtypes"][k] == "bfloat16":
            t = t.view(torch.bfloat16)
        out[k] = t
    return out
