# SPDX-License-Identifier: MIT
"""Datasets of ``(input tensor, label)`` pairs, in a registry.

Every entry of :data:`DATASETS` is a factory ``f(split="test", **options)`` returning a
map-style :class:`torch.utils.data.Dataset` whose items are ``(tensor, int)`` pairs, normalised
the way the zoo's pretrained models expect. Each entry declares its ``input_shape`` (C, H, W)
and ``num_classes`` as registry capabilities, which :func:`torchfault.dnn.create_model` uses to
pick the model configuration for that dataset.

Built in:

- ``digits``: scikit-learn's 1797 handwritten digits (8x8, 17 grey levels), shipped inside
  scikit-learn, split into fixed train / val / test parts (70 / 10 / 20 %, stratified, from
  ``split_seed``). Pixels are scaled to [0, 1] then standardised with the data set's mean and
  standard deviation (:data:`DIGITS_MEAN`, :data:`DIGITS_STD`).
- ``synthetic``: random normal inputs of any shape with random labels, for tests and benchmarks.
- ``mnist``, ``fashion_mnist``, ``cifar10``, ``cifar100``: torchvision datasets read from disk
  (``root``, default ``$TORCHFAULT_DATA`` or ``~/.cache/torchfault/data``). Nothing is downloaded
  unless ``download=True`` is asked for; a missing directory is an error saying where it looked.

:func:`wrap_dataset` brings any other ``torch.utils.data.Dataset`` into the same shape, and a
dataset name of the form ``path/to/file.py:function`` (or ``package.module:function``) names a
factory of your own, called as ``function(split=..., **options)`` like a registered one.

Example:
    >>> from torchfault.dnn import create_dataset
    >>> test = create_dataset("digits", split="test")
    >>> x, y = test[0]
    >>> tuple(x.shape), type(y).__name__, len(test)
    ((1, 8, 8), 'int', 360)
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset

from torchfault.config import is_factory_spec, load_factory
from torchfault.errors import TorchFaultError, suggest
from torchfault.registry import Registry

__all__ = [
    "DATASETS",
    "DIGITS_MEAN",
    "DIGITS_STD",
    "SPLITS",
    "TensorClassificationDataset",
    "WrappedDataset",
    "create_dataset",
    "dataset_info",
    "is_dataset",
    "is_factory_spec",
    "list_datasets",
    "register_dataset",
    "wrap_dataset",
]

DATASETS: Registry[Any] = Registry("dataset")

#: mean and standard deviation of the digits pixels after scaling to [0, 1]
DIGITS_MEAN = 0.30526028624095713
DIGITS_STD = 0.3760492217920148

SPLITS = ("train", "val", "test", "all")


def register_dataset(
    name: str, *, input_shape: Sequence[int], num_classes: int, description: str | None = None
) -> Any:
    """Decorator registering a dataset factory ``f(split="test", **options)``.

    Example:
        >>> import torch
        >>> from torchfault.dnn import register_dataset, create_dataset, list_datasets
        >>> @register_dataset("ones4", input_shape=(1, 2, 2), num_classes=2)
        ... def ones4(split="test"):
        ...     return TensorClassificationDataset(torch.ones(4, 1, 2, 2), torch.zeros(4))
        >>> "ones4" in list_datasets(), len(create_dataset("ones4"))
        (True, 4)
        >>> DATASETS.remove("ones4")
    """
    return DATASETS.register(
        name,
        description=description,
        input_shape=tuple(int(s) for s in input_shape),
        num_classes=int(num_classes),
    )


def list_datasets(filter: str | None = None) -> list[str]:
    """Names of the registered datasets matching the wildcard ``filter``.

    Example:
        >>> from torchfault.dnn import list_datasets
        >>> list_datasets("dig*")
        ['digits']
    """
    return DATASETS.list(filter)


def is_dataset(name: str) -> bool:
    """Whether ``name`` is a registered dataset.

    Example:
        >>> from torchfault.dnn import is_dataset
        >>> is_dataset("digits"), is_dataset("imagenet")
        (True, False)
    """
    return DATASETS.is_registered(name)


def load_factory_spec(spec: str, what: str) -> Any:
    """The function ``spec`` names, loaded as ``torchfault campaign`` loads ``model.name``
    (:func:`torchfault.config.load_factory`); errors name the field ``what``."""
    return load_factory(spec, what)


def dataset_info(name: str, **options: Any) -> dict[str, Any]:
    """``{"input_shape": (C, H, W), "num_classes": K, "description": ...}`` of a dataset.

    For a registered dataset they are the ones it was registered with, except where
    ``options`` (those of :func:`create_dataset`) set ``input_shape`` or ``num_classes``
    themselves, as they may for ``synthetic``. For a factory of your own (``file.py:function``)
    they are read from its test split, made with ``options``: the shape of the first input, and
    ``num_classes`` (the dataset's attribute, else the largest label + 1).

    Example:
        >>> from torchfault.dnn import dataset_info
        >>> dataset_info("digits")["input_shape"]
        (1, 8, 8)
        >>> info = dataset_info("synthetic", input_shape=(3, 32, 32), num_classes=4)
        >>> info["input_shape"], info["num_classes"]
        ((3, 32, 32), 4)
    """
    if is_factory_spec(name):
        ds: Any = create_dataset(name, split="test", **options)  # a sized dataset
        if len(ds) == 0:
            raise TorchFaultError(f"dataset {name!r}: its test split is empty.")
        shape = getattr(ds, "input_shape", None) or tuple(ds[0][0].shape)
        k = getattr(ds, "num_classes", None) or 1 + max(int(ds[i][1]) for i in range(len(ds)))
        return {
            "name": name,
            "input_shape": tuple(int(s) for s in shape),
            "num_classes": int(k),
            "description": f"dataset of your own ({name})",
        }
    info = DATASETS.info(name)
    shape = options.get("input_shape", info.capabilities["input_shape"])
    return {
        "name": info.name,
        "input_shape": tuple(int(s) for s in shape),
        "num_classes": int(options.get("num_classes", info.capabilities["num_classes"])),
        "description": info.description,
    }


def create_dataset(name: str, split: str = "test", **options: Any) -> Dataset:
    """The dataset ``name`` (its ``split``: train, val, test or all) as ``(tensor, int)`` pairs.

    Args:
        name: a registered dataset (see :func:`list_datasets`), or a factory of your own,
            ``path/to/file.py:function`` or ``package.module:function``, called as
            ``function(split=split, **options)``; what it returns is wrapped with
            :func:`wrap_dataset` unless it is already a torchfault dataset.
        split: which part.
        **options: passed to the dataset's factory (``split_seed``, ``size``, ``root``...).

    Raises:
        TorchFaultError: unknown name, split or option.

    Example:
        >>> from torchfault.dnn import create_dataset
        >>> [len(create_dataset("digits", split=s)) for s in ("train", "val", "test")]
        [1257, 180, 360]
    """
    if split not in SPLITS:
        raise TorchFaultError(
            f"dataset {name!r}: unknown split {split!r}; valid splits: {', '.join(SPLITS)}."
            f"{suggest(str(split), SPLITS)}",
            field="split",
        )
    if is_factory_spec(name):
        factory = load_factory_spec(name, "dataset")
    else:
        try:
            factory = DATASETS.get(name)
        except ValueError as exc:
            raise TorchFaultError(str(exc), field="dataset") from None
    try:
        ds = factory(split=split, **options)
    except TypeError as exc:
        if "unexpected keyword" in str(exc):
            raise TorchFaultError(f"dataset {name!r}: bad option: {exc}", field="options") from None
        raise
    except TorchFaultError as exc:  # the factory refused its options
        raise (exc if exc.field else exc.at("options")) from None
    if is_factory_spec(name) and not isinstance(ds, (TensorClassificationDataset, WrappedDataset)):
        ds = wrap_dataset(ds)
    return ds


class TensorClassificationDataset(Dataset):
    """A map-style dataset over an input tensor ``(N, ...)`` and a label tensor ``(N,)``.

    The tensors are kept as :attr:`inputs` and :attr:`targets`, so batched code (the campaign
    engine, evaluation) can take them whole instead of item by item.

    Example:
        >>> import torch
        >>> ds = TensorClassificationDataset(torch.zeros(3, 1, 2, 2), torch.tensor([0, 1, 2]))
        >>> ds[2][1], ds.num_classes
        (2, 3)
    """

    def __init__(
        self, inputs: torch.Tensor, targets: torch.Tensor, num_classes: int | None = None
    ) -> None:
        if len(inputs) != len(targets):
            raise TorchFaultError(
                f"inputs and targets differ in length: {len(inputs)} != {len(targets)}."
            )
        self.inputs = inputs
        self.targets = targets.long()
        self.num_classes = (
            int(num_classes)
            if num_classes is not None
            else (int(self.targets.max()) + 1 if len(targets) else 0)
        )

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.inputs.shape[1:])

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        return self.inputs[index], int(self.targets[index])


def _split_indices(
    labels: Sequence[int], split: str, split_seed: int, val_fraction: float, test_fraction: float
) -> list[int]:
    """Fixed stratified train / val / test indices (scikit-learn, seeded)."""
    from sklearn.model_selection import train_test_split

    idx = list(range(len(labels)))
    if split == "all":
        return idx
    if isinstance(split_seed, bool) or not isinstance(split_seed, int) or split_seed < 0:
        raise TorchFaultError(f"split_seed must be a whole number >= 0, got {split_seed!r}.")
    for what, frac in (("val_fraction", val_fraction), ("test_fraction", test_fraction)):
        if not 0.0 < frac < 1.0:
            raise TorchFaultError(f"{what} must lie in (0, 1), got {frac!r}.")
    if val_fraction + test_fraction >= 1.0:
        raise TorchFaultError(
            f"val_fraction + test_fraction must be below 1, got {val_fraction + test_fraction}."
        )
    rest, test = train_test_split(
        idx, test_size=test_fraction, random_state=split_seed, stratify=labels
    )
    if split == "test":
        return sorted(test)
    rest_labels = [labels[i] for i in rest]
    train, val = train_test_split(
        rest,
        test_size=val_fraction / (1.0 - test_fraction),
        random_state=split_seed,
        stratify=rest_labels,
    )
    return sorted(train if split == "train" else val)


@register_dataset(
    "digits",
    input_shape=(1, 8, 8),
    num_classes=10,
    description="scikit-learn handwritten digits, 1797 images of 8x8 (ships with scikit-learn).",
)
def digits(
    split: str = "test",
    split_seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    normalize: bool = True,
) -> TensorClassificationDataset:
    """scikit-learn's handwritten digits with fixed stratified splits.

    Args:
        split: train (70 %), val (10 %), test (20 %: 360 images) or all.
        split_seed: seed of the split; the default 0 is the split the shipped weights used.
        val_fraction: share of all images in the validation split.
        test_fraction: share of all images in the test split.
        normalize: standardise pixels (as the zoo's pretrained models expect); otherwise [0, 1].
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError:  # pragma: no cover - scikit-learn is in the train extra
        raise TorchFaultError(
            "dataset 'digits' needs scikit-learn: pip install 'torchfault[train]'."
        ) from None
    data = load_digits()
    labels = [int(t) for t in data.target]
    idx = _split_indices(labels, split, split_seed, val_fraction, test_fraction)
    x = torch.tensor(data.images[idx], dtype=torch.float32).unsqueeze(1) / 16.0
    if normalize:
        x = (x - DIGITS_MEAN) / DIGITS_STD
    y = torch.tensor([labels[i] for i in idx], dtype=torch.long)
    return TensorClassificationDataset(x, y, num_classes=10)


_SPLIT_OFFSET = {"train": 0, "val": 1, "test": 2, "all": 3}


@register_dataset(
    "synthetic",
    input_shape=(1, 8, 8),
    num_classes=10,
    description="random normal inputs with random labels, of any shape and class count.",
)
def synthetic(
    split: str = "test",
    size: int = 256,
    input_shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 10,
    seed: int = 0,
) -> TensorClassificationDataset:
    """Random inputs ``N(0, 1)`` of ``input_shape`` with uniform random labels.

    Each split draws from its own stream of ``seed``, so splits differ and are reproducible.

    Example:
        >>> from torchfault.dnn import create_dataset
        >>> ds = create_dataset("synthetic", size=5, input_shape=(3, 4, 4), num_classes=2)
        >>> len(ds), tuple(ds[0][0].shape)
        (5, (3, 4, 4))
    """
    if int(size) < 1 or int(num_classes) < 1:
        raise TorchFaultError(
            f"synthetic: size and num_classes must be >= 1, got {size} and {num_classes}."
        )
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise TorchFaultError(f"synthetic: input_shape must be positive sizes, got {shape}.")
    g = torch.Generator().manual_seed(int(seed) * 4 + _SPLIT_OFFSET[split])
    x = torch.randn((int(size), *shape), generator=g)
    y = torch.randint(0, int(num_classes), (int(size),), generator=g)
    return TensorClassificationDataset(x, y, num_classes=int(num_classes))


class WrappedDataset(Dataset):
    """Any map-style dataset as ``(tensor, int)`` pairs, with its input shape and class count.

    Example:
        >>> import torch
        >>> raw = [(torch.zeros(2, 2), torch.tensor(1)), (torch.ones(2, 2), torch.tensor(0))]
        >>> ds = wrap_dataset(raw, num_classes=2)
        >>> ds[0][1], ds.input_shape
        (1, (2, 2))
    """

    def __init__(
        self,
        dataset: Any,
        input_shape: Sequence[int] | None = None,
        num_classes: int | None = None,
    ) -> None:
        if not hasattr(dataset, "__getitem__") or not hasattr(dataset, "__len__"):
            raise TorchFaultError(
                f"wrap_dataset needs a map-style dataset (with __getitem__ and __len__), "
                f"got {type(dataset).__name__}."
            )
        self.dataset = dataset
        if input_shape is None:
            if len(dataset) == 0:
                raise TorchFaultError("wrap_dataset: an empty dataset needs input_shape.")
            input_shape = tuple(self[0][0].shape)
        self.input_shape = tuple(int(s) for s in input_shape)
        self.num_classes = None if num_classes is None else int(num_classes)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        item = self.dataset[index]
        if not isinstance(item, (tuple, list)) or len(item) < 2:
            raise TorchFaultError(
                f"wrapped dataset item {index} is not an (input, label) pair: {type(item).__name__}."
            )
        x, y = item[0], item[1]
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(x)
        return x, int(y)


def wrap_dataset(
    dataset: Any, input_shape: Sequence[int] | None = None, num_classes: int | None = None
) -> WrappedDataset:
    """Bring any map-style dataset of ``(input, label)`` items into torchfault's shape.

    Example:
        >>> import torch
        >>> from torch.utils.data import TensorDataset
        >>> ds = wrap_dataset(TensorDataset(torch.zeros(4, 3), torch.arange(4)), num_classes=4)
        >>> ds[3][1], ds.input_shape
        (3, (3,))
    """
    return WrappedDataset(dataset, input_shape=input_shape, num_classes=num_classes)


def default_data_root() -> Path:
    """Where torchvision datasets are looked for: ``$TORCHFAULT_DATA`` or ``~/.cache/torchfault/data``."""
    env = os.environ.get("TORCHFAULT_DATA")
    return Path(env) if env else Path.home() / ".cache" / "torchfault" / "data"


_TV_STATS = {
    "mnist": ("MNIST", (0.1307,), (0.3081,)),
    "fashion_mnist": ("FashionMNIST", (0.2860,), (0.3530,)),
    "cifar10": ("CIFAR10", (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ("CIFAR100", (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
}


def _torchvision_dataset(
    name: str,
    split: str,
    root: str | None,
    download: bool,
    split_seed: int,
    val_fraction: float,
) -> Dataset:
    cls_name, mean, std = _TV_STATS[name]
    if not 0.0 < float(val_fraction) < 1.0:
        raise TorchFaultError(
            f"dataset {name!r}: val_fraction must lie in (0, 1), got {val_fraction!r}."
        )
    try:
        import torchvision
        from torchvision import transforms
    except ImportError:
        raise TorchFaultError(
            f"dataset {name!r} needs torchvision, which is not installed "
            "(use 'digits' or 'synthetic', or wrap your own with wrap_dataset)."
        ) from None
    base = Path(root) if root else default_data_root()
    if not download and not base.is_dir():
        raise TorchFaultError(
            f"dataset {name!r}: no data directory at {str(base)!r} (looked there because "
            f"{'root was given' if root else 'TORCHFAULT_DATA is unset' if 'TORCHFAULT_DATA' not in os.environ else 'of TORCHFAULT_DATA'}); "
            "put the torchvision files there, pass root=..., or download=True to fetch them."
        )
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize(mean, std)])
    cls = getattr(torchvision.datasets, cls_name)
    # "all" is the training set followed by the test set
    parts = {"test": (False,), "all": (True, False)}.get(split, (True,))
    try:
        sets = [cls(str(base), train=t, transform=tf, download=download) for t in parts]
    except RuntimeError as exc:
        raise TorchFaultError(
            f"dataset {name!r}: could not read it under {str(base)!r}: {exc} "
            "(pass download=True to fetch it)."
        ) from None
    full = sets[0]
    if split in ("test", "all"):
        data = full if len(sets) == 1 else torch.utils.data.ConcatDataset(sets)
        return WrappedDataset(data, num_classes=len(full.classes))
    n = len(full)
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(split_seed)).tolist()
    n_val = int(round(n * val_fraction))
    idx = perm[:n_val] if split == "val" else perm[n_val:]
    return WrappedDataset(torch.utils.data.Subset(full, idx), num_classes=len(full.classes))


def _register_torchvision(name: str, shape: tuple[int, ...], classes: int) -> None:
    def factory(
        split: str = "test",
        root: str | None = None,
        download: bool = False,
        split_seed: int = 0,
        val_fraction: float = 0.1,
    ) -> Dataset:
        return _torchvision_dataset(name, split, root, download, split_seed, val_fraction)

    factory.__name__ = name
    DATASETS.add(
        name,
        factory,
        description=f"torchvision {_TV_STATS[name][0]} read from disk (needs torchvision; "
        "never downloads unless download=True).",
        input_shape=shape,
        num_classes=classes,
    )


_register_torchvision("mnist", (1, 28, 28), 10)
_register_torchvision("fashion_mnist", (1, 28, 28), 10)
_register_torchvision("cifar10", (3, 32, 32), 10)
_register_torchvision("cifar100", (3, 32, 32), 100)
