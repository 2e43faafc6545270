"""Toy dataset, ADM centre crop, ImageDataset, ImageNet folder scanning and Hub archive unpacking."""

import io
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from sfd import cli
from sfd.config import validate
from sfd.data import imagenet, toy
from sfd.data.images import BadImageError, ImageDataset, center_crop_arr, load_image

SMALL = {"train_size": 60, "val_size": 20}


def _data_cfg(**overrides):
    return validate({**SMALL, **overrides}, "data")


def test_toy_split_is_deterministic_balanced_and_size_independent():
    images, labels = toy.make_split(_data_cfg(), "train")
    again, _ = toy.make_split(_data_cfg(), "train")
    assert images.dtype == np.uint8 and images.shape == (60, 32, 32, 3) and labels.dtype == np.int64
    np.testing.assert_array_equal(images, again)
    assert np.bincount(labels).tolist() == [6] * 10
    longer, _ = toy.make_split(_data_cfg(train_size=80), "train")
    np.testing.assert_array_equal(longer[:60], images)  # image i depends on (seed, split, i) only
    val, _ = toy.make_split(_data_cfg(), "val")
    assert not np.array_equal(val[:20], images[:20])
    other_seed, _ = toy.make_split(_data_cfg(toy={"seed": 1}), "train")
    assert not np.array_equal(other_seed, images)


def test_toy_texture_knobs_take_effect():
    """patterns/gradient/noise are texture a config can switch off: with solid fills, no gradient and
    no noise an image holds two colours and the few blends of its anti-aliased edge (2x2 coverage)."""
    plain = _data_cfg(toy={"patterns": ["solid"], "gradient": 0.0, "noise": 0.0})
    images, _ = toy.make_split(plain, "train")
    for image in images[:10]:
        corners = image[[0, 0, -1, -1], [0, -1, 0, -1]]
        assert (corners == corners[0]).all()  # flat background
        assert len(np.unique(image.reshape(-1, 3), axis=0)) <= 5  # coverage 0, 1/4, 1/2, 3/4, 1
    textured, _ = toy.make_split(_data_cfg(toy={"noise": 0.0}), "train")
    assert min(len(np.unique(t.reshape(-1, 3), axis=0)) for t in textured[:10]) > 20


def test_toy_class_is_shape_not_colour():
    """A nearest-centroid classifier on shape maps beats chance by far; one on mean colour does not."""
    cfg = _data_cfg(train_size=400, val_size=200)
    (x_train, y_train), (x_val, y_val) = toy.make_split(cfg, "train"), toy.make_split(cfg, "val")

    def shape_map(images):  # distance from the background level, scale-free
        gray = images.astype(float).mean(-1)
        border = np.concatenate([gray[:, 0], gray[:, -1], gray[:, :, 0], gray[:, :, -1]], axis=1)
        dist = np.abs(gray - np.median(border, axis=1)[:, None, None])
        return (dist / (dist.mean((1, 2), keepdims=True) + 1e-6)).reshape(len(gray), -1)

    def mean_colour(images):
        return images.reshape(len(images), -1, 3).mean(1)

    def accuracy(features):
        train, val = features(x_train), features(x_val)
        centroids = np.stack([train[y_train == k].mean(0) for k in range(10)])
        return (((val[:, None] - centroids[None]) ** 2).sum(-1).argmin(1) == y_val).mean()

    assert accuracy(shape_map) > 0.4
    assert accuracy(mean_colour) < 0.2  # chance is 0.1


def test_make_toy_data_cli_and_npz_errors(tmp_path):
    config = tmp_path / "exp.yaml"
    config.write_text(
        yaml.safe_dump({"name": "t", "data": {"train_size": 25, "val_size": 10, "num_classes": 5}})
    )
    out = tmp_path / "val.npz"
    assert cli.main(["make-toy-data", "--config", str(config), "--split", "val", "--out", str(out)]) == 0
    images, labels, names = toy.load_npz(out)
    assert images.shape == (10, 32, 32, 3) and labels.tolist() == [0, 1, 2, 3, 4] * 2
    assert names == list(toy.CLASS_NAMES[:5])
    np.savez(tmp_path / "bad.npz", images=images)
    with pytest.raises(ValueError, match=r"bad.npz: missing key\(s\) \['class_names', 'labels'\]"):
        toy.load_npz(tmp_path / "bad.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(ValueError, match="junk.npz: not a readable npz"):
        toy.load_npz(tmp_path / "junk.npz")
    config.write_text(yaml.safe_dump({"name": "t", "data": {"source": "folder"}}))
    assert cli.main(["make-toy-data", "--config", str(config), "--split", "val", "--out", str(out)]) == 2


def test_toy_module_never_imports_torch():
    code = "import sys, sfd.data, sfd.data.toy; assert 'torch' not in sys.modules, 'torch imported'"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("size", [(600, 400), (301, 517), (128, 128), (97, 300)])
def test_adm_center_crop_matches_direct_pil_computation(size):
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))
    expected = image
    while min(expected.size) >= 256:  # halve with BOX while the short side is >= 2 * 128
        expected = expected.resize((expected.size[0] // 2, expected.size[1] // 2), Image.BOX)
    scale = 128 / min(expected.size)
    w, h = round(expected.size[0] * scale), round(expected.size[1] * scale)
    expected = np.asarray(expected.resize((w, h), Image.BICUBIC))
    top, left = (h - 128) // 2, (w - 128) // 2
    np.testing.assert_array_equal(center_crop_arr(image, 128), expected[top : top + 128, left : left + 128])


def _write_jpeg(path, seed, size=(40, 30)):
    path.parent.mkdir(parents=True, exist_ok=True)
    array = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(array).save(path, quality=95)


def test_image_folder_dataset_order_values_and_flip(tmp_path):
    from torchvision import transforms

    for cls, names in {"n02": ["b.JPEG", "a.jpeg"], "n01": ["z.png", "sub/y.JPEG"]}.items():
        for i, name in enumerate(names):
            _write_jpeg(tmp_path / cls / name, seed=i)
    (tmp_path / "n01" / "notes.txt").write_text("not an image")
    ds = ImageDataset(tmp_path, image_size=16)
    assert [p.relative_to(tmp_path).as_posix() for p in ds.files] == [
        "n01/z.png",
        "n01/sub/y.JPEG",
        "n02/a.jpeg",
        "n02/b.JPEG",
    ]
    assert ds.labels.tolist() == [0, 0, 1, 1] and ds.class_names == ["n01", "n02"]
    x, label = ds[2]
    reference = transforms.Compose(
        [
            transforms.Lambda(lambda im: Image.fromarray(center_crop_arr(im, 16))),
            transforms.ToTensor(),
            transforms.Normalize([0.5] * 3, [0.5] * 3),
        ]
    )(Image.open(ds.files[2]).convert("RGB"))
    assert label == 1 and torch.equal(x, reference)
    flipped, _ = ImageDataset(tmp_path, image_size=16, hflip=1.0)[2]
    assert torch.equal(flipped, reference.flip(-1))
    with pytest.raises(ValueError, match="found 2 class folders, config says num_classes=3"):
        ImageDataset(tmp_path, image_size=16, num_classes=3)


def test_corrupt_image_error_names_the_file(tmp_path):
    _write_jpeg(tmp_path / "n01" / "good.JPEG", seed=0, size=(200, 200))
    data = (tmp_path / "n01" / "good.JPEG").read_bytes()
    (tmp_path / "n01" / "truncated.JPEG").write_bytes(data[: len(data) // 2])
    with pytest.raises(BadImageError, match="truncated.JPEG"):
        load_image(tmp_path / "n01" / "truncated.JPEG", 32)


def test_wnid_list_is_the_standard_order_and_checked(tmp_path):
    wnids = imagenet.wnids()
    assert len(wnids) == 1000 == len(set(wnids)) and list(wnids) == sorted(wnids)
    assert wnids[0] == "n01440764" and wnids[-1] == "n15075141"
    for wnid in wnids[:999] + ("n99999999",):
        (tmp_path / wnid).mkdir()
        (tmp_path / wnid / "x.JPEG").write_bytes(b"")
    with pytest.raises(ValueError, match="'n99999999' is not an ImageNet-1k wnid"):
        imagenet.scan_class_folder(tmp_path)


def _archive(path, members):
    with tarfile.open(path, "w:gz") as tar:
        for name in members:
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (len(name), 0, 0)).save(buffer, format="JPEG")
            info = tarfile.TarInfo(name)
            info.size = buffer.tell()
            buffer.seek(0)
            tar.addfile(info, buffer)


def test_fetch_hf_unpacks_archives_into_wnid_folders_and_resumes(tmp_path, monkeypatch):
    import sfd.hub

    source = tmp_path / "hub"
    source.mkdir()
    _archive(
        source / "train_images_0.tar.gz", ["n01440764_10026_n01440764.JPEG", "n01443537_7_n01443537.JPEG"]
    )
    _archive(source / "train_images_1.tar.gz", ["sub/n01440764_3_n01440764.JPEG"])
    _archive(source / "bad.tar.gz", ["n01440764_1.JPEG"])
    calls = []

    def fake_download(repo_id, filename, out_path, *, revision=None, repo_type="model", sha256=None):
        calls.append((repo_id, filename, revision, repo_type))
        out_path.parent.mkdir(parents=True, exist_ok=True)
        out_path.write_bytes((source / filename.split("/")[-1]).read_bytes())
        return out_path

    monkeypatch.setattr(sfd.hub, "download", fake_download)
    hf = validate(
        {
            "hf": {
                "repo_id": "org/imagenet",
                "revision": "abc",
                "expected_images": {"train": 3},
                "files": {"train": ["data/train_images_0.tar.gz", "data/train_images_1.tar.gz"]},
            }
        },
        "data",
    )["hf"]
    dest = tmp_path / "train"
    assert imagenet.fetch_hf(hf, "train", dest) == 3
    files, labels, classes = imagenet.scan_class_folder(dest)
    assert [f.relative_to(dest).as_posix() for f in files] == [
        "n01440764/n01440764_10026.JPEG",
        "n01440764/n01440764_3.JPEG",
        "n01443537/n01443537_7.JPEG",
    ]
    assert labels == [0, 0, 1] and calls[0] == (
        "org/imagenet",
        "data/train_images_0.tar.gz",
        "abc",
        "dataset",
    )
    assert not (dest / ".archives" / "train_images_0.tar.gz").exists()  # keep_archives: false
    assert imagenet.fetch_hf(hf, "train", dest) == 3 and len(calls) == 2  # done archives are not refetched
    hf["files"]["train"] = ["bad.tar.gz"]
    with pytest.raises(ValueError, match="bad.tar.gz: member 'n01440764_1.JPEG' is not named"):
        imagenet.fetch_hf(hf, "train", tmp_path / "other")
