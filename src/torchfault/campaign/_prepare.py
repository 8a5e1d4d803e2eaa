# SPDX-License-Identifier: MIT
"""Everything a :class:`Campaign` prepares before it opens its store, checked: model, inputs and
labels, the golden pass (shared with :func:`run_campaign`), the inputs to run, the fault sites,
the sampler, the fingerprint, the trace and protection settings. Every setting that could fail
fails here, as a ConfigError naming its field, before anything is written."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn as nn

from torchfault.campaign._build import build_inputs, build_model, fingerprint, shape_text
from torchfault.campaign._config import CampaignConfig
from torchfault.campaign._device import resolve_device
from torchfault.campaign._engine import ENGINES, MIN_ROWS
from torchfault.campaign._executors import EXECUTORS
from torchfault.campaign._golden import GoldenPass, prepare_golden
from torchfault.campaign._outcome import Criterion
from torchfault.campaign._structure import Batched, positional_args
from torchfault.errors import ConfigError, TorchFaultError
from torchfault.faults import TargetSpec, fault_space

__all__ = ["Prepared", "prepare"]


@dataclass
class Prepared:
    """What :meth:`Campaign.setup` prepared (all checked).

    Attributes:
        model: the model, in eval mode, on the campaign's device.
        inputs: the inputs (a tensor, rows first, or :class:`Batched`), on that device.
        labels: the inputs' classes, or ``None``.
        criterion: the outcome criterion.
        golden: the golden pass (outputs and the criterion's class of each input).
        input_ids: the inputs faults run on (all, or those classified correctly).
        accuracy: the golden accuracy (``None`` without labels or classes).
        sites: the fault space of the chosen targets.
        sampler: the sampler (fault k = f(seed, k)).
        fingerprint: SHA-256 of model state and inputs (the store's identity).
        trace: ``(layer order, range profile or None)`` when traces are stored.
        protection: the bound protection, or ``None``.
    """

    model: nn.Module
    inputs: torch.Tensor | Batched
    labels: torch.Tensor | None
    criterion: Criterion
    golden: GoldenPass
    input_ids: list[int]
    accuracy: float | None
    sites: Any
    sampler: Any
    fingerprint: str
    trace: tuple[list[str], Any] | None
    protection: Any


def prepare(cfg: CampaignConfig) -> Prepared:
    """Build and check everything ``cfg`` names (threads and seed set as the config says)."""
    if cfg.engine.threads:
        torch.set_num_threads(cfg.engine.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.engine.device, "engine.device")
    criterion = cfg.outcome.criterion_object()
    model = build_model(cfg).to(device)
    inputs, labels = build_inputs(cfg)
    inputs = inputs.to(device)
    golden = _golden(cfg, model, inputs, criterion)
    input_ids = _input_ids(cfg, golden, labels)
    sites = _fault_sites(cfg, model, inputs)
    sampler = _sampler(cfg, sites, model)
    try:
        ENGINES.get(cfg.engine.name)
    except ValueError as exc:
        raise ConfigError(f"engine.name: {exc}") from None
    try:
        EXECUTORS.get(cfg.executor.name)
    except ValueError as exc:
        raise ConfigError(f"executor.name: {exc}") from None
    print_ = fingerprint(model, inputs, labels)  # type: ignore[arg-type]
    trace = _trace(cfg, model, inputs)
    protection = _protection(cfg, model, inputs, golden.outputs)
    return Prepared(
        model,
        inputs,
        labels,
        criterion,
        golden,
        input_ids,
        golden.accuracy(labels),
        sites,
        sampler,
        print_,
        trace,
        protection,
    )


def _golden(
    cfg: CampaignConfig, model: nn.Module, inputs: torch.Tensor | Batched, criterion: Criterion
) -> GoldenPass:
    """The golden pass; a model that cannot run on the inputs, or a criterion that does not fit
    its output, is a ConfigError naming the fields to check."""

    def failed(exc: Exception) -> ConfigError:  # the model cannot run on these inputs
        return ConfigError(
            f"model.name / data.dataset: the golden run of {cfg.model.name!r} on "
            f"{cfg.data.dataset!r} inputs of shape {shape_text(inputs)} failed "
            f"({type(exc).__name__}: {exc}). Check that the model is built for this data "
            "(model.dataset, model.kwargs, data.kwargs)."
        )

    try:
        return prepare_golden(
            model,
            inputs,
            criterion,
            cfg.engine.batch_size,
            deterministic=cfg.engine.deterministic,
            topk_field="outcome.topk",
            failed=failed,
        )
    except ConfigError:
        raise
    except TorchFaultError as exc:
        where = "outcome.output" if str(exc).startswith("outcome.output") else "outcome.criterion"
        raise ConfigError(str(exc), field=where) from None


def _input_ids(cfg: CampaignConfig, golden: GoldenPass, labels: torch.Tensor | None) -> list[int]:
    """Every input, or (``data.only_correct``) those the golden model classifies correctly."""
    if not (cfg.data.only_correct and labels is not None):
        return list(range(len(golden)))
    if not golden.has_classes:
        raise ConfigError(
            f"data.only_correct: criterion {golden.criterion.label!r} gives no class per "
            "input to compare with the labels.",
            field="data.only_correct",
        )
    ids = golden.correct_inputs(labels)
    if not ids:
        raise TorchFaultError("data.only_correct: the golden model classifies no input correctly.")
    return ids


def _fault_sites(cfg: CampaignConfig, model: nn.Module, inputs: torch.Tensor | Batched) -> Any:
    """The fault space of ``targets`` (errors name ``targets.<field>``)."""
    t = cfg.targets
    if t.format is not None:
        from torchfault import numerics

        try:
            numerics.get_format(t.format)
        except ValueError as exc:
            raise ConfigError(f"targets.format: {exc}") from None
    try:
        targets = TargetSpec(modules=list(t.modules) or None, kinds=tuple(t.kinds), format=t.format)
        probe = positional_args(model, inputs[:2]) if isinstance(inputs, Batched) else inputs[:2]
        sites = fault_space(model, probe, targets)
    except ValueError as exc:
        own = getattr(exc, "field", None)
        where = f"targets.{own}" if own in ("modules", "kinds", "format") else "targets"
        raise ConfigError(f"{where}: {exc}", field=where) from None
    if not sites:
        raise ConfigError("targets: the chosen modules and kinds hold no tensor to fault.")
    return sites


def _sampler(cfg: CampaignConfig, sites: Any, model: nn.Module) -> Any:
    """The sampler, its margin reachable and its fault model usable with its parameters."""
    s = cfg.sampler
    try:
        from torchfault.faults import FAULT_MODELS

        FAULT_MODELS.get(s.fault_model)
    except ValueError as exc:
        raise ConfigError(f"sampler.fault_model: {exc}") from None
    sampler = make_sampler(cfg, sites, model)
    check_margin_reachable(cfg, sampler)
    _check_fault_model(
        s.fault_model, dict(s.params), sampler.sites[0].format, sampler.site_bits[0][:1]
    )
    return sampler


def make_sampler(cfg: CampaignConfig, sites: Any, model: nn.Module) -> Any:
    """The sampler ``cfg.sampler`` describes over ``sites`` (errors name ``sampler.<field>``)."""
    from torchfault.samplers import SAMPLERS, create_sampler, sampler_capabilities

    s = cfg.sampler
    kw: dict[str, Any] = {
        "sites": list(sites),
        "seed": cfg.seed,
        "fault_model": s.fault_model,
        "bits": s.bits,
        "persistence": s.persistence,
        "params": dict(s.params),
    }
    if SAMPLERS.is_registered(s.name) and sampler_capabilities(s.name).needs_model:
        kw["model"] = model  # memory, nonzero: they read the model's tensors
    if s.memory is not None:
        kw.update(s.memory)
    if s.name == "stratified":
        kw.update(allocation=s.allocation, strata=s.strata, bit_groups=s.bit_groups)
        kw["pilot"] = s.pilot
    if s.name == "ber":
        kw["rate"] = s.rate
        kw["n"] = s.max_faults if s.adaptive else s.n  # the config requires one of them
    elif s.name == "exhaustive":
        pass  # every (element, bit) pair of the chosen sites
    elif s.adaptive:
        kw["n"] = s.max_faults
    elif s.n is not None:
        kw["n"] = s.n
    else:
        kw["margin"], kw["confidence"] = s.margin, s.confidence
    try:
        return create_sampler(s.name, **kw)
    except ValueError as exc:
        raise _sampler_error(exc) from None


def check_margin_reachable(cfg: CampaignConfig, sampler: Any) -> None:
    """An adaptive campaign whose margin cannot be reached within ``sampler.max_faults``
    faults even if no fault ever gave an SDC is refused: it would run them all in vain."""
    from torchfault.analysis import interval_from_rate

    s = cfg.sampler
    if not s.adaptive or s.margin is None:
        return
    strata = sampler.strata()
    population = math.inf if strata is None else sum(strata.values())
    budget = min(s.max_faults, population)
    if budget >= population:
        return  # the whole population: the rate becomes exact
    n_eff = budget / (1.0 - budget / population) if math.isfinite(population) else budget
    low, high = interval_from_rate(0.0, n_eff, s.confidence, cfg.interval)
    if (high - low) / 2.0 > s.margin:
        raise ConfigError(
            f"sampler.margin: {s.margin} cannot be reached within sampler.max_faults = "
            f"{s.max_faults:,} faults (population {population:,}): even with no SDC at all "
            f"the {cfg.interval} interval's half-width stays {(high - low) / 2.0:.2g}. "
            "Raise sampler.max_faults or sampler.margin.",
            field="sampler.margin",
        )


def _sampler_error(exc: BaseException) -> ConfigError:
    """A sampler's error as a ConfigError about the ``sampler.<field>`` it carries (set where
    the sampler raised it), or about ``sampler`` as a whole."""
    from torchfault.campaign._config import SamplerConfig

    msg = str(exc)
    own = getattr(exc, "field", None)
    where = f"sampler.{own}" if own in SamplerConfig.__dataclass_fields__ else "sampler"
    if isinstance(own, str) and own.startswith("targets."):
        where = own  # a sampler that cannot use the chosen targets (memory: no activations)
    return ConfigError(msg if msg.startswith(where) else f"{where}: {msg}", field=where)


def _check_fault_model(
    name: str, params: dict[str, Any], fmt_name: str, bits: tuple[int, ...]
) -> None:
    """Apply fault model ``name`` with ``params`` once to a scratch tensor; a ConfigError naming
    ``sampler.fault_model`` or ``sampler.params`` when it cannot be used."""
    from torchfault import numerics
    from torchfault.faults import FAULT_MODELS, fault_model_capabilities

    try:
        fn = FAULT_MODELS.get(name)
    except ValueError as exc:
        raise ConfigError(f"sampler.fault_model: {exc}") from None
    if fault_model_capabilities(name).bit_op is not None and params:
        # bitwise models are applied as one vectorised op: parameters would be ignored silently
        raise ConfigError(
            f"sampler.params: fault model {name!r} takes no parameters, got {dict(params)}."
        )
    try:
        fmt = numerics.get_format(fmt_name)
        if fmt.kind not in ("float", "int", "fixed"):
            fmt = numerics.get_format("float32")
    except TorchFaultError:
        fmt = numerics.get_format("float32")
    x = torch.zeros(4, dtype=fmt.value_dtype or torch.float32)
    try:
        fn(x, torch.tensor([1]), bits, fmt, torch.Generator().manual_seed(0), **params)
    except TypeError as exc:
        raise ConfigError(
            f"sampler.params: fault model {name!r} does not take {dict(params)}: {exc}"
        ) from None
    except (TorchFaultError, ValueError, ArithmeticError) as exc:
        raise ConfigError(f"sampler.params: {exc}") from None


def _trace(
    cfg: CampaignConfig, model: nn.Module, inputs: torch.Tensor | Batched
) -> tuple[list[str], Any] | None:
    """``(layer order, range profile)`` of ``trace`` (errors name ``trace.<field>``), or None."""
    tc = cfg.trace
    if not tc.enabled:
        return None
    from torchfault.analysis import layer_order
    from torchfault.injectors import load_profile

    if not isinstance(inputs, torch.Tensor):
        raise ConfigError("trace.enabled: needs a tensor of inputs.", field="trace.enabled")
    try:
        prof = load_profile(tc.profile, model) if tc.profile else None
        probe = inputs[[0] * MIN_ROWS]
        order = layer_order(model, probe, tc.layers)  # type: ignore[arg-type]
    except TorchFaultError as exc:
        where = "trace.profile" if exc.field == "profile" else "trace.layers"
        raise ConfigError(f"{where}: {exc}", field=where) from None
    return order, prof


def _protection(
    cfg: CampaignConfig, model: nn.Module, inputs: torch.Tensor | Batched, golden: Any
) -> Any:
    """``protection`` built and bound to the model (errors name ``protection.<field>``), or None."""
    spec = cfg.protection.spec()
    if spec is None:
        return None
    from torchfault.campaign._protection import resolve_protection

    if not isinstance(inputs, torch.Tensor) or not isinstance(golden, torch.Tensor):
        raise ConfigError(
            "protection.name: protected runs need a tensor of inputs and one output tensor.",
            field="protection.name",
        )
    try:
        protection = resolve_protection(spec)
        protection.bind(model)
    except TorchFaultError as exc:
        own = exc.field if exc.field not in (None, "protection") else "name"
        where = own if own.startswith("protection") else f"protection.{own}"
        msg = str(exc) if str(exc).startswith(where) else f"{where}: {exc}"
        raise ConfigError(msg, field=where) from None
    return protection
