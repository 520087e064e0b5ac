"""Data augmentation inside the batch gather: random translations, small affine transforms and
elastic distortions of image-shaped inputs, drawn on the device.

The textbooks' fourth regulariser is more training data: Nielsen's ``expand_mnist.py`` adds copies
of every digit shifted by one pixel (:func:`bpgpu.datasets.expand_shifted` does that offline).
Here every training step instead warps each image of its batch by a fresh random transform while
gathering it, straight from the uint8 rows into the float batch: no host loop over images, no copy
of the dataset, and a new variation of every image in every epoch.

The random numbers come from the model's counter-based Philox streams (the dropout masks' key,
bpgpu.streams), named by (training step, purpose "augment"): the parameters of
image ``g`` of step ``t``'s batch are elements ``8 g .. 8 g + 7`` of the stream with counter
:func:`augment_counter` ``(t, PARAMS)``, its elastic field elements ``2 H W g ..`` of the stream
``(t, FIELD)``. So every backend warps the same images the same way, a resumed run sees the images
it would have seen, and a process of a data-parallel run draws just its rows of the global batch.

The warp itself is two backend ops (their docstrings are the contract): ``elastic_field``
(Simard et al. 2003: uniform noise in [-1, 1] smoothed by a Gaussian of ``sigma``, times ``alpha``)
and ``gather_augmented`` (mirror, translation, rotation, zoom and shear about the image centre,
plus the elastic displacement, sampled bilinearly with zero fill).

Spec strings (``bpgpu train --augment``, ``fit(augment=...)``): comma-separated ``name=value``:

- ``shift=K``: random translation by a whole number of pixels in [-K, K], each axis;
- ``rotate=D``: random rotation by an angle in [-D, D] degrees;
- ``scale=F``: random zoom by a factor in [1 - F, 1 + F] (0 <= F < 1);
- ``shear=S``: random horizontal shear by a factor in [-S, S];
- ``elastic=A:S``: elastic distortion of strength ``alpha = A`` and smoothness ``sigma = S``
  pixels (Simard: 34:4 on MNIST);
- ``flip=P``: a left-right mirror with probability P (for clothes, not digits);
- ``shape=HxW``: the image shape (default: a 3-D ``X``'s, or the square root of a square input).

e.g. ``"shift=2"`` or ``"shift=2,rotate=10,scale=0.1,shear=0.2,elastic=34:4"``.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, replace
from types import SimpleNamespace

import numpy as np

from .errors import ConfigError
from .streams import AUGMENT_STREAM, FIELD, PARAMS, augment_counter, stream_key

__all__ = ["Augment", "make_augment", "resolve_augment", "preview", "augment_counter",
           "AUGMENT_STREAM", "PARAMS", "FIELD", "UNIFORMS_PER_IMAGE"]

#: Uniform numbers per image in the parameter stream: one Philox block (6 used, 2 reserved).
UNIFORMS_PER_IMAGE = 8


@dataclass(frozen=True)
class Augment:
    """What to do to every training image, and the image shape.

    Attributes
    ----------
    shift : int
        Largest translation, whole pixels (each axis independently).
    rotate : float
        Largest rotation, degrees.
    scale : float
        Largest relative zoom, in [0, 1).
    shear : float
        Largest horizontal shear factor.
    elastic_alpha, elastic_sigma : float
        Elastic distortion (alpha 0: none); sigma > 0 when alpha > 0.
    flip : float
        Probability of a left-right mirror, in [0, 1] (clothes, not digits).
    shape : (int, int) or None
        (height, width); None until :meth:`resolved` for a dataset.
    """
    shift: int = 0
    rotate: float = 0.0
    scale: float = 0.0
    shear: float = 0.0
    elastic_alpha: float = 0.0
    elastic_sigma: float = 0.0
    flip: float = 0.0
    shape: tuple | None = None

    def __post_init__(self):
        def bad(what):
            raise ConfigError(f"augment: {what}")
        if isinstance(self.shift, bool) or int(self.shift) != self.shift or self.shift < 0:
            bad(f"shift must be a whole number of pixels >= 0, got {self.shift!r}")
        for name in ("rotate", "scale", "shear", "elastic_alpha", "elastic_sigma", "flip"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                bad(f"{name.replace('_', ' ')} must be a finite number >= 0, got {value!r}")
        if self.rotate > 180:
            bad(f"rotate is the largest angle in degrees, at most 180; got {self.rotate}")
        if self.scale >= 1:
            bad(f"scale is the largest relative zoom, below 1; got {self.scale}")
        if self.flip > 1:
            bad(f"flip is a probability, at most 1; got {self.flip}")
        if self.elastic_alpha > 0 and self.elastic_sigma <= 0:
            bad("elastic needs a sigma > 0 (elastic=ALPHA:SIGMA)")
        if self.shape is not None:
            shape = tuple(self.shape)
            if (len(shape) != 2 or any(isinstance(v, bool) or int(v) != v or v < 1
                                       for v in shape)):
                bad(f"shape must be two positive integers (height, width), got {self.shape!r}")
            object.__setattr__(self, "shape", (int(shape[0]), int(shape[1])))
        object.__setattr__(self, "shift", int(self.shift))
        for name in ("rotate", "scale", "shear", "elastic_alpha", "elastic_sigma", "flip"):
            object.__setattr__(self, name, float(getattr(self, name)))

    # ------------------------------------------------------------------ spec strings
    @classmethod
    def parse(cls, spec: str) -> "Augment":
        """Read a spec string (see the module docstring), e.g. ``"shift=2,elastic=34:4"``."""
        fields, seen = {}, set()
        for item in str(spec).split(","):
            item = item.strip()
            if not item:
                continue
            name, sep, value = item.partition("=")
            name, value = name.strip().lower(), value.strip()
            if name in seen:
                raise ConfigError(f"augment: {name} is given twice in {spec!r}")
            seen.add(name)
            if name not in ("shift", "rotate", "scale", "shear", "elastic", "flip", "shape"):
                raise ConfigError(f"augment: unknown setting {name!r}; use shift, rotate, scale, "
                                  "shear, elastic, flip, shape")
            if not sep or not value:
                raise ConfigError(f"augment: expected name=value, got {item!r} (e.g. "
                                  "shift=2,rotate=10,scale=0.1,shear=0.2,elastic=34:4)")
            try:
                if name == "shift":
                    fields["shift"] = int(value)
                elif name in ("rotate", "scale", "shear", "flip"):
                    fields[name] = float(value)
                elif name == "elastic":
                    alpha, colon, sigma = value.partition(":")
                    if not colon:
                        raise ValueError
                    fields["elastic_alpha"], fields["elastic_sigma"] = float(alpha), float(sigma)
                else:
                    h, x, w = value.lower().partition("x")
                    if not x:
                        raise ValueError
                    fields["shape"] = (int(h), int(w))
            except ValueError:
                form = {"shift": "an integer", "elastic": "ALPHA:SIGMA", "shape": "HxW"}
                raise ConfigError(f"augment: {name}={value!r} is not "
                                  f"{form.get(name, 'a number')}") from None
        return cls(**fields)

    def spec(self) -> str:
        """The canonical spec string (what :meth:`parse` reads back to this object)."""
        parts = []
        if self.shift:
            parts.append(f"shift={self.shift}")
        for name in ("rotate", "scale", "shear"):
            if getattr(self, name):
                parts.append(f"{name}={getattr(self, name):g}")
        if self.flip:
            parts.append(f"flip={self.flip:g}")
        if self.elastic_alpha:
            parts.append(f"elastic={self.elastic_alpha:g}:{self.elastic_sigma:g}")
        if self.shape is not None:
            parts.append(f"shape={self.shape[0]}x{self.shape[1]}")
        return ",".join(parts) or "none"

    def to_dict(self) -> dict:
        """JSON-ready form (saved in checkpoints, compared on resume)."""
        d = asdict(self)
        d["shape"] = None if self.shape is None else list(self.shape)
        return d

    # ------------------------------------------------------------------ properties
    @property
    def identity(self) -> bool:
        """True when nothing is changed (every range 0)."""
        return not (self.shift or self.rotate or self.scale or self.shear or self.elastic_alpha
                    or self.flip)

    @property
    def elastic(self) -> bool:
        return self.elastic_alpha > 0

    @property
    def affine(self) -> bool:
        """True when rotation, zoom or shear are on (the bilinear path)."""
        return bool(self.rotate or self.scale or self.shear)

    def resolved(self, n_inputs: int, image_shape=None) -> "Augment":
        """This augmentation with its image shape fixed for inputs of ``n_inputs`` values.

        Parameters
        ----------
        n_inputs : int
            The model's input width.
        image_shape : tuple, optional
            ``X.shape[1:]`` of the training data when it is 3-D (N, H, W).

        Raises
        ------
        ConfigError
            When the shape does not give ``n_inputs`` pixels, differs from a 3-D ``X``'s, or
            cannot be inferred; when the shift would move an image entirely out of its frame.
        """
        shape = self.shape
        data_shape = (tuple(int(v) for v in image_shape)
                      if image_shape is not None and len(image_shape) == 2 else None)
        if shape is not None and data_shape is not None and shape != data_shape:
            raise ConfigError(f"augment: shape {shape[0]}x{shape[1]} does not match the images "
                              f"of X, {data_shape[0]}x{data_shape[1]}")
        if shape is None:
            shape = data_shape
        if shape is None:
            side = math.isqrt(int(n_inputs))
            if side * side != n_inputs:
                raise ConfigError(f"augment: inputs of {n_inputs} values are not a square image; "
                                  "give the shape (shape=HxW, or X of shape (N, H, W))")
            shape = (side, side)
        if shape[0] * shape[1] != n_inputs:
            raise ConfigError(f"augment: shape {shape[0]}x{shape[1]} is {shape[0] * shape[1]} "
                              f"pixels, but the inputs have {n_inputs} values")
        if self.shift >= min(shape):
            raise ConfigError(f"augment: shift={self.shift} would move {shape[0]}x{shape[1]} "
                              f"images entirely out of their frame (at most shift="
                              f"{min(shape) - 1})")
        return replace(self, shape=shape)

    # ------------------------------------------------------------------ the gather
    def gather(self, backend, ws, X_dev, idx, key, step, row_offset, scale, shift):
        """The batch of training step ``step``: rows ``idx`` of ``X_dev`` warped into ``ws.a[0]``.

        Draws the parameter stream (and the elastic field stream) for this process's rows of the
        global batch, smooths the fields, and gathers. ``ws`` is a workspace made with this
        augmentation (its ``aug_uniform``, ``aug_noise``, ``aug_field`` buffers).
        """
        be = backend
        height, width = self.shape
        be.random_uniform(ws.aug_uniform, key, augment_counter(step, PARAMS),
                          row_offset * UNIFORMS_PER_IMAGE)
        field = None
        if self.elastic:
            be.random_uniform(ws.aug_noise, key, augment_counter(step, FIELD),
                              row_offset * 2 * height * width)
            field = be.elastic_field(ws.aug_noise, ws.aug_field, self.elastic_sigma,
                                     self.elastic_alpha)
        return be.gather_augmented(X_dev, idx, ws.a[0], ws.aug_uniform, field, height, width,
                                   self.shift, math.radians(self.rotate), self.scale, self.shear,
                                   self.flip, scale, shift)

    def buffers(self, backend, rows, dtype) -> dict:
        """The workspace buffers :meth:`gather` needs for batches of up to ``rows`` images."""
        bufs = {"aug_uniform": backend.empty((rows, UNIFORMS_PER_IMAGE), np.float32)}
        if self.elastic:
            shape = (rows, 2) + tuple(self.shape)
            bufs["aug_noise"] = backend.empty(shape, np.float32)
            bufs["aug_field"] = backend.empty(shape, dtype)
        return bufs


def preview(X, augment, *, step=0, seed=0, backend="numpy", input_scale=1.0 / 255):
    """The images ``X`` as training step ``step`` of a model seeded ``seed`` would see them.

    Parameters
    ----------
    X : array, shape (N, H*W) or (N, H, W)
        uint8 (scaled by ``input_scale``) or float images.
    augment : spec string, dict or Augment
    step : int
        The training step whose streams are drawn (different steps: different variations).
    seed : int
        The model's seed (its :func:`bpgpu.streams.stream_key`).
    backend : str or Backend

    Returns
    -------
    ndarray, shape (N, H*W), float32
        Rows ``0 .. N-1`` warped as rows ``0 .. N-1`` of that step's batch.
    """
    from .backends import get_backend
    X = np.asarray(X)
    n = X.shape[0]
    flat = X.reshape(n, -1)
    aug = resolve_augment(augment, flat.shape[1], X.shape[1:] if X.ndim == 3 else None)
    be = get_backend(backend)
    out = be.empty((n, flat.shape[1]), np.float32)
    if aug is None:
        be.gather_rows(be.asarray(flat), be.asarray(np.arange(n)), out, input_scale)
        return be.to_host(out)
    ws = SimpleNamespace(a=[out], **aug.buffers(be, n, np.float32))   # what gather() uses
    aug.gather(be, ws, be.asarray(flat), be.asarray(np.arange(n)), stream_key(seed), step, 0,
               input_scale, 0.0)
    return be.to_host(out)


def make_augment(augment) -> Augment | None:
    """An :class:`Augment` from a spec string, a dict of its fields, an Augment, or None/"none"
    (None when nothing would change)."""
    aug = _parse(augment)
    return None if aug is None or aug.identity else aug


def resolve_augment(augment, n_inputs: int, image_shape=None) -> Augment | None:
    """The augmentation of a run on inputs of ``n_inputs`` values (:meth:`Augment.resolved`),
    or None when nothing would change -- a ``shape`` given with no transform is checked against
    the data all the same, so a wrong one is never accepted silently."""
    aug = _parse(augment)
    if aug is None or (aug.identity and aug.shape is None):
        return None
    aug = aug.resolved(n_inputs, image_shape)
    return None if aug.identity else aug


def _parse(augment) -> Augment | None:
    """An :class:`Augment` (identity included) from what :func:`make_augment` takes."""
    if augment is None or augment is False:
        return None
    if isinstance(augment, Augment):
        aug = augment
    elif isinstance(augment, str):
        if augment.strip().lower() in ("", "none", "off"):
            return None
        aug = Augment.parse(augment)
    elif isinstance(augment, dict):
        try:
            aug = Augment(**augment)
        except TypeError as exc:
            raise ConfigError(f"augment: {exc}") from None
    else:
        raise ConfigError(f"augment must be a spec string, a dict or an Augment, got "
                          f"{type(augment).__name__}")
    return aug
