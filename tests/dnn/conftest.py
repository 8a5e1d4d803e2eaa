# SPDX-License-Identifier: MIT
"""Shared fixtures of the DNN tests: small, seeded, fast."""

from __future__ import annotations

import pytest

import torchfault.dnn as dnn


@pytest.fixture(scope="session")
def digits_test() -> dnn.TensorClassificationDataset:
    return dnn.create_dataset("digits", split="test")


@pytest.fixture(scope="session")
def digits_train() -> dnn.TensorClassificationDataset:
    return dnn.create_dataset("digits", split="train")


def _fast_train_config(tmp_path, model: str = "mlp", epochs: int = 3, **kw) -> dnn.TrainConfig:
    cfg = dnn.TrainConfig(
        model=dnn.TrainModelSpec(model), out_dir=str(tmp_path), batch_size=32, **kw
    )
    cfg.trainer.max_epochs = epochs
    cfg.trainer.enable_progress_bar = False
    cfg.optimizer.lr = 1e-2
    return cfg


@pytest.fixture
def fast_train_config():
    """Factory of small, quick training configs on digits: ``f(tmp_path, model, epochs, **kw)``."""
    return _fast_train_config
