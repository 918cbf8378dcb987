"""IQM, bootstrap intervals, probability of improvement: by hand, and against rliable on a fixture."""

import numpy as np
import pytest

from agent import stats

# rliable 1.2 (library.get_interval_estimates, metrics.aggregate_iqm / aggregate_mean /
# probability_of_improvement; 50,000 and 20,000 bootstrap resamples) on these scores:
A = np.array([[400.1, 417.9, 383.6], [346.6, 372.7, 340.5], [403.6, 480.4, 370.5], [362.8, 429.4, 421.4],
              [406.3, 344.2, 398.2]])  # fmt: skip
B = np.array([[405.6, 480.4, 313.4], [197.9, 246.8, 202.7], [331.2, 248.6, 371.7], [362.5, 335.0, 148.7],
              [306.9, 346.1, 359.1]])  # fmt: skip
RLIABLE = {
    "iqm": {"A": (390.6333333333334, (369.18888888888887, 408.06666666666666)),
            "B": (316.6222222222222, (264.91055555555556, 355.1))},
    "mean": {"A": (391.87999999999994, (374.4866666666667, 409.3333333333333)),
             "B": (310.44, (269.3131666666667, 351.4743333333334))},
    "poi": (0.82, (0.6333333333333334, 0.96)),
}  # fmt: skip


def test_iqm_and_mean_by_hand():
    scores = np.array([1.0, 2, 3, 4, 5, 6, 7, 100])  # a quarter (2) cut from each end: mean of 3..6
    assert stats.iqm(scores) == 4.5 and stats.mean(scores) == pytest.approx(16.0)
    assert stats.iqm(np.arange(15.0)) == pytest.approx(np.arange(3.0, 12.0).mean())  # 15 scores: 3 cut each end


def test_point_estimates_equal_rliable():
    for name, scores in (("A", A), ("B", B)):
        assert stats.iqm(scores) == pytest.approx(RLIABLE["iqm"][name][0], abs=1e-9)
        assert stats.mean(scores) == pytest.approx(RLIABLE["mean"][name][0], abs=1e-9)
    assert stats.probability_of_improvement(A, B) == pytest.approx(RLIABLE["poi"][0], abs=1e-9)


def test_stratified_bootstrap_intervals_match_rliable_within_resampling_noise():
    for aggregate in ("iqm", "mean"):
        for name, scores in (("A", A), ("B", B)):
            low, high = stats.bootstrap_ci(scores, getattr(stats, aggregate), reps=20_000)
            want_low, want_high = RLIABLE[aggregate][name][1]
            assert low == pytest.approx(want_low, rel=0.01) and high == pytest.approx(want_high, rel=0.01)
    low, high = stats.probability_of_improvement_ci(A, B, reps=5_000)
    assert low == pytest.approx(RLIABLE["poi"][1][0], abs=0.02) and high == pytest.approx(
        RLIABLE["poi"][1][1], abs=0.02
    )


def test_bootstrap_resamples_within_each_task_only():
    scores = np.array([[0.0, 100.0], [0.0, 100.0], [0.0, 100.0]])  # task 0 always 0, task 1 always 100
    assert stats.bootstrap_ci(scores, stats.mean, reps=200) == (50.0, 50.0)  # every resample keeps both tasks


def test_probability_of_improvement_by_hand_with_a_tie():
    x, y = np.array([3.0, 1.0]), np.array([2.0, 1.0])
    # pairs (3,2) (3,1) (1,2) (1,1): 1 + 1 + 0 + 0.5 = 2.5 of 4
    assert stats.probability_of_improvement(x, y) == 0.625
    assert stats.probability_of_improvement(y, x) == 0.375


def test_area_under_curve_and_steps_to_threshold():
    steps, values = np.array([0, 1000, 2000, 4000]), np.array([0.0, 100.0, 100.0, 500.0])
    # trapezoids: 50*1000 + 100*1000 + 300*2000 = 750,000 over 4,000 steps
    assert stats.area_under_curve(steps, values) == pytest.approx(187.5)
    assert stats.first_step_reaching(steps, values, 100) == 1000
    assert stats.first_step_reaching(steps, values, 501) is None


def test_aggregate_curves_interpolate_runs_onto_common_steps():
    a = (np.array([0, 10, 20]), np.array([0.0, 10.0, 20.0]))
    b = (np.array([0, 20]), np.array([2.0, 22.0]))
    steps, center, low, high = stats.aggregate_curves([a, b], stats.mean, reps=100)
    assert steps.tolist() == [0, 10, 20] and center.tolist() == [1.0, 11.0, 21.0]
    assert (low <= center).all() and (center <= high).all()
