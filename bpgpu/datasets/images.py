"""Image files (PNG, JPEG, ... through Pillow, an optional extra) as an image model's uint8 inputs,
preprocessed the way MNIST's digits were made.

The rule (:func:`mnist_style`), for a photo or a drawing of one digit:

1. greyscale (a transparent background counts as white);
2. inverted when the background is light (the median of the border pixels above 127): MNIST
   digits are light ink on black;
3. the background level (that median) subtracted, so the paper is 0;
4. the digit's bounding box (pixels above a tenth of the brightest) cut out and scaled, aspect
   kept, so that its longer side is 20 pixels (of a 28 x 28 field: 20/28 of the model's image
   side in general), with Pillow's antialiasing (Lanczos) filter;
5. placed in the 28 x 28 field so that its centre of mass lies at the field's centre (14, 14).

``preprocess=False`` feeds the pixels as they are: greyscale only, and the image must already
have the model's shape.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import ConfigError, DataError

__all__ = ["IMAGE_SUFFIXES", "read_image", "mnist_style", "is_image_file"]

#: File names read as images (by suffix, case-insensitive).
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
#: A digit's bounding box fills this share of the field (MNIST: 20 of 28 pixels).
_BOX_SHARE = 20 / 28
#: Pixels above this share of the brightest count as the digit when its box is found.
_INK = 0.1


def is_image_file(path) -> bool:
    return os.fspath(path).lower().endswith(IMAGE_SUFFIXES)


def _pillow():
    from .._compat import optional_import
    image = optional_import("PIL.Image")
    if image is None:
        raise ConfigError("reading image files needs Pillow: pip install 'bpgpu[export]' (or "
                          "pip install Pillow)")
    return image


def _greyscale(path) -> np.ndarray:
    """The file's pixels as a 2-D uint8 array (alpha composited onto white)."""
    Image = _pillow()
    try:
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA", "PA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
                img = Image.alpha_composite(white, rgba)
            return np.asarray(img.convert("L"), dtype=np.uint8)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{path}: not a readable image ({exc})") from None


def mnist_style(grey, shape=(28, 28), where="image") -> np.ndarray:
    """A greyscale digit (2-D uint8) as MNIST would have it: the rule of the module docstring.

    Returns
    -------
    ndarray, shape ``shape``, uint8
    """
    Image = _pillow()
    img = np.asarray(grey, np.float64)
    border = np.concatenate([img[0], img[-1], img[:, 0], img[:, -1]])
    if np.median(border) > 127:
        img = 255.0 - img
        border = 255.0 - border
    img = np.clip(img - np.median(border), 0, None)
    if img.max() <= 0:
        raise DataError(f"{where}: blank (no digit found)")
    rows, cols = np.nonzero(img > _INK * img.max())
    crop = img[rows.min():rows.max() + 1, cols.min():cols.max() + 1]
    crop = crop * (255.0 / crop.max())
    h, w = crop.shape
    box = max(1, round(min(shape) * _BOX_SHARE))
    size = (max(1, round(w * box / max(h, w))), max(1, round(h * box / max(h, w))))
    scaled = Image.fromarray(crop.round().astype(np.uint8)).resize(size, Image.LANCZOS)
    digit = np.asarray(scaled, np.float64)
    mass = digit.sum()
    cy = (digit.sum(axis=1) @ np.arange(digit.shape[0])) / mass
    cx = (digit.sum(axis=0) @ np.arange(digit.shape[1])) / mass
    top, left = int(round(shape[0] / 2 - cy)), int(round(shape[1] / 2 - cx))
    field = np.zeros(shape, np.float64)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + digit.shape[0], shape[0]), min(left + digit.shape[1], shape[1])
    field[y0:y1, x0:x1] = digit[y0 - top:y1 - top, x0 - left:x1 - left]
    return np.clip(field.round(), 0, 255).astype(np.uint8)


def read_image(path, shape=(28, 28), preprocess=True) -> np.ndarray:
    """One image file as a flat uint8 row of ``shape[0] * shape[1]`` pixels.

    Parameters
    ----------
    path : path
    shape : (height, width)
        The model's image shape.
    preprocess : bool
        Apply :func:`mnist_style` (True) or feed the greyscale pixels as they are (False: the
        image must have ``shape``).

    Raises
    ------
    DataError
        Not an image, blank, or (without preprocessing) of another shape.
    """
    path = os.fspath(path)
    grey = _greyscale(path)
    if preprocess:
        return mnist_style(grey, tuple(shape), path).ravel()
    if grey.shape != tuple(shape):
        raise DataError(f"{path}: {grey.shape[0]}x{grey.shape[1]} pixels, the model takes "
                        f"{shape[0]}x{shape[1]} (without --no-preprocess it is scaled)")
    return grey.ravel()
