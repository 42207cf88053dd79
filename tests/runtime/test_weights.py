import pickle

import numpy as np
import torch

from asyncvla.runtime.weights import pack, unpack


def _state() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    f32 = torch.randn(3, 4, generator=g)
    f32[0, 0] = float("inf")
    f32[0, 1] = -0.0
    f32[0, 2] = 1e-40  # subnormal
    bf16 = torch.randn(5, 2, generator=g).to(torch.bfloat16)
    bf16[1, 1] = float("-inf")
    return {
        "layer.weight": f32,
        "layer.bias": torch.randn(4, generator=g),
        "head.weight": bf16,
        "scalar": torch.tensor(2.5, dtype=torch.bfloat16),
        "steps": torch.tensor([1, 2, 3], dtype=torch.int64),
        # non-contiguous view (a transpose) must survive too
        "transposed": torch.randn(2, 3, generator=g).t(),
    }


def _bits(t: torch.Tensor) -> torch.Tensor:
    t = t.contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16)
    if t.dtype == torch.float32:
        return t.view(torch.int32)
    return t


def test_round_trip_is_bit_identical_for_float32_and_bfloat16():
    sd = _state()
    out = unpack(pack(sd))
    assert list(out) == list(sd)
    for k, v in sd.items():
        assert out[k].dtype == v.dtype, k
        assert out[k].shape == v.shape, k
        assert torch.equal(_bits(out[k]), _bits(v)), k
    assert out["layer.weight"][0, 0] == float("inf")
    assert torch.signbit(out["layer.weight"][0, 1])


def test_packed_payload_holds_only_numpy_arrays_and_strings():
    payload = pack(_state())
    assert set(payload) == {"arrays", "dtypes"}
    for k, a in payload["arrays"].items():
        assert type(a) is np.ndarray, k
        assert not isinstance(a, torch.Tensor)
    assert all(type(d) is str for d in payload["dtypes"].values())
    assert payload["dtypes"]["head.weight"] == "bfloat16"
    assert payload["dtypes"]["layer.weight"] == "float32"
    assert payload["arrays"]["head.weight"].dtype == np.int16  # bf16 carried as its raw bits
    assert payload["arrays"]["layer.weight"].dtype == np.float32
    # nothing torch inside: the pickle stream never names the torch module
    assert b"torch" not in pickle.dumps(payload)


def test_unpacked_tensors_own_their_memory():
    sd = {"w": torch.zeros(4)}
    payload = pack(sd)
    out = unpack(payload)
    out["w"] += 1.0
    assert np.array_equal(payload["arrays"]["w"], np.zeros(4, np.float32))
    assert torch.equal(sd["w"], torch.zeros(4))


def test_works_on_a_requires_grad_parameter_state():
    lin = torch.nn.Linear(3, 2).to(torch.bfloat16)
    out = unpack(pack(lin.state_dict()))
    fresh = torch.nn.Linear(3, 2).to(torch.bfloat16)
    fresh.load_state_dict(out)
    for k, v in lin.state_dict().items():
        assert torch.equal(_bits(fresh.state_dict()[k]), _bits(v)), k
