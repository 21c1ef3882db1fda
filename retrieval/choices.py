"""Every list of allowed values a setting has, in one leaf module: no project imports, no torch.

The settings (retrieval.config) validate against these lists; the module that implements a choice
imports its list from here, so a value listed here and not implemented there fails a test
(tests/test_config.py::test_every_choice_is_implemented), and the settings load without the
implementations (no torch, faiss or networkx in `import retrieval.config`).
"""
from __future__ import annotations

METHODS = ("cells", "regression", "embedding")  # implemented by retrieval.methods.METHODS

# model.arch: the trunk's pooled output width of each backbone (retrieval.learning.backbones builds them)
BACKBONE_FEATURES = {"resnet18": 512, "resnet34": 512, "resnet50": 2048,
                     "efficientnet_lite0": 1280, "efficientnet_lite1": 1280, "efficientnet_lite2": 1280}
HUB = "hub"  # model.arch of a torch.hub descriptor network (model.weights names it)
ARCHS = (*BACKBONE_FEATURES, HUB)
POOLINGS = ("gem", "avg")  # model.pooling: the embedding's; the baselines keep the backbone's average

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "exponential")
PRECISIONS = ("bf16", "fp32")

SPLIT_MODES = ("place", "spatial", "random", "sequence")
GRID_KINDS = ("square", "voronoi")
DECISIONS = ("auto", "argmax")  # cells.decision
CENTROIDS = ("photos", "polygon")  # cells.centroid

POSITIVES = ("geodesic", "euclidean")  # embedding.positives: walking distance, or the straight-line ablation
NETWORK_TYPES = ("walk", "all", "drive", "bike", "all_public", "drive_service")  # OSMnx's network types
SUPERVISION = ("auto", "heading", "weak", "radius")
MINERS = {"triplet": ("semihard", "hard", "all", "hardest"),  # each loss with the miners it takes
          "multi_similarity": ("multi_similarity", "all"),
          "contrastive": ("multi_similarity", "all")}
LOSSES = tuple(MINERS)

INDEX_KINDS = ("flat", "ivfpq", "hnsw")
REFINES = ("flat", "sq8", "none")  # index.refine of an ivfpq index
VOTE_MODES = ("pool", "top1", "weighted_mean")
RERANK_MODES = ("off", "on", "auto")
DISTANCES = ("geodesic", "euclidean")  # route.distance: walking distance along the streets, or straight line
