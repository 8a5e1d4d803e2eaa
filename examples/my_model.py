# SPDX-License-Identifier: MIT
"""A user's own model for torchfault: any ``nn.Module`` returned by a factory function.

``examples/campaign_custom.yaml`` points a campaign at ``examples/my_model.py:build``.
"""

import torch
import torch.nn as nn


class TinyNet(nn.Module):
    """A small CNN for 1x8x8 digit images (not from the zoo)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1),
            nn.ReLU(),
        )
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(16 * 4 * 4, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def build(num_classes: int = 10, seed: int = 0) -> nn.Module:
    """Build TinyNet with seeded random weights (load your trained weights here instead)."""
    torch.manual_seed(seed)
    return TinyNet(num_classes).eval()
