"""Data loading: Fashion-MNIST (Debian's files), image folders ordered by a taxonomy,
transforms and superpixels computed in the transform."""
from __future__ import annotations

import gzip
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from hcast.data import (
    FashionMNIST,
    HierarchicalImageFolder,
    WithSuperpixels,
    create_dataset,
    create_train_val_datasets,
    create_transform,
    dataset_targets,
    read_idx,
    stratified_indices,
)
from hcast.data.fashion_mnist import DEBIAN_FASHION_MNIST_DIR
from hcast.hierarchy import Taxonomy

needs_fmnist = pytest.mark.skipif(
    not (DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Debian's dataset-fashion-mnist is not installed (apt-get install dataset-fashion-mnist)",
)


@needs_fmnist
def test_read_idx_reads_the_debian_test_split():
    images = read_idx(DEBIAN_FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz")
    labels = read_idx(DEBIAN_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    # the test split is balanced: 1000 images of each of the 10 garments
    assert np.bincount(labels).tolist() == [1000] * 10
    # real pictures, not blank pages: a garment covers a good part of the frame
    assert 0.2 < (images > 0).mean() < 0.8


@needs_fmnist
def test_read_idx_rejects_truncated_and_foreign_files(tmp_path):
    raw = gzip.open(DEBIAN_FASHION_MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read()
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-10]))
    with pytest.raises(ValueError, match="truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n0000")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(tmp_path / "x.png")


@needs_fmnist
def test_fashion_mnist_from_a_root_with_uncompressed_files_matches_debian(tmp_path):
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        with gzip.open(DEBIAN_FASHION_MNIST_DIR / name) as src, open(tmp_path / name[:-3], "wb") as dst:
            shutil.copyfileobj(src, dst)
    ours = FashionMNIST(root=tmp_path, split="test", indices=[0, 5, 9999])
    debian = FashionMNIST(split="test", indices=[0, 5, 9999])
    assert ours.root == tmp_path and debian.root == DEBIAN_FASHION_MNIST_DIR
    assert torch.equal(ours.targets, debian.targets)
    image, label = ours[2]
    assert isinstance(image, Image.Image) and image.size == (28, 28) and image.mode == "L"
    assert np.array_equal(np.asarray(image), np.asarray(debian[2][0])) and label == int(debian.targets[2])
    with pytest.raises(ValueError, match="split"):
        FashionMNIST(split="validation")
    with pytest.raises(ValueError, match="indices"):
        FashionMNIST(split="test", indices=[10000])


def test_stratified_indices_are_balanced_seeded_and_respect_exclude():
    labels = torch.arange(10).repeat_interleave(30)  # 300 samples, 10 classes
    a = stratified_indices(labels, 55, seed=3)
    assert len(a) == 55 and len(set(a.tolist())) == 55
    counts = np.bincount(labels[a].numpy(), minlength=10)
    assert counts.max() - counts.min() <= 1
    assert np.array_equal(a, stratified_indices(labels, 55, seed=3))
    assert not np.array_equal(a, stratified_indices(labels, 55, seed=4))
    b = stratified_indices(labels, 100, seed=0, exclude=a)
    assert not set(a.tolist()) & set(b.tolist())
    with pytest.raises(ValueError, match="num_samples"):
        stratified_indices(labels, 300, exclude=a)


@needs_fmnist
def test_train_val_split_is_disjoint_and_balanced():
    train, val = create_train_val_datasets("fashion-mnist", None, None, train_samples=200, val_samples=50, seed=1)
    assert len(train) == 200 and len(val) == 50
    tr = {bytes(train.images[i]) for i in range(len(train))}
    va = {bytes(val.images[i]) for i in range(len(val))}
    assert not tr & va  # no image in both (Fashion-MNIST has no exact duplicates across these)
    assert np.bincount(dataset_targets(train).numpy()).tolist() == [20] * 10
    test = create_dataset("fashion-mnist", split="test", num_samples=30)
    assert len(test) == 30 and np.bincount(dataset_targets(test).numpy()).tolist() == [3] * 10


def test_create_transform_grayscale_to_normalised_rgb():
    from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD

    gray = Image.fromarray(np.full((28, 28), 255, dtype=np.uint8))
    x = create_transform(64)(gray)
    assert x.shape == (3, 64, 64) and x.dtype == torch.float32
    expected = (1 - torch.tensor(IMAGENET_DEFAULT_MEAN)) / torch.tensor(IMAGENET_DEFAULT_STD)
    assert torch.allclose(x[:, 10, 10], expected, atol=1e-5)
    train_tf = create_transform((3, 32, 48), is_training=True)
    assert train_tf(gray).shape == (3, 32, 48)
    with pytest.raises(ValueError, match="input_size"):
        create_transform(0)
    with pytest.raises(ValueError, match="scale"):
        create_transform(32, True, scale=(0.5, 1.5))


def _photo_folder(root, names):
    from skimage import data

    photos = {"astronaut": data.astronaut(), "coffee": data.coffee(), "chelsea": data.chelsea()}
    for name in names:
        (root / name).mkdir(parents=True)
        for i in range(2):
            crop = photos[name][i * 50:i * 50 + 200, i * 40:i * 40 + 200]
            Image.fromarray(crop).save(root / name / f"{i}.png")


def _photo_taxonomy():
    # names deliberately not in alphabetical order: labels must follow the taxonomy
    return Taxonomy.from_named_paths(
        [("coffee", "object"), ("chelsea", "animal"), ("astronaut", "animal")],
        orders=[["coffee", "chelsea", "astronaut"], ["object", "animal"]],
    )


def test_image_folder_labels_follow_the_taxonomy_not_the_alphabet(tmp_path):
    _photo_folder(tmp_path, ["astronaut", "chelsea", "coffee"])
    taxonomy = _photo_taxonomy()
    assert taxonomy.names[0] == ("coffee", "chelsea", "astronaut")
    ds = HierarchicalImageFolder(tmp_path, taxonomy, transform=create_transform(32))
    assert ds.classes == ["coffee", "chelsea", "astronaut"]
    for path, label in ds.samples:
        assert path.split("/")[-2] == taxonomy.names[0][label]
    assert ds.level_targets.tolist() == [taxonomy.paths()[t].tolist() for t in ds.targets]
    image, label = ds[0]
    assert image.shape == (3, 32, 32)


def test_image_folder_mismatch_names_the_folder(tmp_path):
    _photo_folder(tmp_path, ["astronaut", "chelsea", "coffee"])
    (tmp_path / "cofee").mkdir()  # a typo
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / "cofee" / "x.png")
    with pytest.raises(ValueError, match="cofee"):
        HierarchicalImageFolder(tmp_path, _photo_taxonomy())
    unnamed = Taxonomy([[0, 0, 1]])
    with pytest.raises(ValueError, match="names"):
        HierarchicalImageFolder(tmp_path, unnamed)


def test_image_folder_train_val_split_without_subfolders(tmp_path):
    _photo_folder(tmp_path, ["astronaut", "chelsea", "coffee"])
    train, val = create_train_val_datasets(tmp_path, None, None, taxonomy=_photo_taxonomy(), val_samples=3)
    assert len(train) == 3 and len(val) == 3
    assert not set(train.indices) & set(val.indices)
    with pytest.raises(ValueError, match="taxonomy"):
        create_train_val_datasets(tmp_path, None, None)
    with pytest.raises(ValueError, match="no such folder"):
        create_dataset(tmp_path / "missing", split="test", taxonomy=_photo_taxonomy())


def test_with_superpixels_computes_ids_on_the_transformed_photo():
    from skimage import data

    from hcast.ops import SuperpixelTransform

    tf = WithSuperpixels(create_transform(64), SuperpixelTransform(num_segments=16, method="slic"))
    image, segments = tf(Image.fromarray(data.chelsea()))
    assert image.shape == (3, 64, 64)
    assert segments.shape == (64, 64) and segments.dtype == torch.int64
    assert 4 <= int(segments.max()) + 1 <= 64  # about 16 superpixels
    # default collate gives [images (B,3,H,W), segments (B,H,W)]
    batch = torch.utils.data.default_collate([(tf(Image.fromarray(data.coffee())), 0)] * 2)
    assert batch[0][0].shape == (2, 3, 64, 64) and batch[0][1].shape == (2, 64, 64)


@needs_fmnist
def test_superpixel_cache_keeps_images_and_ids_and_flips_them_together():
    from hcast.data import SuperpixelCache
    from hcast.ops import SuperpixelTransform

    tf = WithSuperpixels(create_transform(64), SuperpixelTransform(num_segments=49, method="seeds"))
    ds = FashionMNIST(split="test", transform=tf, indices=range(12))
    cache = SuperpixelCache(ds, hflip=0.0, num_workers=2, batch_size=5)
    assert len(cache) == 12 and cache.segments.dtype == torch.int16
    assert torch.equal(cache.targets, ds.targets)
    for i in (0, 7, 11):
        (image, segments), label = cache[i]
        (want_image, want_segments), want_label = ds[i]
        assert torch.equal(image, want_image) and torch.equal(segments, want_segments) and label == want_label
        assert segments.dtype == torch.int64

    flipped = SuperpixelCache(ds, hflip=1.0)
    (image, segments), _ = flipped[3]
    assert torch.equal(image, cache[3][0][0].flip(-1)) and torch.equal(segments, cache[3][0][1].flip(-1))

    half = SuperpixelCache(ds, hflip=0.5)
    torch.manual_seed(0)
    orientations = set()
    for _ in range(20):
        (image, segments), _ = half[5]
        is_flipped = torch.equal(image, cache[5][0][0].flip(-1))
        assert is_flipped or torch.equal(image, cache[5][0][0])
        # the ids always follow the image
        assert torch.equal(segments, cache[5][0][1].flip(-1) if is_flipped else cache[5][0][1])
        orientations.add(is_flipped)
    assert orientations == {True, False}


def test_superpixel_cache_of_a_patch_model_keeps_images_only():
    """Hier-ViT reads patches: plain (image, label) items are cached and flipped without ids."""
    from hcast.data import SuperpixelCache

    images = torch.arange(4 * 3 * 4 * 5, dtype=torch.float32).view(4, 3, 4, 5)
    cache = SuperpixelCache(torch.utils.data.TensorDataset(images, torch.tensor([3, 1, 0, 2])), hflip=1.0)
    assert cache.segments is None and cache.targets.tolist() == [3, 1, 0, 2]
    image, label = cache[2]
    assert torch.equal(image, images[2].flip(-1)) and label == 0


def test_superpixel_cache_rejects_bad_input():
    from hcast.data import SuperpixelCache

    images = torch.utils.data.TensorDataset(torch.zeros(4, 3, 8, 8), torch.zeros(4, dtype=torch.long))
    with pytest.raises(ValueError, match="WithSuperpixels"):  # (H,W) items: neither an image nor (image, ids)
        SuperpixelCache(torch.utils.data.TensorDataset(torch.zeros(4, 8, 8), torch.zeros(4, dtype=torch.long)))
    with pytest.raises(ValueError, match="hflip"):
        SuperpixelCache(images, hflip=1.5)
    with pytest.raises(ValueError, match="empty"):
        SuperpixelCache(torch.utils.data.TensorDataset(torch.zeros(0, 3)))
