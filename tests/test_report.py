import json
import re

import numpy as np
import pytest
from PIL import Image

from retrieval.reports.benchmark import recall_curve
from retrieval.reports.report import (COLUMNS, error_cdf_png, learning_png, map_png, markdown_table, neighbourhood_matrix,
                              neighbourhoods_html, report_md, terminal_table)


def test_tables_have_every_column_and_format_values():
    rows = [{"method": "cells", "mean_error_m": 123.4, "median_error_m": 88.0, "acc@25m": 0.125},
            {"method": "embedding", "median_error_m": 12.0, "recall@1_25m": 0.5, "query_ms": 20.25}]
    md = markdown_table(rows).splitlines()
    assert md[0].count("|") == len(COLUMNS) + 1
    assert md[2].startswith("| cells | – | 123 | 88 | 12.5% |")
    assert "| – |" in md[2]  # missing values are shown as a dash, not 0
    assert "50.0%" in md[3] and "20.2" in md[3]
    assert terminal_table(rows).splitlines()[0].split()[0] == "method"


def test_neighbourhood_matrix_hand_computed():
    probs = np.array([[0.8, 0.2, 0.0], [0.6, 0.4, 0.0], [0.1, 0.1, 0.8]])
    m = neighbourhood_matrix(np.array([0, 0, 2]), probs, 3)
    assert m[0] == pytest.approx([0.7, 0.3, 0.0]) and m[1] is None and m[2] == pytest.approx([0.1, 0.1, 0.8])


def test_pictures_and_page(tmp_path):
    rng = np.random.default_rng(0)
    errs = {"a": rng.lognormal(4, 1, 200), "b": rng.lognormal(5, 1, 200)}
    p = error_cdf_png(errs, tmp_path / "cdf.png")
    assert Image.open(p).size[0] > 400
    true = np.column_stack([rng.uniform(0, 0.01, 50), rng.uniform(51.5, 51.51, 50)])
    pred = true + rng.normal(0, 0.001, true.shape)
    streets = [np.array([[0, 51.5], [0.01, 51.51]]), np.array([[0, 51.51], [0.01, 51.5]])]
    assert Image.open(map_png(streets, true, pred, rng.uniform(1, 500, 50), tmp_path / "map.png")).size[0] > 400

    squares = [np.array([[x, y], [x + 0.005, y], [x + 0.005, y + 0.005], [x, y + 0.005], [x, y]])
               for x in (0, 0.005) for y in (51.5, 51.505)]
    probs = rng.dirichlet(np.ones(4), size=10)
    page = neighbourhoods_html(squares, streets, rng.integers(0, 3, 10), probs, tmp_path / "n.html",
                               attribution="© OpenStreetMap contributors").read_text()
    assert page.count('class="cell"') == 4 and page.count('class="street"') == 2
    assert "http" not in page.replace("© OpenStreetMap", "")  # offline: no tiles, no CDN
    matrix = json.loads(re.search(r"const M = (.*);", page).group(1))
    assert matrix[3] is None and len(matrix[0]) == 4


def test_learning_curve_from_a_log(tmp_path):
    run = tmp_path / "emb"
    run.mkdir()
    (run / "log.csv").write_text("epoch,train_loss,val_recall@1_25m,images\n1,0.8,0.05,640\n2,0.7,0.125,640\n"
                                 "3,0.6,0.2,320\n")
    images, recall = recall_curve(run)
    assert images.tolist() == [640, 1280, 1600] and recall.tolist() == [0.05, 0.125, 0.2]
    (run / "log.csv").write_text("epoch,train_loss,val_recall@1_25m,images,validated\n1,0.8,0.05,640,1\n"
                                 "2,0.7,,640,0\n3,0.6,0.2,320,1\n")  # epoch 2's validation skipped (budget)
    images, recall = recall_curve(run)
    assert images.tolist() == [640, 1600] and recall.tolist() == [0.05, 0.2]
    baseline = tmp_path / "cells"
    baseline.mkdir()
    (baseline / "log.csv").write_text("epoch,train_loss,val_acc,images\n1,2.0,0.3,640\n")
    assert recall_curve(baseline) is None and recall_curve(tmp_path / "missing") is None
    floors = {"thumbnail_knn": {"recall@1_25m": 0.05}, "constant_guess": {"recall@1_25m": 0.01},
              "oracle": {"recall@1_25m": 1.0}}
    png = learning_png({"emb": (images, recall)}, floors, tmp_path / "learning.png")
    assert Image.open(png).size[0] > 400
    rows = [{"method": "emb", "median_error_m": 10.0}]
    assert "![learning](learning.png)" in report_md(rows, [], "", learning=True)
    assert "learning.png" not in report_md(rows, [], "")
