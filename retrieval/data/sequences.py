"""Sequences (drives) of a fetched photo set: twin drives, the sequence split, near-duplicates across splits,
and the manifest columns they read (sequence, author) that the Manifest itself does not hold.

A second drive down the same street by the same account leaves near-copies of each photo: held out apart from
its twin, a test photo is answered by its own copy in training. So held-out photos are whole sequences, and
twins stay on one side (the numbers are the issue's: one author within 60 s, or photos within 10 m and 5 min).
"""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from retrieval import GeolocError
from retrieval.data.manifests import Manifest

TWIN_GAP_S = 60.0  # one author's two sequences this close in time are one drive cut in two
TWIN_NEAR_M, TWIN_NEAR_S = 10.0, 300.0  # two sequences with photos this close in space and time: one pass
DUPLICATE_M, DUPLICATE_S = 10.0, 60.0  # `data check`: one author's photos this close are near-copies


def extra_columns(m: Manifest, names=("sequence", "author")) -> dict[str, list[str]]:
    """Columns the Manifest does not hold (a fetched manifest's sequence, author, ...), one value per photo
    of m (read again from m.source by CSV row); only the columns the file has."""
    with open(m.source, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        cols = [c.strip() for c in reader.fieldnames or []]
        reader.fieldnames = cols
        by_row = {i: row for i, row in enumerate(reader, start=2)}
    return {c: [(by_row[r].get(c) or "").strip() for r in m.rows] for c in names if c in cols}


def _seconds(date) -> np.ndarray:
    """Capture times as float seconds, NaN where unknown."""
    d = np.asarray(date, dtype="datetime64[s]")
    return np.where(np.isnat(d), np.nan, d.astype(np.int64).astype(float))


def twin_groups(lat, lon, date, sequence, author=None) -> np.ndarray:
    """A group number per photo: its sequence, joined with its twins (one author's sequences within
    TWIN_GAP_S of each other; sequences with photos within TWIN_NEAR_M and TWIN_NEAR_S of each other).
    A photo without a sequence is a sequence of its own."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components
    from scipy.spatial import cKDTree

    from retrieval.geo import LocalProjection

    n = len(lat)
    names = [s if s else f"\0photo {i}" for i, s in enumerate(sequence)]
    seqs, seq_of = np.unique(np.array(names, dtype=object), return_inverse=True)
    t = _seconds(date) if date is not None else np.full(n, np.nan)
    pairs = []
    if author is not None:  # one author's sequences by start time; a start within TWIN_GAP_S of the drive so far joins it
        start, end = np.full(len(seqs), np.inf), np.full(len(seqs), -np.inf)
        np.minimum.at(start, seq_of, np.nan_to_num(t, nan=np.inf))
        np.maximum.at(end, seq_of, np.nan_to_num(t, nan=-np.inf))
        owner = {}
        for i in range(n):
            owner.setdefault(seq_of[i], author[i])
        by_author: dict[str, list[int]] = {}
        for k in np.argsort(start, kind="stable"):
            if np.isfinite(start[k]) and owner.get(k):
                by_author.setdefault(owner[k], []).append(int(k))
        for ks in by_author.values():
            reach = end[ks[0]]
            for a, b in zip(ks, ks[1:]):
                if start[b] - reach <= TWIN_GAP_S:
                    pairs.append((a, b))
                reach = max(reach, end[b]) if start[b] - reach <= TWIN_GAP_S else end[b]
    xy = np.column_stack(LocalProjection.for_points(lat, lon).to_xy(np.asarray(lat, float), np.asarray(lon, float)))
    near = cKDTree(xy).query_pairs(TWIN_NEAR_M, output_type="ndarray")
    if len(near):
        i, j = near[:, 0], near[:, 1]
        twin = (seq_of[i] != seq_of[j]) & (np.abs(t[i] - t[j]) <= TWIN_NEAR_S)
        pairs += list(zip(seq_of[i[twin]], seq_of[j[twin]]))
    a, b = (np.array(x, dtype=np.int64) for x in zip(*pairs)) if pairs else (np.zeros(0, np.int64),) * 2
    graph = coo_matrix((np.ones(len(a)), (a, b)), shape=(len(seqs), len(seqs)))
    _, group_of_seq = connected_components(graph, directed=False)
    return group_of_seq[seq_of]


def sequence_split(lat, lon, date, sequence, author=None, val_fraction: float = 0.1,
                   test_fraction: float = 0.1, seed: int = 0) -> np.ndarray:
    """Held-out photos as whole sequences with their twins (twin_groups), so no test or validation photo
    has a photo of its own drive, or of a twin drive, in training. Groups are drawn at random; each goes to
    the first of test, val that it brings closer to its photo count, else to train."""
    if not 0 <= val_fraction + test_fraction < 1:
        raise GeolocError("split: val_fraction + test_fraction must be in [0, 1)")
    group = twin_groups(lat, lon, date, sequence, author)
    sizes = np.bincount(group)
    split_of = np.full(len(sizes), "train", dtype=object)
    need = {"test": test_fraction * len(group), "val": val_fraction * len(group)}
    for g in np.random.default_rng(seed).permutation(len(sizes)):
        name = next((k for k, v in need.items() if v >= sizes[g] / 2), None)
        if name is not None:
            split_of[g] = name
            need[name] -= sizes[g]
    return split_of[group].astype(str)


def cross_split_duplicates(m: Manifest, author=None) -> list[tuple[int, int]]:
    """Pairs (i, j) of photos in different splits that are near-copies: the same author (where the manifest
    says), within DUPLICATE_M and DUPLICATE_S of each other (needs the date column)."""
    from scipy.spatial import cKDTree

    from retrieval.geo import LocalProjection

    if m.split is None or m.date is None or len(m) < 2:
        return []
    xy = np.column_stack(LocalProjection.for_points(m.lat, m.lon).to_xy(m.lat, m.lon))
    t, split = _seconds(m.date), np.asarray(m.split, dtype=object)
    out = []
    for i, j in cKDTree(xy).query_pairs(DUPLICATE_M, output_type="ndarray"):
        if split[i] != split[j] and abs(t[i] - t[j]) <= DUPLICATE_S and (author is None or author[i] == author[j]):
            out.append((int(i), int(j)))
    return sorted(out)


def keep_columns(path: str | Path, extra: dict[str, list[str]], idx) -> None:
    """Add the extra columns (of the photos idx, in order) to a manifest write_manifest wrote, atomically."""
    from retrieval.files import atomic_write

    if not extra:
        return
    path = Path(path)
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    names = [c for c in extra if c not in rows[0]]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f)
            w.writerow(rows[0] + names)
            for row, i in zip(rows[1:], idx):
                w.writerow(row + [extra[c][i] for c in names])

    atomic_write(path, write)
