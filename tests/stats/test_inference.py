"""Paired-accuracy tests that hold their level when runs rarely disagree, and Holm's adjustment."""

from __future__ import annotations

import math

import numpy as np
import pytest

from medmoelora_eval.inference import holm, mcnemar_exact_p, tango_lower_bound, tango_p, tango_statistic

ALPHA = 0.025  # one-sided


def _rejections(documents: int, only_a: float, only_b: float, margin: float, datasets: int = 2000) -> float:
    """Share of seeded datasets whose non-inferiority test rejects H0 delta <= -margin."""
    draws = np.random.default_rng(7).multinomial(documents, [only_a, only_b, 1 - only_a - only_b], size=datasets)
    return float(np.mean([tango_p(int(b), int(c), documents, -margin) < ALPHA for b, c, _ in draws]))


def test_non_inferiority_holds_its_level_at_the_margin_with_sparse_disagreement():
    # truly 2 points worse, 4% of documents differ, margin 2 points: the boundary of H0
    assert _rejections(90, 0.01, 0.03, 0.02) <= ALPHA
    assert _rejections(300, 0.01, 0.03, 0.02) <= ALPHA


def test_non_inferiority_has_power_when_the_runs_are_truly_alike_on_many_documents():
    assert _rejections(2000, 0.02, 0.02, 0.02) > 0.8


def test_identical_runs_keep_a_variance_at_the_margin():
    # no discordant document among 90: "no worse by 1 point" is not shown (a bootstrap bound would be 0)
    assert tango_p(0, 0, 90, -0.01) > 0.1
    assert tango_lower_bound(0, 0, 90) < -0.03


def test_the_lower_bound_inverts_the_test():
    bound = tango_lower_bound(5, 1, 90)
    assert bound < 4 / 90
    assert tango_p(5, 1, 90, bound) == pytest.approx(ALPHA, abs=1e-6)
    assert tango_statistic(3, 3, 90, 0.0) == 0.0


def test_mcnemar_is_the_exact_binomial_tail():
    assert mcnemar_exact_p(5, 0) == pytest.approx(1 / 32)
    assert mcnemar_exact_p(0, 0) == 1.0
    assert mcnemar_exact_p(3, 3) == pytest.approx(sum(math.comb(6, k) for k in range(3, 7)) / 64)


def test_bad_tables_are_refused():
    with pytest.raises(ValueError, match="paired table"):
        tango_p(50, 50, 90, 0.0)


def test_holm_steps_down_and_skips_untested_entries():
    adjusted = holm([0.01, 0.04, float("nan"), 0.03])
    assert adjusted[[0, 1, 3]] == pytest.approx([0.03, 0.06, 0.06])
    assert math.isnan(adjusted[2])
    assert holm([0.5, 0.9]).tolist() == [1.0, 1.0]  # 2 x 0.5, capped; then monotone
