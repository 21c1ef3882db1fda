"""Both baselines trained and evaluated from the CLI on a tiny generated city (ResNet-50 at 32 px)."""
import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from baselines.cell_answer import DECISION_RADII_CELLS, mass_choice
from baselines.regression import scale, unscale
from retrieval import GeolocError
from retrieval.cli import app
from retrieval.config import load_config
from retrieval.data.grids import Grid
from retrieval.data.splits import load_data
from retrieval.geo import haversine_m
from retrieval.run import load_run_config

FAST = ["--set", "model.weights=none", "--set", "data.image_size=32", "--set", "data.resize=36",
        "--set", "train.batch_size=8", "--set", "train.max_steps_per_epoch=2", "--set", "train.precision=fp32",
        "--set", "data.num_workers=0", "--set", "model.lock_factor=0.7"]


@pytest.fixture(scope="module")
def city(tmp_path_factory):
    """A 900 x 900 m toy city: each photo's colours encode where it was taken."""
    root = tmp_path_factory.mktemp("city")
    rng = np.random.default_rng(0)
    for split, n in (("train", 72), ("test", 16)):
        rows = ["path,lat,lon"]
        for i in range(n):
            u, v = rng.uniform(0, 1, 2)
            im = np.zeros((40, 48, 3), np.uint8)
            im[..., 0], im[..., 1] = int(255 * u), int(255 * v)
            im[:20, :, 2] = 255 * (u > 0.5)
            im = np.clip(im + rng.normal(0, 6, im.shape), 0, 255).astype(np.uint8)
            (root / split).mkdir(exist_ok=True)
            Image.fromarray(im).save(root / split / f"{i:03d}.png")
            rows.append(f"{split}/{i:03d}.png,{51.510 + 0.008 * u:.7f},{-0.110 + 0.013 * v:.7f}")
        (root / f"{split}.csv").write_text("\n".join(rows) + "\n")
    return root


def run_cli(*args):
    result = CliRunner().invoke(app, [str(a) for a in args])
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    assert result.exit_code == 0, result.output
    return result.output


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def manifest(path):
    rows = read_csv(path)
    return np.array([float(r["lat"]) for r in rows]), np.array([float(r["lon"]) for r in rows])


def test_cells_voronoi_train_and_evaluate(city, tmp_path):
    run = tmp_path / "cells"
    out = run_cli("train", "cells", "--data", city, "--grid", "voronoi", "--out", run, *FAST,
                  "--set", "cells.cell_size_m=250", "--set", "cells.border_spacing_m=60",
                  "--set", "train.epochs=1")
    assert "voronoi cells" in out and "done: 1 epoch(s)" in out
    for name in ("config.yaml", "git.json", "grid.geojson", "log.csv", "last.pt", "best.pt", "run.json"):
        assert (run / name).is_file(), name
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "cells" and info["grid"] == "voronoi" and info["n_cells"] >= 4

    grid, props = Grid.load(run / "grid.geojson")
    train = load_data(load_run_config(run))["train"]  # train.csv less the spatially carved val set
    cells = grid.assign(train.lat, train.lon)
    assert [p["n_train"] for p in props] == list(np.bincount(cells, minlength=len(grid)))
    for c, p in enumerate(props):
        if p["n_train"]:
            assert p["photo_lat"] == pytest.approx(train.lat[cells == c].mean(), abs=1e-6)
            assert p["photo_lon"] == pytest.approx(train.lon[cells == c].mean(), abs=1e-6)

    out = run_cli("evaluate", "--run", run)
    assert "cell accuracy" in out
    metrics = json.loads((run / "metrics.json").read_text())
    rows = read_csv(run / "predictions.csv")
    assert metrics["n"] == len(rows) == 16
    true_lat, true_lon = (np.array([float(r[k]) for r in rows]) for k in ("true_lat", "true_lon"))
    pred_lat, pred_lon = (np.array([float(r[k]) for r in rows]) for k in ("pred_lat", "pred_lon"))
    err = haversine_m(true_lat, true_lon, pred_lat, pred_lon)
    assert np.allclose(err, [float(r["error_m"]) for r in rows], atol=0.02)
    assert metrics["median_error_m"] == pytest.approx(np.median(err), abs=0.02)
    pred_cell = np.array([int(r["pred_cell"]) for r in rows])
    assert metrics["cell_acc"] == pytest.approx(np.mean(pred_cell == grid.assign(true_lat, true_lon)))
    # Each prediction is the centroid of its cell's training photos (the study's choice).
    for r, c in zip(rows, pred_cell):
        assert float(r["pred_lat"]) == pytest.approx(props[c]["photo_lat"], abs=1e-6)
    assert {"study_distance_m", "polygon_centroid"} <= set(metrics)
    npz = np.load(run / "predictions.npz")
    assert npz["probabilities"].shape == (16, info["n_classes"])
    assert np.allclose(npz["probabilities"].sum(axis=1), 1, atol=1e-5)
    # cells.decision auto: the radius chosen on the validation views, recorded, and applied to the test
    decision = json.loads((run / "decision.json").read_text())
    cfg = load_run_config(run)
    assert decision["radius_m"] in [f * cfg.cells.cell_size_m for f in DECISION_RADII_CELLS]
    assert decision["val_median_error_m"][f"{decision['radius_m']:g}"] == min(decision["val_median_error_m"].values())
    assert metrics["decision"]["radius_m"] == decision["radius_m"]
    assert metrics["backbone"].endswith(", most probable cell" if decision["radius_m"] == 0 else
                                        f", cell with most probability within {decision['radius_m']:g} m")
    c = npz["class_cells"]
    xy = np.stack(grid.projection.to_xy(np.array([props[k]["photo_lat"] for k in c]),
                                        np.array([props[k]["photo_lon"] for k in c])), axis=1)
    assert np.array_equal(c[mass_choice(npz["probabilities"], xy, decision["radius_m"])], pred_cell)
    top = c[npz["probabilities"].argmax(1)]
    argmax_err = haversine_m(true_lat, true_lon, [props[k]["photo_lat"] for k in top], [props[k]["photo_lon"] for k in top])
    assert metrics["argmax"]["median_error_m"] == pytest.approx(np.median(argmax_err), abs=0.05)
    mtime = (run / "decision.json").stat().st_mtime_ns
    run_cli("evaluate", "--run", run)  # the same checkpoint: the choice is reused, not made again
    assert (run / "decision.json").stat().st_mtime_ns == mtime


def test_square_cells_from_a_config_file(city, tmp_path):
    run = tmp_path / "square"
    config = tmp_path / "square.yaml"
    config.write_text("cells:\n  grid: square\n  cell_size_m: 450\naugment:\n  enabled: false\n")
    run_cli("train", "cells", "--data", city, "--config", config, "--out", run, *FAST,
            "--set", "train.epochs=1", "--set", "train.max_steps_per_epoch=1", "--set", "data.split_mode=spatial")
    info = json.loads((run / "run.json").read_text())
    assert info["grid"] == "square" and info["n_cells"] == 4  # 900 m square in 450 m cells
    assert sum(f["properties"]["n_train"] for f in json.loads((run / "grid.geojson").read_text())["features"]) \
        == info["n_train"]


def test_regression_train_resume_and_evaluate(city, tmp_path):
    run = tmp_path / "reg"
    run_cli("train", "regression", "--data", city, "--out", run, *FAST, "--set", "train.epochs=1")
    with pytest.raises(GeolocError, match="already has a checkpoint"):
        run_cli("train", "regression", "--data", city, "--out", run, *FAST)
    out = run_cli("train", "regression", "--out", run, "--resume", "--set", "train.epochs=2")
    assert "epoch 2/2" in out
    assert [r["epoch"] for r in read_csv(run / "log.csv")] == ["1", "2"]
    info = json.loads((run / "run.json").read_text())
    assert info["kind"] == "regression" and info["train"]["epochs"] == 2

    run_cli("evaluate", "--run", run, "--data", city)
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["kind"] == "regression" and metrics["n"] == 16
    assert not (run / "predictions.npz").exists()
    box = info["bbox"]
    lat, lon = manifest(city / "train.csv")
    assert box["lat_min"] >= lat.min() and box["lat_max"] <= lat.max()
    y = scale(lat, lon, box)
    assert np.allclose(np.stack(unscale(y, box), 1), np.stack([lat, lon], 1))


def test_cli_errors_are_one_line(tmp_path, city):
    result = CliRunner().invoke(app, ["train", "regression", "--resume"])
    assert isinstance(result.exception, GeolocError) and "--resume needs --out" in str(result.exception)
    result = CliRunner().invoke(app, ["train", "cells", "--data", city, "--grid", "hexagon", "--out",
                                      tmp_path / "x", *FAST])
    assert isinstance(result.exception, GeolocError) and "hexagon" in str(result.exception)


STUDY_CONFIGS = sorted(p for pattern in ("cells_*.yaml", "regression*.yaml")
                       for p in (Path(__file__).resolve().parents[1] / "configs").glob(pattern))


@pytest.mark.parametrize("path", STUDY_CONFIGS, ids=lambda p: p.stem)
def test_study_configs_load(path):
    cfg = load_config(path)
    assert cfg.name == path.stem
    assert cfg.data.image_size == 224 and cfg.train.epochs == 25 and cfg.train.lr == 0.001
    assert cfg.train.lr_decay == 0.99 and cfg.train.momentum == 0.9
    assert cfg.model.weights in ("imagenet", "places365:resnet50_places365.pth.tar")
    if path.stem.startswith("cells"):
        assert cfg.cells.decision == "argmax" and cfg.cells.label_smooth_m == 0  # the study's answer and labels


def test_study_configs_cover_the_experiments():
    names = {p.stem for p in STUDY_CONFIGS}
    assert {"cells_voronoi", "cells_square", "cells_voronoi_places365", "cells_voronoi_noaug",
            "regression"} <= names
    locks = {load_config(p).model.lock_factor for p in STUDY_CONFIGS}
    assert {0.0, 0.3, 0.5, 0.7, 0.9} <= locks


def test_regression_cell_loss_adds_a_cross_entropy_over_the_cells(city, tmp_path):
    import torch
    import torch.nn.functional as F

    from retrieval.data.grids import cell_classes_of, make_grid
    from baselines.regression import RegressionTask

    sets = [s for s in FAST if s != "--set"] + ["model.lock_factor=0", "regression.cell_loss_weight=0.3",
                                                 "cells.cell_size_m=300", "cells.border_spacing_m=0"]
    cfg = load_config(None, [*sets, f"data.train={city / 'train.csv'}"])
    splits = load_data(cfg)
    task = RegressionTask(cfg, splits)
    cells = make_grid(cfg, splits["train"]).assign(splits["train"].lat, splits["train"].lon)
    assert np.array_equal(cell_classes_of(cfg, splits["train"]), np.searchsorted(np.unique(cells), cells))
    assert task.cell_classes == len(np.unique(cells)) > 1
    images, targets, idx = next(iter(task.train_loader))
    task.model.eval()  # BatchNorm's running statistics: the same output however often it runs
    with torch.no_grad():
        out = task.model(images).float()
        assert out.shape == (len(images), 2 + task.cell_classes)
        assert torch.equal(targets[:, :2], torch.from_numpy(scale(splits["train"].lat, splits["train"].lon,
                                                                  task.box)).float()[idx])
        mse = F.mse_loss(out[:, :2], targets[:, :2])
        ce = F.cross_entropy(out[:, 2:], torch.as_tensor(np.searchsorted(np.unique(cells), cells))[idx])
        assert float(task.loss(task.model, (images, targets, idx))) == pytest.approx(float(mse + 0.3 * ce), rel=1e-5)

    run = tmp_path / "reg_cells"
    run_cli("train", "regression", "--data", city, "--out", run, *FAST, "--set", "train.epochs=1",
            "--set", "regression.cell_loss_weight=0.3", "--set", "cells.cell_size_m=300",
            "--set", "cells.border_spacing_m=0")
    assert json.loads((run / "run.json").read_text())["cell_classes"] == task.cell_classes
    run_cli("evaluate", "--run", run, "--data", city)
    pred = read_csv(run / "predictions.csv")
    assert len(pred) == 16 and inside_the_city(pred, city)


def inside_the_city(pred: list[dict], city) -> bool:
    """Every prediction within the training photos' box (10% of its size around it): the city is 0.008
    degrees tall, so a bound of 0.1 degree (11 km) would hold for any answer in the region."""
    train = read_csv(city / "train.csv")
    lat, lon = np.array([float(r["lat"]) for r in train]), np.array([float(r["lon"]) for r in train])
    plat, plon = np.array([float(r["pred_lat"]) for r in pred]), np.array([float(r["pred_lon"]) for r in pred])
    mlat, mlon = 0.1 * np.ptp(lat), 0.1 * np.ptp(lon)
    return bool(((plat >= lat.min() - mlat) & (plat <= lat.max() + mlat)
                 & (plon >= lon.min() - mlon) & (plon <= lon.max() + mlon)).all())


def test_regression_with_a_mixture_head_trains_by_likelihood_and_predicts_inside_the_city(city, tmp_path):
    import torch

    from baselines.regression import RegressionTask
    from retrieval.learning.models import mixture_nll

    sets = [s for s in FAST if s != "--set"] + ["model.lock_factor=0", "regression.components=4"]
    cfg = load_config(None, [*sets, f"data.train={city / 'train.csv'}"])
    task = RegressionTask(cfg, load_data(cfg))
    images, targets, idx = next(iter(task.train_loader))
    task.model.eval()
    with torch.no_grad():
        out = task.model(images).float()
        assert out.shape == (len(images), 2 + 16)
        expected = mixture_nll(out[:, 2:], 4, targets[:, :2])
        assert float(task.loss(task.model, (images, targets, idx))) == pytest.approx(float(expected), rel=1e-5)

    run = tmp_path / "reg_mdn"
    run_cli("train", "regression", "--data", city, "--out", run, *FAST, "--set", "train.epochs=1",
            "--set", "regression.components=4")
    assert json.loads((run / "run.json").read_text())["components"] == 4
    run_cli("evaluate", "--run", run, "--data", city)
    pred = read_csv(run / "predictions.csv")
    assert len(pred) == 16 and inside_the_city(pred, city)


def test_distance_labels_weigh_each_class_by_its_distance():
    from baselines.cells import distance_labels

    photos = np.array([[0.0, 0.0], [100.0, 0.0]])
    classes = np.array([[0.0, 0.0], [100.0, 0.0], [0.0, 300.0]])
    q = distance_labels(photos, classes, 100.0)
    w = np.exp([0.0, -1.0, -3.0])  # distances 0, 100, 300 m over 100 m
    assert np.allclose(q[0], w / w.sum())
    d = np.hypot(100, 300)  # the second photo: 100, 0 and 316.2 m
    w2 = np.exp([-1.0, 0.0, -d / 100])
    assert np.allclose(q[1], w2 / w2.sum())
    assert distance_labels(photos, classes, 1.0)[1].argmax() == 1  # a small scale: one-hot on the nearest


def test_cells_label_smoothing_trains_on_the_distance_labels(city):
    import torch
    import torch.nn.functional as F

    from baselines.cells import CellsTask, distance_labels
    from retrieval.data.grids import make_grid

    sets = [s for s in FAST if s != "--set"] + ["model.lock_factor=0", "cells.label_smooth_m=80",
                                                 "cells.cell_size_m=300", "cells.border_spacing_m=0"]
    cfg = load_config(None, [*sets, f"data.train={city / 'train.csv'}"])
    splits = load_data(cfg)
    task = CellsTask(cfg, splits, make_grid(cfg, splits["train"]))
    images, labels, idx = next(iter(task.train_loader))
    task.model.eval()
    with torch.no_grad():
        logits = task.model(images).float()
        train = splits["train"]
        xy = np.stack(task.grid.projection.to_xy(train.lat, train.lon), axis=1)[idx.numpy()]
        c = task.cell_of_class
        cxy = np.stack(task.grid.projection.to_xy(task.centroid_lat[c], task.centroid_lon[c]), axis=1)
        soft = torch.from_numpy(distance_labels(xy, cxy, 80.0)).float()
        want = -(soft * F.log_softmax(logits, dim=1)).sum(dim=1).mean()
        got = float(task.loss(task.model, (images, labels, idx)))
    assert got == pytest.approx(float(want), rel=1e-5)
    assert got != pytest.approx(float(F.cross_entropy(logits, labels)), rel=1e-3)


def test_mass_choice_takes_the_neighbourhood_with_the_most_probability():
    from baselines.cell_answer import choose_radius

    xy = np.array([[0.0, 0.0], [100.0, 0.0], [200.0, 0.0]])
    probs = np.array([[0.4, 0.3, 0.3], [0.1, 0.2, 0.7]])
    assert list(mass_choice(probs, xy, 0)) == [0, 2]  # the argmax
    # within 150 m: class 1 holds all three of each row (1.0), against 0.7 and 0.6 (row 1), 0.3 and 0.9 (row 2)
    assert list(mass_choice(probs, xy, 150)) == [1, 1]
    assert list(mass_choice(probs, xy, 50)) == [0, 2]  # each class alone: the argmax again
    lat, lon = 51.5 + np.array([0.0, 0.0009, 0.0018]), np.full(3, -0.1)  # 0, 100, 200 m north
    radius, medians = choose_radius(probs[:1], xy, lat, lon, np.array([lat[1]]), np.array([lon[1]]), [0, 50, 150])
    assert radius == 150 and medians["150"] == pytest.approx(0, abs=0.01)
    assert medians["0"] == medians["50"] == pytest.approx(100, abs=0.5)
    # a tie goes to the smaller radius: with the truth at class 0 radii 0 and 50 both answer 0
    assert choose_radius(probs[:1], xy, lat, lon, lat[:1], lon[:1], [50, 0, 150])[0] == 0



def test_a_benchmark_report_shows_the_most_probable_cell_beside_the_chosen_answer():
    from retrieval.reports.benchmark import argmax_row

    metrics = {"median_error_m": 455.0, "backbone": "resnet18 64px, cell with most probability within 360 m",
               "answer": "cell with most probability within 360 m", "decision": {"radius_m": 360.0},
               "argmax": {"median_error_m": 606.0, "acc@100m": 0.214, "cell_acc": 0.18}}
    row = argmax_row("cells_voronoi", metrics)
    assert row["method"] == "cells_voronoi: most probable cell"
    assert row["median_error_m"] == 606.0 and row["acc@100m"] == 0.214
    assert row["backbone"] == "resnet18 64px, most probable cell"
