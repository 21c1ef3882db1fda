import itertools

import numpy as np
import pytest
import torch

from retrieval import GeolocError
from retrieval.config import EmbeddingConfig, load_config
from retrieval.geo import LocalProjection, heading_gap_deg
from retrieval.learning.losses import make_loss, make_miner
from retrieval.learning.mining import (GeodesicPairMiner, GeodesicTripletMiner, GroundRules, PhotoMemory, PlaceBatchSampler,
                              batch_distances, informative_pairs, positive_candidates, resolve_supervision)
from retrieval.data.streets import euclidean_neighbours

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
    sampler = PlaceBatchSampler(dist, places=6, photos_per_place=4, pos_radius_m=POS, seed=3)
    assert len(sampler) == len(sampler.anchors) // 24
    assert len(list(sampler)) == len(sampler)  # the progress bar's count is what an epoch yields
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
            assert (t[np.ix_(members, ~members)] > POS).all()  # no photo of another place is a candidate
        sizes.append(len(np.unique(place)))
    assert np.mean(sizes) == 6  # places need only be apart by pos_radius_m: the area has room
    # same seed and epoch, same batches; a new epoch, new batches
    assert list(sampler) == list(sampler)
    first = list(sampler)
    sampler.set_epoch(1)
    assert list(sampler) != first


def test_sampler_without_positive_pairs_says_so():
    proj = LocalProjection(51.5138, -0.0984)
    x0, y0 = proj.to_xy(51.5138, -0.0984)
    lat, lon = proj.to_latlon(x0 + np.arange(5) * 400.0, np.full(5, y0))
    with pytest.raises(GeolocError, match="no photo has a positive candidate"):
        PlaceBatchSampler(euclidean_neighbours(lat, lon, NEG))


@pytest.mark.parametrize("strategy", ["semihard", "hard", "all", "hardest"])
def test_triplet_miner_obeys_the_ground_rules(city, strategy):
    dist, truth, keep = city
    miner = GeodesicTripletMiner(rules(dist), strategy=strategy, margin=0.3)
    sampler = PlaceBatchSampler(dist, places=6, photos_per_place=4, pos_radius_m=POS, seed=1)
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


def rules(dist, weak=False):
    return GroundRules(dist, positive_candidates(dist, POS), NEG, weak=weak)


def test_pair_miner_obeys_the_ground_rules(city):
    dist, truth, keep = city
    miner = GeodesicPairMiner(rules(dist), "all")
    batch = np.r_[next(iter(PlaceBatchSampler(dist, pos_radius_m=POS, seed=2))), np.flatnonzero(~keep)[:3]]
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
    loss_fn, miner = make_loss(cfg), make_miner(cfg, rules(dist))
    batch = torch.as_tensor(next(iter(PlaceBatchSampler(dist, pos_radius_m=POS, seed=5))))
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


def test_batch_distances_to_a_memory_with_repeats(city):
    dist, truth, keep = city
    kept, bad = np.flatnonzero(keep), np.flatnonzero(~keep)
    idx = kept[:10]
    ref = np.r_[idx[3], kept[20:25], idx[3], bad[0], kept[40]]
    g = batch_distances(dist, idx, ref)
    t = truth[np.ix_(idx, ref)]
    known = np.ones(len(ref), dtype=bool)
    known[7] = False  # the excluded photo
    assert g.shape == (10, 9) and np.isnan(g[:, 7]).all() and not np.isnan(g[:, known]).any()
    tk, gk = t[:, known], g[:, known]
    assert np.allclose(gk[tk <= NEG], tk[tk <= NEG], atol=1e-3) and np.isinf(gk[tk > NEG + 1e-3]).all()
    assert np.array_equal(g[:, 0], g[:, 6]) and g[3, 0] == 0  # a repeated photo gets the same column


def test_pair_miner_mines_a_memory_beside_the_batch(city):
    dist, truth, keep = city
    batches = iter(PlaceBatchSampler(dist, pos_radius_m=POS, seed=3))
    batch, earlier = np.asarray(next(batches)), np.asarray(next(batches))
    memory = PhotoMemory(len(earlier))
    memory.push(torch.randn(len(earlier), 4), torch.as_tensor(earlier))
    emb = torch.nn.functional.normalize(torch.randn(len(batch), 4), dim=1)
    ref, ref_idx = memory.references(emb, torch.as_tensor(batch))
    assert torch.equal(ref_idx, torch.as_tensor(np.r_[batch, earlier])) and torch.equal(ref[:len(batch)], emb)
    a1, p, a2, n = (t.numpy() for t in GeodesicPairMiner(rules(dist), "all")(emb, batch, ref, ref_idx))
    cols = np.r_[batch, earlier]
    t = truth[np.ix_(batch, cols)]
    want_pos = {(i, j) for i, j in zip(*np.nonzero(t <= POS)) if batch[i] != cols[j]}
    want_neg = set(zip(*np.nonzero(t > NEG)))
    assert set(zip(a1, p)) == want_pos and set(zip(a2, n)) == want_neg
    assert (p >= len(batch)).any() and (n >= len(batch)).any()  # pairs reach into the memory


def test_photo_memory_keeps_the_latest_photos():
    memory = PhotoMemory(6)
    for start in (0, 4, 8):
        memory.push(torch.full((4, 2), float(start)), torch.arange(start, start + 4))
    assert memory.idx.tolist() == [6, 7, 8, 9, 10, 11] and memory.emb[:, 0].tolist() == [4, 4, 8, 8, 8, 8]
    ref, ref_idx = memory.references(torch.zeros(2, 2), torch.tensor([20, 21]))
    assert ref_idx.tolist() == [20, 21, 6, 7, 8, 9, 10, 11] and ref.shape == (8, 2)


def test_a_gradient_step_with_a_memory_pulls_positives_together(city):
    dist, truth, keep = city
    cfg = EmbeddingConfig(loss="multi_similarity", miner="all", ms_alpha=1.0, ms_base=0.0)
    loss_fn, miner = make_loss(cfg), make_miner(cfg, rules(dist))
    sampler = iter(PlaceBatchSampler(dist, pos_radius_m=POS, seed=5))
    batches = [torch.as_tensor(next(sampler)) for _ in range(2)]
    torch.manual_seed(0)
    features = [torch.randn(len(b), 16) for b in batches]
    model = torch.nn.Linear(16, 8)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)

    def in_batch_loss() -> float:  # the memory's loss grows as it fills, so judge without it
        with torch.no_grad():
            embs = [torch.nn.functional.normalize(model(f), dim=1) for f in features]
            return sum(loss_fn(e, indices_tuple=miner(e, b)).item() for e, b in zip(embs, batches))

    before, memory = in_batch_loss(), PhotoMemory(64)
    for step in range(8):
        b = step % 2
        emb = torch.nn.functional.normalize(model(features[b]), dim=1)
        ref, ref_idx = memory.references(emb, batches[b])
        value = loss_fn(emb, indices_tuple=miner(emb, batches[b], ref, ref_idx), ref_emb=ref)
        memory.push(emb, batches[b])
        opt.zero_grad()
        value.backward()
        opt.step()
        assert np.isfinite(value.item()) and value.item() > 0
    assert len(memory.idx) == 64 and in_batch_loss() < before


def test_unknown_losses_and_miners_are_refused_when_the_config_loads():
    # the factory's lists (retrieval.learning.losses) are what config validation reads
    with pytest.raises(GeolocError, match="embedding.loss='arcface': choose one of triplet, multi_similarity, contrastive"):
        load_config(None, ["embedding.loss=arcface"])
    with pytest.raises(GeolocError, match="with embedding.loss=triplet choose one of semihard, hard, all, hardest"):
        load_config(None, ["embedding.loss=triplet", "embedding.miner=easy"])
    with pytest.raises(GeolocError, match="with embedding.loss=multi_similarity choose one of multi_similarity, all"):
        load_config(None, ["embedding.miner=semihard"])


# --- hand-built cases ------------------------------------------------------------------------------

def line_of_photos(xs):
    """Photos on an east-west line at xs metres, and their euclidean distance matrix."""
    proj = LocalProjection(51.5138, -0.0984)
    x0, y0 = proj.to_xy(51.5138, -0.0984)
    lat, lon = proj.to_latlon(x0 + np.asarray(xs, float), np.full(len(xs), y0))
    return euclidean_neighbours(lat, lon, 500.0, projection=proj)


def test_heading_gap_wraps_round_north():
    assert heading_gap_deg([350, 10, 90, 0], [10, 350, 270, 180]).tolist() == [20, 20, 180, 180]


def test_positives_need_the_radius_and_the_heading():
    # 0 and 1: 10 m apart facing 30 degrees apart (positive); 0 and 2: 20 m apart facing opposite ways;
    # 1 and 2: 10 m apart, 150 degrees apart; 3: 300 m away (a negative of all)
    dist = line_of_photos([0, 10, 20, 300])
    heading = np.array([0.0, 30.0, 180.0, 0.0])
    cand = positive_candidates(dist, 25.0, heading, 45.0).toarray()
    assert {tuple(p) for p in np.argwhere(cand)} == {(0, 1), (1, 0)}
    no_heading = positive_candidates(dist, 25.0).toarray()
    assert {tuple(p) for p in np.argwhere(no_heading)} == {(0, 1), (1, 0), (0, 2), (2, 0), (1, 2), (2, 1)}
    pos, neg = GroundRules(dist, positive_candidates(dist, 25.0, heading, 45.0), 100.0).masks([0, 1, 2, 3])
    assert {tuple(p) for p in np.argwhere(pos.numpy())} == {(0, 1), (1, 0)}
    assert {tuple(p) for p in np.argwhere(neg.numpy())} == {(0, 3), (1, 3), (2, 3), (3, 0), (3, 1), (3, 2)}
    # the sampler only groups photos that face alike
    sampler = PlaceBatchSampler(dist, places=2, photos_per_place=3, pos_radius_m=25.0,
                                candidates=positive_candidates(dist, 25.0, heading, 45.0))
    assert [sorted(b) for b in sampler] == [[0, 1]]


def test_photos_near_in_a_straight_line_are_never_negatives():
    # 0 and 1 stand 20 m apart on two sides of a building, 300 m apart along the streets; 2 and 3 are
    # two headings at one position (distance 0); 4 is 300 m from everyone in both senses
    import scipy.sparse as sp

    n = 5
    far = {(0, 1): 300.0, (0, 4): 300.0, (1, 4): 300.0, (2, 4): 300.0, (3, 4): 300.0, (0, 2): 200.0,
           (0, 3): 200.0, (1, 2): 200.0, (1, 3): 200.0, (2, 3): 0.0}
    entries = [(i, j, d) for (a, b), d in far.items() for i, j in ((a, b), (b, a))] + [(i, i, 0.0) for i in range(n)]
    r, c, v = (list(t) for t in zip(*entries))
    streets = sp.csr_matrix((v, (r, c)), shape=(n, n))
    straight = sp.csr_matrix(([20.0, 20.0, 0.0, 0.0], ([0, 1, 2, 3], [1, 0, 3, 2])), shape=(n, n))
    cand = positive_candidates(streets, 25.0)
    _, neg = GroundRules(streets, cand, 100.0).masks(range(n))
    assert neg[0, 1] and neg[1, 0]
    _, neg = GroundRules(streets, cand, 100.0, never_negative=straight).masks(range(n))
    assert not neg[0, 1] and not neg[1, 0]
    assert {tuple(p) for p in np.argwhere(neg.numpy())} == {
        (a, b) for (i, j), d in far.items() if d > 100 and (i, j) != (0, 1) for a, b in ((i, j), (j, i))}


def test_weak_supervision_takes_the_closest_candidate_in_embedding_space():
    dist = line_of_photos([0, 5, 10, 400])
    emb = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.0, 1.0], [-1.0, 0.0]])
    r = GroundRules(dist, positive_candidates(dist, 25.0), 100.0, weak=True)
    pos, neg = r.masks([0, 1, 2, 3], -(emb @ emb.T))
    # 0's best is 1 (0.8); 1's is 0 (0.8 against 0.6); 2's is 1 (0.6 against 0); 3 has none
    assert {tuple(p) for p in np.argwhere(pos.numpy())} == {(0, 1), (1, 0), (2, 1)}
    assert neg[:3, 3].all() and not neg[:3, :3].any()


def test_supervision_auto_follows_the_headings():
    assert resolve_supervision("auto", np.array([1.0, 2.0])) == "heading"
    assert resolve_supervision("auto", np.array([1.0, np.nan])) == "weak"
    assert resolve_supervision("auto", None) == "weak"
    assert resolve_supervision("radius", None) == "radius"
    with pytest.raises(GeolocError, match="no heading for every photo"):
        resolve_supervision("heading", None)


def test_informative_pairs_follow_the_multi_similarity_rule():
    # anchor 0: positives 1 (sim 0.9) and 2 (0.3); negatives 3 (0.35) and 4 (-0.5). With epsilon 0.1:
    # negative 3 is kept (0.45 > 0.3), 4 is not; positive 2 is kept (0.2 < 0.35), 1 is not (0.8)
    sim = torch.zeros(5, 5)
    sim[0, 1:] = torch.tensor([0.9, 0.3, 0.35, -0.5])
    pos = torch.zeros(5, 5, dtype=torch.bool)
    neg = torch.zeros(5, 5, dtype=torch.bool)
    pos[0, 1] = pos[0, 2] = True
    neg[0, 3] = neg[0, 4] = True
    p, n = informative_pairs(sim, pos, neg, 0.1)
    assert np.argwhere(p.numpy()).tolist() == [[0, 2]] and np.argwhere(n.numpy()).tolist() == [[0, 3]]


def test_hard_batches_bring_the_look_alike_places_beyond_the_negative_radius():
    # five places of two photos on a line: A at 0 m, B 1 km, C 2 km, D 3 km, E 3.05 km (within 100 m of D)
    xs = [0, 5, 1000, 1005, 2000, 2005, 3000, 3005, 3050, 3055]
    proj = LocalProjection(51.5138, -0.0984)
    x0, y0 = proj.to_xy(51.5138, -0.0984)
    lat, lon = proj.to_latlon(x0 + np.asarray(xs, float), np.full(len(xs), y0))
    dist = euclidean_neighbours(lat, lon, 100.0, projection=proj)
    place = np.arange(10) // 2
    alike = {0: [2], 1: [3], 2: [4], 3: [4, 0], 4: [1]}  # by hand: D's look-alike E is too near, so A
    rows = [[p ^ 1] + [q for t in alike[place[p]] for q in (2 * t, 2 * t + 1)] for p in range(10)]
    neighbours = np.array([r + [p ^ 1] * (5 - len(r)) for p, r in enumerate(rows)])  # padded to equal length
    expected = {0: 2, 1: 3, 2: 4, 3: 0, 4: 1}

    kw = dict(places=2, photos_per_place=2, pos_radius_m=25.0, batches=20, seed=7)
    random = list(PlaceBatchSampler(dist, **kw))
    sampler = PlaceBatchSampler(dist, hard_places=2, **kw)
    assert list(sampler) == random  # no neighbours yet: the random batches, unchanged
    sampler.set_neighbours(neighbours)
    batches = list(sampler)
    assert all(len(b) == 4 and place[b[2]] == expected[place[b[0]]] for b in batches)
    assert len({place[b[0]] for b in batches}) == 5  # the first place is still drawn at random
    assert any(place[b[2]] != expected[place[b[0]]] for b in random)
    with pytest.raises(ValueError, match="3 rows for 10 photos"):
        sampler.set_neighbours(neighbours[:3])


def test_nearest_photos_match_a_brute_force_sort():
    from retrieval.methods.embedding import nearest_photos

    emb = np.random.default_rng(0).normal(size=(300, 16)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sims = emb @ emb.T
    np.fill_diagonal(sims, -np.inf)
    assert np.array_equal(nearest_photos(emb, 5), np.argsort(-sims, axis=1, kind="stable")[:, :5])
