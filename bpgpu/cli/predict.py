"""``bpgpu predict MODEL INPUT...``: a saved model's predictions for new inputs, one row each.

INPUT is a CSV (the model's input pipeline reads its columns by name; a target column, when
present, is not used to predict but to report accuracy), an IDX file or MNIST-layout directory
(its test split), a ``.npy``/``.npz`` array, or image files or a folder of them (preprocessed the
MNIST way unless ``--no-preprocess``: :mod:`bpgpu.datasets.images`). The output is CSV (``--json``:
a JSON array) with an ``id`` (row number, or file name), the predicted ``label`` in the model's
own labels, with ``--proba`` the probability of each class and with ``--top K`` the K likeliest
labels; a regression model's predicted values. Inputs are read and predicted in batches
(``--batch-size``), so memory stays bounded whatever their size; accuracy (or MSE, MAE, R²) is
printed on stderr when the input holds the truth.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
import warnings

import numpy as np

from .common import UsageError, add_backend_arg, positive_int, writable

__all__ = ["add_parser", "cmd_predict"]


def add_parser(sub, names):
    p = sub.add_parser("predict", help="a saved model's predictions for a CSV, IDX, .npy/.npz "
                                       "or image files")
    p.add_argument("model")
    p.add_argument("inputs", nargs="+", metavar="INPUT",
                   help="a CSV, an IDX file or MNIST directory, a .npy/.npz, image files or a "
                        "folder of images")
    p.add_argument("--out", metavar="FILE", help="write the predictions here (default: stdout)")
    p.add_argument("--json", action="store_true", help="JSON instead of CSV")
    p.add_argument("--proba", action="store_true", help="the probability of every class")
    p.add_argument("--top", type=positive_int, metavar="K", help="the K likeliest labels")
    p.add_argument("--batch-size", type=positive_int, default=4096,
                   help="rows read and predicted at a time (default %(default)s)")
    p.add_argument("--no-preprocess", action="store_true",
                   help="feed image pixels as they are (greyscale, the model's size)")
    p.add_argument("--encoding", default=None, help="a CSV's text encoding (default: detected)")
    add_backend_arg(p, names)
    p.set_defaults(func=cmd_predict)
    return p


class _Score:
    """Accuracy, or MSE/MAE/R² (Chan's pairwise update of the targets' variance), over
    batches."""

    def __init__(self, regression):
        self.regression, self.n, self.hits = regression, 0, 0
        self.wrong_labels = self.labels = 0          # multi-label: Hamming loss
        self.sse = self.sae = 0.0                 # per output (arrays) once a batch came
        self.mean = self.m2 = None

    def add(self, predicted, truth):
        if not self.regression:
            self.n += len(truth)
            if predicted.ndim == 2:                   # multi-label: a row is right when all are
                self.hits += int((predicted == truth).all(axis=1).sum())
                self.wrong_labels += int((predicted != truth).sum())
                self.labels += predicted.size
                return
            self.hits += int((predicted == truth).sum())
            return
        t = truth.reshape(len(truth), -1).astype(np.float64)
        err = predicted.reshape(t.shape) - t
        self.sse = self.sse + (err ** 2).sum(axis=0)
        self.sae = self.sae + np.abs(err).sum(axis=0)
        mean, m2 = t.mean(axis=0), ((t - t.mean(axis=0)) ** 2).sum(axis=0)
        if self.mean is None:
            self.mean, self.m2 = mean, m2
        else:
            delta, total = mean - self.mean, self.n + len(t)
            self.m2 = self.m2 + m2 + delta ** 2 * self.n * len(t) / total
            self.mean = self.mean + delta * len(t) / total
        self.n += len(t)

    def line(self):
        if self.n == 0:
            return None
        if not self.regression:
            line = f"accuracy {self.hits / self.n:.4f} ({self.hits} of {self.n})"
            if self.labels:
                line += (f" with every label right, hamming loss "
                         f"{self.wrong_labels / self.labels:.4f}")
            return line
        k = len(self.mean)
        r2 = np.where(self.m2 > 0, 1 - self.sse / np.where(self.m2 > 0, self.m2, 1),
                      np.where(self.sse == 0, 1.0, 0.0))
        return (f"mse {self.sse.sum() / (self.n * k):.6g}, mae "
                f"{self.sae.sum() / (self.n * k):.6g}, r2 {float(r2.mean()):.4f} "
                f"({self.n} rows)")


def _labels(net, indices):
    return net.pipeline.labels(indices) if net.pipeline is not None else indices


def _class_names(net):
    n = 2 if net.sizes[-1] == 1 else net.sizes[-1]
    return [str(c) for c in _labels(net, np.arange(n))]


def _probabilities(net, p):
    """Per class probabilities (a one-output model's p and 1 - p as two classes)."""
    return np.hstack([1 - p, p]) if p.shape[1] == 1 else p


def _records(net, args, batch, p):
    """``(header, rows)`` of one batch: lists of plain Python values."""
    if net.task == "regression":
        target = net.pipeline.target if net.pipeline is not None and net.pipeline.target \
            else "prediction"
        names = [target] if p.shape[1] == 1 else [f"{target}_{j}" for j in range(p.shape[1])]
        return ["id"] + names, [[i] + [float(v) for v in row] for i, row in zip(batch.ids, p)]
    if net.task == "multilabel":
        return _multilabel_records(net, args, batch, p)
    probs = _probabilities(net, p)
    indices = (p[:, 0] >= 0.5).astype(np.int64) if p.shape[1] == 1 else p.argmax(axis=1)
    labels = _labels(net, indices)
    header = ["id", "label"]
    columns = [[_plain(v) for v in labels]]
    classes = _class_names(net)
    if args.proba:
        header += [f"proba_{c}" for c in classes]
        columns += [[float(v) for v in probs[:, j]] for j in range(probs.shape[1])]
    if args.top:
        k = min(args.top, probs.shape[1])
        order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
        for j in range(k):
            header += [f"label_{j + 1}", f"proba_{j + 1}"]
            columns += [[_plain(v) for v in _labels(net, order[:, j])],
                        [float(v) for v in probs[np.arange(len(p)), order[:, j]]]]
    return header, [[i] + list(row) for i, row in zip(batch.ids, zip(*columns))]


def _multilabel_records(net, args, batch, p):
    """A multi-label model's rows: each target column's 0/1 (``output >= 0.5``), and with
    ``--proba`` its probability."""
    if args.top:
        raise UsageError("--top ranks the classes of a single-label model; this model's "
                         "labels are independent (use --proba)")
    names = net.pipeline.targets
    header = ["id"] + names + ([f"proba_{n}" for n in names] if args.proba else [])
    rows = [[i] + [int(v >= 0.5) for v in row] + ([float(v) for v in row] if args.proba else [])
            for i, row in zip(batch.ids, p)]
    return header, rows


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


class _Output:
    """CSV or a JSON array, written row by row to a binary file."""

    def __init__(self, f, as_json):
        self.f, self.json, self.header, self.count = f, as_json, None, 0

    def write(self, header, rows):
        if self.json:
            for row in rows:
                self.f.write((",\n" if self.count else "[\n").encode()
                             + json.dumps(dict(zip(header, row))).encode())
                self.count += 1
            return
        text = io.StringIO()
        writer = csv.writer(text, lineterminator="\n")
        if self.header is None:
            writer.writerow(header)
            self.header = header
        writer.writerows([[_csv_value(v) for v in row] for row in rows])
        self.f.write(text.getvalue().encode())
        self.count += len(rows)

    def close(self):
        if self.json:
            self.f.write(b"\n]\n" if self.count else b"[]\n")


def _csv_value(v):
    return repr(v) if isinstance(v, float) and math.isfinite(v) else v


def _run(net, args, f, score):
    from ..datasets.inputs import input_batches
    out = _Output(f, args.json)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for batch in input_batches(args.inputs, net.pipeline, net.sizes[0], args.batch_size,
                                   not args.no_preprocess, args.encoding):
            p = net.predict_proba(batch.X)
            header, rows = _records(net, args, batch, p)
            out.write(header, rows)
            if batch.truth is not None:
                predicted = p if net.task == "regression" else \
                    (p >= 0.5).astype(np.int64) if net.task == "multilabel" else \
                    ((p[:, 0] >= 0.5).astype(np.int64) if p.shape[1] == 1 else p.argmax(axis=1))
                score.add(predicted, batch.truth)
            _say_warnings(caught)
    out.close()
    return out.count


_warned: set = set()


def _say_warnings(caught):
    for w in caught:
        text = str(w.message)
        if text not in _warned:
            _warned.add(text)
            print(f"bpgpu: warning: {text}", file=sys.stderr)
    caught.clear()


def cmd_predict(args):
    from ..mlp import load
    writable(args.out, "--out")
    net = load(args.model, backend=args.backend)
    if net.task == "regression" and (args.proba or args.top):
        raise UsageError(f"{args.model} is a regression model: --proba and --top apply to "
                         "classifiers")
    score = _Score(net.task == "regression")
    if args.out:
        from ..files import atomic_write
        counted = []
        atomic_write(args.out, lambda f: counted.append(_run(net, args, f, score)))
        count = counted[0]
    else:
        count = _run(net, args, sys.stdout.buffer, score)
        sys.stdout.flush()
    where = f" to {args.out}" if args.out else ""
    print(f"predicted {count} inputs with {args.model} (backend {net.backend.name}){where}",
          file=sys.stderr)
    line = score.line()
    if line:
        print(line, file=sys.stderr)
    return 0
