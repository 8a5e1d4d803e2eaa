# SPDX-License-Identifier: MIT
"""Torch Hub entry points of torchfault's pretrained models.

Works offline from a checkout, with or without torchfault installed::

    import torch
    model = torch.hub.load("/path/to/torchfault", "lenet_digits", source="local", pretrained=True)

The weights ship in ``src/torchfault/dnn/weights/`` and were trained by
``torchfault train --config examples/train_lenet_digits.yaml`` (and ``train_mlp_digits.yaml``).
Inputs are 1x8x8 scikit-learn digits scaled to [0, 1] then standardised; use
``torchfault.dnn.create_dataset("digits", split="test")`` for ready-made test data.
"""

import os
import sys

dependencies = ["torch"]

try:
    import torchfault.dnn  # noqa: F401
except ImportError:  # a plain checkout: use its src/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "src"))

from torchfault.dnn import create_model as _create_model  # noqa: E402


def lenet_digits(pretrained: bool = True, **kwargs):
    """LeNet-5 (ReLU, max-pooling) for the 8x8 scikit-learn digits; about 98 % test accuracy.

    Args:
        pretrained: load the shipped weights.
        **kwargs: options of ``torchfault.dnn.create_model``.
    """
    return _create_model("lenet", dataset="digits", pretrained=pretrained, **kwargs)


def mlp_digits(pretrained: bool = True, **kwargs):
    """Multi-layer perceptron (64-128-64-10) for the 8x8 scikit-learn digits; about 97 % test
    accuracy.

    Args:
        pretrained: load the shipped weights.
        **kwargs: options of ``torchfault.dnn.create_model``.
    """
    return _create_model("mlp", dataset="digits", pretrained=pretrained, **kwargs)
