"""Train/val/test splits of a photo set: by place (held-out photos of places the database covers), by
area (unseen streets) or at random, and the train/val/test manifests a run is given."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.choices import SPLIT_MODES
from retrieval.data.manifests import SPLITS, Manifest, read_manifest


def spatial_split(lat, lon, val_fraction: float = 0.1, test_fraction: float = 0.1,
                  gap_m: float = 25.0, block_m: float = 250.0, seed: int = 0) -> np.ndarray:
    """Assign each photo to 'train', 'val', 'test' or '' (dropped) without spatial leakage.

    Square blocks of block_m are given whole to one split (deterministic for a seed); then any
    held-out photo within gap_m of a training photo is dropped, so no test or validation photo has
    a training photo closer than gap_m.
    """
    from scipy.spatial import cKDTree  # lazy, as retrieval.geo (pyproj, shapely): both are slow to import

    from retrieval.geo import LocalProjection

    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if not 0 <= val_fraction + test_fraction < 1:
        raise GeolocError("split: val_fraction + test_fraction must be in [0, 1)")
    x, y = LocalProjection.for_points(lat, lon).to_xy(lat, lon)
    bx = np.floor((x - x.min()) / block_m).astype(np.int64)
    by = np.floor((y - y.min()) / block_m).astype(np.int64)
    blocks, block_of = np.unique(np.column_stack([bx, by]), axis=0, return_inverse=True)
    block_of = block_of.ravel()
    counts = np.bincount(block_of, minlength=len(blocks))
    order = np.random.default_rng(seed).permutation(len(blocks))
    # Fill test then val to their photo-count targets, in random block order; the rest is train.
    block_split = np.full(len(blocks), "train", dtype=object)
    targets = [("test", test_fraction * len(lat)), ("val", val_fraction * len(lat))]
    filled = {"test": 0, "val": 0}
    t = 0
    for b in order:
        while t < len(targets) and filled[targets[t][0]] >= targets[t][1]:
            t += 1
        if t == len(targets):
            break
        block_split[b] = targets[t][0]
        filled[targets[t][0]] += counts[b]
    split = block_split[block_of].astype(object)
    train = split == "train"
    if gap_m > 0 and train.any() and (~train).any():
        d, _ = cKDTree(np.column_stack([x[train], y[train]])).query(np.column_stack([x[~train], y[~train]]))
        held = np.flatnonzero(~train)
        split[held[d < gap_m]] = ""
    return split.astype(str)


def random_split(n: int, val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Photos drawn at random for val and test, the rest train (the seed study's protocol)."""
    if not 0 <= val_fraction + test_fraction < 1:
        raise GeolocError("split: val_fraction + test_fraction must be in [0, 1)")
    order = np.random.default_rng(seed).permutation(n)
    n_test, n_val = round(test_fraction * n), round(val_fraction * n)
    split = np.full(n, "train", dtype=object)
    split[order[:n_test]] = "test"
    split[order[n_test:n_test + n_val]] = "val"
    return split.astype(str)


def place_split(lat, lon, val_fraction: float = 0.1, test_fraction: float = 0.1, radius_m: float = 25.0,
                seed: int = 0, date=None) -> np.ndarray:
    """Held-out photos of places the database covers (place recognition, as Pitts30k or MSLS): photos
    drawn at random, each kept out only if a training photo stays within radius_m of it (that photo is
    then never held out itself). Fewer than asked are held out where photos have no near neighbour.

    With capture dates (datetime64, NaT where unknown) the held-out photos are the latest ones whose
    partner was taken on an earlier day, so a query is a later visit to a place the database saw
    (as MSLS); photos without a date are never held out."""
    from scipy.spatial import cKDTree

    from retrieval.geo import LocalProjection

    lat, lon = np.asarray(lat, float), np.asarray(lon, float)
    if not 0 <= val_fraction + test_fraction < 1:
        raise GeolocError("split: val_fraction + test_fraction must be in [0, 1)")
    xy = np.column_stack(LocalProjection.for_points(lat, lon).to_xy(lat, lon))
    near = cKDTree(xy).query_ball_point(xy, radius_m)
    rng = np.random.default_rng(seed)
    split = np.full(len(lat), "train", dtype=object)
    anchored = np.zeros(len(lat), dtype=bool)  # training photos some held-out photo relies on
    want = {"test": round(test_fraction * len(lat)), "val": round(val_fraction * len(lat))}
    order = rng.permutation(len(lat))
    day = None
    if date is not None and not np.isnat(date).all():
        day = np.asarray(date, dtype="datetime64[D]")
        dated = order[~np.isnat(day[order])]
        order = dated[np.argsort(-day[dated].astype(np.int64), kind="stable")]  # latest first, ties random
    for i in order:
        name = next((k for k, v in want.items() if v > 0), None)
        if name is None:
            break
        if anchored[i]:
            continue
        partners = [j for j in near[i] if j != i and split[j] == "train" and (day is None or day[j] < day[i])]
        if not partners:
            continue
        split[i] = name
        anchored[partners[rng.integers(len(partners))]] = True
        want[name] -= 1
    return split.astype(str)




def split_photos(mode: str, lat, lon, val_fraction: float = 0.1, test_fraction: float = 0.1,
                 gap_m: float = 25.0, block_m: float = 250.0, radius_m: float = 25.0, seed: int = 0,
                 date=None, sequence=None, author=None) -> np.ndarray:
    """'train'/'val'/'test' ('' dropped) per photo by `mode`: place (place_split: every held-out photo
    has a training photo within radius_m, taken on an earlier day where dates are known), spatial
    (spatial_split: unseen streets, nothing within gap_m), random (random_split) or sequence
    (sequence_split: whole sequences, twins together; needs each photo's sequence, and its author)."""
    if mode == "place":
        return place_split(lat, lon, val_fraction, test_fraction, radius_m, seed, date)
    if mode == "spatial":
        return spatial_split(lat, lon, val_fraction, test_fraction, gap_m, block_m, seed)
    if mode == "random":
        return random_split(len(lat), val_fraction, test_fraction, seed)
    if mode == "sequence":
        if sequence is None:
            raise GeolocError("split mode 'sequence' needs a sequence column (as `geoloc data fetch` writes)")
        from retrieval.data.sequences import sequence_split

        return sequence_split(lat, lon, date, sequence, author, val_fraction, test_fraction, seed)
    raise GeolocError(f"split mode {mode!r}: choose one of {', '.join(SPLIT_MODES)}")


def split_counts(split, where: str) -> dict[str, int]:
    """Photos per split of a spatial_split result; a split that leaves no training photo is an error
    (nothing to learn from, nothing to index), naming the counts and what to change."""
    split = np.asarray(split)
    counts = {s: int((split == s).sum()) for s in SPLITS}
    if counts["train"] == 0:
        raise GeolocError(f"{where}: the split leaves no training photos (train 0, val {counts['val']}, "
                          f"test {counts['test']}, dropped {int((split == '').sum())}): use smaller blocks "
                          "(--block-m), a smaller --gap-m or smaller --val/--test fractions, or more photos")
    return counts


def load_splits(data: str | Path, val_fraction: float = 0.1, test_fraction: float = 0.1,
                gap_m: float = 25.0, block_m: float = 250.0, seed: int = 0,
                skip_bad: bool = False, mode: str = "place", radius_m: float = 25.0) -> dict[str, Manifest]:
    """train/val/test manifests from a data folder (train.csv [val.csv] [test.csv], as the renderer
    writes) or from one manifest (its split column, else a split by `mode`). A missing val set is
    carved out of train by `mode` (see split_photos), so model selection never sees test photos and
    asks the kind of question the test asks."""
    data = Path(data)
    out: dict[str, Manifest] = {}
    if data.is_dir():
        if not (data / "train.csv").is_file():
            raise GeolocError(f"{data}: data folder has no train.csv")
        for name in SPLITS:
            if (data / f"{name}.csv").is_file():
                out[name] = read_manifest(data / f"{name}.csv", skip_bad=skip_bad)
        pool, carve_test = out.pop("train"), 0.0
    else:
        pool = read_manifest(data, skip_bad=skip_bad)
        if pool.split is not None:
            return {name: pool.where_split(name) for name in SPLITS if name in pool.split}
        carve_test = test_fraction
    want_val = "val" not in out and val_fraction > 0
    if not want_val and carve_test == 0:
        out["train"] = pool
        return out
    from retrieval.data.sequences import extra_columns

    extra = extra_columns(pool) if mode == "sequence" else {}
    split = split_photos(mode, pool.lat, pool.lon, val_fraction if want_val else 0.0, carve_test,
                         gap_m, block_m, radius_m, seed, pool.date, extra.get("sequence"), extra.get("author"))
    split_counts(split, str(data))
    for name in SPLITS:
        idx = np.flatnonzero(split == name)
        if len(idx):
            out[name] = pool.subset(idx)
    return out


def load_data(cfg) -> dict[str, Manifest]:
    """train/val[/test] manifests from data.train (a data folder or one manifest) and data.test."""
    d = cfg.data
    if not d.train:
        raise GeolocError("data.train is empty: pass --data DIR (a data folder or a manifest CSV)")
    splits = load_splits(d.train, d.val_fraction, 0.0 if d.test else d.test_fraction, d.split_gap_m,
                         d.split_block_m, cfg.seed, d.skip_bad, d.split_mode, d.place_radius_m)
    if d.test:
        splits["test"] = read_manifest(d.test, skip_bad=d.skip_bad)
    return splits
