"""The stage-cost model and its fit, against hand-computed values."""

import math

import pytest

from asyncvla.runtime.costs import CostModel, fit_cost, fit_error


def test_cost_by_hand():
    c = CostModel(a_s=1.0, b_s=0.5, floor_s=0.0)
    assert c(4) == 3.0  # 1 + 0.5 x 4
    assert c(0.5) == 1.25  # a fractional per-GPU batch
    assert CostModel()(10) == 0.0


def test_empty_and_negative_batches_cost_nothing_floor_included():
    c = CostModel(a_s=1.0, b_s=0.5, floor_s=2.0)
    assert c(0) == 0.0 and c(-3) == 0.0
    assert c(1e-9) == 2.0  # any non-empty batch pays at least the floor


def test_the_floor_dominates_small_batches():
    c = CostModel(a_s=0.0, b_s=0.1, floor_s=2.0)
    assert c(4) == 2.0  # 0.4 < 2
    assert c(20) == 2.0  # 2.0 = 2.0
    assert c(30) == pytest.approx(3.0)  # past the floor: a + b x


def test_scaled_and_dict_round_trip():
    c = CostModel(a_s=0.2, b_s=0.01, floor_s=0.05)
    s = c.scaled(0.5)
    assert s.to_dict() == pytest.approx({"a_s": 0.1, "b_s": 0.005, "floor_s": 0.025})
    assert s(10) == pytest.approx(0.5 * c(10))
    assert CostModel.from_dict(c.to_dict()) == c
    assert CostModel.from_dict({"b_s": 0.01}) == CostModel(b_s=0.01)  # missing keys are 0
    assert CostModel.from_dict(None) == CostModel()
    assert CostModel.from_dict(c) is c


def test_unknown_keys_and_bad_costs_are_refused_in_one_line():
    with pytest.raises(
        ValueError, match=r"^infer: unknown keys \['c_s', 'scale'\]; allowed: a_s, b_s, floor_s$"
    ):
        CostModel.from_dict({"a_s": 1.0, "c_s": 2.0, "scale": 1}, "infer")
    for bad in (-1.0, math.inf, math.nan):
        with pytest.raises(ValueError, match=r"^train\.b_s: ") as e:
            CostModel.from_dict({"b_s": bad}, "train")
        assert "\n" not in str(e.value)
    with pytest.raises(ValueError):
        CostModel(a_s=-0.1)


def test_fit_recovers_exact_linear_points():
    # c(x) = 0.2 + 0.01 x at x = 8, 16, 32; x = 1, 2 (below min_x) cost 0.21 and 0.23: the floor
    pts = {8: 0.28, 16: 0.36, 32: 0.52, 1: 0.21, 2: 0.23}
    fit = fit_cost(pts, min_x=8)
    assert fit.a_s == pytest.approx(0.2) and fit.b_s == pytest.approx(0.01)
    assert fit.floor_s == pytest.approx(0.22)
    assert fit_error({k: v for k, v in pts.items() if k >= 8}, fit) == pytest.approx(0.0, abs=1e-12)
    # at x = 1 the model says max(0.22, 0.21) = 0.22 against 0.21 measured
    assert fit_error({1: 0.21}, fit) == pytest.approx(0.22 / 0.21 - 1)


def test_fit_clips_a_falling_cost_and_reads_json_keys():
    # a decreasing cost cannot have b < 0: b = 0 and a = the mean
    fit = fit_cost({"8": 0.3, "16": 0.1}, min_x=8)
    assert fit.to_dict() == pytest.approx({"a_s": 0.2, "b_s": 0.0, "floor_s": 0.0})
    # no point reaches min_x: all points are fitted, no floor
    fit = fit_cost({1: 0.1, 3: 0.3}, min_x=8)
    assert fit.a_s == pytest.approx(0.0, abs=1e-12) and fit.b_s == pytest.approx(0.1) and fit.floor_s == 0.0
    with pytest.raises(ValueError):
        fit_cost({})
