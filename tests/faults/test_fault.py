# SPDX-License-Identifier: MIT
"""Fault and FaultSite: frozen, hashable, validated, round-trip through JSON."""

from __future__ import annotations

import json

import pytest

from torchfault import Fault, FaultSite
from torchfault.errors import TorchFaultError
from torchfault.faults import list_fault_models


def test_fault_is_frozen_hashable_and_round_trips_through_json():
    f = Fault(
        "layer.0",
        "output",
        index=[1, 2],
        bits=[3, 30],
        model="bit_flip",
        sample=2,
        call=1,
        element="1.0",
        persistence="transient",
        params={"value": [1, 2]},
    )
    assert f.index == (1, 2) and f.bits == (3, 30)
    assert f.param_dict == {"value": [1, 2]}
    back = Fault.from_dict(json.loads(json.dumps(f.to_dict())))
    assert back == f and hash(back) == hash(f)
    assert len({f, back, f.replace(sample=0)}) == 2
    with pytest.raises(AttributeError):
        f.module = "x"  # type: ignore[misc]


def test_fault_defaults_follow_the_design():
    f = Fault("conv")
    assert (f.target, f.index, f.bits, f.model, f.format, f.persistence, f.sample) == (
        "output",
        (),
        (),
        "bit_flip",
        None,
        "permanent",
        None,
    )
    assert f.is_activation and not Fault("conv", "weight").is_activation
    assert Fault("c", index=3).index == (3,)


@pytest.mark.parametrize(
    ("kwargs", "words"),
    [
        ({"module": 3}, "module name"),
        ({"module": "m", "target": ""}, "target"),
        ({"module": "m", "bits": (-1,)}, "non-negative"),
        ({"module": "m", "bits": ("a",)}, "tuple of integers"),
        ({"module": "m", "index": (1.5,)}, "tuple of integers"),
        ({"module": "m", "persistence": "permanant"}, "Did you mean 'permanent'"),
        ({"module": "m", "sample": -1}, "sample must be None or an integer >= 0"),
        ({"module": "m", "call": True}, "call must be None"),
        ({"module": "m", "element": 1.5}, "element must be None"),
        ({"module": "m", "model": 3}, "fault model name"),
    ],
)
def test_bad_fault_fields_name_the_field(kwargs, words):
    with pytest.raises(TorchFaultError, match=words):
        Fault(**kwargs)


def test_from_dict_rejects_unknown_keys_by_name():
    with pytest.raises(TorchFaultError, match=r"Unknown Fault field.*'bit'.*Did you mean 'bits'"):
        Fault.from_dict({"module": "m", "bit": [1]})
    with pytest.raises(TorchFaultError, match="needs a 'module'"):
        Fault.from_dict({"target": "weight"})


def test_fault_site_numbers_and_round_trip():
    site = FaultSite(
        "conv", "weight", "parameter", (4, 3, 3, 3), "float16", 16, module_type="Conv2d"
    )
    assert site.numel == 108 and site.population == 108 * 16
    assert site.name == "conv:weight"
    assert FaultSite.from_dict(json.loads(json.dumps(site.to_dict()))) == site
    f = site.fault((1, 2, 0, 0), (15,), model="stuck_at_1")
    assert (f.module, f.target, f.format, f.model, f.bits) == (
        "conv",
        "weight",
        "float16",
        "stuck_at_1",
        (15,),
    )
    lstm = FaultSite("", "output", "activation", (5, 3), "float32", 32, element="1.0")
    assert lstm.name == ":output[1.0]" and lstm.fault((0, 0), (1,)).element == "1.0"


def test_the_registry_holds_the_fault_models_of_the_issue():
    assert {"bit_flip", "stuck_at_0", "stuck_at_1", "random_value", "zero", "value"} <= set(
        list_fault_models()
    )
    assert list_fault_models("stuck*") == ["stuck_at_0", "stuck_at_1"]


def test_fault_site_is_validated_and_from_dict_names_bad_keys():
    site = FaultSite("fc", "bias", "parameter", [3], "float32", 32)
    assert site.shape == (3,) and hash(site) == hash(FaultSite.from_dict(site.to_dict()))
    with pytest.raises(TorchFaultError, match=r"kind must be one of.*Did you mean 'activation'"):
        FaultSite("fc", "output", "activations", (3,), "float32", 32)
    with pytest.raises(TorchFaultError, match="bit_width must be an integer >= 1"):
        FaultSite("fc", "bias", "parameter", (3,), "float32", 0)
    with pytest.raises(TorchFaultError, match="sizes >= 0"):
        FaultSite("fc", "bias", "parameter", (-1,), "float32", 32)
    with pytest.raises(
        TorchFaultError, match=r"Unknown FaultSite field.*'bitwidth'.*Did you mean 'bit_width'"
    ):
        FaultSite.from_dict({**site.to_dict(), "bitwidth": 32})
    with pytest.raises(TorchFaultError, match=r"needs the field\(s\) \['bit_width'\]"):
        FaultSite.from_dict({k: v for k, v in site.to_dict().items() if k != "bit_width"})
