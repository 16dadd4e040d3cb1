"""The run report's curves: the moving average."""

from tokrl.runs.plots import moving_average


def test_moving_average_is_centred_and_skips_nan():
    assert moving_average([1.0, 2.0, 3.0, 4.0, 5.0], 3) == [1.5, 2.0, 3.0, 4.0, 4.5]
    assert moving_average([1.0, float("nan"), 3.0], 3) == [1.0, 2.0, 3.0]
    assert moving_average([2.0, 4.0], 1) == [2.0, 4.0]
