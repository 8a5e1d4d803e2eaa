# SPDX-License-Identifier: MIT
"""One way to build a model and its data from a config: :class:`ModelSpec`, :class:`DataSpec`
and their builders, used by ``torchfault campaign`` and by every DNN job.

One vocabulary everywhere (``model.*``, ``data.*``):

- ``model.name``: a zoo model (``lenet``) or a factory of your own (``path/to/file.py:function``
  or ``package.module:function``, called with ``model.kwargs``);
- ``model.hub``: instead of ``model.name``, a Torch Hub entry point in a local repository,
  ``path/to/repo:entry`` (the directory holds a ``hubconf.py``; nothing is downloaded), called with
  ``model.kwargs`` (and ``pretrained`` when the entry point takes it);
- ``model.dataset``: the zoo configuration (input shape, classes); default: ``data.dataset``;
- ``model.pretrained``: the zoo's shipped weights (ignored when ``model.checkpoint`` is given);
- ``model.checkpoint``: any file the DNN jobs write, or a plain state dict: a Lightning ``.ckpt``
  (``state_dict`` with ``model.``-prefixed keys), a torchfault weights export (``train --export``,
  ``prune --out``), a state dict saved with pruning masks in place (``weight_orig`` /
  ``weight_mask``), compressed or not, or a quantized export (``torchfault quantize --out``);
- ``model.quantized``: ``true`` when ``model.checkpoint`` is a quantized export, ``false`` when it
  holds float weights, unset (the default) to tell from the file;
- ``model.kwargs``: keyword arguments of the model's constructor or factory;
- ``data.dataset``, ``data.split``, ``data.kwargs``: a registered dataset or a factory of your own
  (``function(split=..., **kwargs)``); ``data.kwargs`` of ``synthetic`` (``input_shape``,
  ``num_classes``) also shape a zoo model built for the same dataset.

Every error is a :class:`~torchfault.errors.ConfigError` whose ``field`` is the setting at fault
(``model.kwargs``, ``model.checkpoint``...), set where the error is raised. Loading is always
``torch.load(weights_only=True)``; a ``module:function`` or hub entry point is code the config
names, and runs (see :func:`torchfault.config.load_factory`).

Example:
    >>> from torchfault.dnn import ModelSpec, DataSpec, build_model
    >>> model = build_model(ModelSpec("lenet"), DataSpec("digits"))
    >>> type(model).__name__, model.training
    ('LeNet', False)
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from dataclasses import replace as dataclasses_replace
from pathlib import Path
from typing import Any

import torch
from torch import nn

from torchfault.config import from_dict, is_factory_spec, load_factory, safe_text
from torchfault.dnn._checkpoint import load_checkpoint
from torchfault.dnn._datasets import SPLITS, create_dataset, dataset_info
from torchfault.dnn._models import (
    WrappedModel,
    create_model,
    extract_state_dict,
    fit_state_dict,
    wrap_model,
)
from torchfault.errors import ConfigError, TorchFaultError, suggest

__all__ = [
    "ModelSpec",
    "DataSpec",
    "build_model",
    "build_dataset",
    "build_job_model",
    "load_model_weights",
    "JobModelSpec",
    "LEGACY_JOB_KEYS",
    "translate_job_keys",
    "legacy_job_keys",
]

#: where create_model's and create_dataset's errors point, in this vocabulary
_MODEL_FIELDS = {
    "name": "model.name",
    "model": "model.name",
    "dataset": "model.dataset",
    "pretrained": "model.pretrained",
    "options": "model.kwargs",
    "weights": "model.checkpoint",
    "checkpoint": "model.checkpoint",
}
_DATA_FIELDS = {"dataset": "data.dataset", "split": "data.split", "options": "data.kwargs"}


def _config_error(exc: TorchFaultError, fields: dict[str, str], default: str) -> ConfigError:
    """``exc`` as a ConfigError about the field it carries, in the config's vocabulary."""
    where = fields.get(exc.field or "", default)
    msg = str(exc)
    if not msg.startswith(where):
        msg = f"{where}: {msg}"
    return ConfigError(msg, field=where)


@dataclass
class ModelSpec:
    """The model under test or training (see the module docstring for each field).

    Attributes:
        name: a zoo model (``lenet``, ``mlp``, ``resnet20``...) or a factory of your own:
            ``path/to/file.py:function`` or ``package.module:function`` (called with ``kwargs``).
        dataset: the zoo configuration (input shape, classes); default: the data's dataset.
        pretrained: load the zoo's shipped weights (ignored when ``checkpoint`` is given).
        checkpoint: a weights file: a Lightning ``.ckpt``, a torchfault export (``train
            --export``, ``prune --out``, ``quantize --out``) or a state dict; compressed or not;
            read with ``weights_only=True``.
        kwargs: keyword arguments for the model or factory.
        hub: a Torch Hub entry point in a local repository, ``path/to/repo:entry``, instead of
            ``name`` (nothing is downloaded).
        quantized: ``checkpoint`` is a quantized export (``torchfault quantize``); unset: told
            from the file.
    """

    name: str = "lenet"
    dataset: str | None = "digits"
    pretrained: bool = True
    checkpoint: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)
    hub: str | None = None
    quantized: bool | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError(
                "model.name: must name a zoo model or a 'module:function' factory.",
                field="model.name",
            )
        if not isinstance(self.kwargs, dict):
            raise ConfigError(
                f"model.kwargs: expected a mapping, got {self.kwargs!r}.", field="model.kwargs"
            )
        if self.hub is not None:
            repo, sep, entry = str(self.hub).rpartition(":")
            if not sep or not repo or not entry:
                raise ConfigError(
                    f"model.hub: {self.hub!r} is not 'path/to/repo:entry' (a local directory "
                    "holding hubconf.py, and one of its entry points).",
                    field="model.hub",
                )
        if self.quantized and not self.checkpoint:
            raise ConfigError(
                "model.quantized: true needs model.checkpoint, the quantized export that "
                "`torchfault quantize --out FILE` writes.",
                field="model.quantized",
            )


@dataclass
class DataSpec:
    """The data a model is built for, trained, tested or faulted on.

    Attributes:
        dataset: a registered dataset (``digits``, ``synthetic``...) or a factory of your own
            (``path/to/file.py:function``, called as ``function(split=..., **kwargs)``).
        split: ``train``, ``val``, ``test`` or ``all``.
        kwargs: keyword arguments for the dataset (``synthetic``: ``input_shape``,
            ``num_classes``, ``size``).
    """

    dataset: str = "digits"
    split: str = "test"
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.split not in SPLITS:
            raise ConfigError(
                f"data.split: unknown split {self.split!r}; valid splits: {', '.join(SPLITS)}."
                f"{suggest(str(self.split), SPLITS)}",
                field="data.split",
            )
        if not isinstance(self.kwargs, dict):
            raise ConfigError(
                f"data.kwargs: expected a mapping, got {self.kwargs!r}.", field="data.kwargs"
            )


def build_dataset(data: DataSpec, split: str | None = None) -> Any:
    """The dataset ``data`` names (its ``split``, or ``split`` when given).

    Example:
        >>> len(build_dataset(DataSpec("digits", split="val")))
        180
    """
    try:
        return create_dataset(data.dataset, split=split or data.split, **data.kwargs)
    except TorchFaultError as exc:
        raise _config_error(exc, _DATA_FIELDS, "data.dataset") from None


def _data_options(model: ModelSpec, data: DataSpec | None) -> tuple[str | None, dict[str, Any]]:
    """The dataset a model is configured for, and the data options that shape it (those of the
    data when the model is built for the same dataset)."""
    dataset = model.dataset if model.dataset is not None else (data.dataset if data else None)
    options = dict(data.kwargs) if data is not None and data.dataset == dataset else {}
    return dataset, options


def _hub_model(spec: ModelSpec) -> nn.Module:
    """The module a local Torch Hub entry point returns, called with ``model.kwargs`` (and
    ``pretrained`` when it takes it). The repository's ``hubconf.py`` is code the config names:
    it is imported as :func:`torchfault.config.load_factory` imports a factory (and logged)."""
    import sys

    repo, _, entry = str(spec.hub).rpartition(":")
    path = Path(repo)
    if not (path / "hubconf.py").is_file():
        raise ConfigError(
            f"model.hub: {safe_text(repr(repo))} is not a directory holding hubconf.py (only "
            "local repositories are read: nothing is downloaded).",
            field="model.hub",
        )
    sys.path.insert(0, str(path))  # as torch.hub does: hubconf imports its neighbours
    try:
        fn = load_factory(f"{path / 'hubconf.py'}:{entry}", "model.hub")
    finally:
        sys.path.remove(str(path))
    kwargs = dict(spec.kwargs)
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    if "pretrained" in params and "pretrained" not in kwargs:
        kwargs["pretrained"] = bool(spec.pretrained and not spec.checkpoint)
    try:
        module = fn(**kwargs)
    except TypeError as exc:
        raise ConfigError(
            f"model.kwargs: calling hub entry {entry!r} with {kwargs} failed: {exc}",
            field="model.kwargs",
        ) from None
    if not isinstance(module, nn.Module):
        raise ConfigError(
            f"model.hub: {entry!r} returned {type(module).__name__}, not an nn.Module.",
            field="model.hub",
        )
    return module


def build_model(
    model: ModelSpec,
    data: DataSpec | None = None,
    *,
    wrap: bool = True,
    factory: Any = None,
) -> nn.Module:
    """The model ``model`` names, configured for ``data``, with its weights, in eval mode.

    Args:
        model: what to build.
        data: the data it runs on (its dataset configures a zoo model unless ``model.dataset``
            is set; its options shape a model built for the same dataset).
        wrap: bring a model of your own (factory or hub) into the zoo's interface
            (:class:`~torchfault.dnn.WrappedModel`, submodules named ``model.<name>``), as
            training needs; ``False`` keeps it as its factory returned it (a campaign names faults
            by the model's own module names).
        factory: the function ``model.name`` names, when the caller imported it already.

    Raises:
        ConfigError: naming the ``model.*`` or ``data.*`` field at fault.

    Example:
        >>> m = build_model(ModelSpec("mlp", pretrained=False, kwargs={"hidden": [16]}))
        >>> m.fc1.out_features
        16
    """
    dataset, options = _data_options(model, data)
    if model.hub is not None:
        module = _hub_model(model)
        built: nn.Module = _wrapped(module, dataset, options) if wrap else module
    elif is_factory_spec(model.name) and not wrap:
        if factory is None:
            factory = load_factory(model.name, "model.name")
        try:
            built = factory(**model.kwargs)
        except TypeError as exc:
            raise ConfigError(
                f"model.kwargs: calling {model.name!r} with {dict(model.kwargs)} failed: {exc}",
                field="model.kwargs",
            ) from None
        if not isinstance(built, nn.Module):
            raise ConfigError(
                f"model.name: {model.name!r} returned {type(built).__name__}, not an nn.Module.",
                field="model.name",
            )
    else:
        try:
            built = create_model(
                model.name,
                dataset=dataset,
                pretrained=(
                    model.pretrained and not model.checkpoint and not is_factory_spec(model.name)
                ),
                dataset_options=options or None,
                **model.kwargs,
            )
        except TorchFaultError as exc:
            raise _config_error(exc, _MODEL_FIELDS, "model.name") from None
    if model.checkpoint:
        built = load_model_weights(built, model.checkpoint, quantized=model.quantized, data=data)
    return built.eval()


def _wrapped(module: nn.Module, dataset: str | None, options: dict[str, Any]) -> nn.Module:
    if dataset is None:
        return module
    try:
        info = dataset_info(dataset, **options)
    except TorchFaultError as exc:
        raise _config_error(exc, _DATA_FIELDS, "model.dataset") from None
    wrapped = wrap_model(module, info["input_shape"], info["num_classes"], dataset=dataset)
    wrapped.train(module.training)
    return wrapped


def _example_inputs(model: nn.Module, data: DataSpec | None) -> torch.Tensor:
    """A few inputs to trace and calibrate a model with (rebuilding a quantized export)."""
    example = getattr(model, "example_inputs", None)
    if callable(example):
        return example(4)  # type: ignore[no-any-return]
    if data is not None:
        ds = build_dataset(data)
        return torch.stack([torch.as_tensor(ds[i][0]) for i in range(min(4, len(ds)))])
    raise ConfigError(
        "model.quantized: rebuilding a quantized model needs example inputs: give data.dataset.",
        field="model.quantized",
    )


def load_model_weights(
    model: nn.Module,
    path: str | Path,
    *,
    quantized: bool | None = None,
    data: DataSpec | None = None,
) -> nn.Module:
    """``model`` with the weights of any checkpoint file the DNN jobs write (see the module
    docstring); returns the model, which is a new, quantized one for a quantized export.

    Raises:
        ConfigError: ``model.checkpoint`` (a missing, foreign, corrupted or refused file, or
            weights that do not fit) or ``model.quantized`` (the file is not what it says).

    Example:
        >>> import os, tempfile
        >>> from torchfault.dnn import create_model, export_weights
        >>> p = os.path.join(tempfile.mkdtemp(), "w.pt.xz")
        >>> _ = export_weights(create_model("mlp", pretrained=True), p, model_name="mlp")
        >>> m = load_model_weights(create_model("mlp"), p)
    """
    from torchfault.dnn._quantize import QUANTIZED_FORMAT, _quiet, quantize_model

    shown = safe_text(repr(str(path)))
    try:
        with _quiet():
            payload = load_checkpoint(path)
    except TorchFaultError as exc:
        raise ConfigError(f"model.checkpoint: {exc}", field="model.checkpoint") from None
    is_q = isinstance(payload, dict) and payload.get("format") == QUANTIZED_FORMAT
    if quantized is False and is_q:
        raise ConfigError(
            f"model.quantized: false, but {shown} is a quantized export (torchfault quantize); "
            "leave model.quantized unset or set it to true.",
            field="model.quantized",
        )
    if quantized and not is_q:
        raise ConfigError(
            f"model.quantized: true, but {shown} holds float weights, not a quantized export of "
            "`torchfault quantize`; leave model.quantized unset.",
            field="model.quantized",
        )
    if is_q:
        x = _example_inputs(model, data)
        try:
            qmodel = quantize_model(
                model, x, backend=payload.get("backend", "x86"), example_inputs=x[:1]
            )
            sd = fit_state_dict(payload["state_dict"], qmodel)
            with _quiet():
                qmodel.load_state_dict(sd, strict=True)
        except (RuntimeError, TorchFaultError) as exc:
            raise ConfigError(
                f"model.checkpoint: the quantized weights in {shown} do not fit the model "
                f"({str(exc).splitlines()[0]}); build the model this file was quantized from "
                f"({payload.get('model')!r} on {payload.get('dataset')!r}).",
                field="model.checkpoint",
            ) from None
        return qmodel
    try:
        sd = extract_state_dict(payload, source=str(path))
    except TorchFaultError as exc:
        raise ConfigError(f"model.checkpoint: {exc}", field="model.checkpoint") from None
    target = model
    sd = fit_state_dict(sd, model)
    if isinstance(model, WrappedModel) and not set(sd) & set(model.state_dict()):
        target, sd = model.model, fit_state_dict(sd, model.model)
    try:
        target.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        missing = sorted(set(target.state_dict()) - set(sd))[:4]
        unexpected = sorted(set(sd) - set(target.state_dict()))[:4]
        raise ConfigError(
            f"model.checkpoint: the weights in {shown} do not fit the model "
            f"{type(model).__name__} (missing: {missing or 'none'}; unexpected: "
            f"{unexpected or 'none'}; {str(exc).splitlines()[-1].strip()[:200]}).",
            field="model.checkpoint",
        ) from None
    return model


@dataclass
class JobModelSpec(ModelSpec):
    """The ``model:`` section of a DNN job's config: :class:`ModelSpec`, whose ``dataset``
    follows the job's ``data.dataset`` unless set (``None``).

    Attributes:
        dataset: the zoo configuration (input shape, classes); unset: ``data.dataset``.
    """

    dataset: str | None = None


#: the flat keys DNN jobs took before the ``model:``/``data:`` sections, and their new place
#: (translated with a DeprecationWarning for one release); each job lists the ones it had
LEGACY_JOB_KEYS = {
    "model": "model.name",  # a string: the model's name
    "dataset": "data.dataset",
    "model_options": "model.kwargs",
    "dataset_options": "data.kwargs",
    "pretrained": "model.pretrained",
    "checkpoint": "model.checkpoint",
    "weights": "model.checkpoint",
    "split": "data.split",
}


def _deprecated(old: str, new: str) -> None:
    import logging
    import warnings

    msg = (
        f"{old}: deprecated key, read as {new} (the model:/data: sections every job and "
        f"`torchfault campaign` share); write {new}: {old} stops working in the next release."
    )
    warnings.warn(msg, DeprecationWarning, stacklevel=5)
    logging.getLogger("torchfault.config").warning(msg)


def translate_job_keys(data: Mapping[str, Any], legacy: Sequence[str]) -> dict[str, Any]:
    """``data`` (a job config as a mapping) with its old flat keys moved into the ``model:`` and
    ``data:`` sections (:data:`LEGACY_JOB_KEYS`), each with a DeprecationWarning naming the new
    key; an old key given beside its new one is a ConfigError naming both.

    Example:
        >>> import warnings
        >>> with warnings.catch_warnings():
        ...     warnings.simplefilter("ignore")
        ...     translate_job_keys({"model": "mlp", "dataset": "digits"}, ["model", "dataset"])
        {'model': {'name': 'mlp'}, 'data': {'dataset': 'digits'}}
    """
    out = dict(data)
    for old in legacy:
        if old not in data or (old == "model" and not isinstance(data[old], str)):
            continue
        new = LEGACY_JOB_KEYS[old]
        section, key = new.split(".")
        value = out.pop(old)
        current = {} if old == "model" else out.get(section, {})
        if not isinstance(current, Mapping):
            continue  # from_dict names the section's bad value
        if key in current:
            raise ConfigError(
                f"{old} and {new} both given ({old}: {value!r}, {new}: {current[key]!r}): "
                f"{old} is the old name of {new}; keep {new} only.",
                field=new,
            )
        out[section] = {**current, key: value}
        _deprecated(old, new)
    return out


def legacy_job_keys(*legacy: str) -> Any:
    """Class decorator of a DNN job config with ``model:``/``data:`` sections: its old flat keys
    ``legacy`` (see :data:`LEGACY_JOB_KEYS`) keep working for one release, from YAML
    (:func:`torchfault.config.from_dict` calls ``_translate_keys``) and as Python keyword
    arguments (a string ``model`` included), translated with a DeprecationWarning."""
    import functools
    import typing

    def deco(cls: Any) -> Any:
        init = cls.__init__

        @functools.wraps(init)
        def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
            if args and isinstance(args[0], str):
                kwargs["model"], args = args[0], args[1:]
            old = {k: kwargs.pop(k) for k in list(kwargs) if k in legacy and k != "model"}
            if isinstance(kwargs.get("model"), str):
                old["model"] = kwargs.pop("model")
            if old:
                moved = translate_job_keys(old, legacy)
                hints = typing.get_type_hints(cls)
                for section, values in moved.items():
                    given = kwargs.get(section)
                    if given is not None:
                        olds = [k for k in old if LEGACY_JOB_KEYS[k].startswith(section + ".")]
                        news = ", ".join(LEGACY_JOB_KEYS[k] for k in olds)
                        raise ConfigError(
                            f"{', '.join(olds)} and {section} both given: {', '.join(olds)} "
                            f"is the old name of {news}; give {news} in {section} only.",
                            field=section,
                        )
                    kwargs[section] = from_dict(hints[section], values, section)
            init(self, *args, **kwargs)

        cls.__init__ = __init__
        cls._translate_keys = staticmethod(
            lambda data, prefix="": translate_job_keys(data, legacy) if not prefix else data
        )
        return cls

    return deco


def build_job_model(cfg: Any, pretrained: bool | None = None) -> nn.Module:
    """The model of a DNN job's config (its ``model:`` and ``data:`` sections), built by
    :func:`build_model` as a campaign builds its own; ``pretrained`` overrides
    ``model.pretrained`` (summary and profile need no trained weights).

    Example:
        >>> from torchfault.dnn import TestConfig
        >>> type(build_job_model(TestConfig(model=JobModelSpec("mlp")))).__name__
        'MLP'
    """
    spec: ModelSpec = cfg.model
    if pretrained is not None and pretrained != spec.pretrained:
        spec = dataclasses_replace(spec, pretrained=pretrained)
    return build_model(spec, cfg.data)
