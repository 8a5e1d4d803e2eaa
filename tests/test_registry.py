# SPDX-License-Identifier: MIT
import importlib.metadata
from types import SimpleNamespace

import pytest

import torchfault.registry as regmod
from torchfault.registry import EntryInfo, Registry, all_registries


@pytest.fixture
def reg():
    r = Registry("widget", plural="widgets_test")
    yield r
    regmod._REGISTRIES.pop("widgets_test", None)


def test_register_list_create_info(reg):
    @reg.register("alpha", description="First.", fast=True)
    def alpha(x=1):
        return ("alpha", x)

    @reg.register("beta")
    class Beta:
        """Second widget."""

        def __init__(self, y=2):
            self.y = y

    assert reg.list() == ["alpha", "beta"]
    assert reg.list("a*") == ["alpha"]
    assert reg.list(fast=True) == ["alpha"]
    assert reg.is_registered("beta") and "alpha" in reg and not reg.is_registered("gamma")
    assert reg.create("alpha", x=5) == ("alpha", 5)
    assert reg.create("beta", y=7).y == 7
    info = reg.info("beta")
    assert isinstance(info, EntryInfo) and info.description == "Second widget."
    with pytest.raises(AttributeError):
        info.name = "x"  # frozen
    assert all_registries()["widgets_test"] is reg


def test_unknown_name_lists_valid_and_suggests(reg):
    reg.add("bit_flip", object())
    reg.add("stuck_at_0", object())
    with pytest.raises(
        ValueError, match=r"Unknown widget 'bitflip'.*bit_flip, stuck_at_0.*Did you mean 'bit_flip'"
    ):
        reg.get("bitflip")


def test_duplicate_needs_overwrite(reg):
    reg.add("a", 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.add("a", 2)
    reg.add("a", 2, overwrite=True)
    assert reg.get("a") == 2


def test_create_rejects_unknown_keyword(reg):
    reg.add("f", lambda x=1: x)
    with pytest.raises(ValueError, match="Bad arguments for widget 'f'"):
        reg.create("f", y=2)


def test_plugins_from_entry_points(reg, monkeypatch):
    calls = []

    def plugin():
        calls.append(1)
        reg.add("from_plugin", object(), description="added by a plugin")

    ep = SimpleNamespace(name="demo_plugin", load=lambda: plugin)
    bad = SimpleNamespace(name="broken", load=lambda: (_ for _ in ()).throw(ImportError("nope")))
    monkeypatch.setattr(
        importlib.metadata,
        "entry_points",
        lambda group: [ep, bad] if group == regmod.PLUGIN_GROUP else [],
    )
    monkeypatch.setattr(regmod, "_plugins_loaded", False)
    assert "from_plugin" in reg.list()
    assert calls == [1]
    reg.list()
    assert calls == [1]  # loaded once


def test_each_family_has_its_own_frozen_info_type():
    import dataclasses

    import torchfault
    from torchfault.faults import FAULT_MODELS
    from torchfault.samplers import SAMPLERS

    info = FAULT_MODELS.info("bit_flip")
    assert type(info).__name__ == "FaultModelInfo" and isinstance(info, EntryInfo)
    assert type(SAMPLERS.info("uniform")).__name__ == "SamplerInfo"
    assert info.name == "bit_flip" and info.description and info.capabilities["needs_bits"] is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.description = "x"
    assert (
        torchfault.Registry("gizmo part", plural="gizmo_parts_test").Info.__name__
        == "GizmoPartInfo"
    )
    regmod._REGISTRIES.pop("gizmo_parts_test", None)


@pytest.mark.parametrize(
    "family, known",
    [
        ("injector", "faults"),
        ("sampler", "uniform"),
        ("engine", "fast"),
        ("executor", "process"),
        ("fault_model", "bit_flip"),
    ],
)
def test_top_level_list_is_create_per_family(family, known):
    import torchfault

    plural = family + "s"
    assert known in getattr(torchfault, f"list_{plural}")()
    assert getattr(torchfault, f"is_{family}")(known)
    assert not getattr(torchfault, f"is_{family}")("no_such_" + family)
    with pytest.raises(ValueError, match=f"Unknown {family.replace('_', ' ')} 'no_such'"):
        getattr(torchfault, f"create_{family}")("no_such")


def test_plugins_found_through_installed_distribution_metadata(tmp_path, monkeypatch):
    """A real (unmocked) entry point: a distribution on sys.path whose entry_points.txt names a
    module in the ``torchfault.plugins`` group; loading it registers a fault model."""
    from torchfault.faults import FAULT_MODELS, is_fault_model, list_fault_models

    dist = tmp_path / "tf_demo_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: tf-demo-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(f"[{regmod.PLUGIN_GROUP}]\ndemo = tf_demo_plugin_mod\n")
    (tmp_path / "tf_demo_plugin_mod.py").write_text(
        "# SPDX-License-Identifier: MIT\n"
        "from torchfault.faults import register_fault_model\n\n"
        "@register_fault_model('plugin_negate', description='Negate (from a plugin).')\n"
        "def plugin_negate(x, index, bits, fmt, generator):\n"
        "    y = x.detach().flatten().clone()\n"
        "    y[index] = -y[index]\n"
        "    return y.view_as(x)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(regmod, "_plugins_loaded", False)
    try:
        assert "plugin_negate" in list_fault_models("plugin_*")
        assert is_fault_model("plugin_negate")
        assert FAULT_MODELS.info("plugin_negate").description == "Negate (from a plugin)."
    finally:
        if "plugin_negate" in FAULT_MODELS:
            FAULT_MODELS.remove("plugin_negate")
        import sys

        sys.modules.pop("tf_demo_plugin_mod", None)


def test_functions_made_by_the_registry_delegate_to_it(reg):
    """register_/list_/is_/create_/get_ from Registry.functions() against the registry's own
    methods: same entries, same results, same errors; named after the family, in this module."""
    register, list_, is_, create, get = reg.functions()
    assert [f.__name__ for f in (register, list_, is_, create, get)] == [
        "register_widget",
        "list_widgets_test",
        "is_widget",
        "create_widget",
        "get_widget",
    ]
    assert {f.__module__ for f in (register, list_, is_, create, get)} == {__name__}

    @register("small", description="A small widget.", size=1)
    def small(scale=1):
        return ("small", scale)

    @register(size=2)
    def large():
        return "large"

    assert reg.info("small").description == "A small widget."
    assert list_() == reg.list() == ["large", "small"]
    assert list_("s*") == reg.list("s*") == ["small"]
    assert list_(size=2) == reg.list(size=2) == ["large"]
    assert is_("small") and not is_("medium")
    assert create("small", scale=3) == reg.create("small", scale=3) == ("small", 3)
    assert get("large") is large
    with pytest.raises(ValueError, match=r"Unknown widget 'smal'.*Did you mean 'small'"):
        create("smal")
    with pytest.raises(ValueError, match="Bad arguments for widget 'small'"):
        create("small", colour="red")
    with pytest.raises(ValueError, match="already registered"):
        register("small")(large)
    assert reg.functions("gadget", "gadgets").register.__name__ == "register_gadget"


def test_generated_family_functions_list_the_built_in_entries():
    """The families whose functions come from Registry.functions() list their built-in entries
    (these were doctests of the hand-written functions)."""
    from torchfault.campaign import is_engine, list_engines, list_executors
    from torchfault.faults import list_layouts, list_patterns, register_layout
    from torchfault.injectors import is_protection, list_injectors, list_protections

    assert list_layouts() == ["channels_last", "row_major", "tiled"]
    assert list_patterns() == [
        "adjacent_bits",
        "adjacent_words",
        "bit_line",
        "cluster",
        "single",
        "word_line",
    ]
    assert list_protections() == ["clip", "detect", "ranger"]
    assert is_protection("ranger") and not is_protection("no_such")
    assert {"reference", "fast"} <= set(list_engines()) and is_engine("fast")
    assert {"serial", "process"} <= set(list_executors())
    assert {"faults", "ber"} <= set(list_injectors())
    assert register_layout.__module__ == "torchfault.faults._layouts"


def test_unknown_capability_is_refused_naming_the_valid_ones():
    """Typed families validate registration flags: a misspelt capability is a TypeError naming
    it and every valid one, raised before anything is registered."""
    from torchfault.faults import FAULT_MODELS, register_fault_model
    from torchfault.samplers import SAMPLERS, UniformSampler, register_sampler

    with pytest.raises(TypeError) as exc:
        FAULT_MODELS.add("typo_model_test", lambda *a: None, radnom=True)
    msg = str(exc.value)
    assert "'radnom'" in msg and "'typo_model_test'" in msg
    assert "needs_bits, bit_op, random, detected" in msg and "Did you mean 'random'?" in msg
    assert "typo_model_test" not in FAULT_MODELS

    with pytest.raises(TypeError, match=r"'need_model'.*stratified, multi_fault, needs_model"):
        register_sampler("typo_sampler_test", need_model=True)(UniformSampler)
    assert "typo_sampler_test" not in SAMPLERS
    with pytest.raises(TypeError, match=r"'stratifed'.*stratified, multi_fault, needs_model"):
        SAMPLERS.list(stratifed=True)
    # the public keyword API still works and is validated into the typed record
    register_fault_model("typed_ok_test", random=True, overwrite=True)(lambda *a: None)
    try:
        assert FAULT_MODELS.info("typed_ok_test").capabilities.random is True
    finally:
        FAULT_MODELS.remove("typed_ok_test")


def test_each_family_info_exposes_typed_capabilities():
    import dataclasses

    from torchfault.faults import (
        FAULT_MODELS,
        FaultModelCapabilities,
        fault_model_capabilities,
        list_fault_models,
    )
    from torchfault.registry import Capabilities
    from torchfault.samplers import (
        SAMPLERS,
        SamplerCapabilities,
        list_samplers,
        sampler_capabilities,
    )

    for name in list_fault_models():
        caps = FAULT_MODELS.info(name).capabilities
        assert type(caps) is FaultModelCapabilities and caps is fault_model_capabilities(name)
    flip = fault_model_capabilities("bit_flip")
    assert (flip.needs_bits, flip.bit_op, flip.random, flip.detected) == (True, "xor", False, False)
    zero = fault_model_capabilities("zero")
    assert (zero.needs_bits, zero.bit_op, zero.detected) == (False, None, False)
    assert fault_model_capabilities("ecc_detected").detected is True
    with pytest.raises(dataclasses.FrozenInstanceError):
        flip.random = True  # type: ignore[misc]
    # the mapping view (what `torchfault list` shows) leaves hidden defaults out, as before
    assert dict(flip) == {"needs_bits": True, "bit_op": "xor", "random": False}
    assert "detected" not in flip and flip.get("detected") is None

    for name in list_samplers():
        assert type(SAMPLERS.info(name).capabilities) is SamplerCapabilities
    assert {n for n in list_samplers() if sampler_capabilities(n).needs_model} == {
        "memory",
        "nonzero",
    }
    assert [n for n in list_samplers() if sampler_capabilities(n).stratified] == list_samplers(
        stratified=True
    )
    assert dict(sampler_capabilities("uniform")) == {"stratified": False, "multi_fault": False}
    with pytest.raises(TypeError, match="SamplerCapabilities, not FaultModelCapabilities"):
        SAMPLERS.capabilities_of("uniform", FaultModelCapabilities)
    assert issubclass(FaultModelCapabilities, Capabilities)


def test_criteria_capabilities_are_typed():
    from torchfault.campaign import (
        CRITERIA,
        Criterion,
        CriterionCapabilities,
        criterion_capabilities,
        list_criteria,
    )

    for name in list_criteria():
        assert type(CRITERIA.info(name).capabilities) is CriterionCapabilities
    assert {n for n in list_criteria() if criterion_capabilities(n).reads == "rows"} == {
        "detection"
    }
    assert criterion_capabilities("top1").fast and not criterion_capabilities("regression").fast
    assert criterion_capabilities("regression").metrics == ("rel_error",)
    assert dict(criterion_capabilities("top1")) == {"reads": "tensor", "fast": True}
    assert Criterion("segmentation").info() == {
        "reads": "tensor",
        "metrics": ("changed_pixels", "miou_drop"),
        "fast": False,
    }
    with pytest.raises(TypeError, match=r"'raeds'.*valid capabilities: reads, metrics, fast"):
        CRITERIA.register("typo_criterion_test", raeds="rows")(lambda g, f, c: None)
    with pytest.raises(ValueError, match="reads must be 'tensor' or 'rows', got 'cols'"):
        CRITERIA.register("typo_criterion_test", reads="cols")(lambda g, f, c: None)
    assert "typo_criterion_test" not in CRITERIA
