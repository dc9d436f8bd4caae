"""The example application's data sets: splits, sample shapes per architecture, labels, messages, determinism."""

from __future__ import annotations

import math
import pickle
import struct
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from PIL import Image

from hookprune.apputils import data_loaders
from hookprune.apputils.data_loaders import DATASETS, DataError, classes_of, load_data, set_epoch
from hookprune.models import create_model

MNIST_NAMES = ("train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte, "
               "t10k-labels-idx1-ubyte")
CIFAR_NAMES = "data_batch_1, data_batch_2, data_batch_3, data_batch_4, data_batch_5, test_batch, batches.meta"
#: an image of class c in the fake data sets has this intensity (MNIST grey, CIFAR red)
STEP = 25


def write_mnist(root: Path, n_train: int = 20, n_test: int = 5) -> Path:
    """MNIST in its real idx format; image i has label i % 10 and every pixel at STEP * label."""
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = np.broadcast_to((labels * STEP)[:, None, None], (n, 28, 28)).astype(np.uint8)
        (raw / f"{prefix}-images-idx3-ubyte").write_bytes(struct.pack(">IIII", 2051, n, 28, 28) + images.tobytes())
        (raw / f"{prefix}-labels-idx1-ubyte").write_bytes(struct.pack(">II", 2049, n) + labels.tobytes())
    return root


def write_cifar(root: Path, per_batch: int = 4, n_test: int = 6) -> Path:
    """CIFAR-10's python version in its real pickle format; red at STEP * label, green 200, blue 0."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)

    def batch(labels: np.ndarray) -> dict:
        images = np.zeros((len(labels), 3, 32, 32), np.uint8)
        images[:, 0] = (labels * STEP)[:, None, None]
        images[:, 1] = 200
        return {"batch_label": "fake", "data": images.reshape(len(labels), -1), "labels": labels.tolist()}

    for b in range(5):
        with open(folder / f"data_batch_{b + 1}", "wb") as f:
            pickle.dump(batch(np.arange(b * per_batch, (b + 1) * per_batch) % 10), f)
    with open(folder / "test_batch", "wb") as f:
        pickle.dump(batch(np.arange(n_test) % 10), f)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)]}, f)
    return root


IMAGE_CLASSES = ("ant", "bee", "cat")


def red_of(class_index: int) -> int:
    return 30 + 90 * class_index


def write_image_folder(root: Path, val_classes: tuple[str, ...] = ("ant", "cat")) -> Path:
    """train/<class>/ with 4 PNGs per class and val/<class>/ with 2, each a plain colour whose red names the class."""
    for split, names, count in (("train", IMAGE_CLASSES, 4), ("val", val_classes, 2)):
        for name in names:
            folder = root / split / name
            folder.mkdir(parents=True)
            colour = (red_of(IMAGE_CLASSES.index(name)) if name in IMAGE_CLASSES else 255, 100, 100)
            for i in range(count):
                Image.new("RGB", (40 + 3 * i, 30), colour).save(folder / f"{i}.png")
    return root


def everything(loader: torch.utils.data.DataLoader) -> tuple[torch.Tensor, torch.Tensor]:
    xs, ys = zip(*loader, strict=True)
    return torch.cat(xs), torch.cat(ys)


# digits


def test_digits_split_sizes_do_not_move_with_seed():
    runs = [load_data("digits", "lenet300_100", seed=seed) for seed in (0, 1)]
    for train, valid, test, shape in runs:
        assert shape == (64,)
        assert (len(train.sampler), len(valid.sampler), len(test.sampler)) == (1294, 143, 360)
    (train0, valid0, test0, _), (train1, valid1, test1, _) = runs
    assert sorted(train0.sampler) == sorted(train1.sampler)
    assert list(valid0.sampler) == list(valid1.sampler)
    assert list(test0.sampler) == list(test1.sampler)
    assert list(train0.sampler) != list(train1.sampler)  # the seed only changes the order
    everyone = set(train0.sampler) | set(valid0.sampler) | set(test0.sampler)
    assert len(everyone) == 1797


def test_digits_without_validation_and_its_pixels():
    train, valid, test, _ = load_data("digits", "lenet300_100", validation_split=0)
    assert valid is None
    assert len(train.sampler) == 1437
    x, y = everything(test)
    assert x.shape == (360, 64) and y.dtype == torch.int64
    assert x.min() == 0 and x.max() == 1
    assert set(y.tolist()) == set(range(10))


@pytest.mark.parametrize(("arch", "shape"), [
    ("lenet300_100", (64,)),
    ("simplenet_mnist", (1, 28, 28)),
    ("resnet20_cifar", (3, 32, 32)),
    ("resnet18", (3, 64, 64)),
])
def test_digits_fit_the_architecture(arch, shape):
    train, _, _, input_shape = load_data("digits", arch, batch_size=4)
    assert input_shape == shape
    x, y = next(iter(train))
    assert x.shape == (4, *shape) and y.shape == (4,)
    if len(shape) == 3 and shape[0] == 3:
        assert torch.equal(x[:, 0], x[:, 1]) and torch.equal(x[:, 0], x[:, 2])  # grey repeated
    kwargs = {"input_features": math.prod(shape)} if arch == "lenet300_100" else {}
    model = create_model(arch, num_classes=classes_of("digits"), **kwargs).eval()
    with torch.no_grad():
        assert model(x).shape == (4, 10)


def test_full_size_classifiers_keep_their_size():
    assert load_data("digits", "inception_v3", batch_size=2)[3] == (3, 299, 299)


def test_digits_shaped_per_sample_equal_digits_shaped_at_once(monkeypatch):
    at_once = everything(load_data("digits", "resnet18", validation_split=0, effective_test_size=0.1)[2])
    monkeypatch.setattr(data_loaders, "_PRECOMPUTE_LIMIT", 0)
    per_sample = everything(load_data("digits", "resnet18", validation_split=0, effective_test_size=0.1)[2])
    assert torch.allclose(at_once[0], per_sample[0], atol=1e-6)
    assert torch.equal(at_once[1], per_sample[1])


def test_effective_sizes_keep_a_fixed_leading_fraction():
    full_train, full_valid, full_test, _ = load_data("digits", "lenet300_100")
    train, valid, test, _ = load_data("digits", "lenet300_100", seed=5, effective_train_size=0.5,
                                      effective_valid_size=0.3, effective_test_size=0.25)
    assert (len(train.sampler), len(valid.sampler), len(test.sampler)) == (647, 42, 90)
    assert set(train.sampler) <= set(full_train.sampler)
    assert set(valid.sampler) <= set(full_valid.sampler)
    assert set(test.sampler) <= set(full_test.sampler)
    again = load_data("digits", "lenet300_100", seed=9, effective_train_size=0.5)[0]
    assert set(again.sampler) == set(train.sampler)


# determinism


def test_train_order_is_a_function_of_seed_and_epoch():
    train = load_data("digits", "lenet300_100", batch_size=64)[0]
    set_epoch(train, 3)
    first = everything(train)
    torch.rand(10)
    set_epoch(train, 3)
    torch.manual_seed(1234)
    assert all(torch.equal(a, b) for a, b in zip(first, everything(train), strict=True))
    other = load_data("digits", "lenet300_100", batch_size=64)[0]
    set_epoch(other, 3)
    assert torch.equal(everything(other)[1], first[1])
    set_epoch(train, 4)
    assert not torch.equal(everything(train)[1], first[1])


def test_loaders_leave_the_global_generator_alone(tmp_path):
    state = torch.get_rng_state()
    train, valid, test, _ = load_data("cifar10", "resnet20_cifar", write_cifar(tmp_path), batch_size=5)
    for loader in (train, valid, test):
        everything(loader)
    assert torch.equal(torch.get_rng_state(), state)


def test_augmentation_repeats_per_epoch_and_ignores_workers(tmp_path):
    root = write_cifar(tmp_path)
    plain = load_data("cifar10", "resnet20_cifar", root, batch_size=6)[0]
    threaded = load_data("cifar10", "resnet20_cifar", root, batch_size=6, workers=2, deterministic=True)[0]
    set_epoch(plain, 1)
    x, y = everything(plain)
    torch.manual_seed(7)
    for loader in (plain, threaded):
        set_epoch(loader, 1)
        again = everything(loader)
        assert torch.equal(again[0], x) and torch.equal(again[1], y)
    set_epoch(plain, 2)
    assert not torch.equal(everything(plain)[0], x)


def test_set_epoch_reseeds_the_worker_seed_generator():
    a = load_data("digits", "lenet300_100", seed=3)[0]
    b = load_data("digits", "lenet300_100", seed=3)[0]
    seeds = []
    for epoch in (5, 5, 6):
        set_epoch(a, epoch)
        seeds.append(a.generator.initial_seed())
    set_epoch(b, 5)
    assert seeds[0] == seeds[1] == b.generator.initial_seed() != seeds[2]


def test_set_epoch_refuses_other_loaders():
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.zeros(3)))
    with pytest.raises(DataError, match=r"^set_epoch takes a loader that load_data returned$"):
        set_epoch(loader, 0)


# files on disk


@pytest.mark.parametrize(("arch", "shape"), [("lenet300_100", (784,)), ("simplenet_mnist", (1, 28, 28)),
                                             ("resnet18", (3, 64, 64))])
def test_mnist_from_idx_files(tmp_path, arch, shape):
    train, valid, test, input_shape = load_data("mnist", arch, write_mnist(tmp_path), batch_size=8)
    assert input_shape == shape
    assert (len(train.sampler), len(valid.sampler), len(test.sampler)) == (18, 2, 5)
    for loader in (train, valid, test):
        x, y = everything(loader)
        assert x.shape[1:] == shape
        grey = x.reshape(len(x), -1)[:, 0] * 0.3081 + 0.1307
        assert torch.equal(torch.round(grey * 255 / STEP).long(), y)
    assert sorted(everything(test)[1].tolist()) == [0, 1, 2, 3, 4]
    assert classes_of("mnist", tmp_path) == 10


@pytest.mark.parametrize(("arch", "shape"), [("resnet20_cifar", (3, 32, 32)), ("simplenet_mnist", (1, 28, 28)),
                                             ("lenet300_100", (3072,))])
def test_cifar10_from_pickled_batches(tmp_path, arch, shape):
    train, valid, test, input_shape = load_data("cifar10", arch, write_cifar(tmp_path), batch_size=8)
    assert input_shape == shape
    assert (len(train.sampler), len(valid.sampler), len(test.sampler)) == (18, 2, 6)
    for loader in (train, valid, test):
        x, y = everything(loader)
        assert x.shape[1:] == shape
        if shape[0] == 3:
            red = x[:, 0, 16, 16] * 0.5 + 0.5
            assert torch.equal(torch.round(red * 255 / STEP).long(), y)
        elif shape[0] == 1:  # grey: the mean of red, green 200 and blue 0
            grey = x[:, 0, 14, 14] * 0.5 + 0.5
            assert torch.allclose(grey * 255, (y * STEP + 200) / 3, atol=0.5)
    assert classes_of("cifar10", tmp_path) == 10


@pytest.mark.parametrize(("arch", "shape"), [("resnet20_cifar", (3, 32, 32)), ("simplenet_mnist", (1, 28, 28)),
                                             ("resnet18", (3, 224, 224))])
def test_image_folder_tree(tmp_path, arch, shape):
    root = write_image_folder(tmp_path)
    assert classes_of("imagenet", root) == 3
    train, valid, test, input_shape = load_data("imagenet", arch, root, batch_size=4, validation_split=0.25)
    assert input_shape == shape
    assert (len(train.sampler), len(valid.sampler), len(test.sampler)) == (9, 3, 4)
    x, y = everything(test)
    assert x.shape == (4, *shape)
    assert y.tolist() == [0, 0, 2, 2]  # val/ lacks bee, and keeps train/'s labels
    for loader in (train, test):
        x, y = everything(loader)
        centre = x[:, :, shape[1] // 2, shape[2] // 2]
        colours = torch.tensor([[red_of(c), 100, 100] for c in y.tolist()], dtype=torch.float32) / 255
        normalized = (colours - torch.tensor([0.485, 0.456, 0.406])) / torch.tensor([0.229, 0.224, 0.225])
        expected = normalized if shape[0] == 3 else normalized.mean(1, keepdim=True)  # grey: the channels' mean
        assert torch.allclose(centre, expected, atol=0.02)


def test_no_download_is_attempted(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a download was attempted")

    monkeypatch.setattr(torchvision.datasets.utils, "download_url", refuse)
    monkeypatch.setattr(urllib.request, "urlopen", refuse)
    for dataset in ("mnist", "cifar10"):
        with pytest.raises(DataError, match=r"\(nothing is downloaded\)$"):
            load_data(dataset, "lenet300_100", tmp_path / "empty")
    assert load_data("mnist", "lenet300_100", write_mnist(tmp_path / "m"))[3] == (784,)
    assert load_data("cifar10", "lenet300_100", write_cifar(tmp_path / "c"))[3] == (3072,)


# messages


def test_missing_data_messages(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    with pytest.raises(DataError) as err:
        load_data("mnist", "lenet300_100", tmp_path)
    assert str(err.value) == (f"mnist: {raw} lacks {MNIST_NAMES}; put MNIST's four uncompressed idx files "
                              f"{MNIST_NAMES} in {raw} (nothing is downloaded)")

    write_mnist(tmp_path / "gz")
    gz_raw = tmp_path / "gz" / "MNIST" / "raw"
    (gz_raw / "t10k-images-idx3-ubyte").rename(gz_raw / "t10k-images-idx3-ubyte.gz")
    with pytest.raises(DataError) as err:
        load_data("mnist", "lenet300_100", tmp_path / "gz")
    assert str(err.value) == (f"mnist: {gz_raw} lacks t10k-images-idx3-ubyte; put MNIST's four uncompressed idx "
                              f"files {MNIST_NAMES} in {gz_raw}; gunzip t10k-images-idx3-ubyte.gz there "
                              "(nothing is downloaded)")

    folder = tmp_path / "cifar-10-batches-py"
    with pytest.raises(DataError) as err:
        load_data("cifar10", "resnet20_cifar", tmp_path)
    assert str(err.value) == (f"cifar10: {folder} lacks {CIFAR_NAMES}; unpack CIFAR-10's python version "
                              f"(cifar-10-python.tar.gz) in {tmp_path} so that {folder} holds {CIFAR_NAMES} "
                              "(nothing is downloaded)")

    tree = ("put an ImageFolder tree, the training images in {0}/train/<class>/ and the test images in "
            "{0}/val/<class>/, one folder per class with the same names in both (nothing is downloaded)")
    with pytest.raises(DataError) as err:
        load_data("imagenet", "resnet18", tmp_path)
    assert str(err.value) == f"imagenet: no folder {tmp_path / 'train'}; " + tree.format(tmp_path)
    with pytest.raises(DataError) as err:
        classes_of("imagenet", tmp_path)
    assert str(err.value) == f"imagenet: no folder {tmp_path / 'train'}; " + tree.format(tmp_path)
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError) as err:
        load_data("imagenet", "resnet18", tmp_path)
    assert str(err.value) == (f"imagenet: {tmp_path / 'train'} holds no class folder; put the training images in "
                              f"{tmp_path / 'train'}/<class>/, one folder per class (nothing is downloaded)")


def test_image_folder_messages(tmp_path):
    root = write_image_folder(tmp_path / "a", val_classes=("ant", "dog"))
    with pytest.raises(DataError) as err:
        load_data("imagenet", "resnet18", root)
    assert str(err.value) == (f"imagenet: {root / 'val'} has class folders that {root / 'train'} lacks: dog; "
                              "give val/ the class folder names of train/")
    root = write_image_folder(tmp_path / "b")
    for image in (root / "val" / "ant").iterdir():
        image.unlink()
    with pytest.raises(DataError, match=r"^imagenet: cannot read the data in .*val: Found no valid file for the "
                                        r"classes ant\. Supported extensions are: .*\.png"):
        load_data("imagenet", "resnet18", root)
    root = tmp_path / "c"
    (root / "train" / "ant").mkdir(parents=True)
    with pytest.raises(DataError) as err:
        load_data("imagenet", "resnet18", root)
    assert str(err.value) == f"imagenet: no folder {root / 'val'}; " + (
        f"put an ImageFolder tree, the training images in {root}/train/<class>/ and the test images in "
        f"{root}/val/<class>/, one folder per class with the same names in both (nothing is downloaded)")


def test_unreadable_files_are_a_data_error(tmp_path):
    write_mnist(tmp_path)
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(DataError) as err:
        load_data("mnist", "lenet300_100", tmp_path)
    assert str(err.value).startswith(f"mnist: cannot read the data in {tmp_path / 'MNIST' / 'raw'}: ")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("dataset", ["mnist", "cifar10", "imagenet"])
def test_data_dir_required(dataset):
    with pytest.raises(DataError) as err:
        load_data(dataset, "resnet18")
    message = str(err.value)
    assert message.startswith(f"{dataset} needs data_dir: ")
    assert message.endswith(" (nothing is downloaded)")
    assert {"mnist": "data_dir/MNIST/raw/ holding MNIST's four uncompressed idx files " + MNIST_NAMES,
            "cifar10": "data_dir/cifar-10-batches-py/ holding " + CIFAR_NAMES,
            "imagenet": "data_dir/train/<class>/"}[dataset] in message


def test_digits_reads_no_folder(tmp_path):
    with pytest.raises(DataError) as err:
        load_data("digits", "lenet300_100", tmp_path)
    assert str(err.value) == ("digits is embedded in scikit-learn and reads no folder; leave data_dir unset "
                              f"(got {tmp_path})")
    with pytest.raises(DataError):
        classes_of("digits", tmp_path)
    assert classes_of("digits") == 10


def test_unknown_names():
    assert DATASETS == ("digits", "mnist", "cifar10", "imagenet")
    with pytest.raises(DataError) as err:
        load_data("cifar", "resnet20_cifar")
    assert str(err.value) == ("unknown data set 'cifar' (did you mean 'cifar10'?); "
                              "the data sets are digits, mnist, cifar10, imagenet")
    with pytest.raises(DataError, match=r"^unknown architecture 'resnet2O'"):
        load_data("digits", "resnet2O")
    with pytest.raises(DataError) as err:
        load_data("digits", "fasterrcnn_resnet50_fpn")
    assert str(err.value) == ("architecture 'fasterrcnn_resnet50_fpn' is not an image classifier; the data sets "
                              "digits, mnist, cifar10, imagenet train classifiers")


@pytest.mark.parametrize(("argument", "value", "message"), [
    ("validation_split", 1.0, "validation_split must be in [0, 1), got 1.0"),
    ("validation_split", -0.1, "validation_split must be in [0, 1), got -0.1"),
    ("effective_train_size", 0, "effective_train_size must be in (0, 1], got 0"),
    ("effective_test_size", 1.5, "effective_test_size must be in (0, 1], got 1.5"),
    ("effective_valid_size", "half", "effective_valid_size must be a number, got 'half'"),
    ("batch_size", 0, "batch_size must be an integer of at least 1, got 0"),
    ("workers", -1, "workers must be an integer of at least 0, got -1"),
    ("validation_split", 0.0001, "digits: validation_split 0.0001 of 1437 training samples keeps none for "
                                 "validation; use 0 for no validation split"),
    ("effective_test_size", 0.001, "digits: effective_test_size 0.001 keeps no sample of the 360 in the test split"),
])
def test_bad_numbers(argument, value, message):
    with pytest.raises(DataError) as err:
        load_data("digits", "lenet300_100", **{argument: value})
    assert str(err.value) == message
