"""Evaluation intervals against values computed by hand."""

import numpy as np
import pytest

from asyncvla.stats import grouped_bootstrap, paired_bootstrap, percentile_interval, wilson_interval


def test_wilson_matches_the_closed_form():
    # k = 8, n = 10: centre = (0.8 + 0.19208) / 1.38416 = 0.71677,
    # half = 1.96 / 1.38416 * sqrt(0.016 + 0.0096040) = 0.22655
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.49016, abs=1e-4)
    assert hi == pytest.approx(0.94332, abs=1e-4)
    lo0, hi0 = wilson_interval(0, 20)
    assert lo0 == 0.0 and hi0 == pytest.approx(3.8416 / 23.8416, abs=1e-4)


def test_paired_bootstrap_of_a_constant_difference_has_zero_width():
    a = np.array([0.0, 1.0, 0.0, 1.0, 1.0])
    r = paired_bootstrap(a, a + 0.25)
    assert r == {
        "diff": pytest.approx(0.25),
        "ci95_low": pytest.approx(0.25),
        "ci95_high": pytest.approx(0.25),
    }


def test_paired_bootstrap_resamples_episodes_not_cells():
    # d = b - a = [1, 1, 0, 0]; a bootstrap mean is k / 4 with k ~ Binomial(4, 1/2), and
    # P(k = 0) = P(k = 4) = 1/16 > 2.5%, so the 95% interval is exactly [0, 1].
    r = paired_bootstrap([0, 0, 1, 1], [1, 1, 1, 1])
    assert r["diff"] == 0.5
    assert (r["ci95_low"], r["ci95_high"]) == (0.0, 1.0)
    # The same marginal rates with perfectly correlated episodes: no uncertainty in the gap.
    r = paired_bootstrap([0, 0, 1, 1], [0, 0, 1, 1])
    assert (r["diff"], r["ci95_low"], r["ci95_high"]) == (0.0, 0.0, 0.0)


def test_grouped_bootstrap_worst_group():
    value, lo, hi = grouped_bootstrap(
        {"red": np.ones(4), "blue": np.array([0, 1, 0, 1])}, lambda m: min(m.values())
    )
    # The worst group is blue (0.5); its resampled mean is Binomial(4, 1/2) / 4, red stays 1.
    assert (value, lo, hi) == (0.5, 0.0, 1.0)
    gap = grouped_bootstrap({"a": np.ones(3), "b": np.zeros(3)}, lambda m: max(m.values()) - min(m.values()))
    assert gap == (1.0, 1.0, 1.0)


def test_percentile_interval_and_bad_input():
    assert percentile_interval(np.arange(101.0)) == pytest.approx((2.5, 97.5))
    with pytest.raises(ValueError, match="one length"):
        paired_bootstrap([1, 0], [1])
    with pytest.raises(ValueError, match="each with episodes"):
        grouped_bootstrap({"a": np.array([])}, lambda m: 0.0)
    with pytest.raises(ValueError, match="successes"):
        wilson_interval(3, 2)
