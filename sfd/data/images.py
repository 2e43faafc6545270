"""Image datasets feeding the tokenizers and the latent extraction (docs/method.md §1.1 preprocessing).

One class serves both sources: a toy `.npz` (images already at their final size) and an ImageNet
class folder (`<root>/<wnid>/*.JPEG`, decoded with PIL and centre-cropped the ADM way). Items
are `(x, label)` with x a float [3, H, W] tensor in [-1, 1], computed exactly as torchvision's
ToTensor + Normalize(0.5, 0.5) would.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from sfd.data import imagenet, toy
from sfd.errors import InputError, UserError


class BadImageError(UserError, OSError):
    """An image file that cannot be decoded (corrupt or truncated); the message names its path."""


def center_crop_arr(image: Image.Image, image_size: int) -> np.ndarray:
    """ADM centre crop: halve with BOX while the short side is >= 2*size, BICUBIC-resize the
    short side to size (rounded), then take the centre size x size window (floor offsets)."""
    while min(*image.size) >= 2 * image_size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = image_size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.asarray(image)
    top = (arr.shape[0] - image_size) // 2
    left = (arr.shape[1] - image_size) // 2
    return arr[top : top + image_size, left : left + image_size]


def load_image(path, image_size: int) -> np.ndarray:
    """Decode to RGB and centre-crop; uint8 [size, size, 3]. Raises BadImageError naming the file."""
    try:
        with open(path, "rb") as f:
            image = Image.open(f)
            image = image.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise BadImageError(f"{path}: cannot decode image: {err}") from err
    return center_crop_arr(image, image_size)


def to_tensor(arr: np.ndarray) -> torch.Tensor:
    """uint8 HWC -> float CHW in [-1, 1] (ToTensor then Normalize(0.5, 0.5), same arithmetic)."""
    x = torch.from_numpy(np.array(arr)).permute(2, 0, 1).float().div(255)  # a writable copy
    return x.sub(0.5).div(0.5)


class ImageDataset(torch.utils.data.Dataset):
    """`(x in [-1,1] float [3,H,W], label int)` from a toy `.npz` or an ImageNet class folder.

    `hflip` is the flip probability (0: never, 1: always, else a torch.rand draw per item, as
    RandomHorizontalFlip does). `num_classes` (folder only) checks the class count and, for
    1000 classes, the standard wnid order.
    """

    def __init__(self, path, image_size: int, hflip: float = 0.0, num_classes: int | None = None):
        self.path = Path(path)
        self.image_size = image_size
        self.hflip = float(hflip)
        if self.path.suffix == ".npz":
            self.images, self.labels, self.class_names = toy.load_npz(self.path)
            if self.images.shape[1:3] != (image_size, image_size):
                raise InputError(
                    f"{self.path}: images are {self.images.shape[1]}x{self.images.shape[2]}, "
                    f"config wants {image_size}x{image_size}"
                )
            self.files = None
        else:
            self.files, labels, self.class_names = imagenet.scan_class_folder(self.path, num_classes)
            self.labels = np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def describe(self, index: int) -> str:
        """Where item `index` comes from, for error messages and skip logs."""
        return str(self.files[index]) if self.files is not None else f"{self.path}[{index}]"

    def array(self, index: int) -> np.ndarray:
        """The un-flipped uint8 [H, W, 3] image after the ADM crop."""
        if self.files is None:
            return self.images[index]
        return load_image(self.files[index], self.image_size)

    def __getitem__(self, index: int):
        arr = self.array(index)
        if self.hflip >= 1.0 or (self.hflip > 0.0 and torch.rand(1).item() < self.hflip):
            arr = arr[:, ::-1]
        return to_tensor(arr), int(self.labels[index])
