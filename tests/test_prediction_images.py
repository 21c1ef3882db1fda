"""Prediction images: `geoloc evaluate --save-predictions N` draws the worst, the best and a random
sample of an embedding run's test photos beside their neighbours, with a page linking them."""
import json
import re

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from retrieval import GeolocError
from retrieval.cli import app
from retrieval.config import load_config
from retrieval.files import atomic_write_json
from retrieval.reports.prediction_images import GREEN, NEAR_M, RED, pick, prediction_png, save_predictions
from retrieval.run import prepare_run_dir
from tests.conftest import untrained_run, write_image

K = 4


@pytest.fixture(scope="module")
def evaluated(tiny_data, tmp_path_factory):
    """An untrained embedding run over the tiny rendered city, evaluated through the CLI with 7 images drawn."""
    run = tmp_path_factory.mktemp("pred") / "run"
    untrained_run(run, tiny_data, k=K, index=False)
    atomic_write_json(run / "run.json", {"kind": "embedding"})
    out = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--save-predictions", "7"])
    assert out.exit_code == 0, out.output
    assert f"prediction images: {run / 'predictions' / 'index.html'}" in out.output
    return run


def test_pick_takes_the_worst_the_best_and_a_random_sample():
    errors = np.array([5.0, 900.0, 40.0, 1.0, 300.0, 60.0, 20.0, 700.0, 10.0, 80.0])
    shown = pick(errors, 7)
    by = {label: [s.row for s in shown if s.label == label] for label in ("worst", "best", "random")}
    assert by["worst"] == [1, 7, 4] and by["best"] == [3, 0]  # largest first; smallest first
    assert len(by["random"]) == 2 and not set(by["random"]) & set(by["worst"] + by["best"])
    assert [s.rank for s in shown] == [1, 2, 3, 1, 2, 1, 2]
    assert pick(errors, 7) == shown  # the same sample each time
    assert sorted(s.row for s in pick(errors, 50)) == list(range(10))  # more than there are: each photo once


def test_evaluate_draws_the_labelled_images_and_a_page(evaluated):
    out = evaluated / "predictions"
    names = sorted(p.name for p in out.glob("*.png"))
    assert names == ["best_01.png", "best_02.png", "random_01.png", "random_02.png",
                     "worst_01.png", "worst_02.png", "worst_03.png"]
    for name in names:
        with Image.open(out / name) as im:
            assert im.width > 2 * im.height > 200  # the query and its neighbours side by side
    page = (out / "index.html").read_text()
    assert "http" not in page  # nothing fetched: every image beside the page
    assert re.findall(r"<img src='([^']+)'", page) == [f"{g}_{i:02d}.png" for g, n in
                                                       (("worst", 3), ("best", 2), ("random", 2))
                                                       for i in range(1, n + 1)]
    for title in ("Worst: the largest errors", "Best: the smallest errors", "Random: a sample of the others"):
        assert title in page
    # the captions give each photo's error and confidence, worst first, from predictions.csv
    errs = [float(e.replace(",", "")) for e in re.findall(r"<b>worst #\d</b> [^:]+: error ([\d,]+) m", page)]
    assert len(errs) == 3 and errs == sorted(errs, reverse=True)
    assert re.search(r"confidence 0\.\d\d; \d of 4 neighbours within 25 m of the truth", page)


def test_fewer_images_later_leave_no_stale_ones(evaluated):
    save_predictions(evaluated, 2)
    out = evaluated / "predictions"
    assert sorted(p.name for p in out.glob("*.png")) == ["best_01.png", "worst_01.png"]
    assert "random" not in (out / "index.html").read_text().lower()


def test_neighbours_are_green_within_25_m_and_red_beyond(tmp_path):
    photo = write_image(tmp_path / "q.png", size=(64, 48), color=(128, 128, 128))
    out = prediction_png(str(photo), "worst #1", "query: error 300 m", False,
                         [(str(photo), NEAR_M - 1), (str(photo), 400.0), (str(tmp_path / "gone.jpg"), 10.0)],
                         tmp_path / "p.png")
    pixels = np.asarray(Image.open(out).convert("RGB")).reshape(-1, 3).astype(int)

    def count(hex_colour):
        rgb = np.array([int(hex_colour[i:i + 2], 16) for i in (1, 3, 5)])
        return int((np.abs(pixels - rgb).sum(axis=1) < 30).sum())

    assert count(GREEN) > 100 and count(RED) > 100  # the frames and titles


def test_runs_without_neighbours_are_refused(tmp_path, evaluated):
    run = tmp_path / "cells"
    prepare_run_dir(run, load_config(None, []))
    atomic_write_json(run / "run.json", {"kind": "cells"})
    out = CliRunner().invoke(app, ["evaluate", "--run", str(run), "--save-predictions", "3"])
    assert out.exit_code != 0 and isinstance(out.exception, GeolocError)
    assert "an embedding run" in str(out.exception)
    with pytest.raises(GeolocError, match="predictions.csv: missing; run `geoloc evaluate"):
        save_predictions(run, 3)
    with pytest.raises(GeolocError, match="draw at least 1"):
        save_predictions(evaluated, 0)
    np.savez(run / "predictions.npz", paths=np.array(["a"]), probabilities=np.ones((1, 2)))
    (run / "predictions.csv").write_text((evaluated / "predictions.csv").read_text())
    with pytest.raises(GeolocError, match="no neighbour_ids: only embedding runs"):
        save_predictions(run, 3)
    assert json.loads((evaluated / "metrics.json").read_text())["n"] == 10
