# SPDX-License-Identifier: MIT
"""The model zoo: classifiers with one configuration per dataset, registered by subclassing.

Defining a subclass of :class:`ZooModel` with a ``name`` registers it in :data:`MODELS`::

    class TinyNet(ZooModel, name="tiny"):
        dataset_configs = {"digits": {"width": 8}, "cifar10": {"width": 32}}
        def __init__(self, input_shape, num_classes, width=8): ...

Every zoo model is built from the input shape ``(C, H, W)`` and class count of a dataset
(:func:`torchfault.dnn.dataset_info`) plus the options of that dataset's configuration
(``dataset_configs``; a dataset without an entry uses the one whose image size is nearest).
Models are plain ``nn.Module`` trees with named submodules (``conv1``, ``layer2.0.conv1``) and no
data-dependent Python control flow, so ``torch.fx`` traces them; each offers
``example_inputs(batch)``.

Built in: ``mlp``, ``lenet`` (LeNet-5 with ReLU and max-pooling), ``resnet8`` and ``resnet20``
(the CIFAR ResNets of He et al. 2016, 6n+2 layers, 1x1-convolution shortcuts) and ``vgg8`` (a
small VGG with batch norm: six 3x3 convolutions and two linear layers). :func:`wrap_model` brings
any other module into the same pipeline.

Example:
    >>> from torchfault.dnn import create_model, list_models
    >>> list_models()
    ['lenet', 'mlp', 'resnet20', 'resnet8', 'vgg8']
    >>> model = create_model("lenet", dataset="digits")
    >>> tuple(model(model.example_inputs(batch=3)).shape)
    (3, 10)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from torchfault.dnn._datasets import DATASETS, dataset_info, is_factory_spec, load_factory_spec
from torchfault.errors import TorchFaultError, suggest
from torchfault.registry import Registry

__all__ = [
    "MODELS",
    "WEIGHTS_DIR",
    "ZooModel",
    "LeNet",
    "MLP",
    "CifarResNet",
    "ResNet8",
    "ResNet20",
    "VGG8",
    "WrappedModel",
    "create_model",
    "is_model",
    "list_models",
    "list_pretrained",
    "pretrained_path",
    "wrap_model",
]

MODELS: Registry[type] = Registry("model")

#: where the shipped pretrained weights lie: ``{model}_{dataset}.pt.xz``
WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
WEIGHTS_FORMAT = "torchfault.weights/1"

# image side of each built-in dataset family, used to pick the nearest configuration
_FAMILY_SIDE = {"digits": 8, "mnist": 28, "fashion_mnist": 28, "cifar10": 32, "cifar100": 32}


class ZooModel(nn.Module):
    """Base class of the zoo; a subclass given ``name=`` registers itself.

    Attributes:
        input_shape: shape of one input, without the batch dimension.
        num_classes: number of output logits.
        dataset: the dataset the model was configured for (``None`` if built from shapes).
        dataset_configs: per dataset, the constructor options of that configuration.
    """

    dataset_configs: ClassVar[dict[str, dict[str, Any]]] = {}
    model_name: ClassVar[str | None] = None

    def __init_subclass__(cls, name: str | None = None, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if name is not None:
            cls.model_name = name
            MODELS.add(name, cls, datasets=tuple(cls.dataset_configs))

    def __init__(self, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__()
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s < 1 for s in shape):
            raise TorchFaultError(f"input_shape must be positive sizes, got {tuple(input_shape)}.")
        if int(num_classes) < 1:
            raise TorchFaultError(f"num_classes must be >= 1, got {num_classes!r}.")
        self.input_shape = shape
        self.num_classes = int(num_classes)
        self.dataset: str | None = None

    def example_inputs(self, batch: int = 2, seed: int = 0) -> torch.Tensor:
        """A reproducible random batch ``(batch, *input_shape)`` on the model's device."""
        param = next(self.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
        g = torch.Generator().manual_seed(seed)
        return torch.randn((int(batch), *self.input_shape), generator=g).to(device)

    @classmethod
    def config_for(cls, dataset: str | None, input_shape: Sequence[int]) -> dict[str, Any]:
        """Constructor options for ``dataset`` (nearest image size when it has no entry)."""
        if not cls.dataset_configs:
            return {}
        if dataset in cls.dataset_configs:
            return dict(cls.dataset_configs[dataset])
        side = int(input_shape[-1]) if len(input_shape) >= 2 else 8
        known = [d for d in cls.dataset_configs if d in _FAMILY_SIDE]
        if not known:
            return dict(next(iter(cls.dataset_configs.values())))
        best = min(known, key=lambda d: abs(_FAMILY_SIDE[d] - side))
        return dict(cls.dataset_configs[best])


def _check_sizes(name: str, option: str, values: Any) -> None:
    """A clear error for a layer size below 1 (``nn.Linear(64, 0)`` builds, and trains to
    chance)."""
    items = values if isinstance(values, (list, tuple)) else (values,)
    bad = [v for v in items if v != "M" and int(v) < 1]
    if bad:
        raise TorchFaultError(
            f"model {name!r}: option {option} must hold sizes >= 1, got {tuple(items)}."
        )


def _check_image(name: str, input_shape: tuple[int, ...]) -> tuple[int, int, int]:
    if len(input_shape) != 3:
        raise TorchFaultError(
            f"model {name!r} needs image inputs (C, H, W), got input_shape {input_shape}."
        )
    return input_shape  # type: ignore[return-value]


class MLP(ZooModel, name="mlp"):
    """Multi-layer perceptron: flatten, then linear + ReLU layers, then a linear classifier."""

    dataset_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "digits": {"hidden": (128, 64)},
        "mnist": {"hidden": (256, 128)},
        "cifar10": {"hidden": (512, 256)},
    }

    def __init__(
        self, input_shape: Sequence[int], num_classes: int, hidden: Sequence[int] = (128, 64)
    ) -> None:
        super().__init__(input_shape, num_classes)
        _check_sizes("mlp", "hidden", hidden)
        widths = [int(torch.tensor(self.input_shape).prod()), *[int(h) for h in hidden]]
        self.flatten = nn.Flatten()
        self._order = ["flatten"]
        for i, (a, b) in enumerate(zip(widths[:-1], widths[1:]), start=1):
            setattr(self, f"fc{i}", nn.Linear(a, b))
            setattr(self, f"relu{i}", nn.ReLU())
            self._order += [f"fc{i}", f"relu{i}"]
        last = f"fc{len(widths)}"
        setattr(self, last, nn.Linear(widths[-1], self.num_classes))
        self._order.append(last)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._order:
            x = getattr(self, name)(x)
        return x


class LeNet(ZooModel, name="lenet"):
    """LeNet-5 (two convolutions, three linear layers) with ReLU and max-pooling."""

    dataset_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "digits": {"kernel_size": 3, "padding": (1, 1)},
        "mnist": {"kernel_size": 5, "padding": (2, 0)},
        "cifar10": {"kernel_size": 5, "padding": (0, 0)},
    }

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        kernel_size: int = 5,
        padding: Sequence[int] = (2, 0),
        channels: Sequence[int] = (6, 16),
        hidden: Sequence[int] = (120, 84),
    ) -> None:
        super().__init__(input_shape, num_classes)
        c, h, w = _check_image("lenet", self.input_shape)
        for option, values in (("kernel_size", kernel_size), ("channels", channels)):
            _check_sizes("lenet", option, values)
        _check_sizes("lenet", "hidden", hidden)
        k = int(kernel_size)
        p1, p2 = (int(p) for p in padding)
        c1, c2 = (int(ch) for ch in channels)
        for p in (p1, p2):
            h, w = (h + 2 * p - k + 1) // 2, (w + 2 * p - k + 1) // 2
        if h < 1 or w < 1:
            raise TorchFaultError(
                f"lenet: input {self.input_shape} too small for kernel_size {k} and padding "
                f"{(p1, p2)}; use a smaller kernel or more padding."
            )
        self.conv1 = nn.Conv2d(c, c1, k, padding=p1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(c1, c2, k, padding=p2)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(c2 * h * w, int(hidden[0]))
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(int(hidden[0]), int(hidden[1]))
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(int(hidden[1]), self.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.flatten(x)
        x = self.relu3(self.fc1(x))
        x = self.relu4(self.fc2(x))
        return self.fc3(x)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a residual connection (1x1 conv shortcut)."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        if stride != 1 or in_planes != planes:
            self.shortcut: nn.Module = nn.Sequential(
                nn.Conv2d(in_planes, planes, 1, stride=stride, bias=False), nn.BatchNorm2d(planes)
            )
        else:
            self.shortcut = nn.Identity()
        self.relu2 = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu2(out + self.shortcut(x))


class CifarResNet(ZooModel):
    """CIFAR-style ResNet of depth 6n+2: a 3x3 stem, three stages of n blocks, pooling, linear."""

    depth: ClassVar[int] = 20
    dataset_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "digits": {"width": 16},
        "mnist": {"width": 16},
        "cifar10": {"width": 16},
    }

    def __init__(self, input_shape: Sequence[int], num_classes: int, width: int = 16) -> None:
        super().__init__(input_shape, num_classes)
        c, _, _ = _check_image(type(self).model_name or "resnet", self.input_shape)
        n = (self.depth - 2) // 6
        _check_sizes(type(self).model_name or "resnet", "width", width)
        w = int(width)
        self.conv1 = nn.Conv2d(c, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        self.relu = nn.ReLU()
        planes = w
        stages = []
        for stage, out in enumerate((w, 2 * w, 4 * w)):
            blocks = []
            for b in range(n):
                stride = 2 if stage > 0 and b == 0 else 1
                blocks.append(BasicBlock(planes, out, stride))
                planes = out
            stages.append(nn.Sequential(*blocks))
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(planes, self.num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(self.flatten(self.avgpool(x)))


class ResNet8(CifarResNet, name="resnet8"):
    """ResNet-8 for small images (CIFAR-style, one block per stage)."""

    depth = 8


class ResNet20(CifarResNet, name="resnet20"):
    """ResNet-20 for small images (CIFAR-style, three blocks per stage)."""

    depth = 20


class VGG8(ZooModel, name="vgg8"):
    """Small VGG with batch norm: six 3x3 convolutions in four pooled stages, two linear layers."""

    dataset_configs: ClassVar[dict[str, dict[str, Any]]] = {
        "digits": {"layers": (32, 32, "M", 64, 64, "M", 128, 128, "M"), "hidden": 256},
        "mnist": {"layers": (32, "M", 64, "M", 128, 128, "M", 256, 256, "M"), "hidden": 256},
        "cifar10": {"layers": (32, "M", 64, "M", 128, 128, "M", 256, 256, "M"), "hidden": 256},
    }

    def __init__(
        self,
        input_shape: Sequence[int],
        num_classes: int,
        layers: Sequence[int | str] = (32, "M", 64, "M", 128, 128, "M", 256, 256, "M"),
        hidden: int = 256,
    ) -> None:
        super().__init__(input_shape, num_classes)
        c, h, _ = _check_image("vgg8", self.input_shape)
        _check_sizes("vgg8", "layers", layers)
        _check_sizes("vgg8", "hidden", hidden)
        feats: list[nn.Module] = []
        for item in layers:
            if item == "M":
                if h < 2:
                    raise TorchFaultError(
                        f"vgg8: too many pooling stages for input {self.input_shape}."
                    )
                feats.append(nn.MaxPool2d(2))
                h //= 2
            else:
                out = int(item)
                feats += [nn.Conv2d(c, out, 3, padding=1, bias=False), nn.BatchNorm2d(out)]
                feats.append(nn.ReLU())
                c = out
        self.features = nn.Sequential(*feats)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(
            OrderedDict(
                fc1=nn.Linear(c, int(hidden)),
                relu=nn.ReLU(),
                fc2=nn.Linear(int(hidden), self.num_classes),
            )
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.avgpool(self.features(x))))


class WrappedModel(ZooModel):
    """Any ``nn.Module`` with the zoo's interface (input shape, class count, example inputs).

    The wrapped module is the child ``model``, so its submodules are named ``model.<name>``.
    """

    def __init__(self, module: nn.Module, input_shape: Sequence[int], num_classes: int) -> None:
        super().__init__(input_shape, num_classes)
        if not isinstance(module, nn.Module):
            raise TorchFaultError(f"wrap_model needs an nn.Module, got {type(module).__name__}.")
        self.model = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def wrap_model(
    module: nn.Module, input_shape: Sequence[int], num_classes: int, dataset: str | None = None
) -> WrappedModel:
    """Bring an external module (torchvision, timm, your own) into torchfault's DNN pipeline.

    Args:
        module: any classifier mapping ``(N, *input_shape)`` to ``(N, num_classes)``.
        input_shape: shape of one input without the batch dimension.
        num_classes: number of output logits.
        dataset: optional name of the dataset it is meant for.

    Example:
        >>> import torch
        >>> from torchfault.dnn import wrap_model
        >>> net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> model = wrap_model(net, input_shape=(1, 8, 8), num_classes=10)
        >>> tuple(model(model.example_inputs(4)).shape), [n for n, _ in model.named_children()]
        ((4, 10), ['model'])
    """
    wrapped = WrappedModel(module, input_shape, num_classes)
    wrapped.dataset = dataset
    return wrapped


def list_models(
    filter: str | None = None, *, dataset: str | None = None, pretrained: bool | None = None
) -> list[str]:
    """Names of the zoo models matching ``filter``; with ``pretrained=True`` (and ``dataset``)
    only those with shipped weights.

    Example:
        >>> from torchfault.dnn import list_models
        >>> list_models("resnet*")
        ['resnet20', 'resnet8']
        >>> list_models(pretrained=True, dataset="digits")
        ['lenet', 'mlp']
    """
    names = MODELS.list(filter)
    if pretrained is not None:
        have = {(m, d) for m, d in list_pretrained()}
        names = [
            n
            for n in names
            if any(m == n and (dataset is None or d == dataset) for m, d in have) == pretrained
        ]
    return names


def is_model(name: str) -> bool:
    """Whether ``name`` is a registered zoo model.

    Example:
        >>> from torchfault.dnn import is_model
        >>> is_model("lenet"), is_model("alexnet")
        (True, False)
    """
    return MODELS.is_registered(name)


def list_pretrained() -> list[tuple[str, str]]:
    """``(model, dataset)`` pairs with shipped pretrained weights.

    Example:
        >>> from torchfault.dnn import list_pretrained
        >>> ("lenet", "digits") in list_pretrained()
        True
    """
    out = []
    for path in sorted(WEIGHTS_DIR.glob("*.pt.xz")):
        stem = path.name[: -len(".pt.xz")]
        for model in sorted(MODELS.list(), key=len, reverse=True):
            if stem.startswith(model + "_"):
                out.append((model, stem[len(model) + 1 :]))
                break
    return out


def pretrained_path(name: str, dataset: str) -> Path:
    """The shipped weights file of ``name`` on ``dataset``; a clear error if there is none.

    Example:
        >>> from torchfault.dnn import pretrained_path
        >>> pretrained_path("lenet", "digits").name
        'lenet_digits.pt.xz'
    """
    path = WEIGHTS_DIR / f"{name}_{dataset}.pt.xz"
    if not path.is_file():
        have = ", ".join(f"{m} on {d}" for m, d in list_pretrained()) or "none"
        raise TorchFaultError(
            f"no pretrained weights for model {name!r} on dataset {dataset!r} "
            f"(looked for {path}). Shipped weights: {have}.",
            field="pretrained",
        )
    return path


def create_model(
    name: str,
    dataset: str | None = "digits",
    pretrained: bool = False,
    *,
    input_shape: Sequence[int] | None = None,
    num_classes: int | None = None,
    weights: str | Path | None = None,
    dataset_options: dict[str, Any] | None = None,
    **options: Any,
) -> ZooModel:
    """Build zoo model ``name`` configured for ``dataset``, optionally with trained weights.

    Args:
        name: a registered model (see :func:`list_models`), or a factory of your own,
            ``path/to/file.py:function`` or ``package.module:function`` (as in ``torchfault
            campaign``), called with ``**options`` and wrapped with :func:`wrap_model`.
        dataset: a registered dataset (or a dataset factory, see
            :func:`~torchfault.dnn.create_dataset`) whose input shape and class count the model
            takes; ``None`` to give ``input_shape`` and ``num_classes`` directly.
        pretrained: load the shipped weights for this model and dataset (zoo models only).
        input_shape: overrides the dataset's input shape (C, H, W).
        num_classes: overrides the dataset's class count.
        weights: a checkpoint file to load (a state dict, a torchfault weights file or a
            Lightning checkpoint), instead of the shipped weights.
        dataset_options: options of :func:`~torchfault.dnn.create_dataset` that change the
            dataset's input shape or class count (``synthetic``'s ``input_shape`` and
            ``num_classes``; anything for a dataset factory of your own).
        **options: constructor options overriding the dataset's configuration
            (for example ``hidden=(32,)`` for ``mlp``, ``width=8`` for the ResNets).

    Returns:
        The model in eval mode when weights were loaded, otherwise in train mode.

    Raises:
        TorchFaultError: unknown model, dataset or option, or no weights shipped.

    Example:
        >>> from torchfault.dnn import create_model
        >>> m = create_model("resnet8", dataset="cifar10")
        >>> tuple(m(m.example_inputs()).shape)
        (2, 10)
        >>> create_model("mlp", dataset=None, input_shape=(5,), num_classes=3, hidden=(4,)).fc2
        Linear(in_features=4, out_features=3, bias=True)
        >>> opts = {"input_shape": (3, 16, 16), "num_classes": 4}
        >>> create_model("lenet", dataset="synthetic", dataset_options=opts).fc3.out_features
        4
    """
    factory: Any = None
    cls: Any = None
    # options that reshape a zoo model (shipped weights that then do not fit: the options' fault)
    reshaped = bool(options) or input_shape is not None or num_classes is not None
    if is_factory_spec(name):
        if pretrained and weights is None:
            raise TorchFaultError(
                f"create_model: {name!r} is a model of your own, with no shipped weights: load "
                "them in the factory, or give weights=FILE.",
                field="pretrained",
            )
        factory = load_factory_spec(name, "model")
    else:
        try:
            cls = MODELS.get(name)
        except ValueError as exc:
            raise TorchFaultError(str(exc), field="name") from None
    if dataset is not None:
        if not (is_factory_spec(dataset) or DATASETS.is_registered(dataset)):
            valid = DATASETS.list()
            raise TorchFaultError(
                f"create_model: unknown dataset {dataset!r}. Valid datasets: "
                f"{', '.join(valid)}.{suggest(str(dataset), valid)}",
                field="dataset",
            )
        try:
            info = dataset_info(dataset, **(dataset_options or {}))
        except TorchFaultError as exc:
            raise (exc if exc.field else exc.at("dataset")) from None
        input_shape = tuple(input_shape) if input_shape is not None else info["input_shape"]
        num_classes = num_classes if num_classes is not None else info["num_classes"]
    elif input_shape is None or num_classes is None:
        raise TorchFaultError("create_model: without a dataset, give input_shape and num_classes.")
    try:
        if factory is not None:
            module = factory(**options)
        else:
            kwargs = cls.config_for(dataset, input_shape)
            kwargs.update(options)
            model = cls(input_shape=input_shape, num_classes=num_classes, **kwargs)
    except TypeError as exc:
        raise TorchFaultError(f"model {name!r}: bad option: {exc}", field="options") from None
    except TorchFaultError as exc:  # the options do not fit (sizes, input shape)
        raise (exc if exc.field else exc.at("options")) from None
    if factory is not None:
        if not isinstance(module, nn.Module):
            raise TorchFaultError(
                f"model {name!r} returned {type(module).__name__}, not an nn.Module.",
                field="name",
            )
        model = wrap_model(module, input_shape, num_classes)
        model.train(module.training)
    model.dataset = dataset
    if pretrained and weights is None:
        if dataset is None:
            raise TorchFaultError(
                "create_model: pretrained=True needs a dataset.", field="pretrained"
            )
        weights, shipped = pretrained_path(name, dataset), True
    else:
        shipped = False
    if weights is not None:
        try:
            load_weights(model, weights)
        except TorchFaultError as exc:
            # shipped weights that do not fit: the options changed the model (else a bug)
            where = ("options" if reshaped else "pretrained") if shipped else "weights"
            raise (exc if exc.field else exc.at(where)) from None
        model.eval()
    return model


def extract_state_dict(obj: Any, source: str = "checkpoint") -> dict[str, torch.Tensor]:
    """The model state dict inside a loaded checkpoint (plain, torchfault or Lightning)."""
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        sd = obj["state_dict"]
        if "pytorch-lightning_version" in obj or all(k.startswith("model.") for k in sd):
            sd = {k[len("model.") :]: v for k, v in sd.items() if k.startswith("model.")}
        return sd
    if isinstance(obj, dict) and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    raise TorchFaultError(f"{source} holds no model state dict (keys: {sorted(obj)[:8]}).")


def _apply_masks(sd: dict[str, torch.Tensor], expected: set[str]) -> dict[str, torch.Tensor]:
    """Fold the ``X_orig`` / ``X_mask`` pairs of a state dict saved with pruning masks in place
    (a Lightning checkpoint written while fine-tuning) into ``X``, where the model expects ``X``."""
    out = dict(sd)
    for key in expected:
        orig, mask = f"{key}_orig", f"{key}_mask"
        if key not in out and orig in out and mask in out and orig not in expected:
            out[key] = out.pop(orig) * out.pop(mask)
    return out


def fit_state_dict(sd: dict[str, Any], model: nn.Module) -> dict[str, Any]:
    """``sd`` shaped for ``model``: pruning masks saved in place (``X_orig``/``X_mask``) folded
    into ``X``, and a ``model.`` prefix (a Lightning module's or a wrapper's keys) dropped when
    ``model`` has none of the prefixed keys.

    Example:
        >>> import torch
        >>> lin = torch.nn.Linear(2, 1)
        >>> sorted(fit_state_dict({"model.weight": torch.ones(1, 2), "model.bias": torch.ones(1)}, lin))
        ['bias', 'weight']
    """
    expected = set(model.state_dict())
    meta = getattr(sd, "_metadata", None)  # module versions (quantized modules read them)
    out = _apply_masks(dict(sd), expected)
    if not set(out) & expected and out and all(k.startswith("model.") for k in out):
        out = _apply_masks({k[len("model.") :]: v for k, v in out.items()}, expected)
        if meta is not None:
            meta = type(meta)(
                (k[len("model.") :] if k.startswith("model.") else "", v)
                for k, v in meta.items()
                if k.startswith("model.") or k == ""
            )
    if meta is not None:
        out = OrderedDict(out)
        out._metadata = meta  # type: ignore[attr-defined]
    return out


def load_weights(model: nn.Module, path: str | Path) -> nn.Module:
    """Load a checkpoint file's weights into ``model`` (strict); mismatches are clear errors.

    A :class:`WrappedModel` takes its own state dict (keys ``model.<name>``) or that of the
    module it wraps. A state dict saved with ``torch.nn.utils.prune`` masks in place
    (``weight_orig`` and ``weight_mask``) loads as the pruned ``weight``.

    Example:
        >>> from torchfault.dnn import create_model, pretrained_path
        >>> m = load_weights(create_model("mlp"), pretrained_path("mlp", "digits"))
    """
    from torchfault.dnn._checkpoint import load_checkpoint

    obj = load_checkpoint(path)
    sd = extract_state_dict(obj, source=str(path))
    target, expected = model, set(model.state_dict())
    if isinstance(model, WrappedModel) and not set(_apply_masks(sd, expected)) & expected:
        # no key of the wrapper's own: the state dict of the wrapped module itself
        target, expected = model.model, set(model.model.state_dict())
    sd = _apply_masks(sd, expected)
    try:
        target.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise TorchFaultError(
            f"weights in {path} do not fit the model {type(model).__name__}: {exc}"
        ) from None
    return model
