"""Batches and mining by distance on the ground, for metric learning with pytorch-metric-learning.

Positive candidates are photos within pos_radius_m of each other that, when headings are known, also
face within heading_tol_deg of each other (two photos 20 m apart facing opposite ways share nothing).
Without headings, supervision is weak (as NetVLAD and VG-benchmark): of an anchor's candidates in the
batch only the one closest in embedding space is its positive. Negatives are photos beyond
neg_radius_m; pairs in between are neither. Distances come from `retrieval.data.streets` (geodesic or
euclidean): a sparse matrix holding every pair within neg_radius_m, where a photo excluded from mining
has an empty row (every kept photo holds itself at distance 0). pml's own miners work from class
labels, which cannot express "within 25 m of each other", so the miners here return explicit index
tuples for pml's losses.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
from pytorch_metric_learning import distances

from retrieval import GeolocError
from retrieval.geo import heading_gap_deg



def kept_photos(dist: sp.csr_matrix) -> np.ndarray:
    """Photos taking part in mining: those with a non-empty row (each kept photo is its own neighbour)."""
    return np.diff(dist.indptr) > 0


def batch_distances(dist: sp.csr_matrix, photo_idx, ref_idx=None) -> np.ndarray:
    """(B, R) ground distances from a batch's photos to the reference photos `ref_idx` (default: the
    batch itself, so (B, B)): inf beyond the matrix's radius, NaN where either photo is excluded (its
    distances are unknown, so it is neither positive nor negative). A reference photo may appear more
    than once (a memory of earlier batches); a batch photo may not."""
    idx = np.asarray(photo_idx, dtype=np.int64)
    if len(np.unique(idx)) != len(idx):
        raise ValueError("batch_distances: a photo appears twice in the batch")
    ref = idx if ref_idx is None else np.asarray(ref_idx, dtype=np.int64)
    uniq, col = np.unique(ref, return_inverse=True)
    pos = np.full(dist.shape[0], -1, dtype=np.int64)
    pos[uniq] = np.arange(len(uniq))
    rows = dist[idx]  # row slicing keeps explicit zeros
    r = np.repeat(np.arange(len(idx)), np.diff(rows.indptr))
    c = pos[rows.indices]
    out = np.full((len(idx), len(uniq)), np.inf)
    out[r[c >= 0], c[c >= 0]] = rows.data[c >= 0]
    out = out[:, col.ravel()]
    kept = kept_photos(dist)
    out[~kept[idx], :] = np.nan
    out[:, ~kept[ref]] = np.nan
    return out


def resolve_supervision(supervision: str, heading) -> str:
    """auto -> heading where every photo has a heading, else weak."""
    known = heading is not None and len(heading) > 0 and bool(np.isfinite(heading).all())
    if supervision == "heading" and not known:
        raise GeolocError("embedding.supervision=heading: the training manifest has no heading for every "
                          "photo (use weak or auto)")
    if supervision == "auto":
        return "heading" if known else "weak"
    return supervision


def positive_candidates(dist: sp.csr_matrix, pos_radius_m: float, heading=None,
                        heading_tol_deg: float = 180.0) -> sp.csr_matrix:
    """Boolean (N, N) matrix of candidate positive pairs: distinct photos within pos_radius_m and, with
    headings, facing within heading_tol_deg of each other."""
    c = dist.tocoo()
    keep = (c.data <= pos_radius_m) & (c.row != c.col)
    if heading is not None:
        keep &= heading_gap_deg(heading[c.row], heading[c.col]) <= heading_tol_deg
    return sp.csr_matrix((np.ones(int(keep.sum()), dtype=bool), (c.row[keep], c.col[keep])), shape=dist.shape)


class PlaceBatchSampler(torch.utils.data.Sampler):
    """Batches of P places x K photos, as lists of photo indices for a DataLoader's batch_sampler.

    A place is a random anchor photo plus up to K-1 of its positive candidates such that all of the
    place's photos are candidates of each other. No photo within pos_radius_m of a place already in the
    batch is used again in that batch, so no two places could share a positive. A place with no
    candidate left is skipped; a batch may come out short when the city is too small for P such
    places. Deterministic for a given (seed, epoch): call set_epoch each epoch.

    With several processes (world > 1) every rank draws the same global batch of world x P places and
    keeps its own contiguous share of the places, so ranks see distinct places, the concatenation of
    the ranks' batches (in rank order) is the global batch, and every rank yields exactly len() batches.

    Hard batches (hard_places = n >= 2, once set_neighbours has given each photo's nearest photos in
    embedding space): each random place brings the n-1 places that look most like it, taken in order
    from its anchor's neighbours, skipping photos within neg_radius_m of the batch's places (pairs that
    close are never negatives, so they would teach nothing). The look-alikes far away are exactly the
    wrong first answers a query gets (GPM, Ali-bey et al. 2022, builds batches the same way).
    """

    def __init__(self, dist: sp.csr_matrix, places: int = 8, photos_per_place: int = 4,
                 pos_radius_m: float = 25.0, candidates: sp.csr_matrix | None = None, batches: int = 0,
                 seed: int = 0, rank: int = 0, world: int = 1, hard_places: int = 0):
        if places < 1 or photos_per_place < 2:
            raise GeolocError(f"batches need >= 1 place and >= 2 photos per place "
                              f"(got {places} x {photos_per_place})")
        self.near = positive_candidates(dist, pos_radius_m)  # the exclusion zone of a place
        self.cand = (candidates if candidates is not None else self.near).tocsr()
        self.places, self.per_place = places, photos_per_place
        self.seed, self.epoch = seed, 0
        self.anchors = np.flatnonzero(np.diff(self.cand.indptr) > 0)
        if len(self.anchors) == 0:
            raise GeolocError(f"no photo has a positive candidate (another photo within pos_radius "
                              f"{pos_radius_m:g} m, facing alike where headings are known): nothing to learn "
                              "from (more photos per place, a larger pos_radius_m or heading_tol_deg)")
        if not 0 <= rank < world:
            raise GeolocError(f"rank {rank} is not in a world of {world} processes")
        self.rank, self.world = rank, world
        self.batches = batches or max(1, len(self.anchors) // (places * photos_per_place * world))
        self.dist, self.hard, self.neighbours = dist.tocsr(), hard_places, None

    def set_neighbours(self, neighbours: np.ndarray | None) -> None:
        """(N, k) photo indices, each row a photo's nearest photos in embedding space (itself may be
        among them); None goes back to random batches."""
        if neighbours is not None and len(neighbours) != self.cand.shape[0]:
            raise ValueError(f"set_neighbours: {len(neighbours)} rows for {self.cand.shape[0]} photos")
        self.neighbours = neighbours

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches

    @staticmethod
    def _row(m: sp.csr_matrix, i: int) -> np.ndarray:
        return m.indices[m.indptr[i]:m.indptr[i + 1]]

    def _place(self, anchor: int, used: np.ndarray, rng: np.random.Generator) -> list[int]:
        group = [anchor]
        for c in rng.permutation(self._row(self.cand, anchor)):
            if len(group) == self.per_place:
                break
            if not used[c] and np.isin(group, self._row(self.cand, c)).all():
                group.append(int(c))
        return group

    def _global_batch(self, rng: np.random.Generator) -> list[list[int]]:
        used = np.zeros(self.cand.shape[0], dtype=bool)
        blocked = np.zeros(self.cand.shape[0], dtype=bool)  # within neg_radius_m of a place in the batch
        has_cand = np.diff(self.cand.indptr) > 0
        groups: list[list[int]] = []
        wanted = self.places * self.world

        def add(anchor: int) -> bool:
            group = self._place(anchor, used, rng)
            if len(group) < 2:
                return False
            used[group] = True
            for p in group:
                used[self._row(self.near, p)] = True
                blocked[self._row(self.dist, p)] = True
            groups.append(group)
            return True

        hard = self.hard >= 2 and self.neighbours is not None
        for anchor in rng.permutation(self.anchors):
            if len(groups) == wanted:
                break
            if used[anchor] or not add(int(anchor)) or not hard:
                continue
            alike = 1
            for c in self.neighbours[anchor]:
                if alike == self.hard or len(groups) == wanted:
                    break
                if has_cand[c] and not used[c] and not blocked[c] and add(int(c)):
                    alike += 1
        return groups

    def __iter__(self):
        rng = np.random.default_rng([self.seed, self.epoch])
        for _ in range(self.batches):
            groups = self._global_batch(rng)
            if len(groups) < self.world:
                raise GeolocError(f"only {len(groups)} place(s) fit in a batch, fewer than the {self.world} "
                                  "processes: too few photos with positives for this many processes")
            share = np.array_split(np.arange(len(groups)), self.world)[self.rank]
            yield [p for g in share for p in groups[g]]


def _embedding_distances(distance: distances.BaseDistance, embeddings: torch.Tensor,
                         ref: torch.Tensor | None = None) -> torch.Tensor:
    """(B, R) dissimilarity (smaller = closer) from embeddings to ref (default: themselves), whatever the
    pml distance's direction."""
    mat = distance(embeddings.detach().float(), None if ref is None else ref.detach().float())
    return -mat if distance.is_inverted else mat


class PhotoMemory:
    """The embeddings of the last `size` training photos seen, with their photo indices: a cross-batch
    memory (Wang et al., CVPR 2020). A CPU batch holds few places; the memory gives each anchor `size`
    more photos to find its positives and hardest negatives among, for one matrix product. Entries are
    detached and drift as the model trains, so the oldest leave first. Not checkpointed: after a resume
    it refills within size / batch steps."""

    def __init__(self, size: int):
        self.size = size
        self.emb: torch.Tensor | None = None
        self.idx = torch.zeros(0, dtype=torch.long)

    def references(self, emb: torch.Tensor, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(reference embeddings, their photo indices): the batch itself first, then the memory."""
        idx = torch.as_tensor(idx).cpu().long()
        if self.emb is None:
            return emb, idx
        return torch.cat([emb, self.emb.to(emb)]), torch.cat([idx, self.idx])

    def push(self, emb: torch.Tensor, idx: torch.Tensor) -> None:
        e, i = emb.detach().float().cpu(), torch.as_tensor(idx).cpu().long()
        self.emb = e[-self.size:] if self.emb is None else torch.cat([self.emb, e])[-self.size:]
        self.idx = torch.cat([self.idx, i])[-self.size:]


class GroundRules:
    """(B, R) positive and negative masks from a batch's photos to reference photos (default: the batch
    itself), from the photos' global indices.

    positives: candidate pairs (positive_candidates); under weak supervision only each anchor's
    candidate closest in embedding space. negatives: ground distance beyond neg_radius_m, except the
    pairs stored in `never_negative` (any sparse (N, N) matrix: its stored entries count, whatever
    their values, so two photos at distance 0 are held too).
    """

    def __init__(self, dist: sp.csr_matrix, candidates: sp.csr_matrix, neg_radius_m: float, weak: bool = False,
                 never_negative: sp.csr_matrix | None = None):
        self.dist, self.cand = dist.tocsr(), candidates.tocsr()
        self.neg_radius_m, self.weak = neg_radius_m, weak
        self.never_negative = None
        if never_negative is not None:
            m = never_negative.tocsr()
            self.never_negative = sp.csr_matrix((np.ones(len(m.indices), dtype=bool), m.indices, m.indptr),
                                                shape=m.shape)

    def masks(self, photo_idx, dissimilarity: torch.Tensor | None = None,
              ref_idx=None) -> tuple[torch.Tensor, torch.Tensor]:
        idx = _as_numpy(photo_idx)
        ref = idx if ref_idx is None else _as_numpy(ref_idx)
        g = batch_distances(self.dist, idx, ref)
        with np.errstate(invalid="ignore"):
            neg = torch.from_numpy(g > self.neg_radius_m)
        if self.never_negative is not None:
            neg &= ~torch.from_numpy(self.never_negative[idx][:, ref].toarray())
        pos = torch.from_numpy(self.cand[idx][:, ref].toarray())
        pos &= ~torch.from_numpy(np.isnan(g))
        if self.weak and dissimilarity is not None:
            d = torch.where(pos.to(dissimilarity.device), dissimilarity, torch.inf)
            best = d.argmin(dim=1)
            weak = torch.zeros_like(pos)
            weak[torch.arange(len(idx)), best.cpu()] = True
            pos &= weak
        return pos, neg


class GeodesicTripletMiner:
    """(anchor, positive, negative) batch positions for pml's TripletMarginLoss under the ground rules.

    Candidates are every (a, p, n) with p a positive of a and n beyond neg_radius_m of a; with
    m = d(a, n) - d(a, p) in embedding space, `strategy` keeps (as pml's TripletMarginMiner):
    semihard 0 < m <= margin, hard m <= 0, all m <= margin, hardest the closest negative of each (a, p).
    """

    def __init__(self, rules: GroundRules, strategy: str = "semihard", margin: float = 0.1,
                 distance: distances.BaseDistance | None = None):
        self.rules, self.strategy, self.margin = rules, strategy, margin
        self.distance = distance or distances.LpDistance()  # TripletMarginLoss's own default

    def __call__(self, embeddings: torch.Tensor, photo_idx, ref_emb: torch.Tensor | None = None,
                 ref_idx=None) -> tuple[torch.Tensor, ...]:
        """Anchors index `embeddings`; positives and negatives index `ref_emb` (default: embeddings)."""
        d = _embedding_distances(self.distance, embeddings, ref_emb)
        pos, neg = (m.to(embeddings.device) for m in self.rules.masks(photo_idx, d, ref_idx))
        a, p = torch.nonzero(pos, as_tuple=True)
        if self.strategy == "hardest":
            an = torch.where(neg[a], d[a], torch.inf)
            n = an.argmin(dim=1)
            keep = torch.isfinite(an.min(dim=1).values)
            return a[keep], p[keep], n[keep]
        # (pairs, R) margins of every candidate negative for each positive pair
        m = d[a] - d[a, p][:, None]
        ok = neg[a] & {"semihard": (m > 0) & (m <= self.margin), "hard": m <= 0,
                       "all": m <= self.margin}[self.strategy]
        i, n = torch.nonzero(ok, as_tuple=True)
        return a[i], p[i], n


def informative_pairs(sim: torch.Tensor, pos: torch.Tensor, neg: torch.Tensor,
                      epsilon: float = 0.1) -> tuple[torch.Tensor, torch.Tensor]:
    """pml's MultiSimilarityMiner rule on (B, R) masks: keep a negative pair if its similarity + epsilon
    exceeds its anchor's least similar positive, a positive pair if its similarity - epsilon is below
    its anchor's most similar negative."""
    hardest_pos = torch.where(pos, sim, torch.inf).min(dim=1, keepdim=True).values
    hardest_neg = torch.where(neg, sim, -torch.inf).max(dim=1, keepdim=True).values
    return pos & (sim - epsilon < hardest_neg), neg & (sim + epsilon > hardest_pos)


class GeodesicPairMiner:
    """(anchor1, positive, anchor2, negative) positions of a batch's pairs, for pair losses.

    strategy all: every positive and negative pair. multi_similarity: pml's MultiSimilarityMiner rule
    on cosine similarity s: a negative pair is kept if s + epsilon > its anchor's least similar
    positive, a positive pair if s - epsilon < its anchor's most similar negative.
    """

    def __init__(self, rules: GroundRules, strategy: str = "multi_similarity", epsilon: float = 0.1):
        self.rules, self.strategy, self.epsilon = rules, strategy, epsilon

    def __call__(self, embeddings: torch.Tensor, photo_idx, ref_emb: torch.Tensor | None = None,
                 ref_idx=None) -> tuple[torch.Tensor, ...]:
        """Anchors index `embeddings`; positives and negatives index `ref_emb` (default: embeddings)."""
        ref = None if ref_emb is None else ref_emb.detach().float()
        sim = distances.CosineSimilarity()(embeddings.detach().float(), ref)
        pos, neg = (m.to(embeddings.device) for m in self.rules.masks(photo_idx, -sim, ref_idx))
        if self.strategy == "multi_similarity":
            pos, neg = informative_pairs(sim, pos, neg, self.epsilon)
        a1, p = torch.nonzero(pos, as_tuple=True)
        a2, n = torch.nonzero(neg, as_tuple=True)
        return a1, p, a2, n


def _as_numpy(photo_idx) -> np.ndarray:
    return photo_idx.detach().cpu().numpy() if isinstance(photo_idx, torch.Tensor) else np.asarray(photo_idx)
