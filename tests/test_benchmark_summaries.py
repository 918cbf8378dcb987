"""The benchmark scripts' summaries: what a closing note quotes must not hide failed seeds."""

from learning import median_to_threshold  # benchmarks/learning.py (benchmarks/ is on pytest's path)


def test_a_seed_that_never_reached_the_threshold_counts_as_never():
    assert median_to_threshold([3000, 6000, 9000]) == 6000
    assert median_to_threshold([3000, None, 6000]) == 6000  # the median seed reached it
    assert median_to_threshold([None, 6000, None]) is None  # one seed of three: no median, not 6000
    assert median_to_threshold([1000, 5000, None, None]) is None  # the median lies between 5000 and never
    assert median_to_threshold([1000, 5000, 7000, None]) == 6000
