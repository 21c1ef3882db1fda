import json

import numpy as np
import pytest

from retrieval import GeolocError
from retrieval.config import IndexConfig
import retrieval.answering.index as index_module
from retrieval.answering.index import (ARRAYS_FILE, INDEX_FILE, META_FILE, NpyRows, Sidecar, build_index, empty_index, fill,
                             index_params, load_index, save_index, search, set_search_params, sha256_file,
                             shards_of)

D = 32


def unit(n, seed=0, d=D):
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute(x, q, k):
    sims = q.astype(np.float64) @ x.T.astype(np.float64)
    ids = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(sims, ids, 1), ids


def recall(ids, exact):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, exact)])


def sidecar_for(x, ckpt="ab" * 32, kind="flat"):
    n = len(x)
    return Sidecar(paths=[f"images/{i:05d}.jpg" for i in range(n)], lat=51.5 + np.arange(n) * 1e-5,
                   lon=-0.1 - np.arange(n) * 1e-5, dim=x.shape[1], checkpoint_sha256=ckpt, kind=kind)


def test_flat_search_equals_numpy_brute_force():
    x, q = unit(3000), unit(50, seed=1)
    sims, ids = search(build_index(x, progress=False), q, k=10)
    ref_sims, ref_ids = brute(x, q, 10)
    assert ids.dtype == np.int64 and ids.shape == (50, 10)
    assert np.array_equal(ids, ref_ids)
    assert np.allclose(sims, ref_sims, atol=1e-5)
    # k larger than the index: every photo, in order
    sims, ids = search(build_index(x[:7], progress=False), q, k=10)
    assert ids.shape == (50, 7) and np.array_equal(ids, brute(x[:7], q, 7)[1])


@pytest.mark.parametrize("kind,params", [
    ("ivfpq", dict(nlist=8, pq_m=8, refine="flat", nprobe=8, k_factor=300)),
    ("ivfpq", dict(nlist=8, pq_m=8, refine="sq8", nprobe=8, k_factor=300)),
    ("hnsw", dict(hnsw_m=16, ef_search=256)),
])
def test_approximate_indexes_find_the_exact_neighbours_when_searched_widely(kind, params):
    # every list probed and enough candidates re-ranked: the approximate index must return the exact answer
    x, q = unit(3000), unit(40, seed=1)
    _, ids = search(build_index(x, kind, progress=False, **params), q, k=10)
    _, ref = brute(x, q, 10)
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref)])
    assert recall >= (1.0 if params.get("refine") == "flat" else 0.97)


def test_pq_alone_ranks_worse_than_with_refinement():
    x, q = unit(3000), unit(40, seed=1)
    _, ref = brute(x, q, 10)

    def recall(refine):
        _, ids = search(build_index(x, "ivfpq", nlist=8, pq_m=8, refine=refine, nprobe=8, k_factor=16,
                                    progress=False), q, 10)
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(ids, ref)])

    assert recall("none") < 0.7 and recall("flat") > 0.98


def test_round_trip_keeps_results_and_search_parameters(tmp_path):
    x, q = unit(2000), unit(20, seed=2)
    index = build_index(x, "ivfpq", nlist=16, pq_m=8, nprobe=5, k_factor=3, progress=False)
    side = sidecar_for(x, kind="ivfpq")
    save_index(tmp_path / "idx", index, side)
    assert sorted(p.name for p in (tmp_path / "idx").iterdir()) == sorted([ARRAYS_FILE, INDEX_FILE, META_FILE])
    loaded, got = load_index(tmp_path / "idx", expected_checkpoint_hash="ab" * 32, expected_dim=D)
    assert got.search_params == {"nprobe": 5, "k_factor": 3.0}
    assert got.paths == side.paths and got.kind == "ivfpq" and got.dim == D
    assert np.array_equal(got.lat, side.lat) and np.array_equal(got.lon, side.lon)
    s1, i1 = search(index, q, 10)
    s2, i2 = search(loaded, q, 10)
    assert np.array_equal(i1, i2) and np.allclose(s1, s2)


def test_mismatched_model_or_format_is_refused(tmp_path):
    x = unit(300)
    folder = save_index(tmp_path / "idx", build_index(x, progress=False), sidecar_for(x, ckpt="ab" * 32))
    with pytest.raises(GeolocError, match=r"built with model checkpoint sha256 abababababab, not this model's "
                                          r"cdcdcdcdcdcd; rebuild it"):
        load_index(folder, expected_checkpoint_hash="cd" * 32)
    with pytest.raises(GeolocError, match="holds 32-d embeddings, the model makes 512-d"):
        load_index(folder, expected_dim=512)
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "format_version": 99}))
    with pytest.raises(GeolocError, match="index format version 99"):
        load_index(folder)
    (folder / META_FILE).write_text(json.dumps({**meta, "count": "300"}))
    with pytest.raises(GeolocError, match="field 'count' missing or not int"):
        load_index(folder)
    (folder / META_FILE).write_text(json.dumps({**meta, "count": 299}))
    with pytest.raises(GeolocError, match="holds 300 x 32 vectors but the sidecar describes 299 x 32"):
        load_index(folder)


def test_damaged_or_missing_files_are_reported(tmp_path):
    x = unit(300)
    folder = save_index(tmp_path / "idx", build_index(x, progress=False), sidecar_for(x))
    meta_text = (folder / META_FILE).read_text()
    (folder / META_FILE).write_text(meta_text[: len(meta_text) // 2])  # a torn write of the JSON
    with pytest.raises(GeolocError, match=r"index.json: corrupt index sidecar"):
        load_index(folder)
    (folder / META_FILE).write_text(meta_text)
    # an index for other photos dropped into the folder
    save_index(tmp_path / "other", build_index(unit(300, seed=9), progress=False), sidecar_for(x))
    (folder / INDEX_FILE).write_bytes((tmp_path / "other" / INDEX_FILE).read_bytes())
    with pytest.raises(GeolocError, match=r"index.faiss: does not match index.json"):
        load_index(folder)
    (folder / INDEX_FILE).unlink()
    with pytest.raises(GeolocError, match=r"index.faiss: missing"):
        load_index(folder)
    with pytest.raises(GeolocError, match=r"no index here \(index.json missing\)"):
        load_index(tmp_path / "nowhere")


def test_the_sidecar_hash_is_of_the_saved_file(tmp_path):
    x = unit(100)
    folder = save_index(tmp_path / "idx", build_index(x, progress=False), sidecar_for(x))
    meta = json.loads((folder / META_FILE).read_text())
    assert meta["shards"] == [{"file": INDEX_FILE, "count": 100, "sha256": sha256_file(folder / INDEX_FILE)}]
    assert meta["checkpoint_sha256"] == "ab" * 32 and meta["count"] == 100 and meta["dim"] == D
    assert not list(folder.glob(".*.tmp"))  # no temporary files left behind


def test_bad_input_is_named():
    x = unit(300)
    bad = x.copy()
    bad[7, 3] = np.nan
    with pytest.raises(GeolocError, match="embeddings: row 7 is not finite"):
        build_index(bad, progress=False)
    with pytest.raises(GeolocError, match=r"queries: expected a non-empty \(n, 32\) array, got shape \(2, 16\)"):
        search(build_index(x, progress=False), unit(2, d=16), 5)
    with pytest.raises(GeolocError, match="index kind 'lsh'"):
        build_index(x, "lsh", progress=False)
    with pytest.raises(GeolocError, match="pq_m 5 must divide"):
        build_index(x, "ivfpq", pq_m=5, progress=False)
    with pytest.raises(GeolocError, match="too few for nlist 1024"):
        build_index(x, "ivfpq", nlist=1024, pq_m=8, progress=False)
    with pytest.raises(GeolocError, match="refine 'pq'"):
        build_index(x, "ivfpq", nlist=4, pq_m=8, refine="pq", progress=False)
    with pytest.raises(GeolocError, match="300 vectors but 299 paths"):
        save_index("/nonexistent", build_index(x, progress=False), sidecar_for(x[:299]))


def test_config_parameters_reach_the_index():
    x = unit(2000)
    cfg = IndexConfig(kind="ivfpq", nlist=16, pq_m=8, refine="sq8", nprobe=7, k_factor=2.5)
    assert set_search_params(build_index(x, progress=False, **index_params(cfg))) == {"nprobe": 7, "k_factor": 2.5}
    cfg = IndexConfig(kind="hnsw", hnsw_m=8, ef_search=21)
    index = build_index(x, progress=False, **index_params(cfg))
    assert set_search_params(index) == {"ef_search": 21} and index.hnsw.nb_neighbors(1) == 8


# --- embeddings on disk, chunks and shards ---------------------------------------------------------

class CountingRows(NpyRows):
    """NpyRows that remembers the largest slice read."""

    largest = 0

    def __getitem__(self, rows):
        out = super().__getitem__(rows)
        CountingRows.largest = max(CountingRows.largest, len(out))
        return out


def test_an_npy_file_is_indexed_a_chunk_at_a_time(tmp_path, monkeypatch):
    monkeypatch.setattr(index_module, "ADD_CHUNK", 256)
    x, q = unit(3000), unit(30, seed=1)
    np.save(tmp_path / "emb.npy", x)
    rows = CountingRows(tmp_path / "emb.npy")
    for kind, params in (("flat", {}), ("ivfpq", dict(nlist=8, pq_m=8, nprobe=8, k_factor=300))):
        from_disk = search(build_index(rows, kind, progress=False, **params), q, 10)
        in_memory = search(build_index(x, kind, progress=False, **params), q, 10)
        assert np.array_equal(from_disk[1], in_memory[1]) and np.allclose(from_disk[0], in_memory[0])
    assert CountingRows.largest == 256
    bad = x.copy()
    bad[2900, 5] = np.inf  # in the last chunk: the message names the row of the file, not of the chunk
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(GeolocError, match="embeddings: row 2900 is not finite"):
        build_index(NpyRows(tmp_path / "bad.npy"), progress=False)


@pytest.mark.parametrize("shard_size", [1000, 1100])
def test_a_sharded_flat_index_answers_like_one_file(tmp_path, shard_size):
    x, q = unit(3000), unit(50, seed=1)
    one = search(build_index(x, progress=False), q, 10)
    index = build_index(x, shard_size=shard_size, progress=False)
    assert [s.ntotal for s in shards_of(index)] == ([1000] * 3 if shard_size == 1000 else [1100, 1100, 800])
    sharded = search(index, q, 10)
    assert np.array_equal(sharded[1], one[1]) and np.allclose(sharded[0], one[0], atol=1e-6)
    assert np.array_equal(sharded[1], brute(x, q, 10)[1])
    folder = save_index(tmp_path / "idx", index, sidecar_for(x))
    names = sorted(p.name for p in folder.iterdir())
    assert names == sorted([ARRAYS_FILE, "index-000.faiss", "index-001.faiss", "index-002.faiss", META_FILE])
    meta = json.loads((folder / META_FILE).read_text())
    assert [s["count"] for s in meta["shards"]] == [s.ntotal for s in shards_of(index)]
    loaded, _ = load_index(folder)
    assert loaded.ntotal == 3000 and len(shards_of(loaded)) == 3
    again = search(loaded, q, 10)
    assert np.array_equal(again[1], one[1]) and np.allclose(again[0], one[0], atol=1e-6)
    # saved again unsharded into the same folder: the shard files go
    save_index(folder, build_index(x, progress=False), sidecar_for(x))
    assert sorted(p.name for p in folder.iterdir()) == sorted([ARRAYS_FILE, INDEX_FILE, META_FILE])
    assert np.array_equal(search(load_index(folder)[0], q, 10)[1], one[1])


def test_ivfpq_shards_share_the_trained_quantizer():
    x, q = unit(3000), unit(40, seed=1)
    for refine in ("none", "flat"):
        empty = empty_index(x, "ivfpq", nlist=16, pq_m=8, refine=refine)
        one, sharded = fill(empty, x, progress=False), fill(empty, x, shard_size=700, progress=False)
        assert len(shards_of(sharded)) == 5
        for index in (one, sharded):
            set_search_params(index, nprobe=4, k_factor=2)
        (s1, i1), (s2, i2) = search(one, q, 10), search(sharded, q, 10)
        if refine == "none":  # the same codes in the same lists: the same answer
            assert np.array_equal(i1, i2) and np.allclose(s1, s2, atol=1e-6)
        else:  # every shard re-ranks k_factor * k candidates of its own: at least as good, rank by rank
            exact = brute(x, q, 10)[1]
            assert (s2 >= s1 - 1e-6).all()
            assert recall(i2, exact) >= recall(i1, exact)


def test_search_parameters_reach_every_shard(tmp_path):
    x = unit(2000)
    index = build_index(x, "ivfpq", nlist=8, pq_m=8, nprobe=5, k_factor=3, shard_size=800, progress=False)
    assert [set_search_params(s) for s in shards_of(index)] == [{"nprobe": 5, "k_factor": 3.0}] * 3
    loaded, side = load_index(save_index(tmp_path / "idx", index, sidecar_for(x, kind="ivfpq")))
    assert side.search_params == {"nprobe": 5, "k_factor": 3.0}
    assert [set_search_params(s) for s in shards_of(loaded)] == [{"nprobe": 5, "k_factor": 3.0}] * 3
    set_search_params(loaded, nprobe=7)
    assert [set_search_params(s)["nprobe"] for s in shards_of(loaded)] == [7, 7, 7]
    cfg = IndexConfig(kind="flat", shard_size=700)
    assert len(shards_of(build_index(x, progress=False, **index_params(cfg)))) == 3


def test_a_damaged_or_missing_shard_is_refused(tmp_path):
    x = unit(3000)
    folder = save_index(tmp_path / "idx", build_index(x, shard_size=1000, progress=False), sidecar_for(x))
    meta = json.loads((folder / META_FILE).read_text())
    good = (folder / "index-001.faiss").read_bytes()
    (folder / "index-001.faiss").write_bytes(good[:-8] + bytes(8))
    with pytest.raises(GeolocError, match=r"idx/index-001.faiss: does not match index.json \(damaged"):
        load_index(folder)
    (folder / "index-001.faiss").unlink()
    with pytest.raises(GeolocError, match=r"idx/index-001.faiss: missing \(the index folder is incomplete\)"):
        load_index(folder)
    (folder / "index-001.faiss").write_bytes(good)
    meta["shards"][1]["count"] = 999
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(GeolocError, match=r"index-001.faiss: holds 1000 x 32 vectors, index.json lists 999 x 32"):
        load_index(folder)
    meta["shards"][1] = {**meta["shards"][1], "count": 1000, "file": "../elsewhere.faiss"}
    (folder / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(GeolocError, match=r"corrupt index sidecar \(shards\[1\] is not"):
        load_index(folder)
    (folder / META_FILE).write_text(json.dumps({**meta, "format_version": 1}))
    with pytest.raises(GeolocError, match="index format version 1, this geoloc reads 2; rebuild the index"):
        load_index(folder)
