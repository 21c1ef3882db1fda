"""`geoloc demo` at toy size, end to end through the CLI: every step, the report and its table."""
import json
import subprocess
import sys

import pytest
from PIL import Image

from retrieval.reports.report import COLUMNS
from retrieval.run import load_run_config
from tests.conftest import REPO

TOY = ["bench.city_size_m=500", "bench.train_views=48", "bench.test_views=8", "bench.image_size=32",
       "bench.render_size=48",
       "bench.render_workers=1", "train.epochs=1", "train.max_steps_per_epoch=2", "train.batch_size=8",
       "data.num_workers=0", "model.embed_dim=32", "cells.cell_size_m=150", "cells.border_spacing_m=20",
       "embedding.pos_radius_m=80", "embedding.neg_radius_m=160", "embedding.places_per_batch=2",
       "embedding.photos_per_place=2"]


@pytest.mark.slow
def test_demo_toy_end_to_end(tmp_path):
    out = tmp_path / "demo"
    cmd = [sys.executable, "-m", "retrieval.cli", "demo", "--out", str(out)]
    for o in TOY:
        cmd += ["--set", o]
    run = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    rep = out / "report"
    for name in ("report.md", "error_cdf.png", "map.png", "neighbourhoods.html"):
        assert (rep / name).is_file() and (rep / name).stat().st_size > 1000, name
    lines = (rep / "report.md").read_text().splitlines()
    header = next(l for l in lines if l.startswith("| method"))
    assert [c.strip() for c in header.strip("|").split("|")] == [t for _, t, _ in COLUMNS]
    rows = [l for l in lines if l.startswith("| cells_voronoi") or l.startswith("| regression")
            or l.startswith("| embedding_geodesic")]
    metrics = {m: json.loads((out / "methods" / m / "metrics.json").read_text())
               for m in ("cells_voronoi", "regression", "embedding_geodesic")}
    # the cells answer chosen on validation, and beside it the most probable cell when that differs
    assert len(rows) == 3 + (metrics["cells_voronoi"]["decision"]["radius_m"] > 0)
    assert any(r.startswith("| cells_voronoi: most probable cell |") for r in rows) == (len(rows) == 4)
    assert all(m["n"] == 8 for m in metrics.values())
    assert "recall@1_25m" in metrics["embedding_geodesic"] and "cell_acc" in metrics["cells_voronoi"]
    assert "geoloc query --run" in run.stdout
    # Rendered at bench.render_size, decoded down to the resize side (32 x 256/224) for 32 px crops.
    first = next((out / "data" / "images").glob("*.jpg"))
    assert min(Image.open(first).size) == 48
    run_cfg = load_run_config(out / "methods" / "embedding_geodesic")
    assert (run_cfg.data.resize, run_cfg.data.image_size) == (37, 32)
    # Run again: every step is found done and skipped, the report is rewritten.
    again = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=600)
    assert again.returncode == 0 and "training in" not in again.stderr + again.stdout
    assert "reuses the trained run" not in (rep / "report.md").read_text()
    # Once more with another learning rate: the finished runs are reused, and the report says so.
    changed = subprocess.run(cmd + ["--set", "train.lr=0.0042"], capture_output=True, text=True, cwd=REPO,
                             timeout=600)
    assert changed.returncode == 0 and "training in" not in changed.stderr + changed.stdout
    report = (rep / "report.md").read_text()
    for m in ("cells_voronoi", "regression", "embedding_geodesic"):
        assert f"{m} reuses the trained run in {out / 'methods' / m}" in report
    assert "train.lr 0.0042 here, 0.0005 in the run" in report


def test_render_size_below_the_resize_side_is_refused():
    from retrieval import GeolocError
    from retrieval.config import load_config
    from retrieval.reports.benchmark import DEMO, render_size

    assert render_size(load_config(None, [], base=DEMO)) == 146
    assert render_size(load_config(None, ["bench.render_size=0", "bench.image_size=48"], base=DEMO)) == 55  # 48 x 256/224
    with pytest.raises(GeolocError, match=r"bench.render_size=100: below the 146 px"):
        render_size(load_config(None, ["bench.render_size=100"], base=DEMO))
