# SPDX-License-Identifier: MIT
"""The fast engine's tuning knobs: one validated value, reachable from a campaign config."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from torchfault.campaign import CampaignConfig, Criterion, FastOptions, golden_run
from torchfault.campaign._campaign import build_engine
from torchfault.campaign._fast import FastEngine
from torchfault.config import from_dict, to_dict
from torchfault.errors import ConfigError


def test_config_options_reach_the_engine():
    cfg = from_dict(
        CampaignConfig,
        {"engine": {"name": "fast", "fast": {"window": False, "row_check_heights": [2, 5]}}},
    )
    assert cfg.engine.fast == FastOptions(window=False, row_check_heights=(2, 5))
    assert to_dict(cfg)["engine"]["fast"]["window"] is False
    model = nn.Sequential(nn.Linear(4, 3)).eval()
    x = torch.randn(16, 4)
    engine = build_engine(
        "fast", model, x, golden_run(model, x, 16), Criterion(), 16, cfg.engine.fast
    )
    assert isinstance(engine, FastEngine) and engine.options is cfg.engine.fast
    ref = build_engine(
        "reference", model, x, golden_run(model, x, 16), Criterion(), 16, cfg.engine.fast
    )
    assert type(ref).__name__ == "ReferenceEngine"  # the options are the fast engine's only


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("window_area", 0.0),
        ("window_area", 1.5),
        ("cache_bytes", -1),
        ("window_min_rows", 0),
        ("row_check_heights", []),
        ("window", "yes"),
        ("channels", 1),
    ],
)
def test_bad_options_are_config_errors_naming_the_field(key, value):
    with pytest.raises(ConfigError) as err:
        from_dict(CampaignConfig, {"engine": {"name": "fast", "fast": {key: value}}})
    assert err.value.field == f"engine.fast.{key}" and f"engine.fast.{key}" in str(err.value)


def test_unknown_option_is_named():
    with pytest.raises(ConfigError, match="window_areas"):
        FastOptions.from_dict({"window_areas": 0.3})
    with pytest.raises(TypeError, match="options"):
        FastEngine(nn.Linear(2, 2), torch.zeros(1, 2), torch.zeros(1, 2), options={"window": 1})
