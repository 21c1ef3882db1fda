"""The cells prior over the embedding's neighbours: the rerank's arithmetic, the weight's choice, the
budget split, and a run that trains both networks, evaluates and answers a query."""
import json
import math

import numpy as np
import pytest

from retrieval import GeolocError
from retrieval.answering.prior import rerank, top_candidates
from retrieval.config import load_config
from retrieval.methods.cell_prior import WEIGHTS, budgets, choose_weight
from retrieval.run import Run, prepare_run_dir
from tests.test_embedding import TINY

LOGP = np.log([[0.1, 0.9]])  # one query: class 0 unlikely, class 1 likely


def test_rerank_adds_the_weighted_log_probability_of_each_candidates_cell():
    sims, ids = np.array([[0.9, 0.8, 0.7]]), np.array([[0, 1, 2]])
    db_class = np.array([0, 1, 1])
    # scores 0.9 + 0.1 ln 0.1 = 0.670, 0.8 + 0.1 ln 0.9 = 0.789, 0.7 + 0.1 ln 0.9 = 0.689
    s, i = rerank(sims, ids, LOGP, db_class, 0.1)
    assert i.tolist() == [[1, 2, 0]] and s.tolist() == [[0.8, 0.7, 0.9]]  # cosines travel with their ids
    assert rerank(sims, ids, LOGP, db_class, 0.0)[1].tolist() == [[0, 1, 2]]  # weight 0: the cosine order


def test_rerank_scores_a_classless_photo_as_the_least_likely_cell_and_keeps_missing_ids_last():
    sims, ids = np.array([[0.9, 0.85, 0.5]]), np.array([[0, -1, 1]])
    db_class = np.array([-1, 1])  # photo 0's cell has no class
    # photo 0: 0.9 + ln 0.1 = -1.40; photo 1: 0.5 + ln 0.9 = 0.39; the missing candidate goes last
    s, i = rerank(sims, ids, LOGP, db_class, 1.0)
    assert i.tolist() == [[1, 0, -1]]
    assert s[0, :2].tolist() == [0.5, 0.9]


def test_choose_weight_takes_the_weight_whose_first_neighbour_is_right():
    # The query stands at photo 1 (0 m); photo 0, the embedding's first neighbour, is ~1.1 km away, in
    # a cell the classifier thinks unlikely. Weights from 0.2 on put photo 1 first (0.9 - 0.8 > w x 2.2).
    db_lat, db_lon = np.array([51.51, 51.50]), np.array([-0.1, -0.1])
    sims, ids = np.array([[0.9, 0.8]]), np.array([[0, 1]])
    best, recall = choose_weight(sims, ids, LOGP, np.array([0, 1]), db_lat, db_lon, np.array([51.50]),
                                 np.array([-0.1]), weights=(0.0, 0.02, 0.2, 0.5))
    assert recall == {0.0: 0.0, 0.02: 0.0, 0.2: 1.0, 0.5: 1.0}
    assert best == 0.2  # a tie goes to the smaller weight


def test_top_candidates_match_a_full_sort():
    rng = np.random.default_rng(0)
    q, db = rng.normal(size=(5, 8)), rng.normal(size=(40, 8))
    sims, ids = top_candidates(q, db, 7)
    full = np.argsort(-(q @ db.T), axis=1)[:, :7]
    assert np.array_equal(ids, full) and np.allclose(sims, np.take_along_axis(q @ db.T, full, 1))


def test_budgets_split_the_minutes_and_the_config_refuses_a_share_without_them():
    cfg = load_config(None, ["train.max_minutes=30", "embedding.cell_prior_share=0.25"])
    emb, cells = budgets(cfg)
    assert emb.train.max_minutes == 22.5 and cells.train.max_minutes == 7.5
    assert cells.embedding.cell_prior_share == 0.0 and emb.model == cells.model == cfg.model
    with pytest.raises(GeolocError, match=r"embedding.cell_prior_share=0.5: splits a time budget: set "
                                          r"train.max_minutes too"):
        load_config(None, ["embedding.cell_prior_share=0.5"])
    with pytest.raises(GeolocError, match=r"embedding.cell_prior_share=1.0: must be in \[0, 1\)"):
        load_config(None, ["train.max_minutes=1", "embedding.cell_prior_share=1.0"])


def test_a_run_with_a_prior_trains_both_networks_evaluates_and_answers(tiny_data, tmp_path):
    from retrieval.answering.locator import Locator
    from retrieval.reports.evaluate import evaluate_run
    from retrieval.data.manifests import read_manifest
    from retrieval.methods import trainer

    # epochs=1 ends each network's training long before its share of the 10 minutes
    cfg = load_config(None, [*TINY, f"data.train={tiny_data}", "train.max_minutes=10",
                             "embedding.cell_prior_share=0.5", "cells.cell_size_m=200", "cells.border_spacing_m=0",
                             "index.cell_prior_candidates=50"])
    run = tmp_path / "emb"
    prepare_run_dir(run, cfg)
    summary = trainer("embedding")(cfg, run)
    record = json.loads(Run(run).prior.read_text())
    assert record["weight"] in WEIGHTS and set(map(float, record["val_recall@1_25m"])) == set(WEIGHTS)
    assert json.loads((run / Run.PRIOR_DIR / "run.json").read_text())["kind"] == "cells"
    assert json.loads((run / Run.PRIOR_DIR / "config.yaml").read_text().split("max_minutes: ")[1].split()[0]) == 5.0
    train = json.loads((run / "run.json").read_text())["train"]
    assert train == summary and math.isclose(
        train["train_seconds"], train["embedding"]["train_seconds"] + train["cell_prior"]["train_seconds"],
        abs_tol=1e-3)

    m = evaluate_run(run, tiny_data)
    assert m["backbone"].endswith("+ cells prior") and m["cell_prior"]["weight"] == record["weight"]
    alone = m["cell_prior"]["without"]
    assert 0 <= alone["recall@1_25m"] <= alone["recall@5_25m"] <= 1
    a = Locator.load(run).locate(read_manifest(tiny_data / "test.csv").paths[0], k=3)[0]
    assert len(a.neighbours) == 3 and np.isfinite([a.lat, a.lon]).all()

    Run(run).prior.unlink()  # as if killed while the prior trained
    with pytest.raises(GeolocError, match=r"cells prior was not trained to the end .*--resume"):
        evaluate_run(run, tiny_data)
