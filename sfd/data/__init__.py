"""Image data: the procedural toy set, ImageNet folders (local or from the Hub), ADM preprocessing.

`sfd.data.toy` is numpy-only and is imported by the TensorFlow evaluator, so this package must
not import torch eagerly: `ImageDataset` and friends are resolved on first access.
"""

_TORCH_NAMES = {"ImageDataset", "BadImageError", "center_crop_arr", "load_image", "to_tensor"}


def __getattr__(name):
    if name in _TORCH_NAMES:
        from sfd.data import images

        return getattr(images, name)
    raise AttributeError(f"module 'sfd.data' has no attribute {name!r}")
