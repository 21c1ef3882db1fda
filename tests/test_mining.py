import itertools

import numpy as np
import pytest
import torch

from retrieval import GeolocError
from retrieval.config import EmbeddingConfig
from retrieval.mining import (GeodesicPairMiner, GeodesicTripletMiner, PlaceBatchSampler, batch_distances,
                              make_loss, make_miner)
from retrieval.streets import euclidean_neighbours
from retrieval.geo import LocalProjection

POS, NEG = 50.0, 250.0


@pytest.fixture(scope="module")
def city():
    """600 photos in clumps along a 2 km x 2 km area; 30 of them excluded from mining (no street)."""
    rng = np.random.default_rng(0)
    centres = rng.uniform(0, 2000, (120, 2))
    xy = centres[rng.integers(0, 120, 600)] + rng.normal(0, 20, (600, 2))
    proj = LocalProjection(51.5138, -0.0984)
    x0, y0 = proj.to_xy(51.5138, -0.0984)
    lat, lon = proj.to_latlon(x0 + xy[:, 0], y0 + xy[:, 1])
    keep = np.ones(600, dtype=bool)
    keep[rng.choice(600, 30, replace=False)] = False
    dist = euclidean_neighbours(lat, lon, NEG, keep=keep, projection=proj)
    truth = np.hypot(*(xy[:, None] - xy[None]).transpose(2, 0, 1))  # independent brute force
    return dist, truth, keep


def test_batch_distances_match_the_matrix(city):
    dist, truth, keep = city
    idx = np.flatnonzero(keep)[:40]
    g = batch_distances(dist, idx)
    t = truth[np.ix_(idx, idx)]
    assert np.allclose(g[t <= NEG], t[t <= NEG], atol=1e-3) and np.isinf(g[t > NEG + 1e-3]).all()
    bad = np.flatnonzero(~keep)[:2]
    g = batch_distances(dist, np.r_[idx[:5], bad])
    assert np.isnan(g[5:]).all() and np.isnan(g[:, 5:]).all() and not np.isnan(g[:5, :5]).any()
    with pytest.raises(ValueError, match="twice"):
        batch_distances(dist, [1, 2, 1])


def test_sampler_builds_places_of_mutual_positives(city):
    dist, truth, keep = city
    sampler = PlaceBatchSampler(dist, places=6, photos_per_place=4, pos_radius_m=POS, neg_radius_m=NEG, seed=3)
    assert len(sampler) == len(sampler.anchors) // 24
    sizes = []
    for batch in sampler:
        assert len(set(batch)) == len(batch) and keep[batch].all()
        t = truth[np.ix_(batch, batch)]
        # split the batch back into places: photos within POS of each other
        place = np.full(len(batch), -1)
        for i in range(len(batch)):
            if place[i] < 0:
                place[(t[i] <= POS) & (place < 0)] = i
        for p in np.unique(place):
            members = place == p
            assert 2 <= members.sum() <= 4
            assert (t[np.ix_(members, members)] <= POS).all()
            assert (t[np.ix_(members, ~members)] > NEG).all()  # other places are negatives
        sizes.append(len(np.unique(place)))
    assert np.mean(sizes) > 5  # the area has room for 6 places nearly always
    # same seed and epoch, same batches; a new epoch, new batches
    assert list(sampler) == list(sampler)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_sampler_without_positive_pairs_says_so():
    proj = LocalProjection(51.5138, -0.0984)
    x0, y0 = proj.to_xy(51.5138, -0.0984)
    lat, lon = proj.to_latlon(x0 + np.arange(5) * 400.0, np.full(5, y0))
    with pytest.raises(GeolocError, match="no positive pairs"):
        PlaceBatchSampler(euclidean_neighbours(lat, lon, NEG))


@pytest.mark.parametrize("strategy", ["semihard", "hard", "all", "hardest"])
def test_triplet_miner_obeys_the_ground_rules(city, strategy):
    dist, truth, keep = city
    miner = GeodesicTripletMiner(dist, POS, NEG, strategy=strategy, margin=0.3)
    sampler = PlaceBatchSampler(dist, places=6, photos_per_place=4, seed=1)
    torch.manual_seed(0)
    found = 0
    for step, batch in enumerate(sampler):
        # a few excluded photos and photos between the radii ride along, as a real batch may hold
        extra = np.setdiff1d(np.r_[np.flatnonzero(~keep)[step % 30], np.random.default_rng(step).choice(600, 6)],
                             batch)
        batch = np.r_[batch, extra]
        emb = torch.nn.functional.normalize(torch.randn(len(batch), 8), dim=1)
        a, p, n = (t.numpy() for t in miner(emb, torch.as_tensor(batch)))
        ga, gp, gn = batch[a], batch[p], batch[n]
        assert (a != p).all()
        assert (truth[ga, gp] <= POS).all() and (truth[ga, gn] > NEG).all()
        assert keep[ga].all() and keep[gp].all() and keep[gn].all()
        d = torch.cdist(emb, emb).numpy()
        m = d[a, n] - d[a, p]
        ours = set(zip(a, p, n))
        assert len(ours) == len(a)
        assert brute_force_triplets(batch, truth, keep, d, strategy, 0.3, -1e-5) <= ours
        assert ours <= brute_force_triplets(batch, truth, keep, d, strategy, 0.3, 1e-5)
        if strategy == "semihard":
            assert ((m > -1e-5) & (m <= 0.3 + 1e-5)).all()
        found += len(a)
    assert found > 0


def brute_force_triplets(batch, truth, keep, d, strategy, margin, slack):
    """Every triplet the rules allow, by loops; slack > 0 widens the embedding test, < 0 narrows it."""
    out = set()
    for a, p in itertools.permutations(range(len(batch)), 2):
        if not (keep[batch[a]] and keep[batch[p]] and truth[batch[a], batch[p]] <= POS):
            continue
        negs = [n for n in range(len(batch)) if keep[batch[n]] and truth[batch[a], batch[n]] > NEG]
        if strategy == "hardest":
            out.update({(a, p, min(negs, key=lambda n: d[a, n]))} if negs else set())
            continue
        for n in negs:
            m = d[a, n] - d[a, p]
            if {"semihard": -slack < m <= margin + slack, "hard": m <= slack, "all": m <= margin + slack}[strategy]:
                out.add((a, p, n))
    return out


def test_pair_miner_obeys_the_ground_rules(city):
    dist, truth, keep = city
    miner = GeodesicPairMiner(dist, POS, NEG)
    batch = np.r_[next(iter(PlaceBatchSampler(dist, seed=2))), np.flatnonzero(~keep)[:3]]
    a1, p, a2, n = (t.numpy() for t in miner(torch.zeros(len(batch), 4), batch))
    t = truth[np.ix_(batch, batch)]
    ok = keep[batch]
    want_pos = {(i, j) for i, j in zip(*np.nonzero(t <= POS)) if i != j and ok[i] and ok[j]}
    want_neg = {(i, j) for i, j in zip(*np.nonzero(t > NEG)) if ok[i] and ok[j]}
    assert set(zip(a1, p)) == want_pos and set(zip(a2, n)) == want_neg and want_pos and want_neg


@pytest.mark.parametrize("loss", ["triplet", "multi_similarity", "contrastive"])
def test_a_gradient_step_pulls_positives_together(city, loss):
    dist, truth, keep = city
    cfg = EmbeddingConfig(loss=loss, miner="all", margin=0.2)
    loss_fn, miner = make_loss(cfg), make_miner(cfg, dist)
    batch = torch.as_tensor(next(iter(PlaceBatchSampler(dist, seed=5))))
    torch.manual_seed(0)
    features = torch.randn(len(batch), 16)
    model = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(5):
        emb = torch.nn.functional.normalize(model(features), dim=1)
        value = loss_fn(emb, indices_tuple=miner(emb, batch))
        opt.zero_grad()
        value.backward()
        opt.step()
        losses.append(value.item())
    assert all(np.isfinite(losses)) and losses[0] > 0
    assert losses[-1] < losses[0]
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


def test_factory_rejects_unknown_names(city):
    dist = city[0]
    with pytest.raises(GeolocError, match="embedding.loss 'arcface'"):
        make_loss(EmbeddingConfig(loss="arcface"))
    with pytest.raises(GeolocError, match="miner 'easy'"):
        make_miner(EmbeddingConfig(miner="easy"), dist)
    with pytest.raises(GeolocError, match="must be smaller"):
        make_miner(EmbeddingConfig(pos_radius_m=300), dist)
