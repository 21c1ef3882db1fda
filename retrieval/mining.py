"""Batches and mining by distance on the ground, for metric learning with pytorch-metric-learning.

Positives are photos within pos_radius_m of each other, negatives beyond neg_radius_m; photos between
the radii are neither, since they may or may not show the same scene. Distances come from
`retrieval.streets` (geodesic or euclidean): a sparse matrix holding every pair within neg_radius_m,
where a photo excluded from mining has an empty row (every kept photo holds itself at distance 0).
pml's own miners work from class labels, which cannot express "within 50 m of each other", so the
miners here return explicit index tuples for pml's losses.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from pytorch_metric_learning import distances, losses

from retrieval import GeolocError

TRIPLET_STRATEGIES = ("semihard", "hard", "all", "hardest")
LOSSES = ("triplet", "multi_similarity", "contrastive")


def kept_photos(dist: sp.csr_matrix) -> np.ndarray:
    """Photos taking part in mining: those with a non-empty row (each kept photo is its own neighbour)."""
    return np.diff(dist.indptr) > 0


def batch_distances(dist: sp.csr_matrix, photo_idx) -> np.ndarray:
    """(B, B) ground distances between a batch's photos: inf beyond the matrix's radius, NaN where either
    photo is excluded (its distances are unknown, so it is neither positive nor negative)."""
    idx = np.asarray(photo_idx, dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise ValueError("batch_distances: a photo appears twice in the batch")
    pos = np.full(dist.shape[0], -1, dtype=np.int64)
    pos[idx] = np.arange(len(idx))
    rows = dist[idx]  # row slicing keeps explicit zeros
    r = np.repeat(np.arange(len(idx)), np.diff(rows.indptr))
    c = pos[rows.indices]
    out = np.full((len(idx), len(idx)), np.inf)
    out[r[c >= 0], c[c >= 0]] = rows.data[c >= 0]
    unknown = ~kept_photos(dist)[idx]
    out[unknown, :] = np.nan
    out[:, unknown] = np.nan
    return out


class PlaceBatchSampler(torch.utils.data.Sampler):
    """Batches of P places x K photos, as lists of photo indices for a DataLoader's batch_sampler.

    A place is a random anchor photo plus up to K-1 photos drawn from its positives such that all of the
    place's photos are within pos_radius_m of each other. Photos within neg_radius_m of a place already in
    the batch are not used again in that batch, so photos of different places are always negatives of each
    other. A place with no positive left is skipped; a batch may come out short when the city is too
    small for P such places. Deterministic for a given (seed, epoch): call set_epoch each epoch.

    With several processes (world > 1) every rank draws the same global batch of world x P places and
    keeps its own contiguous share of the places, so ranks see distinct places, the concatenation of
    the ranks' batches (in rank order) is the global batch, and every rank yields the same number of
    batches. A global batch with fewer places than ranks is skipped by all of them.
    """

    def __init__(self, dist: sp.csr_matrix, places: int = 8, photos_per_place: int = 4,
                 pos_radius_m: float = 50.0, neg_radius_m: float = 250.0, batches: int = 0, seed: int = 0,
                 rank: int = 0, world: int = 1):
        if places < 1 or photos_per_place < 2:
            raise GeolocError(f"batches need >= 1 place and >= 2 photos per place "
                              f"(got {places} x {photos_per_place})")
        self.dist = dist.tocsr()
        self.places, self.per_place = places, photos_per_place
        self.pos_radius_m, self.neg_radius_m = pos_radius_m, neg_radius_m
        self.seed, self.epoch = seed, 0
        d = self.dist
        close = (d.data <= pos_radius_m) & (d.indices != np.repeat(np.arange(d.shape[0]), np.diff(d.indptr)))
        self.anchors = np.flatnonzero(np.bincount(np.repeat(np.arange(d.shape[0]), np.diff(d.indptr))[close],
                                                  minlength=d.shape[0]))
        if len(self.anchors) == 0:
            raise GeolocError(f"no photo has another within pos_radius {pos_radius_m:g} m: no positive pairs "
                              "to learn from (more photos per place, or a larger pos_radius_m)")
        if not 0 <= rank < world:
            raise GeolocError(f"rank {rank} is not in a world of {world} processes")
        self.rank, self.world = rank, world
        self.batches = batches or max(1, len(self.anchors) // (places * photos_per_place * world))

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    def _row(self, i: int, radius: float) -> np.ndarray:
        lo, hi = self.dist.indptr[i], self.dist.indptr[i + 1]
        return self.dist.indices[lo:hi][self.dist.data[lo:hi] <= radius]

    def _place(self, anchor: int, used: np.ndarray, rng: np.random.Generator) -> list[int]:
        group = [anchor]
        for c in rng.permutation(self._row(anchor, self.pos_radius_m)):
            if len(group) == self.per_place:
                break
            if c != anchor and not used[c] and np.isin(group, self._row(c, self.pos_radius_m)).all():
                group.append(int(c))
        return group

    def _global_batch(self, rng: np.random.Generator) -> list[list[int]]:
        used = np.zeros(self.dist.shape[0], dtype=bool)
        groups: list[list[int]] = []
        for anchor in rng.permutation(self.anchors):
            if len(groups) == self.places * self.world:
                break
            if used[anchor]:
                continue
            group = self._place(int(anchor), used, rng)
            if len(group) < 2:
                continue
            for p in group:
                used[self._row(p, self.neg_radius_m)] = True
            groups.append(group)
        return groups

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches):
            groups = self._global_batch(rng)
            if len(groups) < self.world:
                continue
            share = np.array_split(np.arange(len(groups)), self.world)[self.rank]
            yield [p for g in share for p in groups[g]]


def _embedding_distances(distance: distances.BaseDistance, embeddings: torch.Tensor) -> torch.Tensor:
    """Pairwise dissimilarity (smaller = closer) whatever the pml distance's direction."""
    mat = distance(embeddings.detach().float())
    return -mat if distance.is_inverted else mat


class GeodesicTripletMiner:
    """(anchor, positive, negative) batch positions for pml's TripletMarginLoss under the ground rules.

    Candidates are every (a, p, n) with p within pos_radius_m of a (p != a) and n beyond neg_radius_m of a;
    with m = d(a, n) - d(a, p) in embedding space, `strategy` keeps (as pml's TripletMarginMiner):
    semihard 0 < m <= margin, hard m <= 0, all m <= margin, hardest the closest negative of each (a, p).
    """

    def __init__(self, dist: sp.csr_matrix, pos_radius_m: float = 50.0, neg_radius_m: float = 250.0,
                 strategy: str = "semihard", margin: float = 0.1,
                 distance: distances.BaseDistance | None = None):
        if strategy not in TRIPLET_STRATEGIES:
            raise GeolocError(f"miner {strategy!r}: expected one of {', '.join(TRIPLET_STRATEGIES)}")
        if not pos_radius_m < neg_radius_m:
            raise GeolocError(f"pos_radius_m ({pos_radius_m:g}) must be smaller than neg_radius_m ({neg_radius_m:g})")
        self.dist = dist.tocsr()
        self.pos_radius_m, self.neg_radius_m = pos_radius_m, neg_radius_m
        self.strategy, self.margin = strategy, margin
        self.distance = distance or distances.LpDistance()  # TripletMarginLoss's own default

    def ground_masks(self, photo_idx) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, B) boolean positive and negative masks of a batch, from the photos' global indices."""
        g = batch_distances(self.dist, np.asarray(photo_idx))
        with np.errstate(invalid="ignore"):
            pos = (g <= self.pos_radius_m) & ~np.eye(len(g), dtype=bool)
            neg = g > self.neg_radius_m
        return torch.from_numpy(pos), torch.from_numpy(neg)

    def __call__(self, embeddings: torch.Tensor, photo_idx) -> tuple[torch.Tensor, ...]:
        pos, neg = (m.to(embeddings.device) for m in self.ground_masks(_as_numpy(photo_idx)))
        d = _embedding_distances(self.distance, embeddings)
        a, p = torch.nonzero(pos, as_tuple=True)
        if self.strategy == "hardest":
            an = torch.where(neg[a], d[a], torch.inf)
            n = an.argmin(dim=1)
            keep = torch.isfinite(an.min(dim=1).values)
            return a[keep], p[keep], n[keep]
        # (pairs, B) margins of every candidate negative for each positive pair
        m = d[a] - d[a, p][:, None]
        ok = neg[a] & {"semihard": (m > 0) & (m <= self.margin), "hard": m <= 0,
                       "all": m <= self.margin}[self.strategy]
        i, n = torch.nonzero(ok, as_tuple=True)
        return a[i], p[i], n


class GeodesicPairMiner:
    """(anchor1, positive, anchor2, negative) positions of every positive and negative pair of a batch, for
    pair losses (multi-similarity, contrastive) that weigh their pairs themselves."""

    def __init__(self, dist: sp.csr_matrix, pos_radius_m: float = 50.0, neg_radius_m: float = 250.0):
        self._masks = GeodesicTripletMiner(dist, pos_radius_m, neg_radius_m).ground_masks

    def __call__(self, embeddings: torch.Tensor, photo_idx) -> tuple[torch.Tensor, ...]:
        pos, neg = (m.to(embeddings.device) for m in self._masks(_as_numpy(photo_idx)))
        a1, p = torch.nonzero(pos, as_tuple=True)
        a2, n = torch.nonzero(neg, as_tuple=True)
        return a1, p, a2, n


def _as_numpy(photo_idx) -> np.ndarray:
    return photo_idx.detach().cpu().numpy() if isinstance(photo_idx, torch.Tensor) else np.asarray(photo_idx)


def make_loss(cfg) -> losses.BaseMetricLossFunction:
    """The pml loss named by cfg.loss (an EmbeddingConfig); call it as loss(emb, indices_tuple=miner(emb, idx))."""
    if cfg.loss == "triplet":
        return losses.TripletMarginLoss(margin=cfg.margin)
    if cfg.loss == "multi_similarity":
        return losses.MultiSimilarityLoss()
    if cfg.loss == "contrastive":
        return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)
    raise GeolocError(f"embedding.loss {cfg.loss!r}: expected one of {', '.join(LOSSES)}")


def make_miner(cfg, dist: sp.csr_matrix):
    """The miner for cfg.loss: triplets chosen by cfg.miner for the triplet loss, all pairs for pair losses."""
    if cfg.loss == "triplet":
        return GeodesicTripletMiner(dist, cfg.pos_radius_m, cfg.neg_radius_m, cfg.miner, cfg.margin)
    if cfg.loss in LOSSES:
        return GeodesicPairMiner(dist, cfg.pos_radius_m, cfg.neg_radius_m)
    raise GeolocError(f"embedding.loss {cfg.loss!r}: expected one of {', '.join(LOSSES)}")
