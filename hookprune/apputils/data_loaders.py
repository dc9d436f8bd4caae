"""The data sets of the example application, as Distiller's ``apputils.data_loaders`` offered them.

:func:`load_data` returns train, validation and test loaders whose samples have the shape the chosen
architecture takes, read only from local files (nothing is ever downloaded):

- ``digits``: scikit-learn's 1797 8x8 digits, embedded in the package, pixels scaled to [0, 1];
- ``mnist``: torchvision's on-disk MNIST, ``data_dir/MNIST/raw/`` with the four uncompressed idx files;
- ``cifar10``: CIFAR-10's python version, ``data_dir/cifar-10-batches-py/``;
- ``imagenet``: any ImageFolder tree, ``data_dir/train/<class>/*`` and ``data_dir/val/<class>/*``.

Splits never move with the seed: a permutation from a generator seeded 0 decides which training samples
validate. The train loader's order, its workers' seeds and every random augmentation are pure functions of
``(seed, epoch)`` once :func:`set_epoch` names the epoch, whatever the number of workers, and no loader
draws from the global random number generator, so an interrupted run resumes bit for bit.

For distributed data parallel training, ``num_replicas`` and ``rank`` shard every split: each rank reads
every ``num_replicas``-th sample from position ``rank`` of the order all ranks share. The training shards
are padded to the same length (by repeating the order's first samples, as ``DistributedSampler`` does), so
every rank takes the same number of steps; the evaluation shards are not, so that summing counts over the
ranks counts every sample exactly once.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import pickle
import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset
from torchvision import datasets, transforms

from hookprune.errors import suggest
from hookprune.models import zoo

__all__ = ["DATASETS", "DataError", "classes_of", "infer_dataset", "load_data", "set_epoch"]

#: the data set names :func:`load_data` accepts; ``imagenet`` stands for any ImageFolder tree
DATASETS: tuple[str, ...] = ("digits", "mnist", "cifar10", "imagenet")

MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
               "t10k-labels-idx1-ubyte")
CIFAR10_FILES = ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch",
                 "batches.meta")
NOTHING_DOWNLOADED = "(nothing is downloaded)"

#: one sample of each data set as read, before it is shaped for an architecture
_NATIVE_SHAPES: dict[str, tuple[int, ...]] = {
    "digits": (1, 8, 8),
    "mnist": (1, 28, 28),
    "cifar10": (3, 32, 32),
    "imagenet": (3, 224, 224),
}
_MNIST_NORMALIZE = ((0.1307,), (0.3081,))
_CIFAR10_NORMALIZE = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
_IMAGENET_NORMALIZE = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
#: ImageNet's evaluation resizes the smaller side to 256 before cropping the centre 224
_RESIZE_RATIO = 256 / 224
_CLASSES = {"digits": 10, "mnist": 10, "cifar10": 10}
_DIGITS_TEST_FRACTION = 0.2
#: the seed of the one permutation that decides every split; fixed, so splits never move with ``seed``
_SPLIT_SEED = 0
#: digits are shaped once for the whole set when the result holds at most this many elements (128 MiB)
_PRECOMPUTE_LIMIT = 1 << 25
# streams of seeds derived from (seed, epoch): the train order, the workers' base seed, the augmentations
_ORDER, _WORKERS, _AUGMENT = 1, 2, 3


class DataError(ValueError):
    """A data set that cannot be loaded as asked; ``str(err)`` is one line saying what is missing and where it goes."""

    def __init__(self, message: str) -> None:
        super().__init__(" ".join(message.split()))


def _derive(*parts: int) -> int:
    """A 63-bit seed that is a pure function of ``parts``, the same in every process and run."""
    digest = hashlib.blake2b(repr(parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class _Adapt:
    """Shape image tensors, one ``(C, H, W)`` sample or an ``(N, C, H, W)`` batch, for an architecture.

    A one-dimensional target flattens the sample; otherwise colour becomes grey by the mean of the channels,
    grey becomes colour by repetition, and the size changes by bilinear interpolation (antialiased).
    """

    def __init__(self, shape: tuple[int, ...]) -> None:
        self.shape = shape

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.shape) == 1:
            return x.flatten(-3)
        channels, height, width = self.shape
        if channels == 1 and x.shape[-3] != 1:
            x = x.mean(dim=-3, keepdim=True)
        if tuple(x.shape[-2:]) != (height, width):
            batch = x if x.dim() == 4 else x.unsqueeze(0)
            batch = F.interpolate(batch, size=(height, width), mode="bilinear", align_corners=False, antialias=True)
            x = batch if x.dim() == 4 else batch.squeeze(0)
        if x.shape[-3] != channels:
            x = x.expand(*x.shape[:-3], channels, height, width).contiguous()
        return x


class _View(Dataset):
    """The samples of ``base`` passed through ``transform``.

    With ``augment_seed`` set, the transform's random draws for sample ``i`` in epoch ``epoch`` come from the
    global generator seeded by ``(augment_seed, epoch, i)``, whose previous state is restored afterwards: the
    same augmentation whatever the number of workers, and the caller's random state untouched.
    """

    def __init__(self, base: Dataset, transform: Callable[[Any], torch.Tensor], augment_seed: int | None = None
                 ) -> None:
        self.base = base
        self.transform = transform
        self.augment_seed = augment_seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, Any]:
        image, label = self.base[index]
        if self.augment_seed is None:
            return self.transform(image), label
        state = torch.get_rng_state()
        torch.default_generator.manual_seed(_derive(self.augment_seed, self.epoch, index, _AUGMENT))
        try:
            return self.transform(image), label
        finally:
            torch.set_rng_state(state)


class _SplitSampler(Sampler[int]):
    """The indices of one split: in their given order, or shuffled as a pure function of ``(seed, epoch)``.

    With ``num_replicas`` above 1, the shard of ``rank``: every ``num_replicas``-th index of that order from
    position ``rank``, after padding the order to a multiple of ``num_replicas`` when ``pad`` is set.
    """

    def __init__(self, indices: torch.Tensor, seed: int, shuffle: bool, num_replicas: int = 1, rank: int = 0,
                 pad: bool = False) -> None:
        self.indices = indices
        self.seed = seed
        self.shuffle = shuffle
        self.num_replicas = num_replicas
        self.rank = rank
        self.pad = pad
        self.epoch = 0

    def __iter__(self) -> Iterator[int]:
        order = self.indices
        if self.shuffle:
            generator = torch.Generator().manual_seed(_derive(self.seed, self.epoch, _ORDER))
            order = order[torch.randperm(len(order), generator=generator)]
        if self.num_replicas > 1:
            if self.pad and len(order):
                total = math.ceil(len(order) / self.num_replicas) * self.num_replicas
                order = order.repeat(math.ceil(total / len(order)))[:total]
            order = order[self.rank::self.num_replicas]
        return iter(order.tolist())

    def __len__(self) -> int:
        n = len(self.indices)
        if self.num_replicas == 1:
            return n
        if self.pad:
            return math.ceil(n / self.num_replicas)
        return len(range(self.rank, n, self.num_replicas))


class _LocalCIFAR10(datasets.CIFAR10):
    """torchvision's CIFAR-10 reader, checking that the files exist rather than their checksums.

    The checksums match only the official archive's bytes; a damaged file fails to unpickle instead, and
    :func:`load_data` reports that.
    """

    def _check_integrity(self) -> bool:
        folder = Path(self.root, self.base_folder)
        return all((folder / name).is_file() for name, _ in self.train_list + self.test_list)

    def _load_meta(self) -> None:
        with open(Path(self.root, self.base_folder, self.meta["filename"]), "rb") as meta:
            self.classes = pickle.load(meta, encoding="latin1")[self.meta["key"]]
        self.class_to_idx = {name: i for i, name in enumerate(self.classes)}


class _LabelledFolder(datasets.ImageFolder):
    """An ImageFolder labelled by a given class-to-index table, so ``val/`` gets the labels ``train/`` has."""

    def __init__(self, root: Path, class_to_idx: dict[str, int]) -> None:
        self.given_classes = class_to_idx
        super().__init__(root)

    def find_classes(self, directory: str | os.PathLike) -> tuple[list[str], dict[str, int]]:
        present = _subfolders(Path(directory))
        return present, {name: self.given_classes[name] for name in present}


@dataclass
class _Source:
    """A data set's three views and the fixed order of its samples, from which the splits are cut."""

    train: Dataset  # the training samples, augmented
    valid: Dataset  # the same samples, not augmented
    test: Dataset
    pool: torch.Tensor  # indices into train/valid in a fixed random order: validation first, then training
    test_order: torch.Tensor  # indices into test in a fixed random order


def _seed_worker(worker_id: int) -> None:
    """Seed python's and numpy's generators in a loader worker from the worker's torch seed."""
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)


def _check_dataset(dataset: str) -> None:
    if dataset not in DATASETS:
        raise DataError(f"unknown data set '{dataset}'{suggest(dataset, DATASETS)}; "
                        f"the data sets are {', '.join(DATASETS)}")


def _layout(dataset: str, root: str = "data_dir") -> str:
    """Where a data set's files go under ``root``."""
    if dataset == "mnist":
        return f"{root}/MNIST/raw/ holding MNIST's four uncompressed idx files {', '.join(MNIST_FILES)}"
    if dataset == "cifar10":
        return (f"{root}/cifar-10-batches-py/ holding {', '.join(CIFAR10_FILES)} from CIFAR-10's python version "
                "(cifar-10-python.tar.gz, unpacked)")
    return (f"an ImageFolder tree, the training images in {root}/train/<class>/ and the test images in "
            f"{root}/val/<class>/, one folder per class with the same names in both")


def _data_root(dataset: str, data_dir: str | os.PathLike | None) -> Path:
    """The folder a data set is read from; digits reads none."""
    if dataset == "digits":
        if data_dir is not None:
            raise DataError(f"digits is embedded in scikit-learn and reads no folder; leave data_dir unset "
                            f"(got {os.fspath(data_dir)})")
        return Path()
    if data_dir is None:
        raise DataError(f"{dataset} needs data_dir: {_layout(dataset)} {NOTHING_DOWNLOADED}")
    return Path(data_dir)


def _subfolders(folder: Path) -> list[str]:
    return sorted(entry.name for entry in os.scandir(folder) if entry.is_dir())


def _imagenet_classes(root: Path) -> list[str]:
    """The class folders of ``root/train``; a DataError when there are none."""
    train = root / "train"
    if not train.is_dir():
        raise DataError(f"imagenet: no folder {train}; put {_layout('imagenet', str(root))} "
                        f"{NOTHING_DOWNLOADED}")
    classes = _subfolders(train)
    if not classes:
        raise DataError(f"imagenet: {train} holds no class folder; put the training images in {train}/<class>/, "
                        f"one folder per class {NOTHING_DOWNLOADED}")
    return classes


def infer_dataset(arch: str, data_dir: str | os.PathLike | None = None, dataset: str | None = None) -> str:
    """``dataset`` when given, else Distiller's rule: the digits data without a data folder; with one, by the
    architecture's name (cifar10 for a ``cifar`` name, mnist for an ``mnist`` or ``lenet`` one, else imagenet)."""
    if dataset:
        return dataset
    if data_dir is None:
        return "digits"
    if "cifar" in arch:
        return "cifar10"
    if "mnist" in arch or arch.startswith("lenet"):
        return "mnist"
    return "imagenet"


def classes_of(dataset: str, data_dir: str | os.PathLike | None = None) -> int:
    """The number of classes of ``dataset``: 10 for digits, MNIST and CIFAR-10, the class folders of ImageNet's
    ``train/``; what the application builds its model's classifier with."""
    _check_dataset(dataset)
    root = _data_root(dataset, data_dir)
    if dataset == "imagenet":
        return len(_imagenet_classes(root))
    return _CLASSES[dataset]


def _sample_shape(dataset: str, arch: str) -> tuple[int, ...]:
    """The shape of one sample as ``arch`` takes it, for samples of ``dataset``."""
    native = _NATIVE_SHAPES[dataset]
    if arch == "lenet300_100":
        return (math.prod(native),)
    try:
        shape = zoo.input_shape(arch)
    except ValueError as err:
        raise DataError(str(err)) from None
    if not ((arch in zoo.ZOO and len(shape) == 3) or zoo._torchvision_module(arch) == "classification"):
        raise DataError(f"architecture '{arch}' is not an image classifier; the data sets {', '.join(DATASETS)} "
                        "train classifiers")
    small = dataset != "imagenet" and shape == zoo.IMAGENET_SHAPE
    if small and not arch.startswith(zoo._FULL_SIZE_CLASSIFIERS):
        return (3, zoo.SMALL_SIDE, zoo.SMALL_SIDE)
    return shape


def sample_shape(dataset: str, arch: str) -> tuple[int, ...]:
    """The shape of one sample of ``dataset`` as :func:`load_data` delivers it for ``arch``."""
    _check_dataset(dataset)
    return _sample_shape(dataset, arch)


def input_adapter(dataset: str, arch: str, other_arch: str) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """A function that turns a batch of ``dataset`` shaped for ``arch`` into one shaped for ``other_arch``, or
    None when both take the same shape: a second model (a distillation teacher) then runs on the first's batches.
    """
    source, target = _sample_shape(dataset, arch), _sample_shape(dataset, other_arch)
    if source == target:
        return None
    native = _NATIVE_SHAPES[dataset]
    to_target = _Adapt(target)

    def adapt(x: torch.Tensor) -> torch.Tensor:
        if len(source) == 1:
            x = x.reshape(len(x), *native)
        return to_target(x)

    return adapt


def _read(dataset: str, folder: Path, build: Callable[[], Dataset]) -> Dataset:
    """Build a torchvision data set, reporting unreadable files as a DataError."""
    try:
        return build()
    except (OSError, RuntimeError, ValueError, TypeError, AssertionError, EOFError, KeyError,
            pickle.UnpicklingError) as err:
        raise DataError(f"{dataset}: cannot read the data in {folder}: {err}") from err


@functools.cache
def _digits_tensors() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's digits as ``(N, 1, 8, 8)`` pixels in [0, 1] and their labels, read once."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return (torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0,
            torch.tensor(digits.target, dtype=torch.int64))


def _digits(shape: tuple[int, ...]) -> _Source:
    x, y = _digits_tensors()
    adapt = _Adapt(shape)
    if len(x) * math.prod(shape) <= _PRECOMPUTE_LIMIT:
        samples: Dataset = TensorDataset(adapt(x), y)
    else:
        samples = _View(TensorDataset(x, y), adapt)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(_SPLIT_SEED))
    cut = int((1 - _DIGITS_TEST_FRACTION) * len(x))
    return _Source(samples, samples, samples, order[:cut], order[cut:])


def _fixed_orders(train: Dataset, test: Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(_SPLIT_SEED)
    return (torch.randperm(len(train), generator=generator),  # type: ignore[arg-type]
            torch.randperm(len(test), generator=generator))  # type: ignore[arg-type]


def _mnist(root: Path, shape: tuple[int, ...]) -> _Source:
    raw = root / "MNIST" / "raw"
    legacy = all((root / "MNIST" / "processed" / name).is_file() for name in ("training.pt", "test.pt"))
    missing = [name for name in MNIST_FILES if not (raw / name).is_file()]
    if missing and not legacy:
        packed = [name for name in missing if (raw / f"{name}.gz").is_file()]
        unpack = f"; gunzip {', '.join(f'{name}.gz' for name in packed)} there" if packed else ""
        raise DataError(f"mnist: {raw} lacks {', '.join(missing)}; put MNIST's four uncompressed idx files "
                        f"{', '.join(MNIST_FILES)} in {raw}{unpack} {NOTHING_DOWNLOADED}")
    transform = transforms.Compose([transforms.ToTensor(), transforms.Normalize(*_MNIST_NORMALIZE), _Adapt(shape)])
    train = _read("mnist", raw, lambda: datasets.MNIST(root, train=True, download=False))
    test = _read("mnist", raw, lambda: datasets.MNIST(root, train=False, download=False))
    view = _View(train, transform)
    return _Source(view, view, _View(test, transform), *_fixed_orders(train, test))


def _cifar10(root: Path, shape: tuple[int, ...], seed: int) -> _Source:
    folder = root / "cifar-10-batches-py"
    missing = [name for name in CIFAR10_FILES if not (folder / name).is_file()]
    if missing:
        raise DataError(f"cifar10: {folder} lacks {', '.join(missing)}; unpack CIFAR-10's python version "
                        f"(cifar-10-python.tar.gz) in {root} so that {folder} holds {', '.join(CIFAR10_FILES)} "
                        f"{NOTHING_DOWNLOADED}")
    normalize = transforms.Normalize(*_CIFAR10_NORMALIZE)
    plain = transforms.Compose([transforms.ToTensor(), normalize, _Adapt(shape)])
    augment = transforms.Compose([transforms.RandomCrop(32, padding=4), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), normalize, _Adapt(shape)])
    train = _read("cifar10", folder, lambda: _LocalCIFAR10(root, train=True, download=False))
    test = _read("cifar10", folder, lambda: _LocalCIFAR10(root, train=False, download=False))
    return _Source(_View(train, augment, seed), _View(train, plain), _View(test, plain), *_fixed_orders(train, test))


def _imagenet(root: Path, shape: tuple[int, ...], seed: int) -> _Source:
    classes = _imagenet_classes(root)
    val = root / "val"
    if not val.is_dir():
        raise DataError(f"imagenet: no folder {val}; put {_layout('imagenet', str(root))} "
                        f"{NOTHING_DOWNLOADED}")
    unknown = sorted(set(_subfolders(val)) - set(classes))
    if unknown:
        raise DataError(f"imagenet: {val} has class folders that {root / 'train'} lacks: {', '.join(unknown)}; "
                        "give val/ the class folder names of train/")
    side = shape[-1] if len(shape) == 3 else _NATIVE_SHAPES["imagenet"][-1]
    normalize = transforms.Normalize(*_IMAGENET_NORMALIZE)
    plain = transforms.Compose([transforms.Resize(round(side * _RESIZE_RATIO)), transforms.CenterCrop(side),
                                transforms.ToTensor(), normalize, _Adapt(shape)])
    augment = transforms.Compose([transforms.RandomResizedCrop(side), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(), normalize, _Adapt(shape)])
    train = _read("imagenet", root / "train", lambda: datasets.ImageFolder(root / "train"))
    index = {name: i for i, name in enumerate(classes)}
    test = _read("imagenet", val, lambda: _LabelledFolder(val, index))
    return _Source(_View(train, augment, seed), _View(train, plain), _View(test, plain), *_fixed_orders(train, test))


def _check_number(name: str, value: object, low: float, high: float, *, low_open: bool, high_open: bool) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise DataError(f"{name} must be a number, got {value!r}")
    above = value > low if low_open else value >= low
    below = value < high if high_open else value <= high
    if not (above and below):
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        raise DataError(f"{name} must be in {interval}, got {value}")


def _check_count(name: str, value: object, least: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise DataError(f"{name} must be an integer of at least {least}, got {value!r}")


def _leading(dataset: str, indices: torch.Tensor, fraction: float, split: str) -> torch.Tensor:
    """The first ``int(fraction * len(indices))`` indices; a DataError when that keeps none."""
    kept = indices[: int(fraction * len(indices))]
    if len(kept) == 0:
        raise DataError(f"{dataset}: effective_{split}_size {fraction} keeps no sample of the {len(indices)} in the "
                        f"{split} split")
    return kept


def set_epoch(loader: DataLoader, epoch: int) -> None:
    """Make ``loader``'s next pass the one of ``epoch``: its order, workers' seeds and augmentations are then a
    pure function of ``(seed, epoch)``. Call it at the start of every epoch, as with DistributedSampler."""
    sampler, generator = loader.sampler, loader.generator
    if not isinstance(sampler, _SplitSampler) or generator is None:
        raise DataError("set_epoch takes a loader that load_data returned")
    _check_count("epoch", epoch, 0)
    sampler.epoch = epoch
    if isinstance(loader.dataset, _View):
        loader.dataset.epoch = epoch
    parts = (sampler.seed, epoch, _WORKERS) + ((sampler.rank,) if sampler.num_replicas > 1 else ())
    generator.manual_seed(_derive(*parts))


def _loader(view: Dataset, indices: torch.Tensor, *, shuffle: bool, seed: int, batch_size: int, workers: int,
            deterministic: bool, num_replicas: int, rank: int) -> DataLoader:
    sampler = _SplitSampler(indices, seed, shuffle, num_replicas, rank, pad=shuffle)
    loader = DataLoader(view, batch_size=batch_size, sampler=sampler, num_workers=workers,
                        pin_memory=torch.cuda.is_available(), worker_init_fn=_seed_worker if deterministic else None,
                        generator=torch.Generator())
    set_epoch(loader, 0)
    return loader


def load_data(dataset: str, arch: str, data_dir: str | os.PathLike | None = None, batch_size: int = 32,
              workers: int = 0, validation_split: float = 0.1, deterministic: bool = False, seed: int = 0,
              effective_train_size: float = 1.0, effective_valid_size: float = 1.0, effective_test_size: float = 1.0,
              num_replicas: int = 1, rank: int = 0,
              ) -> tuple[DataLoader, DataLoader | None, DataLoader, tuple[int, ...]]:
    """Loaders of ``dataset`` shaped for ``arch``: ``(train, validation, test, input_shape)``.

    ``validation_split`` of the training samples (a fixed choice, the same for every ``seed``) form the
    validation loader, None when it is 0; the test loader reads the official test set (digits: a fixed fifth).
    ``effective_*_size`` keeps a fixed leading fraction of a split. ``input_shape`` is one sample's shape,
    batch dimension excluded. The train loader shuffles as a pure function of ``(seed, epoch)``, see
    :func:`set_epoch`; the others keep a fixed order. ``deterministic`` also seeds python's and numpy's
    generators in every worker from its torch seed. ``num_replicas`` > 1 gives loaders of the shard of
    ``rank`` (training shards padded to equal lengths, evaluation shards not; see the module's notes).
    """
    _check_dataset(dataset)
    _check_count("batch_size", batch_size, 1)
    _check_count("workers", workers, 0)
    _check_count("num_replicas", num_replicas, 1)
    if isinstance(rank, bool) or not isinstance(rank, int) or not 0 <= rank < num_replicas:
        raise DataError(f"rank must be an integer in [0, {num_replicas - 1}] for num_replicas {num_replicas}, "
                        f"got {rank!r}")
    _check_number("validation_split", validation_split, 0, 1, low_open=False, high_open=True)
    for split, size in (("train", effective_train_size), ("valid", effective_valid_size),
                        ("test", effective_test_size)):
        _check_number(f"effective_{split}_size", size, 0, 1, low_open=True, high_open=False)
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise DataError(f"seed must be an integer, got {seed!r}")
    root = _data_root(dataset, data_dir)
    shape = _sample_shape(dataset, arch)
    if dataset == "digits":
        source = _digits(shape)
    elif dataset == "mnist":
        source = _mnist(root, shape)
    elif dataset == "cifar10":
        source = _cifar10(root, shape, seed)
    else:
        source = _imagenet(root, shape, seed)

    n_valid = int(validation_split * len(source.pool))
    if validation_split > 0 and n_valid == 0:
        raise DataError(f"{dataset}: validation_split {validation_split} of {len(source.pool)} training samples "
                        "keeps none for validation; use 0 for no validation split")
    options: dict[str, Any] = dict(seed=seed, batch_size=batch_size, workers=workers, deterministic=deterministic,
                                   num_replicas=num_replicas, rank=rank)
    train = _leading(dataset, source.pool[n_valid:], effective_train_size, "train")
    train_loader = _loader(source.train, train, shuffle=True, **options)
    valid_loader = None
    if n_valid:
        valid = _leading(dataset, source.pool[:n_valid], effective_valid_size, "valid").sort().values
        valid_loader = _loader(source.valid, valid, shuffle=False, **options)
    test = _leading(dataset, source.test_order, effective_test_size, "test").sort().values
    test_loader = _loader(source.test, test, shuffle=False, **options)
    return train_loader, valid_loader, test_loader, shape
