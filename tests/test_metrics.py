import numpy as np
import pytest

from retrieval.metrics import error_metrics, errors_m, recall_at_n


def test_error_metrics_hand_computed():
    m = error_metrics([10.0, 30.0, 90.0, 300.0, 2000.0, 6000.0])
    assert m["n"] == 6
    assert m["mean_error_m"] == pytest.approx(8430 / 6)
    assert m["median_error_m"] == pytest.approx((90 + 300) / 2)
    assert m["acc@25m"] == pytest.approx(1 / 6)
    assert m["acc@100m"] == pytest.approx(3 / 6)
    assert m["acc@250m"] == pytest.approx(3 / 6)
    assert m["acc@1000m"] == pytest.approx(4 / 6)
    assert m["acc@5000m"] == pytest.approx(5 / 6)


def test_threshold_is_inclusive():
    assert error_metrics([25.0])["acc@25m"] == 1.0


def test_errors_from_coordinates():
    e = errors_m([0.0, 0.0], [0.0, 0.0], [0.0, 0.001], [0.0, 0.0])
    assert e[0] == 0 and e[1] == pytest.approx(111.195, rel=1e-4)


def test_recall_at_n_hand_computed():
    d = np.array([
        [5.0, 100.0, 100.0, 100.0, 100.0, 100.0],   # hit at rank 1
        [100.0, 100.0, 20.0, 100.0, 100.0, 100.0],  # hit at rank 3
        [100.0, 100.0, 100.0, 100.0, 100.0, 24.0],  # hit at rank 6
        [100.0] * 6,                                 # never
    ])
    r = recall_at_n(d, ns=(1, 5, 10))
    assert r == {"recall@1_25m": 0.25, "recall@5_25m": 0.5, "recall@10_25m": 0.75}


def test_empty_inputs_raise():
    with pytest.raises(ValueError):
        error_metrics([])
    with pytest.raises(ValueError):
        recall_at_n(np.zeros((0, 3)))


def test_paired_bootstrap_of_a_difference():
    from retrieval.metrics import paired_bootstrap

    a, b = np.array([1, 1, 0, 0] * 50), np.array([0, 1, 0, 0] * 50)  # a wins on a quarter of the views
    mean, lo, hi = paired_bootstrap(a, b, n=2000)
    assert mean == 0.25 and lo < 0.25 < hi
    # the difference is a mean of 200 Bernoulli(0.25) draws: standard error sqrt(0.25 * 0.75 / 200) = 0.031
    assert hi - lo == pytest.approx(2 * 1.96 * np.sqrt(0.25 * 0.75 / 200), rel=0.15)
    assert paired_bootstrap(a, a) == (0.0, 0.0, 0.0)  # identical arms: no doubt at all


def test_paired_bootstrap_over_seeds_holds_the_spread_between_runs():
    from retrieval.metrics import paired_bootstrap

    # three seeds: a wins by 0.5 on one, loses by 0.25 on two (each difference exact on every view)
    v = 400
    a = np.stack([np.ones(v), np.r_[np.ones(v // 4), np.zeros(3 * v // 4)], np.zeros(v)])
    b = np.stack([np.r_[np.ones(v // 2), np.zeros(v // 2)], np.r_[np.ones(v // 2), np.zeros(v // 2)],
                  np.r_[np.ones(v // 4), np.zeros(3 * v // 4)]])
    mean, lo, hi = paired_bootstrap(a, b, n=2000)
    assert mean == pytest.approx((0.5 - 0.25 - 0.25) / 3)
    assert lo < -0.2 and hi > 0.4  # seeds resampled: from all three losing to all three winning, nearly
    _, lo1, hi1 = paired_bootstrap(a.mean(0), b.mean(0), n=2000)  # views only: a narrow interval
    assert hi1 - lo1 < 0.2
    # one seed: the same as resampling its views
    assert paired_bootstrap(a[:1], b[:1], n=500, seed=3)[1:] == pytest.approx(
        paired_bootstrap(a[0], b[0], n=500, seed=3)[1:], abs=0.03)
