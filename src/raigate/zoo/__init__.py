"""Reference networks, written out here so raigate needs no torchvision.

``small_cnn`` is the built-in demo model; the CIFAR ResNets and ``captum_cifar_net`` load
the published third-party checkpoints strictly, which is what makes audits of real models
reproducible. Every factory takes ``num_classes``, so ``raigate.zoo:NAME`` works as a model
spec and the loader sizes the head from the class names.

>>> import torch
>>> from raigate.models import load_model
>>> model = load_model(
...     "raigate.zoo:resnet20", class_names=list("abc"), input_size=(3, 32, 32), random_init=True
... )
>>> model.logits(torch.rand(2, 3, 32, 32)).shape
torch.Size([2, 3])
"""

from __future__ import annotations

from raigate.zoo._norm import GROUP_NORM_GROUPS, Norm
from raigate.zoo.resnet import CifarResNet, resnet20, resnet32, resnet44, resnet56
from raigate.zoo.small import CaptumCifarNet, SmallCNN, captum_cifar_net, small_cnn

__all__ = [
    "GROUP_NORM_GROUPS",
    "CaptumCifarNet",
    "CifarResNet",
    "Norm",
    "SmallCNN",
    "captum_cifar_net",
    "resnet20",
    "resnet32",
    "resnet44",
    "resnet56",
    "small_cnn",
]
