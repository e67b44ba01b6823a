"""The primary tests of the analysis plan on hand-computed and textbook answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest
from scipy.stats import t as student_t

from medmoelora_eval.endpoints import MIN_DISCORDANT, accuracy_test, pooled, seed_level_standard_error
from medmoelora_eval.inference import tango_lower_bound, tango_p
from medmoelora_eval.samples import Stratum


def stratum(correct, name: str = "task") -> Stratum:
    values = np.atleast_2d(np.asarray(correct, dtype=float))
    return Stratum(name, 100.0 * values, np.ones_like(values), tuple((name, i) for i in range(values.shape[1])))


def paired(only_a: int, only_b: int, both: int, neither: int) -> tuple[Stratum, Stratum]:
    a = [1] * only_a + [0] * only_b + [1] * both + [0] * neither
    b = [0] * only_a + [1] * only_b + [1] * both + [0] * neither
    return stratum(a), stratum(b)


def test_one_seed_superiority_is_the_exact_mcnemar_test():
    a, b = paired(only_a=9, only_b=2, both=20, neither=29)
    test = accuracy_test(a, b)
    assert test.difference == pytest.approx(100 * 7 / 60)
    assert test.p_support == pytest.approx(binomtest(9, 11, 0.5, alternative="greater").pvalue)
    assert test.p_contradict == pytest.approx(binomtest(2, 11, 0.5, alternative="greater").pvalue)
    assert test.n_discordant == 11 and test.method == "exact McNemar"
    assert test.lo == pytest.approx(100 * tango_lower_bound(9, 2, 60))
    assert test.hi == pytest.approx(-100 * tango_lower_bound(2, 9, 60))
    assert test.lo < test.difference < test.hi
    assert test.mde > 0 and math.isnan(test.power_at_margin)


def test_one_seed_non_inferiority_is_tangos_test_at_the_margin():
    a, b = paired(only_a=1, only_b=2, both=40, neither=47)
    test = accuracy_test(a, b, margin=5.0)
    assert test.p_support == pytest.approx(tango_p(1, 2, 90, -0.05))
    assert test.p_contradict == pytest.approx(tango_p(2, 1, 90, 0.05))
    assert test.method == "Tango score test"
    assert math.isnan(test.power_at_margin)  # 3 documents differ: fewer than MIN_DISCORDANT, no power figure


def test_few_discordant_documents_give_no_detectable_effect():
    a, b = paired(only_a=MIN_DISCORDANT - 3, only_b=2, both=10, neither=10)
    assert math.isnan(accuracy_test(a, b).mde)
    a, b = paired(only_a=MIN_DISCORDANT - 2, only_b=2, both=10, neither=10)
    assert accuracy_test(a, b).mde > 0


def test_no_document_differing_is_not_tested():
    a, b = paired(only_a=0, only_b=0, both=30, neither=30)
    for margin in (None, 1.0):
        test = accuracy_test(a, b, margin)
        assert math.isnan(test.p_support) and math.isnan(test.lo)
        assert test.why_untested.startswith("no document differs")


def test_seed_level_standard_error_adds_seed_and_document_terms():
    x = np.array([[1, 0, 1, 1], [0, 0, 1, 1], [1, 1, 1, 0]], dtype=float)
    y = np.array([[0, 0, 1, 0], [1, 0, 0, 0], [0, 0, 1, 1]], dtype=float)
    se, df = seed_level_standard_error(x, y)
    terms = [x.mean(1).var(ddof=1) / 3, y.mean(1).var(ddof=1) / 3, (x.mean(0) - y.mean(0)).var(ddof=1) / 4]
    assert se == pytest.approx(math.sqrt(sum(terms)))
    assert df == pytest.approx(sum(terms) ** 2 / (terms[0] ** 2 / 2 + terms[1] ** 2 / 2 + terms[2] ** 2 / 3))
    test = accuracy_test(stratum(x), stratum(y))
    assert test.method.startswith("random-effects t") and test.n_seeds == "3/3"
    difference = x.mean() - y.mean()
    assert test.p_support == pytest.approx(student_t.sf(difference / se, df))
    assert test.hi - test.lo == pytest.approx(200 * student_t.ppf(0.975, df) * se)


def test_one_seed_against_several_is_not_tested():
    test = accuracy_test(stratum([[1, 0, 1], [1, 1, 0]]), stratum([0, 0, 1]))
    assert "train both with the same number of seeds" in test.why_untested


def test_pooled_weighs_every_document_alike():
    first, second = stratum([1, 1], "first"), stratum([0, 0, 0, 1, 1, 1], "second")
    joined = pooled([first, second])
    assert joined.numerator.shape == (1, 8) and joined.numerator.sum() / joined.denominator.sum() == 62.5
    assert joined.documents[0] == ("first", "first", 0)


def test_runs_on_other_documents_or_values_are_refused():
    with pytest.raises(ValueError, match="different"):
        accuracy_test(stratum([1, 0]), stratum([1, 0, 1]))
    with pytest.raises(ValueError, match="0 or 100"):
        accuracy_test(Stratum("task", np.array([[50.0]]), np.ones((1, 1)), (("task", 0),)), stratum([1]))
