# SPDX-License-Identifier: MIT
"""torchfault.compat.pytorchfi against the real pytorchfi 0.6: the same models, seeds and calls
give bit-identical outputs, the same declared locations and values, and leave Python's and
torch's random generators in the same state (so every random choice was the same draw).

Each case builds the model, seeds ``random`` and ``torch`` as a user would, builds the injector
(whose profiling input is a ``torch.randn`` draw), draws the test input, calls one public
function and runs the corrupted model once, in pytorchfi and in the compat layer.
"""

from __future__ import annotations

import random
import struct
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest
import torch
import torch.nn as nn

pytest.importorskip("pytorchfi")
import pytorchfi.core as real_core  # noqa: E402
import pytorchfi.neuron_error_models as real_nem  # noqa: E402
import pytorchfi.util as real_util  # noqa: E402
import pytorchfi.weight_error_models as real_wem  # noqa: E402

from torchfault.compat.pytorchfi import core, neuron_error_models, util, weight_error_models  # noqa: E402

REAL = SimpleNamespace(core=real_core, nem=real_nem, wem=real_wem, util=real_util, name="pytorchfi")
OURS = SimpleNamespace(
    core=core, nem=neuron_error_models, wem=weight_error_models, util=util, name="compat"
)
BATCH = 3


@dataclass
class Outcome:
    x: torch.Tensor
    golden: torch.Tensor
    out: torch.Tensor
    state: dict[str, Any]
    py_rng: Any
    torch_rng: torch.Tensor


def run(impl, spec, call, seed: int = 0, single_bit: bool = False) -> Outcome:
    """Build, seed, construct the injector, draw the input, call ``call(impl, pfi)``, run once."""
    builder, shape, types = spec
    torch.manual_seed(0)
    model = builder().eval()
    random.seed(seed)
    torch.manual_seed(seed)
    kw = {"use_cuda": False} if types is None else {"layer_types": types, "use_cuda": False}
    cls = impl.nem.single_bit_flip_func if single_bit else impl.core.fault_injection
    pfi = cls(model, BATCH, input_shape=list(shape), **kw)
    x = torch.randn(BATCH, *shape, dtype=next(model.parameters()).dtype)
    corrupted = call(impl, pfi)
    with torch.no_grad():
        golden = model(x)
        out = corrupted(x)
    names = ("corrupt_batch", "corrupt_layer", "corrupt_dim1", "corrupt_dim2", "corrupt_dim3")
    state = {n: getattr(pfi, n) for n in (*names, "corrupt_value")}
    state.update(
        output_size=pfi.output_size, layers_dim=pfi.layers_dim, layers_type=pfi.layers_type
    )
    return Outcome(x, golden, out, state, random.getstate(), torch.get_rng_state())


def bits(t: torch.Tensor) -> torch.Tensor:
    words = {2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()]
    return t.detach().contiguous().view(words)


def assert_same(spec, call, seed: int = 0, single_bit: bool = False) -> Outcome:
    theirs = run(REAL, spec, call, seed, single_bit)
    ours = run(OURS, spec, call, seed, single_bit)
    assert torch.equal(ours.x, theirs.x), "the injectors consumed torch's RNG differently"
    assert torch.equal(bits(ours.golden), bits(theirs.golden))
    assert torch.equal(bits(ours.out), bits(theirs.out))
    assert ours.state == theirs.state
    assert ours.py_rng == theirs.py_rng, "a different number of random draws"
    assert torch.equal(ours.torch_rng, theirs.torch_rng)
    return ours


# ---------------------------------------------------------------------- neuron error models
NEURON_CALLS = {
    "random_neuron_inj": lambda i, p: i.nem.random_neuron_inj(p),
    "random_neuron_inj(min, max)": lambda i, p: i.nem.random_neuron_inj(p, min_val=50, max_val=90),
    "random_neuron_inj_batched": lambda i, p: i.nem.random_neuron_inj_batched(p, -9, 9),
    "random_neuron_inj_batched(fixed loc)": lambda i, p: i.nem.random_neuron_inj_batched(
        p, rand_loc=False
    ),
    "random_neuron_inj_batched(fixed val)": lambda i, p: i.nem.random_neuron_inj_batched(
        p, 5, 7, rand_val=False
    ),
    "random_neuron_inj_batched(fixed both)": lambda i, p: i.nem.random_neuron_inj_batched(
        p, rand_loc=False, rand_val=False
    ),
    "random_inj_per_layer": lambda i, p: i.nem.random_inj_per_layer(p, -20, 20),
    "random_inj_per_layer_batched": lambda i, p: i.nem.random_inj_per_layer_batched(p),
    "random_inj_per_layer_batched(fixed)": lambda i, p: i.nem.random_inj_per_layer_batched(
        p, 3, 4, rand_loc=False, rand_val=False
    ),
    "declare_neuron_fi": lambda i, p: p.declare_neuron_fi(
        batch=[2, 0, 2],
        layer_num=[0, 1, 0],
        dim1=[3, 1, 3],
        dim2=[1, 0, 1],
        dim3=[2, 4, 2],
        value=[1e3, -7.25, float("inf")],
    ),
}


@pytest.mark.parametrize(
    "model",
    ["cnn", "cnn_default_types", "resnet", "resnet_all", "shared", "cnn_float64", "cnn_bfloat16"],
)
@pytest.mark.parametrize("name", list(NEURON_CALLS))
def test_neuron_error_models_match_pytorchfi(pfi_models, model, name):
    for seed in (0, 1):
        assert_same(pfi_models[model], NEURON_CALLS[name], seed)


def test_neuron_faults_change_outputs_in_most_cases(pfi_models):
    """The comparisons above are not vacuous: most declared faults reach the output."""
    changed = total = 0
    for model in ("cnn", "resnet", "shared"):
        for call in NEURON_CALLS.values():
            for seed in range(3):
                o = run(OURS, pfi_models[model], call, seed)
                changed += not torch.equal(o.out, o.golden)
                total += 1
    assert changed >= 0.8 * total, (changed, total)


def test_random_helpers_match_pytorchfi(pfi_models):
    for model in ("cnn", "resnet_all", "shared"):
        for impl_seed in range(5):
            draws = {}
            for impl in (REAL, OURS):
                torch.manual_seed(0)
                builder, shape, types = pfi_models[model]
                pfi = impl.core.fault_injection(
                    builder().eval(), BATCH, input_shape=shape, layer_types=types, use_cuda=False
                )
                random.seed(impl_seed)
                draws[impl.name] = (
                    impl.nem.random_batch_element(pfi),
                    impl.nem.random_neuron_location(pfi),
                    impl.nem.random_neuron_location(pfi, layer=pfi.get_total_layers() - 1),
                    impl.nem.random_value(-3, 3),
                    impl.util.random_value(),
                    impl.wem.random_value(0, 1),
                    random.getstate(),
                )
            assert draws["pytorchfi"] == draws["compat"]


# ---------------------------------------------------------------------- single bit flips
SINGLE_BIT_CALLS = {
    "random_neuron_single_bit_inj": lambda r: (
        lambda i, p: i.nem.random_neuron_single_bit_inj(p, [r] * p.get_total_layers())
    ),
    "random_neuron_single_bit_inj_batched": lambda r: (
        lambda i, p: i.nem.random_neuron_single_bit_inj_batched(p, [r] * p.get_total_layers())
    ),
    "random_neuron_single_bit_inj_batched(fixed loc)": lambda r: (
        lambda i, p: i.nem.random_neuron_single_bit_inj_batched(
            p, [r] * p.get_total_layers(), rand_loc=False
        )
    ),
}


@pytest.mark.parametrize("model", ["cnn", "resnet", "shared"])
@pytest.mark.parametrize("name", list(SINGLE_BIT_CALLS))
def test_single_bit_flip_models_match_pytorchfi(pfi_models, model, name):
    changed = 0
    for seed, layer_range in ((0, 20.0), (1, 1000.0), (2, 8.0)):
        o = assert_same(pfi_models[model], SINGLE_BIT_CALLS[name](layer_range), seed, True)
        changed += not torch.equal(o.out, o.golden)
    assert changed >= 1


def test_flip_bit_signed_matches_pytorchfi_on_every_in_range_value():
    """pytorchfi's string-based two's complement flip, against ours, for every 8-bit quantum
    in range, every bit, two widths and two ranges (exhaustive)."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1))
    for width in (8, 5):
        real = real_nem.single_bit_flip_func(model, 1, [1, 2, 2], bits=width, use_cuda=False)
        ours = neuron_error_models.single_bit_flip_func(
            model, 1, [1, 2, 2], bits=width, use_cuda=False
        )
        top = 2 ** (width - 1)
        for max_value in (1.0, 3.7):
            for q in range(-top, top):
                value = torch.tensor(q / top * max_value + 1e-4 * max_value)
                for bit in range(width):
                    a = real._flip_bit_signed(value, max_value, bit)
                    b = ours._flip_bit_signed(value, max_value, bit)
                    assert a.dtype == b.dtype and torch.equal(bits(a), bits(b)), (width, q, bit)


def test_flip_bit_signed_saturates_where_pytorchfi_fails():
    """pytorchfi raises AssertionError for a value at or past its layer's range; ours saturates to
    the largest integer (127 for 8 bits) before flipping, as a quantizer would."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1))
    real = real_nem.single_bit_flip_func(model, 1, [1, 2, 2], use_cuda=False)
    ours = neuron_error_models.single_bit_flip_func(model, 1, [1, 2, 2], use_cuda=False)
    with pytest.raises(AssertionError):
        real._flip_bit_signed(torch.tensor(2.0), 2.0, 0)
    # 2.0 of range 2.0 -> quantum 128 -> saturates to 127 = 0b01111111; bit 0 -> 126
    assert float(ours._flip_bit_signed(torch.tensor(2.0), 2.0, 0)) == 126 / 128 * 2.0
    assert float(ours._flip_bit_signed(torch.tensor(-5.0), 2.0, 7)) == 0.0  # -128 ^ 0x80 = 0


# ---------------------------------------------------------------------- weight error models
WEIGHT_CALLS = {
    "random_weight_inj": lambda i, p: i.wem.random_weight_inj(p),
    "random_weight_inj(layer 1)": lambda i, p: i.wem.random_weight_inj(p, 1, -50, 50),
    "random_weight_inj(last layer)": lambda i, p: i.wem.random_weight_inj(
        p, corrupt_layer=p.get_total_layers() - 1, min_val=10, max_val=20
    ),
    "zero_func_rand_weight": lambda i, p: i.wem.zero_func_rand_weight(p),
    "declare_weight_fi": lambda i, p: p.declare_weight_fi(
        layer_num=[0, 1], k=[1, 2], dim1=[2, 0], dim2=[0, 1], dim3=[1, 2], value=[9.5, -3e9]
    ),
    "declare_weight_fi(function)": lambda i, p: p.declare_weight_fi(
        function=lambda data, loc: data[loc] * -64 + 1,
        layer_num=[1],
        k=[0],
        dim1=[1],
        dim2=[2],
        dim3=[0],
    ),
}


# "shared" runs its convolution before the stem: pytorchfi's weight numbering (modules() order)
# then differs from its neuron numbering and its random weight draws fail; see test_shared_module
@pytest.mark.parametrize(
    "model", ["cnn", "cnn_default_types", "resnet", "cnn_float64", "cnn_bfloat16"]
)
@pytest.mark.parametrize("name", list(WEIGHT_CALLS))
def test_weight_error_models_match_pytorchfi(pfi_models, model, name):
    changed = 0
    for seed in (0, 1, 2):
        o = assert_same(pfi_models[model], WEIGHT_CALLS[name], seed)
        changed += not torch.equal(o.out, o.golden)
    assert changed >= 1


def test_random_weight_location_matches_pytorchfi(pfi_models):
    for model in ("cnn", "resnet"):
        builder, shape, types = pfi_models[model]
        for seed in range(5):
            got = {}
            for impl in (REAL, OURS):
                torch.manual_seed(0)
                pfi = impl.core.fault_injection(
                    builder().eval(), BATCH, input_shape=shape, layer_types=types, use_cuda=False
                )
                random.seed(seed)
                got[impl.name] = (
                    impl.wem.random_weight_location(pfi),
                    impl.wem.random_weight_location(pfi, 0),
                    random.getstate(),
                )
            assert got["pytorchfi"] == got["compat"]


# ---------------------------------------------------------------------- core
@pytest.mark.parametrize("model", ["cnn", "cnn_default_types", "resnet"])
def test_profile_accessors_and_summary_match_pytorchfi(pfi_models, model, capsys):
    builder, shape, types = pfi_models[model]
    seen = {}
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        kw = {} if types is None else {"layer_types": types}
        pfi = impl.core.fault_injection(
            builder().eval(), 2, input_shape=shape, use_cuda=False, **kw
        )
        n = pfi.get_total_layers()
        seen[impl.name] = (
            pfi.get_output_size(),
            [pfi.get_layer_type(i) for i in range(n)],
            [pfi.get_layer_dim(i) for i in range(n)],
            [pfi.get_layer_shape(i) for i in range(n)],
            [pfi.get_weights_size(i) for i in range(n)],
            [pfi.get_weights_dim(i) for i in range(n)],
            [pfi.get_fmaps_num(i) for i in range(n) if pfi.get_layer_dim(i) == 4],
            [pfi.get_fmap_HW(i) for i in range(n) if pfi.get_layer_dim(i) == 4],
            pfi.get_inj_layer_types(),
            pfi.get_total_batches(),
            pfi.use_cuda,
            pfi.print_pytorchfi_layer_summary(),
            capsys.readouterr().out,
        )
    assert seen["pytorchfi"] == seen["compat"]


def test_custom_neuron_function_matches_pytorchfi(pfi_models):
    """pytorchfi's documented custom-function pattern: a hook that counts layers itself."""

    def make(pfi, layer, batch, index, value):
        def hook(module, inputs, output):
            if pfi.get_current_layer() == layer:
                output[(batch, *index)] = value * output[(batch, *index)] + 1
            pfi.updateLayer()
            if pfi.get_current_layer() >= pfi.get_total_layers():
                pfi.reset_current_layer()

        return hook

    for model, layer, index in (
        ("cnn", 2, (1, 3, 2)),
        ("resnet", 5, (2, 1, 1)),
        ("shared", 1, (0, 2, 3)),
    ):
        call = lambda i, p, layer=layer, index=index: p.declare_neuron_fi(  # noqa: E731
            function=make(p, layer, 1, index, -300.0),
            layer_num=[layer],
            batch=[1],
            dim1=[index[0]],
            dim2=[index[1]],
            dim3=[index[2]],
        )
        o = assert_same(pfi_models[model], call)
        assert not torch.equal(o.out, o.golden)


def test_reset_and_redeclare_behave_like_pytorchfi(pfi_models):
    """A new declaration (or fi_reset) unhooks the previous neuron-corrupted model in pytorchfi;
    the compat layer deactivates it the same way. Weight-corrupted models keep their faults."""
    builder, shape, types = pfi_models["cnn"]
    results = {}
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        model = builder().eval()
        pfi = impl.core.fault_injection(
            model, BATCH, input_shape=shape, layer_types=types, use_cuda=False
        )
        x = torch.randn(BATCH, *shape)
        with torch.no_grad():
            first = pfi.declare_neuron_fi(
                batch=[0], layer_num=[1], dim1=[0], dim2=[0], dim3=[0], value=[50.0]
            )
            weights = pfi.declare_weight_fi(
                layer_num=[0], k=[0], dim1=[0], dim2=[0], dim3=[0], value=[40.0]
            )
            after_redeclare = first(x)
            second = pfi.declare_neuron_fi(
                batch=[1], layer_num=[3], dim1=[2], dim2=[None], dim3=[None], value=[60.0]
            )
            out_second = second(x)
            pfi.fi_reset()
            results[impl.name] = (after_redeclare, out_second, weights(x), second(x), model(x))
            assert pfi.get_corrupted_model() is None
    for a, b in zip(results["pytorchfi"], results["compat"]):
        assert torch.equal(bits(a), bits(b))
    golden = results["compat"][-1]
    assert torch.equal(results["compat"][0], golden)  # unhooked by the second declaration
    assert not torch.equal(results["compat"][1], golden)
    assert not torch.equal(results["compat"][2], golden)
    assert torch.equal(results["compat"][3], golden)  # unhooked by fi_reset


def test_bounds_warnings_match_pytorchfi(pfi_models):
    builder, shape, types = pfi_models["cnn"]
    caught = {}
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        pfi = impl.core.fault_injection(
            builder().eval(), BATCH, input_shape=shape, layer_types=types, use_cuda=False
        )
        with pytest.warns(UserWarning) as record:
            pfi.declare_neuron_fi(
                batch=[0], layer_num=[3], dim1=[1], dim2=[4], dim3=[5], value=[1.0]
            )
        caught[impl.name] = [str(w.message) for w in record if "ignored" in str(w.message)]
    assert caught["pytorchfi"] == caught["compat"] != []


@pytest.mark.parametrize(
    "kwargs",
    [
        {"batch": [3], "layer_num": [0], "dim1": [0], "dim2": [0], "dim3": [0], "value": [1.0]},
        {"batch": [0], "layer_num": [4], "dim1": [0], "dim2": [0], "dim3": [0], "value": [1.0]},
        {"batch": [0], "layer_num": [0], "dim1": [8], "dim2": [0], "dim3": [0], "value": [1.0]},
        {"batch": [0], "layer_num": [2], "dim1": [0], "dim2": [4], "dim3": [0], "value": [1.0]},
        {"batch": [0, 1], "layer_num": [0], "dim1": [0], "dim2": [0], "dim3": [0], "value": [1.0]},
    ],
)
def test_bad_neuron_locations_raise_assertion_error_like_pytorchfi(pfi_models, kwargs):
    builder, shape, types = pfi_models["cnn"]
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        pfi = impl.core.fault_injection(
            builder().eval(), BATCH, input_shape=shape, layer_types=types, use_cuda=False
        )
        with pytest.raises(AssertionError):
            pfi.declare_neuron_fi(**kwargs)
        with pytest.raises(ValueError):
            pfi.declare_neuron_fi()
        with pytest.raises(ValueError):
            pfi.declare_weight_fi()


# ---------------------------------------------------------------------- IEEE bit flips
def _flip(value: float, bit: int) -> float:
    (w,) = struct.unpack("<I", struct.pack("<f", value))
    return struct.unpack("<f", struct.pack("<I", w ^ (1 << bit)))[0]


@pytest.mark.parametrize(
    ("layer", "batch", "index", "bit"),
    [(0, 1, (3, 4, 5), 30), (1, 0, (7, 0, 0), 31), (2, 2, (2, 3, 1), 22), (3, 1, (9,), 29)],
)
def test_flip_bits_neuron_matches_a_pytorchfi_custom_flip(pfi_models, layer, batch, index, bit):
    """``flip_bits`` against pytorchfi with a custom function flipping the IEEE bit (struct)."""

    def real_call(impl, pfi):
        def hook(module, inputs, output):
            if pfi.get_current_layer() == layer:
                loc = (batch, *index)
                output[loc] = _flip(float(output[loc]), bit)
            pfi.updateLayer()

        dims = list(index) + [None] * (3 - len(index))
        return pfi.declare_neuron_fi(
            function=hook,
            layer_num=[layer],
            batch=[batch],
            dim1=[dims[0]],
            dim2=[dims[1]],
            dim3=[dims[2]],
        )

    def our_call(impl, pfi):
        dims = {f"dim{d + 1}": [v] for d, v in enumerate(index)}
        return pfi.declare_neuron_fi(layer_num=[layer], batch=[batch], flip_bits=[bit], **dims)

    theirs = run(REAL, pfi_models["cnn"], real_call)
    ours = run(OURS, pfi_models["cnn"], our_call)
    assert torch.equal(bits(ours.out), bits(theirs.out))
    assert not torch.equal(ours.out, ours.golden) or layer == 1  # (7, 0, 0) may be max-pooled away


@pytest.mark.parametrize(
    ("layer", "index", "bit"), [(0, (1, 2, 0, 1), 30), (2, (3, 0, 1, 1), 26), (3, (5, 17), 31)]
)
def test_flip_bits_weight_matches_a_pytorchfi_custom_flip(pfi_models, layer, index, bit):
    dims = list(index) + [None] * (4 - len(index))
    kw = dict(layer_num=[layer], k=[dims[0]], dim1=[dims[1]], dim2=[dims[2]], dim3=[dims[3]])
    theirs = run(
        REAL,
        pfi_models["cnn"],
        lambda i, p: p.declare_weight_fi(
            function=lambda data, loc: _flip(float(data[index]), bit), **kw
        ),
    )
    ours = run(OURS, pfi_models["cnn"], lambda i, p: p.declare_weight_fi(flip_bits=[(bit,)], **kw))
    assert torch.equal(bits(ours.out), bits(theirs.out))
    assert not torch.equal(ours.out, ours.golden)


# ---------------------------------------------------------------------- pytorchfi's bugs
def _pfi(impl, model, shape, types, batch=BATCH, **kw):
    return impl.core.fault_injection(
        model, batch, input_shape=shape, layer_types=types, use_cuda=False, **kw
    )


def test_second_forward_raises_in_pytorchfi_and_repeats_here(pfi_models):
    builder, shape, types = pfi_models["resnet"]
    kw = dict(batch=[1], layer_num=[2], dim1=[3], dim2=[1], dim3=[2], value=[77.0])
    torch.manual_seed(0)
    real_model = _pfi(REAL, builder().eval(), shape, types).declare_neuron_fi(**kw)
    torch.manual_seed(0)
    ours = _pfi(OURS, builder().eval(), shape, types).declare_neuron_fi(**kw)
    x = torch.randn(BATCH, *shape)
    with torch.no_grad():
        first = real_model(x)
        with pytest.raises(IndexError):
            real_model(x)
        assert torch.equal(bits(ours(x)), bits(first))
        assert torch.equal(bits(ours(x)), bits(first))


def conv3d_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.ReLU(), nn.Conv3d(2, 2, 2)).eval()


def test_conv3d_neuron_fault_ignored_by_pytorchfi_is_injected_here():
    shape, types = [1, 5, 5, 5], [nn.Conv3d]
    x = torch.randn(2, *shape)
    real = _pfi(REAL, conv3d_model(), shape, types, batch=2)
    ours = _pfi(OURS, conv3d_model(), shape, types, batch=2)
    kw = dict(batch=[1], layer_num=[1], dim1=[1], dim2=[0], dim3=[1], value=[123.0])
    with torch.no_grad():
        golden = conv3d_model()(x)
        assert torch.equal(real.declare_neuron_fi(**kw)(x), golden)  # silently nothing
        with pytest.raises(core.PytorchfiArgumentError, match="dim4"):
            ours.declare_neuron_fi(**kw)
        got = ours.declare_neuron_fi(dim4=[1], **kw)(x)
    expected = golden.clone()
    expected[1, 1, 0, 1, 1] = 123.0  # the last layer's output is the model's output
    assert torch.equal(got, expected)


def test_conv3d_weight_fault_fails_in_pytorchfi_and_works_here():
    shape, types = [1, 5, 5, 5], [nn.Conv3d]
    x = torch.randn(2, *shape)
    real = _pfi(REAL, conv3d_model(), shape, types, batch=2)
    kw = dict(layer_num=[0], k=[1], dim1=[0], dim2=[2], dim3=[1], value=[-4.0])
    with pytest.raises(RuntimeError):
        real.declare_weight_fi(**kw)
    model = conv3d_model()
    ours = _pfi(OURS, model, shape, types, batch=2)
    with pytest.raises(core.PytorchfiArgumentError, match="dim4"):
        ours.declare_weight_fi(**kw)
    oracle = conv3d_model()
    with torch.no_grad():
        oracle[0].weight[1, 0, 2, 1, 0] = -4.0
        assert torch.equal(ours.declare_weight_fi(dim4=[0], **kw)(x), oracle(x))


def test_conv3d_random_models_draw_the_fifth_coordinate():
    shape, types = [1, 5, 5, 5], [nn.Conv3d]
    pfi = _pfi(OURS, conv3d_model(), shape, types, batch=2)
    random.seed(4)
    location = neuron_error_models.random_neuron_location(pfi, 0)
    assert len(location) == 5 and all(0 <= c < 3 for c in location[1:])
    random.seed(4)
    bad = neuron_error_models.random_neuron_inj(pfi, 50, 60)
    (fault,) = bad.faults
    assert len(fault.index) == 4
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert not torch.equal(bad(x), conv3d_model()(x))
    random.seed(4)
    assert len(weight_error_models.random_weight_location(pfi, 0)) == 6
    random.seed(4)
    bad = weight_error_models.random_weight_inj(pfi, 1, 20, 30)
    (fault,) = bad.faults
    assert fault.module == "2" and len(fault.index) == 5
    with torch.no_grad():
        assert not torch.equal(bad(x), conv3d_model()(x))


def quantized_cnn() -> nn.Module:
    """An int8 model of real quantized modules (per-channel weights, as torch's x86 default)."""
    import torch.ao.nn.quantized as nnq

    if torch.backends.quantized.engine not in ("x86", "fbgemm"):
        pytest.skip(f"the quantized engine is {torch.backends.quantized.engine!r}, not x86/fbgemm")
    g = torch.Generator().manual_seed(0)

    def conv(cin: int, cout: int, scale: float, zero_point: int) -> nn.Module:
        m = nnq.Conv2d(cin, cout, 3)
        m.scale, m.zero_point = scale, zero_point
        w = torch.randn(cout, cin, 3, 3, generator=g) * 0.3
        scales = (w.abs().amax(dim=(1, 2, 3)) / 127).double()
        zeros = torch.zeros(cout, dtype=torch.long)
        qw = torch.quantize_per_channel(w, scales, zeros, 0, torch.qint8)
        m.set_weight_bias(qw, torch.randn(cout, generator=g) * 0.1)
        return m

    return nn.Sequential(
        nnq.Quantize(0.05, 64, torch.quint8),
        conv(3, 4, 0.1, 0),
        nn.ReLU(),
        conv(4, 4, 0.05, 64),
        nnq.DeQuantize(),
    ).eval()


@pytest.mark.filterwarnings("ignore:.*quantized tensor creation functions:UserWarning")
def test_quantized_model_fails_in_pytorchfi_and_works_here():
    q = quantized_cnn()
    with pytest.raises(StopIteration):
        _pfi(REAL, q, [3, 8, 8], [nn.Conv2d], batch=2)
    pfi = _pfi(OURS, q, [3, 8, 8], [nn.Conv2d], batch=2)
    assert pfi.get_total_layers() == 2  # quantized Conv2d modules count as nn.Conv2d
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        golden = q(x)
        # weight: flip bit 6 of one int8 weight; oracle: the same flip in int_repr, repacked
        bad = pfi.declare_weight_fi(
            layer_num=[1], k=[2], dim1=[1], dim2=[0], dim3=[2], flip_bits=[6]
        )
        got = bad(x)
        assert torch.equal(q(x), golden)  # restored after the call
        w, b = q[3].weight(), q[3].bias()
        ints = w.int_repr().clone()
        ints[2, 1, 0, 2] ^= 1 << 6
        if w.qscheme() == torch.per_channel_affine:
            faulty = torch._make_per_channel_quantized_tensor(
                ints,
                w.q_per_channel_scales(),
                w.q_per_channel_zero_points(),
                w.q_per_channel_axis(),
            )
        else:
            faulty = torch._make_per_tensor_quantized_tensor(ints, w.q_scale(), w.q_zero_point())
        q[3].set_weight_bias(faulty, b)
        expected = q(x)
        q[3].set_weight_bias(w, b)
        assert torch.equal(got, expected) and not torch.equal(got, golden)
        # neuron: a value in a quantized output is quantized with that output's scale
        bad = pfi.declare_neuron_fi(
            batch=[1], layer_num=[1], dim1=[3], dim2=[1], dim3=[2], value=[0.3]
        )
        got = bad(x)
        seen = {}
        handle = q[3].register_forward_hook(lambda m, a, o: seen.setdefault("o", o))
        q(x)
        handle.remove()
        o = seen["o"]
        deq = o.dequantize()
        deq[1, 3, 1, 2] = 0.3
        requant = torch.quantize_per_tensor(deq, o.q_scale(), o.q_zero_point(), o.dtype)
        assert torch.equal(got, requant.dequantize()) and not torch.equal(got, golden)


def test_train_mode_batchnorm_statistics_untouched_here(pfi_models):
    builder, shape, types = pfi_models["resnet"]
    for impl, changes in ((REAL, True), (OURS, False)):
        torch.manual_seed(0)
        model = builder().train()
        before = [b.clone() for b in model.buffers()]
        _pfi(impl, model, shape, types)
        after = list(model.buffers())
        assert any(not torch.equal(a, b) for a, b in zip(before, after)) == changes, impl.name


def test_out_of_range_weight_layer_ignored_by_pytorchfi_is_an_error_here(pfi_models):
    builder, shape, types = pfi_models["cnn"]
    kw = dict(layer_num=[9], k=[0], dim1=[0], dim2=[0], dim3=[0], value=[5.0])
    torch.manual_seed(0)
    model = builder().eval()
    x = torch.randn(2, *shape)
    with torch.no_grad():
        assert torch.equal(_pfi(REAL, model, shape, types).declare_weight_fi(**kw)(x), model(x))
    with pytest.raises(core.PytorchfiArgumentError, match=r"layer_num\[0\] = 9 .*valid 0\.\.3"):
        _pfi(OURS, model, shape, types).declare_weight_fi(**kw)


def test_one_d_weights_fail_in_pytorchfi_random_location_and_work_here():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
    types = [nn.BatchNorm2d]
    with pytest.raises(UnboundLocalError):
        real_wem.random_weight_inj(_pfi(REAL, model, [3, 6, 6], types))
    random.seed(0)
    bad = weight_error_models.random_weight_inj(_pfi(OURS, model, [3, 6, 6], types), 0, 7, 8)
    (fault,) = bad.faults
    assert fault.module == "1" and len(fault.index) == 1
    x = torch.randn(2, 3, 6, 6)
    with torch.no_grad():
        oracle = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)).eval()
        oracle.load_state_dict(model.state_dict())
        oracle[1].weight[fault.index] = fault.param_dict["value"]
        assert torch.equal(bad(x), oracle(x)) and not torch.equal(bad(x), model(x))


def test_shared_module_numbering_matches_pytorchfi_and_summary_shows_each_layers_weight(
    pfi_models, capsys
):
    """A convolution called twice is two neuron layers in both; pytorchfi's summary then shows
    the registration-order weights (here it fails: 4 layers, 3 weights), ours each layer's own."""
    builder, shape, types = pfi_models["shared"]
    torch.manual_seed(0)
    real = _pfi(REAL, builder().eval(), shape, types)
    with pytest.raises(IndexError):
        real.print_pytorchfi_layer_summary()
    torch.manual_seed(0)
    ours = _pfi(OURS, builder().eval(), shape, types)
    assert ours.output_size == real.output_size == [[1, 4, 8, 8]] * 3 + [[1, 5]]
    table = ours.print_pytorchfi_layer_summary()
    rows = [line for line in table.splitlines() if line.strip()[:1].isdigit()]
    expected = [
        "[4, 3, 1, 1]",
        "[4, 4, 3, 3]",
        "[4, 4, 3, 3]",
        "[5, 256]",
    ]  # stem, conv, conv, head
    assert len(rows) == 4 and all(w in row for w, row in zip(expected, rows)), rows


# ---------------------------------------------------------------------- bad arguments
def test_unknown_arguments_get_pytorchfis_error_type_with_a_clear_message(pfi_models):
    builder, shape, types = pfi_models["cnn"]
    torch.manual_seed(0)
    real = _pfi(REAL, builder().eval(), shape, types)
    ours = _pfi(OURS, builder().eval(), shape, types)
    kw = dict(layer=[0], batch=[0], dim1=[0], dim2=[0], dim3=[0], value=[1.0])
    with pytest.raises(AssertionError, match="missing values"):
        real.declare_neuron_fi(**kw)
    with pytest.raises(AssertionError, match=r"unknown argument 'layer'.*Did you mean 'layer_num'"):
        ours.declare_neuron_fi(**kw)
    with pytest.raises(TypeError, match=r"unknown argument 'dim_1'.*Did you mean 'dim1'"):
        ours.declare_weight_fi(layer_num=[0], k=[0], dim_1=[0], value=[1.0])
    real_core.fault_injection(builder().eval(), 1, [3, 8, 8], use_cude=False)  # ignored there
    with pytest.raises(AssertionError, match=r"unknown argument 'use_cude'.*'use_cuda'"):
        core.fault_injection(builder().eval(), 1, [3, 8, 8], use_cude=False)
    with pytest.raises(AssertionError, match="give one of value, function or flip_bits"):
        ours.declare_neuron_fi(batch=[0], layer_num=[0], dim1=[0], value=[1.0], flip_bits=[3])
    with pytest.raises(AssertionError, match=r"value has 0 entries but layer_num has 1"):
        ours.declare_neuron_fi(batch=[0], layer_num=[0], dim1=[0], dim2=[0], dim3=[0])
    with pytest.raises(IndexError, match=r"out of range for weight shape \(8, 3, 3, 3\)"):
        ours.declare_weight_fi(layer_num=[0], k=[8], dim1=[0], dim2=[0], dim3=[0], value=[1.0])
    with pytest.raises(AssertionError, match=r"picks 3 elements"):
        ours.declare_weight_fi(layer_num=[0], k=[1], dim1=[0], dim2=[0], value=[1.0])


# ---------------------------------------------------------------------- torchfault's guarantees
def _snapshot(model: nn.Module) -> list[torch.Tensor]:
    return [t.detach().clone() for t in (*model.parameters(), *model.buffers())]


def _hooks(model: nn.Module) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_deep_copy_and_exact_restore_even_when_the_forward_raises(pfi_models, monkeypatch):
    import copy

    def refuse(*a, **k):
        raise AssertionError("deepcopy called")

    monkeypatch.setattr(copy, "deepcopy", refuse)
    builder, shape, types = pfi_models["resnet"]
    torch.manual_seed(0)
    model = builder().eval()
    pfi = _pfi(OURS, model, shape, types)
    before, hooks = _snapshot(model), _hooks(model)
    bad_w = pfi.declare_weight_fi(
        layer_num=[0, 6], k=[0, 3], dim1=[1, 2], dim2=[2, None], dim3=[0, None], flip_bits=[30, 31]
    )
    assert bad_w._modules["_pfi_model"] is model
    bad_n = neuron_error_models.random_inj_per_layer_batched(pfi)
    x = torch.randn(BATCH, *shape)
    for bad in (bad_w, bad_n):
        with torch.no_grad():
            assert not torch.equal(bad(x), model(x))
        with pytest.raises(RuntimeError):
            bad(torch.randn(BATCH, 5, 8, 8))  # wrong channel count: raises inside the forward
        assert _hooks(model) == hooks
        now = _snapshot(model)
        assert all(a.numpy().tobytes() == b.numpy().tobytes() for a, b in zip(now, before))
    sd = bad_w.state_dict()
    assert sd["fc.weight"][3, 2] == -model.fc.weight[3, 2]  # bit 31: the faulty weights, copied
    assert torch.equal(sd["conv1.weight"][1:], model.conv1.weight[1:])
    assert bad_w.conv1 is model.conv1  # attributes reach the wrapped model


def test_custom_function_gets_a_fresh_layer_counter_in_every_call(pfi_models):
    """A custom hook that never resets pytorchfi's counter injects only in pytorchfi's first call;
    here every call starts the counter at 0."""
    builder, shape, types = pfi_models["cnn"]
    x = torch.randn(BATCH, *shape)
    outs = {}
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        model = builder().eval()
        pfi = _pfi(impl, model, shape, types)

        def hook(module, inputs, output, pfi=pfi):
            if pfi.get_current_layer() == 2:
                output[1, 0, 1, 1] = 500.0
            pfi.updateLayer()

        bad = pfi.declare_neuron_fi(
            function=hook, layer_num=[2], batch=[1], dim1=[0], dim2=[1], dim3=[1]
        )
        with torch.no_grad():
            outs[impl.name] = (model(x), bad(x), bad(x))
    golden, first, second = outs["pytorchfi"]
    assert not torch.equal(first, golden) and torch.equal(second, golden)
    assert all(torch.equal(bits(o), bits(first)) for o in outs["compat"][1:])


def test_missing_location_lists_mean_none(pfi_models):
    builder, shape, types = pfi_models["cnn"]
    x = torch.randn(BATCH, *shape)
    torch.manual_seed(0)
    real = _pfi(REAL, builder().eval(), shape, types)
    torch.manual_seed(0)
    ours = _pfi(OURS, builder().eval(), shape, types)
    kw = dict(batch=[2], layer_num=[3], dim1=[4], value=[-40.0])
    with pytest.raises(AssertionError, match="missing values"):
        real.declare_neuron_fi(**kw)
    with torch.no_grad():
        expected = real.declare_neuron_fi(dim2=[None], dim3=[None], **kw)(x)
        assert torch.equal(bits(ours.declare_neuron_fi(**kw)(x)), bits(expected))
        wkw = dict(layer_num=[3], k=[5], dim1=[17], value=[3.0])
        with pytest.raises(IndexError):
            real.declare_weight_fi(**wkw)
        expected = real.declare_weight_fi(dim2=[None], dim3=[None], **wkw)(x)
        assert torch.equal(bits(ours.declare_weight_fi(**wkw)(x)), bits(expected))


def test_all_layer_types_weight_faults_fail_in_pytorchfi_and_work_here(pfi_models):
    builder, shape, types = pfi_models["resnet_all"]
    torch.manual_seed(0)
    model = builder().eval()
    with pytest.raises(TypeError):
        _pfi(REAL, model, shape, types).declare_weight_fi(
            layer_num=[0], k=[0], dim1=[0], dim2=[0], dim3=[0], value=[2.0]
        )
    pfi = _pfi(OURS, model, shape, types)
    leaves = [n for n, m in model.named_modules() if n and not list(m.children())]
    assert leaves[1] == "bn1" and leaves[2] == "relu"
    bad = pfi.declare_weight_fi(layer_num=[1], k=[3], value=[9.0])  # bn1.weight[3]
    x = torch.randn(BATCH, *shape)
    oracle = builder().eval()
    oracle.load_state_dict(model.state_dict())
    with torch.no_grad():
        oracle.bn1.weight[3] = 9.0
        assert torch.equal(bad(x), oracle(x)) and not torch.equal(bad(x), model(x))
    with pytest.raises(AssertionError, match=r"layer_num\[0\] = 2 \(relu: ReLU\) has no weight"):
        pfi.declare_weight_fi(layer_num=[2], k=[0], value=[1.0])
    assert "-" in pfi.print_pytorchfi_layer_summary()  # weightless layers in the table


def test_pytorchfi_sets_up_global_logging_and_the_compat_layer_does_not(pfi_models, monkeypatch):
    import logging

    calls = []
    monkeypatch.setattr(logging, "basicConfig", lambda **kw: calls.append(kw))
    builder, shape, types = pfi_models["cnn"]
    _pfi(REAL, builder().eval(), shape, types)
    assert len(calls) == 1 and "%(clientip)s" in calls[0]["format"]
    _pfi(OURS, builder().eval(), shape, types)
    neuron_error_models.single_bit_flip_func(builder().eval(), 1, shape, use_cuda=False)
    assert len(calls) == 1


def test_more_bad_arguments_are_refused_before_anything_runs(pfi_models):
    builder, shape, types = pfi_models["cnn"]
    torch.manual_seed(0)
    ours = _pfi(OURS, builder().eval(), shape, types)
    loc = dict(layer_num=[0], dim1=[0], dim2=[0], dim3=[0])
    with pytest.raises(
        AssertionError, match=r"batch\[0\] = -1: Invalid batch element! valid: 0\.\.2"
    ):
        ours.declare_neuron_fi(batch=[-1], value=[1.0], **loc)
    with pytest.raises(AssertionError, match="got value and function"):
        ours.declare_neuron_fi(batch=[0], value=[1.0], function=lambda *a: None, **loc)
    with pytest.raises(AssertionError, match="must be callable"):
        ours.declare_neuron_fi(batch=[0], function=3, **loc)
    with pytest.raises(AssertionError, match=r"value\[0\] must be a number, got 'big'"):
        ours.declare_neuron_fi(batch=[0], value=["big"], **loc)
    with pytest.raises(AssertionError, match="flip_bits entries must be a bit position"):
        ours.declare_weight_fi(layer_num=[0], k=[0], dim1=[0], dim2=[0], dim3=[0], flip_bits=[[]])
    with pytest.raises(AssertionError, match="needs layer_num"):
        ours.declare_weight_fi(k=[0], value=[1.0])
    with pytest.raises(AssertionError, match="layer_types must be a list"):
        core.fault_injection(builder().eval(), 1, shape, [nn.Conv2d, "conv"])
    with pytest.raises(AssertionError, match="Batch size"):
        core.fault_injection(builder().eval(), 0, shape)
    with pytest.raises(AssertionError, match="Input shape"):
        core.fault_injection(builder().eval(), 1, (3, 8, 8))


def test_custom_function_hooks_are_removed_when_the_forward_raises(pfi_models):
    builder, shape, types = pfi_models["resnet"]
    torch.manual_seed(0)
    model = builder().eval()
    pfi = _pfi(OURS, model, shape, types)
    hooks = _hooks(model)
    random.seed(0)
    bad = neuron_error_models.random_neuron_single_bit_inj_batched(
        _pfi_single_bit(model, shape, types), [50.0] * 7
    )
    with pytest.raises(RuntimeError):
        bad(torch.randn(BATCH, 5, 8, 8))
    assert _hooks(model) == hooks
    assert pfi.get_total_layers() == 7


def _pfi_single_bit(model, shape, types):
    return neuron_error_models.single_bit_flip_func(
        model, BATCH, input_shape=shape, layer_types=types, use_cuda=False
    )


def test_numpy_integer_locations_work_as_in_pytorchfi(pfi_models):
    np = pytest.importorskip("numpy")
    builder, shape, types = pfi_models["cnn"]
    x = torch.randn(BATCH, *shape)
    nkw = dict(batch=[np.int64(1)], layer_num=[np.int64(1)], dim1=[np.int64(2)])
    nkw.update(dim2=[np.int64(3)], dim3=[np.int64(0)], value=[np.float64(20.0)])
    wkw = dict(layer_num=[np.int64(0)], k=[np.int64(1)], dim1=[np.int64(2)])
    wkw.update(dim2=[np.int64(0)], dim3=[np.int64(1)], value=[np.float64(-3.0)])
    outs = {}
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        pfi = _pfi(impl, builder().eval(), shape, types)
        with torch.no_grad():
            outs[impl.name] = (pfi.declare_neuron_fi(**nkw)(x), pfi.declare_weight_fi(**wkw)(x))
    for a, b in zip(outs["pytorchfi"], outs["compat"]):
        assert torch.equal(bits(a), bits(b))


def test_a_layer_type_without_one_output_tensor_is_named():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    model = nn.Sequential(nn.Conv2d(1, 1, 1), Pair())
    with pytest.raises(AssertionError, match=r"layer 1 \(1: Pair\) returns tuple, not a tensor"):
        core.fault_injection(model, 1, [1, 2, 2], ["all"])


def test_pytorchfi_07_names_are_the_same_methods():
    pfi = core.FaultInjection(nn.Sequential(nn.Linear(2, 2)), 1, [2], [nn.Linear])
    assert type(pfi) is core.fault_injection
    for new, old in [
        ("declare_neuron_fault_injection", "declare_neuron_fi"),
        ("declare_weight_fault_injection", "declare_weight_fi"),
        ("reset_fault_injection", "fi_reset"),
        ("update_layer", "updateLayer"),
    ]:
        assert getattr(core.fault_injection, new) is getattr(core.fault_injection, old)


def test_single_bit_flip_scalar_location_branch_matches_pytorchfi(pfi_models):
    """pytorchfi's hook also takes one location set as scalars (``set_corrupt_layer(int)``)."""

    def call(impl, pfi):
        bad = pfi.declare_neuron_fi(function=pfi.single_bit_flip_signed_across_batch)
        pfi.set_conv_max([6.0] * pfi.get_total_layers())
        pfi.set_corrupt_layer(1)
        pfi.corrupt_batch, pfi.corrupt_dim1, pfi.corrupt_dim2, pfi.corrupt_dim3 = 2, 5, 3, 1
        return bad

    changed = 0
    for seed in range(4):
        o = assert_same(pfi_models["cnn"], call, seed, single_bit=True)
        changed += not torch.equal(o.out, o.golden)
    assert changed >= 1


def test_bits_outside_the_format_are_refused_when_declared(pfi_models):
    builder, shape, types = pfi_models["cnn"]
    torch.manual_seed(0)
    model = builder().eval()
    ours = _pfi(OURS, model, shape, types)
    with pytest.raises(AssertionError, match=r"flip_bits\[0\] = \(32,\) on layer 1: .*bit 32"):
        ours.declare_neuron_fi(
            batch=[0], layer_num=[1], dim1=[0], dim2=[0], dim3=[0], flip_bits=[32]
        )
    with pytest.raises(AssertionError, match=r"declare_weight_fi\(\): .*bit 40"):
        ours.declare_weight_fi(layer_num=[1], k=[0], dim1=[0], dim2=[0], dim3=[0], flip_bits=[40])
    model.double()  # float64: bit 40 exists
    ours = _pfi(OURS, model, shape, types)
    bad = ours.declare_weight_fi(layer_num=[1], k=[0], dim1=[0], dim2=[0], dim3=[0], flip_bits=[40])
    x = torch.randn(2, *shape, dtype=torch.float64)
    with torch.no_grad():
        assert not torch.equal(bad(x), model(x))


def test_weight_and_neuron_faults_chained_through_a_second_injector(pfi_models):
    """pytorchfi's way to combine both: a second injector on the weight-corrupted model."""
    builder, shape, types = pfi_models["resnet"]
    outs = {}
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        model = builder().eval()
        pfi = _pfi(impl, model, shape, types)
        x = torch.randn(BATCH, *shape)
        weights = pfi.declare_weight_fi(
            layer_num=[3], k=[4], dim1=[2], dim2=[1], dim3=[0], value=[-6.0]
        )
        both = _pfi(impl, weights, shape, types).declare_neuron_fi(
            batch=[2], layer_num=[4], dim1=[9], dim2=[1], dim3=[3], value=[30.0]
        )
        with torch.no_grad():
            outs[impl.name] = (model(x), weights(x), both(x))
    golden, only_weights, combined = outs["compat"]
    assert not torch.equal(only_weights, golden) and not torch.equal(combined, only_weights)
    for a, b in zip(outs["pytorchfi"], outs["compat"]):
        assert torch.equal(bits(a), bits(b))


SPECIAL = [float("nan"), -0.0, 1e-45, 2.5e-46, float("-inf"), 3.4028234663852886e38]
OVERFLOW = [1e39, -3.4028236e38, 3.4028235e38]


@pytest.mark.parametrize("value", SPECIAL + OVERFLOW, ids=str)
def test_special_values_are_stored_bit_identically(pfi_models, value):
    """NaN, signed zero, subnormals, underflow, the largest float32: the same float32 words in
    the output (neurons) and in the weights (through state_dict) as pytorchfi writes. A value
    float32 cannot hold is torch's RuntimeError in both (here when declared)."""
    builder, shape, types = pfi_models["cnn"]
    call = lambda i, p: p.declare_neuron_fi(  # noqa: E731
        batch=[1], layer_num=[3], dim1=[6], dim2=[None], dim3=[None], value=[value]
    )
    wkw = dict(layer_num=[1], k=[2], dim1=[3], dim2=[0], dim3=[2], value=[value])
    if value in OVERFLOW:
        with pytest.raises(RuntimeError, match="overflow"):
            run(REAL, pfi_models["cnn"], call)
        with pytest.raises(RuntimeError, match=r"value\[0\] = .* does not fit layer 3's"):
            run(OURS, pfi_models["cnn"], call)
        for impl in (REAL, OURS):
            with pytest.raises(RuntimeError, match="overflow"):
                _pfi(impl, builder().eval(), shape, types).declare_weight_fi(**wkw)
        return
    assert_same(pfi_models["cnn"], call)
    sds = {}
    for impl in (REAL, OURS):
        torch.manual_seed(0)
        bad = _pfi(impl, builder().eval(), shape, types).declare_weight_fi(**wkw)
        sds[impl.name] = bad.state_dict()["2.weight"]
    assert torch.equal(bits(sds["pytorchfi"]), bits(sds["compat"]))


def _public(module) -> dict[str, Any]:
    return {
        n: getattr(module, n)
        for n in dir(module)
        if not n.startswith("_")
        and callable(getattr(module, n))
        and getattr(getattr(module, n), "__module__", "").startswith("pytorchfi")
    }


@pytest.mark.parametrize("name", ["core", "neuron_error_models", "weight_error_models", "util"])
def test_every_public_name_has_pytorchfis_signature(name):
    """Same functions, classes and methods, with the same parameters and defaults."""
    import inspect

    real = _public(
        getattr(REAL, {"neuron_error_models": "nem", "weight_error_models": "wem"}.get(name, name))
    )
    ours = getattr(
        OURS, {"neuron_error_models": "nem", "weight_error_models": "wem"}.get(name, name)
    )
    assert real, name
    for attr, obj in real.items():
        mine = getattr(ours, attr)
        targets = [(attr, obj, mine)]
        if inspect.isclass(obj):
            targets += [
                (f"{attr}.{m}", getattr(obj, m), getattr(mine, m))
                for m in vars(obj)
                if not m.startswith("_")
                or m in ("__init__", "_twos_comp", "_twos_comp_shifted", "_flip_bit_signed")
            ]
        for label, theirs, mine_obj in targets:
            if callable(theirs):
                a, b = inspect.signature(theirs), inspect.signature(mine_obj)
                extra = [p for p in b.parameters if p not in a.parameters]
                assert extra in ([], ["dim4"]), (label, a, b)
                assert [(p.name, p.default, p.kind) for p in a.parameters.values()] == [
                    (p.name, p.default, p.kind)
                    for p in b.parameters.values()
                    if p.name not in extra
                ], (label, a, b)


@pytest.mark.parametrize("model", ["cnn", "resnet", "shared"])
def test_fuzzed_declarations_with_repeated_locations_match_pytorchfi(pfi_models, model):
    """Many faults per declaration, some on the same element (the last one wins in both)."""
    builder, shape, types = pfi_models[model]
    torch.manual_seed(0)
    probe = _pfi(OURS, builder().eval(), shape, types)
    g = random.Random(1234)
    for _ in range(4):
        neurons: dict[str, list] = {
            k: [] for k in ("batch", "layer_num", "dim1", "dim2", "dim3", "value")
        }
        for _ in range(12):
            layer = g.randrange(probe.get_total_layers())
            out = probe.get_layer_shape(layer)
            loc = [g.randrange(n) for n in out[1:]] + [None] * (5 - len(out))
            for _ in range(g.choice((1, 1, 2))):  # sometimes the same element twice
                for key, v in zip(("layer_num", "dim1", "dim2", "dim3"), [layer, *loc[:3]]):
                    neurons[key].append(v)
                neurons["batch"].append(g.randrange(BATCH))
                neurons["value"].append(g.uniform(-50, 50))
        o = assert_same(pfi_models[model], lambda i, p, kw=neurons: p.declare_neuron_fi(**kw))
        assert not torch.equal(o.out, o.golden)
        if model == "shared":
            continue  # pytorchfi's weight numbering differs from its neuron numbering there
        weights: dict[str, list] = {
            k: [] for k in ("layer_num", "k", "dim1", "dim2", "dim3", "value")
        }
        for _ in range(10):
            layer = g.randrange(probe.get_total_layers())
            size = list(probe.get_weights_size(layer)) + [None, None]
            loc = [g.randrange(n) if n is not None else None for n in size[:4]]
            for _ in range(g.choice((1, 1, 2))):
                for key, v in zip(("layer_num", "k", "dim1", "dim2", "dim3"), [layer, *loc]):
                    weights[key].append(v)
                weights["value"].append(g.uniform(-5, 5))
        o = assert_same(pfi_models[model], lambda i, p, kw=weights: p.declare_weight_fi(**kw))
        assert not torch.equal(o.out, o.golden)
