"""Augmentation inside the batch gather: every backend against the numpy reference, the reference
against independent ones (scipy.ndimage's affine_transform, map_coordinates and gaussian_filter;
Nielsen's shifted copies), translations exact, the streams, spec strings, and training with it
(resumes bit for bit, other backends within parity)."""

import math

import numpy as np
import pytest

import bpgpu
from bpgpu.augment import (FIELD, PARAMS, UNIFORMS_PER_IMAGE, Augment, augment_counter,
                           make_augment)
from bpgpu.backends import get_backend
from bpgpu.checkpoint import read_checkpoint
from bpgpu.datasets import expand_shifted
from bpgpu.errors import ConfigError, DataError

from .conftest import TOL, rel_norm

ndimage = pytest.importorskip("scipy.ndimage")

# (height, width, batch): MNIST's shape, a non-square one, one above numba's PARALLEL_MIN
SHAPES = [(28, 28, 9), (7, 12, 5), (28, 28, 100)]
SETTINGS = {
    "shift": dict(translate=3),
    "affine": dict(translate=2, rotate=0.3, zoom=0.15, shear=0.25, flip=0.5),
    "rotate": dict(rotate=math.pi),          # large angles too: half the image falls outside
}


@pytest.fixture
def be(backend_name):
    return get_backend(backend_name)


def images(n, h, w, seed=0):
    """uint8 images with structure (a blob and noise) so interpolation errors would show."""
    rng = np.random.default_rng(seed)
    r, q = np.mgrid[:h, :w]
    blob = 255 * np.exp(-((r - h / 2) ** 2 + (q - w / 3) ** 2) / (0.1 * h * w))
    noisy = blob[None] * rng.uniform(0.3, 1, (n, 1, 1)) + rng.uniform(0, 60, (n, h, w))
    return np.clip(noisy, 0, 255).astype(np.uint8).reshape(n, h * w)


def uniforms(b, seed=1):
    return np.random.default_rng(seed).random((b, UNIFORMS_PER_IMAGE), dtype=np.float32)


def sampling_map(u, h, w, translate=0, rotate=0.0, zoom=0.0, shear=0.0, flip=0.0):
    """Independent of the op's formulas: build the forward transform (shear, rotate, scale about
    the centre), invert it with numpy, put the mirror and translation before it, and return
    scipy's (matrix, offset) in (row, column) order for every image."""
    u = u.astype(np.float64)
    span = 2 * translate + 1
    out = []
    for ui in u:
        t = np.array([math.floor(ui[0] * span) - translate, math.floor(ui[1] * span) - translate])
        theta, s = (2 * ui[2] - 1) * rotate, 1 + (2 * ui[3] - 1) * zoom
        hh = (2 * ui[4] - 1) * shear
        rot = np.array([[math.cos(theta), -math.sin(theta)], [math.sin(theta), math.cos(theta)]])
        forward = s * rot @ np.array([[1.0, hh], [0.0, 1.0]])        # (x, y) coordinates
        inverse = np.linalg.inv(forward)
        mirror = np.diag([-1.0 if ui[5] < flip else 1.0, 1.0])
        c = np.array([(w - 1) / 2, (h - 1) / 2])
        # source (x, y) = inverse @ (mirror @ (dest - c) - t) + c; scipy wants (row, col)
        swap = np.array([[0, 1], [1, 0]])
        m = swap @ inverse @ mirror @ swap
        offset = swap @ (c - inverse @ (mirror @ c + t))
        out.append((m, offset))
    return out


def scipy_warp(rows, u, h, w, **kw):
    """The batch warped by scipy.ndimage.affine_transform (bilinear, zero fill: grid-constant)."""
    res = []
    for row, (m, offset) in zip(rows, sampling_map(u, h, w, **kw)):
        res.append(ndimage.affine_transform(row.reshape(h, w).astype(np.float64), m, offset,
                                            order=1, mode="grid-constant", cval=0.0).ravel())
    return np.array(res)


# ------------------------------------------------------------------------------ the reference
@pytest.mark.parametrize("setting", list(SETTINGS))
@pytest.mark.parametrize("h,w,b", SHAPES[:2])
def test_reference_warp_is_scipys_affine_transform(setting, h, w, b):
    data = images(20, h, w)
    idx = np.random.default_rng(2).integers(0, 20, b)
    u = uniforms(b)
    out = np.empty((b, h * w))
    get_backend("numpy").gather_augmented(data, idx, out, u, None, h, w, **SETTINGS[setting])
    want = scipy_warp(data[idx], u, h, w, **SETTINGS[setting])
    np.testing.assert_allclose(out, want, rtol=1e-12, atol=1e-9)


def test_reference_elastic_warp_is_scipys_map_coordinates():
    h, w, b = 28, 28, 6
    data = images(b, h, w, seed=4)
    idx = np.arange(b)
    u = uniforms(b, seed=5)
    field = np.random.default_rng(6).normal(0, 1.5, (b, 2, h, w))
    kw = dict(translate=1, rotate=0.2, zoom=0.1, shear=0.1)
    out = np.empty((b, h * w))
    get_backend("numpy").gather_augmented(data, idx, out, u, field, h, w, **kw)
    r, q = np.mgrid[:h, :w].astype(np.float64)
    for i, (m, offset) in enumerate(sampling_map(u, h, w, **kw)):
        sy = m[0, 0] * r + m[0, 1] * q + offset[0] + field[i, 1]
        sx = m[1, 0] * r + m[1, 1] * q + offset[1] + field[i, 0]
        want = ndimage.map_coordinates(data[i].reshape(h, w).astype(np.float64), [sy, sx],
                                       order=1, mode="grid-constant", cval=0.0)
        np.testing.assert_allclose(out[i], want.ravel(), rtol=1e-12, atol=1e-9)


def test_reference_elastic_field_is_scipys_gaussian_filter():
    b, h, w, sigma, alpha = 3, 28, 20, 4.0, 34.0
    u = np.random.default_rng(7).random((b, 2, h, w), dtype=np.float32)
    out = np.empty((b, 2, h, w))
    get_backend("numpy").elastic_field(u, out, sigma, alpha)
    want = alpha * ndimage.gaussian_filter(2 * u.astype(np.float64) - 1, (0, 0, sigma, sigma),
                                           mode="constant", cval=0.0, truncate=4.0)
    np.testing.assert_allclose(out, want, rtol=1e-10, atol=1e-12)
    # Simard's sigma 4, alpha 34 moves pixels by about a pixel and a half (rms)
    assert 0.5 < float(np.sqrt((out ** 2).mean())) < 3


@pytest.mark.parametrize("flip", [0.0, 0.5])
def test_translation_is_an_exact_shifted_gather(backend_name, dtype, flip):
    """Whole-pixel shifts and mirrors: exactly the plain gather's values, moved (exact: each
    output is one input value through the same cast, multiply and add)."""
    be = get_backend(backend_name)
    h, w, b = 28, 28, 64
    data = images(30, h, w, seed=8)
    idx = np.random.default_rng(9).integers(0, 30, b)
    u = uniforms(b, seed=10)
    out = be.empty((b, h * w), np.dtype(dtype))
    be.gather_augmented(be.asarray(data), be.asarray(idx), out, be.asarray(u), None, h, w,
                        translate=3, flip=flip, scale=1 / 255, shift=0.01)
    plain = be.empty((30, h * w), np.dtype(dtype))
    be.gather_rows(be.asarray(data), be.asarray(np.arange(30)), plain, 1 / 255, 0.01)
    plain = be.to_host(plain).reshape(30, h, w)
    fill = np.dtype(dtype).type(0) * np.dtype(dtype).type(1 / 255) + np.dtype(dtype).type(0.01)
    got = be.to_host(out).reshape(b, h, w)
    r, q = np.mgrid[:h, :w]
    mirrored = 0
    for i in range(b):
        tx = math.floor(float(u[i, 0]) * 7) - 3
        ty = math.floor(float(u[i, 1]) * 7) - 3
        mirror = float(u[i, 5]) < flip
        mirrored += mirror
        sr, sq = r - ty, (w - 1 - q - tx) if mirror else q - tx
        inside = (sr >= 0) & (sr < h) & (sq >= 0) & (sq < w)
        want = np.where(inside, plain[idx[i]][np.clip(sr, 0, h - 1), np.clip(sq, 0, w - 1)],
                        fill)
        assert np.array_equal(got[i], want), i
    assert (mirrored > 0) == (flip > 0)


def test_one_pixel_shifts_are_nielsens_copies():
    """expand_shifted (Nielsen's down, up, right, left) and the op's translations agree exactly."""
    h, w = 28, 28
    data = images(4, h, w, seed=11)
    X5, y5 = expand_shifted(data, np.arange(4))
    assert X5.shape == (20, 784) and X5.dtype == np.uint8 and list(y5[:6]) == [0] * 5 + [1]
    be = get_backend("numpy")
    for k, (down, right) in enumerate(((1, 0), (-1, 0), (0, 1), (0, -1)), start=1):
        u = np.zeros((4, UNIFORMS_PER_IMAGE), np.float32)
        u[:, 0] = (right + 1 + 0.5) / 3           # floor(u * 3) - 1 == right
        u[:, 1] = (down + 1 + 0.5) / 3
        out = np.empty((4, h * w), np.float32)
        be.gather_augmented(data, np.arange(4), out, u, None, h, w, translate=1)
        assert np.array_equal(out, X5[k::5].astype(np.float32)), (down, right)
    assert np.array_equal(X5[0::5], data)


def test_expand_shifted_keeps_3d_images_and_refuses_non_images():
    X = images(3, 5, 6).reshape(3, 5, 6)
    X5, _ = expand_shifted(X, np.arange(3))
    assert X5.shape == (15, 5, 6)
    assert np.array_equal(X5[1, 1:], X[0, :-1]) and not X5[1, 0].any()
    with pytest.raises(DataError, match="not images"):
        expand_shifted(np.zeros((2, 30)), np.arange(2))
    with pytest.raises(DataError):
        expand_shifted(np.zeros((2, 30)), np.arange(3), shape=(5, 6))


# ------------------------------------------------------------------------------ parity
@pytest.mark.parametrize("setting", list(SETTINGS) + ["elastic"])
@pytest.mark.parametrize("h,w,b", SHAPES)
def test_every_backend_warps_like_the_reference(be, dtype, setting, h, w, b):
    ref = get_backend("numpy")
    data = images(40, h, w, seed=12)
    idx = np.random.default_rng(13).integers(0, 40, b)
    u = uniforms(b, seed=14)
    kw = dict(SETTINGS.get(setting, SETTINGS["affine"]), scale=1 / 255)
    field = None
    if setting == "elastic":
        noise = np.random.default_rng(15).random((b, 2, h, w), dtype=np.float32)
        field = np.empty((b, 2, h, w), dtype)
        ref.elastic_field(noise, field, 3.0, 20.0)
        got_field = be.empty((b, 2, h, w), np.dtype(dtype))
        be.elastic_field(be.asarray(noise), got_field, 3.0, 20.0)
        np.testing.assert_allclose(be.to_host(got_field), field, **TOL[dtype])
    want = np.empty((b, h * w), dtype)
    ref.gather_augmented(data, idx, want, u, field, h, w, **kw)
    out = be.empty((b, h * w), np.dtype(dtype))
    be.gather_augmented(be.asarray(data), be.asarray(idx), out, be.asarray(u),
                        None if field is None else be.asarray(field), h, w, **kw)
    np.testing.assert_allclose(be.to_host(out), want, **TOL[dtype])


def test_float_data_is_warped_unscaled(be, dtype):
    h, w, b = 6, 9, 7
    data = images(10, h, w).astype(dtype) / 255
    idx = np.arange(7)
    u = uniforms(b, seed=16)
    want = scipy_warp(data[idx], u, h, w, **SETTINGS["affine"])
    out = be.empty((b, h * w), np.dtype(dtype))
    be.gather_augmented(be.asarray(data), be.asarray(idx), out, be.asarray(u), None, h, w,
                        scale=99.0, **SETTINGS["affine"])   # scale applies to integer data only
    np.testing.assert_allclose(be.to_host(out), want, **TOL[dtype])


def test_a_launch_is_validated_as_a_whole(be, dtype):
    """A transposed uniform view, a wrong field shape or a bad index never reach a kernel."""
    h, w, b = 5, 5, 4
    data = images(6, h, w)
    host_t = np.random.default_rng(18).random((UNIFORMS_PER_IMAGE, b), dtype=np.float32)
    u = host_t.T                                          # (b, 8): a transposed view
    out = be.empty((b, h * w), np.dtype(dtype))
    be.gather_augmented(be.asarray(data), be.asarray(np.arange(b)), out, be.asarray(host_t).T,
                        None, h, w, **SETTINGS["affine"])
    want = scipy_warp(data[:b], np.ascontiguousarray(u), h, w, **SETTINGS["affine"])
    np.testing.assert_allclose(be.to_host(out), want, **TOL[dtype])
    with pytest.raises(IndexError):
        be.gather_augmented(be.asarray(data), be.asarray(np.array([0, 1, 2, 6])), out,
                            be.asarray(np.ascontiguousarray(u)), None, h, w, translate=1)
    with pytest.raises((ValueError, IndexError)):
        be.gather_augmented(be.asarray(data), be.asarray(np.arange(b)), out,
                            be.asarray(np.ascontiguousarray(u)),
                            be.zeros((b, 2, h, w + 1), np.dtype(dtype)), h, w, translate=1)


# ------------------------------------------------------------------------------ the streams
def test_parameters_come_from_the_named_philox_streams():
    aug = Augment(shift=2, rotate=10, elastic_alpha=8, elastic_sigma=3).resolved(784)
    net = bpgpu.MLP([784, 5, 10], backend="numpy", seed=21)
    ws = net.workspace(6, augment=aug)
    X = images(10, 28, 28)
    aug.gather(net.backend, ws, X, np.arange(6), net.stream_key, 7, 0, 1 / 255, 0.0)
    gen = np.random.Generator(np.random.Philox(key=np.array(net.stream_key, np.uint64),
                                               counter=np.array(augment_counter(7, PARAMS),
                                                                np.uint64)))
    assert np.array_equal(ws.aug_uniform, gen.random(48, dtype=np.float32).reshape(6, 8))
    gen = np.random.Generator(np.random.Philox(key=np.array(net.stream_key, np.uint64),
                                               counter=np.array(augment_counter(7, FIELD),
                                                                np.uint64)))
    assert np.array_equal(ws.aug_noise, gen.random(6 * 2 * 784, dtype=np.float32)
                          .reshape(6, 2, 28, 28))
    assert augment_counter(7, PARAMS) != bpgpu.streams.dropout_counter(7, 0)


def test_a_row_offset_draws_the_rows_of_the_global_batch():
    """Two halves with row offsets 0 and 3 (a data-parallel step) give the whole batch's images."""
    aug = Augment(shift=2, rotate=15, scale=0.1, elastic_alpha=10, elastic_sigma=2).resolved(784)
    net = bpgpu.MLP([784, 5, 10], backend="numpy", seed=22)
    X = images(10, 28, 28, seed=23)
    idx = np.array([4, 1, 7, 7, 0, 9])
    whole = net.workspace(6, augment=aug)
    aug.gather(net.backend, whole, X, idx, net.stream_key, 3, 0, 1 / 255, 0.0)
    half = net.workspace(3, augment=aug)
    for offset in (0, 3):
        aug.gather(net.backend, half, X, idx[offset:offset + 3], net.stream_key, 3, offset,
                   1 / 255, 0.0)
        np.testing.assert_allclose(half.a[0], whole.a[0][offset:offset + 3], rtol=1e-6,
                                   atol=1e-7)


def test_translations_are_uniform_over_the_range():
    u = np.random.default_rng(24).random((20000, UNIFORMS_PER_IMAGE), dtype=np.float32)
    data = np.zeros((1, 9), np.uint8)
    data[0, 4] = 255                                   # one bright pixel at the centre of 3x3
    out = np.empty((20000, 9), np.float32)
    get_backend("numpy").gather_augmented(data, np.zeros(20000, np.int64), out, u, None, 3, 3,
                                          translate=1)
    where = np.bincount(out.argmax(axis=1), minlength=9) / 20000
    assert np.all(np.abs(where - 1 / 9) < 0.01)


# ------------------------------------------------------------------------------ spec strings
def test_spec_strings_round_trip():
    aug = Augment.parse("shift=2, rotate=10,scale=0.1,shear=0.2,elastic=34:4,flip=0.5,"
                        "shape=28x28")
    assert aug == Augment(shift=2, rotate=10.0, scale=0.1, shear=0.2, elastic_alpha=34.0,
                          elastic_sigma=4.0, flip=0.5, shape=(28, 28))
    assert Augment.parse(aug.spec()) == aug
    assert make_augment("none") is None and make_augment(None) is None
    assert make_augment("shift=0") is None                       # nothing would change
    assert make_augment({"shift": 1}) == Augment(shift=1)
    assert make_augment(aug) is aug


@pytest.mark.parametrize("spec,match", [
    ("shift=1.5", "shift"), ("shift=-1", "shift"), ("rotate=200", "at most 180"),
    ("scale=1", "below 1"), ("elastic=34", "ALPHA:SIGMA"), ("elastic=34:0", "sigma"),
    ("wobble=3", "unknown setting"), ("shift", "name=value"), ("shape=28", "HxW"),
    ("shift=1,shift=2", "twice"), ("rotate=nan", "finite"), ("shape=0x28", "positive"),
    ("flip=1.5", "probability"),
])
def test_bad_specs_are_config_errors(spec, match):
    with pytest.raises(ConfigError, match=match):
        make_augment(spec)


def test_the_image_shape_is_inferred_or_checked():
    assert Augment(shift=1).resolved(784).shape == (28, 28)
    assert Augment(shift=1).resolved(60, (6, 10)).shape == (6, 10)
    with pytest.raises(ConfigError, match="not a square"):
        Augment(shift=1).resolved(60)
    with pytest.raises(ConfigError, match="pixels"):
        Augment(shift=1, shape=(5, 5)).resolved(60)


# ------------------------------------------------------------------------------ training
@pytest.fixture(scope="module")
def digits(mnist_data):
    (X, y), _ = mnist_data
    return X[:610], y[:610]


FIT = dict(epochs=2, batch_size=50, lr=0.05, optimizer="momentum", dropout=0.1,
           augment="shift=2,rotate=8,scale=0.1,shear=0.1,elastic=20:3")


def _flat(net):
    W, b = net.get_params()
    return np.concatenate([a.ravel() for a in W + b])


def test_training_with_augmentation_matches_numpy(backend_name, dtype, digits):
    X, y = digits
    params = {}
    for name in ("numpy", backend_name, "plain"):
        net = bpgpu.MLP([784, 24, 10], activation="relu", init="he", dtype=dtype,
                        backend="numpy" if name == "plain" else name, seed=5)
        net.fit(X, y, **dict(FIT, augment=None if name == "plain" else FIT["augment"]))
        params[name] = _flat(net)
    assert rel_norm(params[backend_name], params["numpy"]) < {"float32": 1e-4,
                                                               "float64": 1e-10}[dtype]
    assert rel_norm(params["plain"], params["numpy"]) > 1e-2     # the augmentation did something


def test_resume_with_augmentation_and_a_schedule_is_bit_identical(backend_name, digits, tmp_path):
    X, y = digits
    fit = dict(FIT, epochs=3, schedule="cosine:warmup=1")
    whole = bpgpu.MLP([784, 16, 10], backend=backend_name, seed=6)
    h_whole = whole.fit(X, y, **fit)
    path = tmp_path / "c.npz"
    bpgpu.MLP([784, 16, 10], backend=backend_name, seed=6).fit(
        X, y, checkpoint=path, **dict(fit, epochs=2))
    # a cosine schedule's curve depends on the run's length: the first run must name it
    with pytest.raises(ConfigError, match="schedule"):
        bpgpu.MLP([784, 16, 10], backend=backend_name, seed=6).fit(X, y, resume=path, **fit)
    first = bpgpu.MLP([784, 16, 10], backend=backend_name, seed=6)
    first.fit(X, y, checkpoint=path, **dict(fit, epochs=3), on_epoch=lambda h: True)
    second = bpgpu.MLP([784, 16, 10], backend=backend_name, seed=99)
    h = second.fit(X, y, resume=path, **fit)
    assert np.array_equal(_flat(second), _flat(whole))
    assert h.loss == h_whole.loss and h.lr == h_whole.lr
    assert read_checkpoint(path).state["options"]["augment"]["rotate"] == 8.0
    with pytest.raises(ConfigError, match="augment"):
        bpgpu.MLP([784, 16, 10], backend=backend_name, seed=6).fit(
            X, y, resume=path, **dict(fit, augment="shift=1"))


def test_evaluation_never_augments(digits):
    X, y = digits
    net = bpgpu.MLP([784, 16, 10], backend="numpy", seed=7)
    net.fit(X, y, **dict(FIT, epochs=1))              # its workspaces now include augmented ones
    twin = bpgpu.MLP([784, 16, 10], backend="numpy", seed=8)
    twin.set_params(*net.get_params())
    # exact: the same ops on the same inputs and parameters, on one backend
    assert np.array_equal(net.predict_proba(X[:100]), twin.predict_proba(X[:100]))
    assert net.evaluate(X, y) == twin.evaluate(X, y)


def test_fit_refuses_non_image_inputs():
    X = np.random.default_rng(0).integers(0, 255, (20, 60), dtype=np.uint8)
    net = bpgpu.MLP([60, 4, 2], backend="numpy")
    with pytest.raises(ConfigError, match="not a square"):
        net.fit(X, np.arange(20) % 2, augment="shift=1")
    h = net.fit(X.reshape(20, 6, 10), np.arange(20) % 2, augment="shift=1", epochs=1)
    assert h.epoch == [1]
    net.fit(X, np.arange(20) % 2, augment="shift=1,shape=6x10", epochs=1)


# ------------------------------------------------------------------------------ the demo
def test_augment_demo_shows_digits_and_scores_three_ways(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    from bpgpu import demos

    from .test_demos import assert_real_png
    res = demos.augment(out=str(tmp_path), train_samples=600, epochs=1)
    acc = res["accuracy"]
    assert list(acc) == ["plain", "Nielsen's 5x expansion", "on-device augmentation"]
    assert all(0.6 < a <= 1 for a in acc.values())
    out = capsys.readouterr().out
    assert "points)" in out and "augment.png" in out
    assert_real_png(res["picture"], 600, 300)
