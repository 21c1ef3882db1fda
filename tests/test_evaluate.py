import csv
import json
import math

import numpy as np
import pytest
from conftest import write_image

from retrieval import GeolocError
from retrieval.config import Config
from retrieval.files import atomic_write_json
from retrieval.geo import EARTH_RADIUS_M, haversine_m
from retrieval.metrics import Predictions, cell_accuracy, study_distance_m
from retrieval.reports import evaluate
from retrieval.reports.evaluate import evaluate_run
from retrieval.run import prepare_run_dir

METRES_PER_DEG_LAT = EARTH_RADIUS_M * math.pi / 180  # along a meridian


def test_cell_accuracy():
    assert cell_accuracy([0, 1, 2, 2], [0, 1, 1, 2]) == 0.75
    with pytest.raises(ValueError):
        cell_accuracy([0, 1], [0])


def test_study_distance_is_a_per_class_mean_over_mistakes():
    # Centroids of cells 0, 1, 2 on the Greenwich meridian, 0.001 degrees of latitude apart.
    lat, lon = np.array([0.0, 0.001, 0.002]), np.zeros(3)
    step = 0.001 * METRES_PER_DEG_LAT
    true = [0, 0, 0, 1, 1, 2]
    pred = [0, 1, 2, 1, 0, 2]
    # Cell 0: mistakes at 1 and 2 steps -> 1.5 steps; cell 1: one mistake at 1 step; cell 2: none.
    assert study_distance_m(true, pred, lat, lon) == pytest.approx((1.5 * step + step) / 2, rel=1e-9)
    assert math.isnan(study_distance_m([0, 1], [0, 1], lat, lon))


@pytest.fixture
def fixed_run(tmp_path, monkeypatch):
    """A run of a registered kind whose predictor puts test photo i exactly OFFSETS[i] metres north."""
    data = tmp_path / "data"
    rows = {"train": [], "test": []}
    for split, n in (("train", 6), ("test", 5)):
        for i in range(n):
            write_image(data / split / f"{i}.png")
            rows[split].append(f"{split}/{i}.png,{51.51 + 0.001 * i:.7f},{-0.1 + 0.001 * i:.7f}")
        (data / f"{split}.csv").write_text("path,lat,lon\n" + "\n".join(rows[split]) + "\n")
    offsets = np.array([10.0, 20.0, 30.0, 40.0, 200.0])

    def predict(run_dir, cfg, test):
        assert [p.name for p in test.paths] == [f"{i}.png" for i in range(5)]
        return Predictions(lat=test.lat + offsets / METRES_PER_DEG_LAT, lon=test.lon.copy(),
                           metrics={"cell_acc": 0.4}, columns={"pred_cell": np.arange(5)},
                           arrays={"probabilities": np.eye(5, dtype=np.float32)})

    real = evaluate.predictor
    monkeypatch.setattr(evaluate, "predictor", lambda kind: predict if kind == "fixed" else real(kind))
    run = tmp_path / "run"
    cfg = Config()
    cfg.data.train = str(data)
    cfg.data.val_fraction = 0.0
    cfg.model.weights, cfg.model.arch, cfg.data.image_size, cfg.data.resize = "none", "resnet18", 32, 32
    prepare_run_dir(run, cfg)
    atomic_write_json(run / "run.json", {"kind": "fixed", "train": {"train_seconds": 12.0, "train_images_per_s": 3.0}})
    return run, data, offsets


def test_evaluate_writes_metrics_of_a_known_prediction_set(fixed_run):
    run, data, offsets = fixed_run
    metrics = evaluate_run(run)
    on_disk = json.loads((run / "metrics.json").read_text())
    assert on_disk == metrics
    assert metrics["kind"] == "fixed" and metrics["n"] == 5 and metrics["cell_acc"] == 0.4
    assert metrics["median_error_m"] == pytest.approx(30.0, abs=1e-3)
    assert metrics["mean_error_m"] == pytest.approx(60.0, abs=1e-3)
    assert metrics["acc@25m"] == 0.4 and metrics["acc@100m"] == 0.8 and metrics["acc@250m"] == 1.0
    assert metrics["train_seconds"] == 12.0 and metrics["query_ms"] >= 0
    # the floors, on the same test photos: test photo i stands where training photo i does (i < 5)
    floors = metrics["floors"]
    assert floors["oracle"]["median_error_m"] == pytest.approx(0.0, abs=0.01)
    assert floors["oracle"]["recall@1_25m"] == 1.0
    step = haversine_m(51.51, -0.1, 51.511, -0.099)  # one step along the diagonal the photos stand on
    # the mean training position is 2.5 steps along: errors 2.5, 1.5, 0.5, 0.5, 1.5 steps
    assert floors["constant_guess"]["median_error_m"] == pytest.approx(1.5 * step, rel=1e-3)
    assert floors["constant_guess"]["recall@1_25m"] == 0.0
    for knn in ("thumbnail_knn", "untrained_knn"):
        assert floors[knn]["recall@10_25m"] == 1.0  # the 10 nearest of 6 photos hold each test photo's twin
    assert floors["untrained_knn"]["arch"] == "resnet18" and metrics["backbone"] == "resnet18 32px"

    with open(run / "predictions.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["path", "true_lat", "true_lon", "pred_lat", "pred_lon", "error_m", "pred_cell"]
    assert [float(r["error_m"]) for r in rows] == pytest.approx(offsets, abs=0.01)
    assert [r["pred_cell"] for r in rows] == ["0", "1", "2", "3", "4"]
    npz = np.load(run / "predictions.npz")
    assert np.array_equal(npz["probabilities"], np.eye(5)) and npz["paths"][0].endswith("0.png")


def test_evaluate_errors(fixed_run, tmp_path):
    run, data, _ = fixed_run
    with pytest.raises(GeolocError, match="no run.json"):
        evaluate_run(tmp_path / "data")
    atomic_write_json(run / "run.json", {"kind": "mystery"})
    with pytest.raises(GeolocError, match="run kind 'mystery' has no predictor"):
        evaluate_run(run)
    (data / "test.csv").unlink()
    atomic_write_json(run / "run.json", {"kind": "fixed"})
    with pytest.raises(GeolocError, match="no test photos"):
        evaluate_run(run, data)
