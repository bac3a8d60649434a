"""AUROC, confusion metrics, bootstrap intervals and threshold choice, each checked against
scikit-learn computed independently on known score/label arrays."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (
    confusion_matrix,
    f1_score,
    matthews_corrcoef,
    precision_score,
    recall_score,
    roc_auc_score,
    roc_curve,
)
from sklearn.utils import resample

from ml.calibration import choose_threshold, out_of_bag_operating, parse_method
from ml.metrics import (
    auroc,
    confusion_at,
    interval,
    proportion_interval,
    resample_counts,
    roc_points,
    wilson_interval,
)


def known_arrays(
    n: int = 300, seed: int = 1, prevalence: float = 0.3
) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < prevalence).astype(int)
    # rounded to 3 decimals so that many scores tie, in the reachable range [0.119, 0.881]
    s = np.round(np.clip(0.45 + 0.08 * y + rng.normal(0, 0.07, n), 0.119, 0.881), 3)
    return y, s


def test_auroc_matches_sklearn_with_ties() -> None:
    for seed in range(5):
        y, s = known_arrays(seed=seed)
        assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_weighted_auroc_equals_auroc_of_the_resampled_copy() -> None:
    y, s = known_arrays(n=120)
    picks = [resample(np.arange(120), random_state=i) for i in range(20)]
    weights = np.array([np.bincount(p, minlength=120) for p in picks], dtype=float)
    expected = [roc_auc_score(y[p], s[p]) for p in picks]
    np.testing.assert_allclose(auroc(y, s, weights=weights), expected, atol=1e-12)


def test_auroc_is_undefined_with_one_class() -> None:
    assert np.isnan(auroc(np.ones(5, int), np.linspace(0.2, 0.8, 5)))


def test_roc_points_match_sklearn_curve() -> None:
    y, s = known_arrays(n=80)
    fpr, tpr, thresholds = roc_curve(y, s, drop_intermediate=False)
    ours = roc_points(y, s)
    np.testing.assert_allclose(ours[0], fpr)
    np.testing.assert_allclose(ours[1], tpr)
    np.testing.assert_allclose(ours[2][1:], thresholds[1:])


@pytest.mark.parametrize("threshold", [0.40, 0.47, 0.5, 0.55, 0.9])
def test_confusion_metrics_match_sklearn(threshold: float) -> None:
    y, s = known_arrays()
    called = (s >= threshold).astype(int)
    m = {k: float(v) for k, v in confusion_at(y, s, threshold).metrics().items()}
    tn, fp, fn, _ = confusion_matrix(y, called, labels=[0, 1]).ravel()
    assert m["sensitivity"] == pytest.approx(recall_score(y, called))
    assert m["specificity"] == pytest.approx(tn / (tn + fp))
    assert m["npv"] == pytest.approx(tn / (tn + fn))
    assert m["mcc"] == pytest.approx(matthews_corrcoef(y, called), abs=1e-12)
    if called.any():
        assert m["ppv"] == pytest.approx(precision_score(y, called))
        assert m["f1"] == pytest.approx(f1_score(y, called))
    else:  # nothing called positive: PPV undefined, not 0
        assert np.isnan(m["ppv"])


def test_resamples_are_chexzeros_sklearn_resamples() -> None:
    (counts,) = list(resample_counts(50, 30, seed=0))
    for i in range(30):
        expected = np.bincount(resample(np.arange(50), replace=True, random_state=i), minlength=50)
        np.testing.assert_array_equal(counts[i], expected)
    (other,) = list(resample_counts(50, 30, seed=7))
    assert not any(np.array_equal(a, b) for a in other for b in counts)
    (again,) = list(resample_counts(50, 30, seed=7))
    np.testing.assert_array_equal(again, other)


def test_bootstrap_interval_matches_an_independent_chexzero_style_loop() -> None:
    y, s = known_arrays(n=150)
    resamples = 200
    boot = np.concatenate([auroc(y, s, weights=c) for c in resample_counts(150, resamples, seed=0)])
    ours = interval(auroc(y, s), boot)

    values = []
    for i in range(resamples):  # CheXzero eval.bootstrap + compute_cis, written out with sklearn
        pick = resample(np.arange(150), replace=True, random_state=i)
        values.append(roc_auc_score(y[pick], s[pick]))
    ordered = np.sort(values)
    assert ours.lower == pytest.approx(ordered[int(0.025 * resamples) - 1], abs=1e-12)
    assert ours.upper == pytest.approx(ordered[int(0.975 * resamples) - 1], abs=1e-12)
    assert ours.bootstrap_mean == pytest.approx(np.mean(values), abs=1e-12)
    assert ours.estimate == pytest.approx(roc_auc_score(y, s))
    assert ours.lower < ours.estimate < ours.upper


def test_single_class_resamples_are_dropped_and_counted() -> None:
    y = np.array([1, 0, 0, 0, 0, 0, 0, 0])
    s = np.array([0.7, 0.2, 0.3, 0.4, 0.5, 0.6, 0.35, 0.45])
    boot = np.concatenate([auroc(y, s, weights=c) for c in resample_counts(8, 100, seed=0)])
    without_positive = sum(
        0 not in resample(np.arange(8), replace=True, random_state=i) for i in range(100)
    )
    result = interval(auroc(y, s), boot)
    assert without_positive > 0
    assert result.defined_resamples == 100 - without_positive
    assert result.lower == pytest.approx(1.0) and result.upper == pytest.approx(1.0)


def brute_force_best(y: np.ndarray, s: np.ndarray, metric) -> float:
    """Every distinct score as a threshold, ascending; first maximum wins (CheXzero's argmax)."""
    candidates = np.unique(s)
    values = [metric(y, (s >= t).astype(int)) for t in candidates]
    return float(candidates[int(np.argmax(values))])


def youden(y: np.ndarray, called: np.ndarray) -> float:
    tn, fp, fn, tp = confusion_matrix(y, called, labels=[0, 1]).ravel()
    return tp / (tp + fn) + tn / (tn + fp) - 1


@pytest.mark.parametrize("seed", range(4))
def test_max_mcc_and_youden_thresholds_match_brute_force_with_sklearn(seed: int) -> None:
    y, s = known_arrays(seed=seed)
    assert choose_threshold(y, s, parse_method("mcc")) == brute_force_best(y, s, matthews_corrcoef)
    assert choose_threshold(y, s, parse_method("youden")) == brute_force_best(y, s, youden)


def test_target_sensitivity_and_specificity_thresholds() -> None:
    y, s = known_arrays()
    t = choose_threshold(y, s, parse_method("sensitivity:0.9"))
    assert recall_score(y, s >= t) >= 0.9
    higher = np.unique(s)[np.unique(s) > t]
    assert recall_score(y, s >= higher[0]) < 0.9  # the highest threshold that still reaches 0.9

    t = choose_threshold(y, s, parse_method("specificity:0.8"))
    tn, fp, _, _ = confusion_matrix(y, s >= t).ravel()
    assert tn / (tn + fp) >= 0.8
    lower = np.unique(s)[np.unique(s) < t]
    tn, fp, _, _ = confusion_matrix(y, s >= lower[-1]).ravel()
    assert tn / (tn + fp) < 0.8


def test_specificity_one_is_reachable_above_the_highest_score() -> None:
    y = np.array([0, 1, 0, 1, 0])
    s = np.array([0.3, 0.5, 0.4, 0.6, 0.7])  # the highest score is a negative
    t = choose_threshold(y, s, parse_method("specificity:1"))
    assert t > 0.7 and not (s >= t).any()


def test_ties_go_to_the_lowest_threshold() -> None:
    # 0.4 (sens 1, spec 0.5) and 0.8 (sens 0.5, spec 1) tie on J = 0.5 and on MCC = 1/sqrt(3)
    y = np.array([0, 1, 0, 1])
    s = np.array([0.2, 0.4, 0.6, 0.8])
    assert youden(y, s >= 0.4) == pytest.approx(youden(y, s >= 0.8))
    assert matthews_corrcoef(y, s >= 0.4) == pytest.approx(matthews_corrcoef(y, s >= 0.8))
    assert choose_threshold(y, s, parse_method("youden")) == 0.4
    assert choose_threshold(y, s, parse_method("mcc")) == 0.4
    assert choose_threshold(y[::-1], s[::-1], parse_method("mcc")) == 0.4  # order does not matter


@pytest.mark.parametrize("text", ["f1", "sensitivity", "sensitivity:1.5", "mcc:0.3"])
def test_bad_method_names_are_rejected(text: str) -> None:
    with pytest.raises(ValueError):
        parse_method(text)


def test_wilson_interval_matches_worked_values() -> None:
    # Worked by hand from the Wilson score formula with z = 1.95996.
    assert wilson_interval(45, 45) == pytest.approx((0.92135, 1.0), abs=1e-4)
    assert wilson_interval(0, 20) == pytest.approx((0.0, 0.16113), abs=1e-4)
    assert wilson_interval(10, 20) == pytest.approx((0.29930, 0.70070), abs=1e-4)


def test_a_perfect_sensitivity_does_not_get_a_zero_width_interval() -> None:
    labels = np.array([1] * 45 + [0] * 55)
    scores = np.where(labels == 1, 0.8, 0.2) + np.linspace(0, 0.01, 100)
    counts = confusion_at(labels, scores, 0.5)
    weights = np.vstack(list(resample_counts(100, 200, seed=0)))
    resampled = confusion_at(labels, scores, 0.5, weights=weights).metrics()["sensitivity"]
    collapsed = interval(1.0, resampled)
    assert collapsed.lower == collapsed.upper == 1.0  # what plain bootstrap would claim
    honest = proportion_interval("sensitivity", counts, resampled)
    assert honest.estimate == 1.0
    assert honest.lower == pytest.approx(0.92135, abs=1e-4) and honest.upper == 1.0


def test_out_of_bag_interval_covers_the_sensitivity_new_studies_show() -> None:
    rng = np.random.default_rng(7)

    def draw(n: int) -> tuple[np.ndarray, np.ndarray]:
        y = rng.random(n) < 0.3
        return y, np.where(y, rng.normal(0.60, 0.05, n), rng.normal(0.47, 0.05, n))

    y, s = draw(150)
    method = parse_method("mcc")
    chosen = choose_threshold(y, s, method)
    honest = out_of_bag_operating(y, s, method, resamples=300)["sensitivity"]
    y_new, s_new = draw(20000)
    on_new_studies = recall_score(y_new, s_new >= chosen)
    assert honest.lower <= on_new_studies <= honest.upper
    # the fixed-threshold bootstrap on the calibration images is the optimistic one
    weights = np.vstack(list(resample_counts(150, 300, seed=0)))
    fixed = confusion_at(y, s, chosen, weights=weights).metrics()["sensitivity"]
    assert honest.lower < interval(honest.estimate, fixed).lower
