"""The textbook networks as runnable demos: ``bpgpu demo NAME`` or ``bpgpu.demos.NAME(...)``.

Each demo trains on any backend, prints what it did and its result, writes its picture to ``out``
(when matplotlib is installed; otherwise it says how to get it and still prints its result), and
returns a dict with its figures and the picture's path, so tests can check both.

- moons: two interleaving half-circles, 2-8-2 tanh/softmax with L2 weight decay, decision boundary.
- xor: 2-4-1 sigmoid, the learned outputs next to the targets.
- regression: a linear-output network fitting noisy sin(x), data, truth and fit.
- digits: Rashid's three-layer recogniser (784-100-10 sigmoid, inputs 0.01-0.99, targets
  0.01/0.99, lr 0.3, one sample per step), its scorecard and a grid of test digits.
- costs: Nielsen's saturated neuron: quadratic vs cross-entropy cost, the learning slowdown.
- init: Nielsen's comparison of weight initialisations on MNIST, validation accuracy per epoch.
- tabular: a real CSV (scikit-learn's bundled wine data) through the tabular loader.
- augment: original and augmented digits; test accuracy plain, on Nielsen's 5x shifted expansion,
  and with on-device augmentation.
"""

from __future__ import annotations

import os

import numpy as np

from . import datasets
from ._compat import optional_import
from .mlp import MLP

__all__ = ["DEMOS", "run_demo", "moons", "xor", "regression", "digits", "costs", "init",
           "tabular", "augment"]


def _plt():
    mpl = optional_import("matplotlib")
    if mpl is None:
        return None
    mpl.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def _save(fig, out, name, plt):
    from .files import atomic_write
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, name)
    atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100))
    plt.close(fig)
    return path


def _say(verbose, *lines):
    if verbose:
        for line in lines:
            print(line)


def _picture(verbose, out, name, draw):
    """Draw with ``draw(plt) -> figure`` and save ``out/name``; without matplotlib, say how to get
    it and return None (the demo's figures are still printed and returned)."""
    plt = _plt()
    if plt is None:
        _say(verbose, "no picture: matplotlib is not installed (pip install 'bpgpu[plot]')")
        return None
    path = _save(draw(plt), out, name, plt)
    _say(verbose, f"wrote {path}")
    return path


def moons(backend="auto", out=".", n=200, noise=0.2, epochs=1000, seed=0, verbose=True):
    """2-8-2 tanh network with softmax output and L2 weight decay on two moons."""
    X, y = datasets.moons(n, noise, seed)
    Xt, yt = datasets.moons(1000, noise, seed + 1)
    net = MLP([2, 8, 2], activation="tanh", output="softmax", loss="ce", init="xavier",
              backend=backend, seed=seed)
    net.fit(X, y, epochs=epochs, batch_size=20, optimizer="adam", lr=0.01, weight_decay=1e-4)
    train_acc = net.evaluate(X, y)["accuracy"]
    test_acc = net.evaluate(Xt, yt)["accuracy"]
    _say(verbose, f"moons: {n} points, noise {noise}; 2-8-2 tanh/softmax, weight decay 1e-4, "
                  f"Adam, {epochs} epochs on {net.backend.name}",
         f"accuracy: training {train_acc:.3f}, fresh test points {test_acc:.3f}")
    def draw(plt):
        lo, hi = X.min(axis=0) - 0.3, X.max(axis=0) + 0.3
        xx, yy = np.meshgrid(np.linspace(lo[0], hi[0], 300), np.linspace(lo[1], hi[1], 240))
        p = net.predict_proba(np.column_stack([xx.ravel(), yy.ravel()]))[:, 1].reshape(xx.shape)
        fig, ax = plt.subplots(figsize=(6.5, 4.5))
        ax.contourf(xx, yy, p, levels=20, cmap="RdBu_r", alpha=0.6)
        ax.contour(xx, yy, p, levels=[0.5], colors="k", linewidths=1.5)
        ax.scatter(X[:, 0], X[:, 1], c=y, cmap="RdBu_r", edgecolors="k", s=25)
        ax.set_title(f"two moons: decision boundary (training accuracy {train_acc:.3f})")
        return fig

    path = _picture(verbose, out, "moons.png", draw)
    return {"train_accuracy": train_acc, "test_accuracy": test_acc, "picture": path}


def xor(backend="auto", out=".", epochs=3000, seed=0, verbose=True):
    """2-4-1 sigmoid network learning XOR; prints outputs next to the targets."""
    X, y = datasets.xor()
    net = MLP([2, 4, 1], activation="sigmoid", output="sigmoid", loss="bce", dtype="float64",
              backend=backend, seed=seed)
    net.fit(X, y, epochs=epochs, batch_size=4, optimizer="sgd", lr=2.0)
    outputs = net.predict_proba(X)[:, 0]
    _say(verbose, f"xor: 2-4-1 sigmoid, binary cross-entropy, SGD lr 2.0, {epochs} epochs on "
                  f"{net.backend.name}", " x1 x2  target  output")
    for (a, b), t, o in zip(X, y, outputs):
        _say(verbose, f"  {a:.0f}  {b:.0f}    {t}     {o:.4f}")
    correct = int(((outputs >= 0.5) == (y == 1)).sum())
    _say(verbose, f"{correct}/4 correct")
    return {"outputs": outputs.tolist(), "correct": correct, "picture": None}


def regression(backend="auto", out=".", n=200, epochs=400, seed=0, verbose=True):
    """1-32-1 tanh network with an identity output fitting noisy sin(x)."""
    rng = np.random.default_rng(seed)
    X = rng.uniform(-np.pi, np.pi, (n, 1))
    Y = np.sin(X) + rng.normal(0, 0.1, (n, 1))
    net = MLP([1, 32, 1], activation="tanh", output="identity", loss="mse", init="xavier",
              backend=backend, seed=seed)
    net.fit(X, Y, epochs=epochs, batch_size=16, optimizer="adam", lr=0.01)
    grid = np.linspace(-np.pi, np.pi, 400)[:, None]
    fit = net.predict_proba(grid)[:, 0]
    rmse = float(np.sqrt(np.mean((fit - np.sin(grid[:, 0])) ** 2)))
    _say(verbose, f"regression: {n} noisy samples of sin(x) (noise sd 0.1); 1-32-1 tanh with a "
                  f"linear output, ½‖a−y‖², Adam, {epochs} epochs on {net.backend.name}",
         f"RMS error of the fit against the true sin(x): {rmse:.4f}")
    def draw(plt):
        fig, ax = plt.subplots(figsize=(6.5, 4))
        ax.scatter(X[:, 0], Y[:, 0], s=10, alpha=0.5, label="data")
        ax.plot(grid[:, 0], np.sin(grid[:, 0]), "k--", label="truth: sin(x)")
        ax.plot(grid[:, 0], fit, "r", lw=2, label="network")
        ax.legend()
        ax.set_title(f"regression with a linear output (RMS error {rmse:.3f})")
        return fig

    path = _picture(verbose, out, "regression.png", draw)
    return {"rmse": rmse, "picture": path}


def digits(backend="auto", out=".", train_samples=None, epochs=1, seed=0, verbose=True):
    """Rashid's recogniser: 784-100-10 sigmoid, inputs 0.01-0.99, targets 0.01/0.99, lr 0.3,
    one sample per step; prints the scorecard on the 10,000 test images."""
    (X, y), (Xt, yt) = datasets.mnist()
    if train_samples:
        X, y = X[:train_samples], y[:train_samples]
    targets = np.full((len(y), 10), 0.01)
    targets[np.arange(len(y)), y] = 0.99
    net = MLP([784, 100, 10], activation="sigmoid", output="sigmoid", loss="mse",
              init="normal", backend=backend, seed=seed, input_scale=0.99 / 255,
              input_shift=0.01)
    net.fit(X, targets, epochs=epochs, batch_size=1, optimizer="sgd", lr=0.3,
            train_metrics=False)
    pred = net.predict(Xt)
    score = float((pred == yt).mean())
    _say(verbose, f"digits: 784-100-10 sigmoid, inputs scaled to 0.01-0.99, targets 0.01/0.99, "
                  f"lr 0.3, one sample per step, {epochs} epoch(s) over {len(X)} images on "
                  f"{net.backend.name}",
         f"scorecard: {int((pred == yt).sum())} of {len(yt)} test images right = "
         f"performance {score:.4f}")
    def draw(plt):
        fig, axes = plt.subplots(6, 10, figsize=(10, 6.8))
        wrong = np.flatnonzero(pred != yt)[:20]
        right = np.flatnonzero(pred == yt)[:60 - len(wrong)]
        show = np.concatenate([right, wrong])     # correct ones first, then the mistakes
        for ax, i in zip(axes.ravel(), show):
            ax.imshow(Xt[i].reshape(28, 28), cmap="gray_r")
            bad = pred[i] != yt[i]
            ax.set_title(f"{pred[i]} (true {yt[i]})" if bad else f"{pred[i]}", fontsize=8,
                         color="red" if bad else "black")
            if bad:
                for spine in ax.spines.values():
                    spine.set_edgecolor("red")
                    spine.set_linewidth(2)
            ax.set_xticks([])
            ax.set_yticks([])
        fig.suptitle(f"test digits: prediction (misclassified in red, with the true label); "
                     f"performance {score:.4f}")
        fig.tight_layout()
        return fig

    path = _picture(verbose, out, "digits.png", draw)
    return {"performance": score, "picture": path}


def costs(backend="auto", out=".", epochs=300, seed=0, verbose=True):
    """Nielsen's saturated neuron: w = b = 2, input 1, target 0, lr 0.15; quadratic cost learns
    slowly at first (sigma'(z) is tiny), cross-entropy does not."""
    X, Y = np.array([[1.0]]), np.array([[0.0]])
    curves = {}
    for loss, label in (("mse", "quadratic cost"), ("bce", "cross-entropy cost")):
        net = MLP([1, 1], output="sigmoid", loss=loss, dtype="float64", backend=backend,
                  seed=seed)
        net.set_params([np.array([[2.0]])], [np.array([2.0])])
        h = net.fit(X, Y, epochs=epochs, batch_size=1, optimizer="sgd", lr=0.15)
        outputs = [net.predict_proba(X)[0, 0]]
        curves[label] = (h.loss, outputs[0])
    _say(verbose, f"costs: one sigmoid neuron, w = b = 2 (saturated), input 1, target 0, lr 0.15, "
                  f"{epochs} epochs on {net.backend.name}")
    for label, (loss, final) in curves.items():
        _say(verbose, f"  {label:18s}: loss {loss[0]:.3f} -> {loss[-1]:.4f}, output {final:.3f}")
    def draw(plt):
        fig, axes = plt.subplots(1, 2, figsize=(10, 4))
        for ax, (label, (loss, _)) in zip(axes, curves.items()):
            ax.plot(np.arange(1, len(loss) + 1), loss)
            ax.set_title(label)
            ax.set_xlabel("epoch")
            ax.set_ylabel("cost")
            ax.grid(alpha=0.3)
        fig.suptitle("learning slowdown of a saturated neuron")
        fig.tight_layout()
        return fig

    path = _picture(verbose, out, "costs.png", draw)
    return {"quadratic": curves["quadratic cost"][0], "cross_entropy":
            curves["cross-entropy cost"][0], "picture": path}


def init(backend="auto", out=".", train_samples=10000, epochs=8, seed=0, verbose=True):
    """784-30-10 sigmoid on MNIST with each initialisation; validation accuracy per epoch."""
    (X, y), (Xt, yt) = datasets.mnist()
    X, y = X[:train_samples], y[:train_samples]
    curves = {}
    for scheme in ("large", "normal", "xavier", "he"):
        net = MLP([784, 30, 10], activation="sigmoid", init=scheme, backend=backend, seed=seed)
        h = net.fit(X, y, epochs=epochs, batch_size=10, optimizer="sgd", lr=0.1,
                    validation_data=(Xt, yt), train_metrics=False)
        curves[scheme] = h.val_accuracy
    _say(verbose, f"init: 784-30-10 sigmoid, {len(X)} training images, SGD lr 0.1, batch 10, "
                  f"{epochs} epochs on {net.backend.name}; validation accuracy per epoch:")
    for scheme, acc in curves.items():
        _say(verbose, f"  {scheme:7s} " + " ".join(f"{a:.3f}" for a in acc))
    def draw(plt):
        fig, ax = plt.subplots(figsize=(6.5, 4.2))
        labels = {"large": "N(0, 1)", "normal": "N(0, 1/fan_in)", "xavier": "Xavier",
                  "he": "He"}
        for scheme, acc in curves.items():
            ax.plot(np.arange(1, len(acc) + 1), acc, marker="o", label=labels[scheme])
        ax.set_xlabel("epoch")
        ax.set_ylabel("validation accuracy")
        ax.grid(alpha=0.3)
        ax.legend()
        ax.set_title("weight initialisation, 784-30-10 sigmoid on MNIST")
        return fig

    path = _picture(verbose, out, "init.png", draw)
    return {"curves": curves, "picture": path}


def tabular(backend="auto", out=".", epochs=200, seed=0, verbose=True):
    """scikit-learn's bundled wine data, written to CSV, through bpgpu's tabular loader."""
    sk = optional_import("sklearn.datasets")
    if sk is None:
        raise RuntimeError("the tabular demo reads scikit-learn's bundled wine data: "
                           "pip install scikit-learn")
    wine = sk.load_wine(as_frame=False)
    os.makedirs(out, exist_ok=True)
    path = os.path.join(out, "wine.csv")
    names = [n.replace("/", "_") for n in wine.feature_names]
    cultivar = np.array(["barolo", "grignolino", "barbera"])[wine.target]
    with open(path, "w") as f:
        f.write(",".join(names + ["cultivar"]) + "\n")
        for row, label in zip(wine.data, cultivar):
            f.write(",".join(f"{v:g}" for v in row) + f",{label}\n")
    data = datasets.load_csv(path, target="cultivar", test_fraction=0.3, seed=seed)
    net = MLP([data.X_train.shape[1], 16, len(data.classes)], activation="relu", init="he",
              backend=backend, seed=seed)
    net.fit(data.X_train, data.y_train, epochs=epochs, batch_size=16, optimizer="adam", lr=0.01,
            weight_decay=1e-3)
    acc = net.evaluate(data.X_test, data.y_test)["accuracy"]
    _say(verbose, f"tabular: {path} ({len(data.X_train)} training / {len(data.X_test)} test rows, "
                  f"{len(data.feature_names)} standardised features, classes {data.classes}); "
                  f"{net.sizes[0]}-16-{net.sizes[-1]} relu/softmax, Adam, {epochs} epochs on "
                  f"{net.backend.name}", f"test accuracy {acc:.3f}")
    return {"test_accuracy": acc, "csv": path, "picture": None}


def augment(backend="auto", out=".", train_samples=10000, epochs=4, seed=0,
            spec="shift=2,rotate=10,scale=0.1,shear=0.2,elastic=34:4", verbose=True):
    """Original and augmented digits, and what augmentation buys: 784-256-10 relu trained on
    ``train_samples`` MNIST images three ways, each for the same number of steps -- as they are
    (5 x ``epochs`` epochs), on Nielsen's 5x expansion (each digit plus its one-pixel shifts,
    ``epochs`` epochs), and warped on the device by ``spec`` in every step (5 x ``epochs``) --
    then scored on the 10,000 test images."""
    from .augment import preview
    (X, y), (Xt, yt) = datasets.mnist()
    X, y = X[:train_samples], y[:train_samples]
    fit = dict(batch_size=64, optimizer="momentum", lr=0.05, train_metrics=False)
    X5, y5 = datasets.expand_shifted(X, y)
    ways = {"plain": (X, y, 5 * epochs, None),
            "Nielsen's 5x expansion": (X5, y5, epochs, None),
            "on-device augmentation": (X, y, 5 * epochs, spec)}
    accuracy = {}
    for label, (Xw, yw, n_epochs, aug) in ways.items():
        net = MLP([784, 256, 10], activation="relu", init="he", backend=backend, seed=seed)
        net.fit(Xw, yw, epochs=n_epochs, augment=aug, **fit)
        accuracy[label] = net.evaluate(Xt, yt)["accuracy"]
    plain = accuracy["plain"]
    _say(verbose, f"augment: 784-256-10 relu, momentum SGD, {len(X)} MNIST training images, "
                  f"~{5 * epochs * -(-len(X) // 64)} steps of 64 each way on {net.backend.name} "
                  f"(augmentation {spec}); test accuracy:")
    for label, acc in accuracy.items():
        gain = "" if label == "plain" else f"  ({100 * (acc - plain):+.2f} points)"
        _say(verbose, f"  {label:<24s} {acc:.4f}{gain}")
    shown = np.array([np.flatnonzero(y == d)[0] for d in range(10)])
    rows = [X[shown] / 255.0] + [preview(X[shown], spec, step=step, seed=seed,
                                         backend=net.backend) for step in range(3)]

    def draw(plt):
        fig, axes = plt.subplots(len(rows), 10, figsize=(10, 1.15 * len(rows) + 0.6))
        for r, images in enumerate(rows):
            for c, ax in enumerate(axes[r]):
                ax.imshow(images[c].reshape(28, 28), cmap="gray_r", vmin=0, vmax=1)
                ax.set_xticks([])
                ax.set_yticks([])
            axes[r, 0].set_ylabel("original" if r == 0 else f"step {r - 1}", fontsize=9)
        fig.suptitle(f"on-device augmentation {spec}\ntest accuracy: plain {plain:.4f}, "
                     f"Nielsen's expansion {accuracy[list(ways)[1]]:.4f}, augmented "
                     f"{accuracy[list(ways)[2]]:.4f}", fontsize=10)
        fig.tight_layout()
        return fig

    path = _picture(verbose, out, "augment.png", draw)
    return {"accuracy": accuracy, "picture": path}


DEMOS = {"moons": moons, "xor": xor, "regression": regression, "digits": digits, "costs": costs,
         "init": init, "tabular": tabular, "augment": augment}


def run_demo(name, **kwargs):
    """Run the demo ``name`` (one of :data:`DEMOS`) with keyword arguments."""
    return DEMOS[name](**kwargs)
