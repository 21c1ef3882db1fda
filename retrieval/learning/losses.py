"""The metric losses and their miners, behind one factory: embedding.loss picks the loss and
embedding.miner how its triplets or pairs are chosen among the ground rules' positives and negatives."""
from __future__ import annotations

from pytorch_metric_learning import losses

from retrieval.learning.mining import GeodesicPairMiner, GeodesicTripletMiner, GroundRules



def make_loss(cfg) -> losses.BaseMetricLossFunction:
    """The pml loss named by cfg.loss (an EmbeddingConfig); call it as loss(emb, indices_tuple=miner(emb, idx))."""
    if cfg.loss == "triplet":
        return losses.TripletMarginLoss(margin=cfg.margin)
    if cfg.loss == "multi_similarity":
        return losses.MultiSimilarityLoss(alpha=cfg.ms_alpha, beta=cfg.ms_beta, base=cfg.ms_base)
    return losses.ContrastiveLoss(pos_margin=0.0, neg_margin=1.0)


def make_miner(cfg, rules: GroundRules):
    """The miner for cfg.loss: triplets chosen by cfg.miner for the triplet loss, pairs for pair losses."""
    if cfg.loss == "triplet":
        return GeodesicTripletMiner(rules, cfg.miner, cfg.margin)
    return GeodesicPairMiner(rules, cfg.miner)
