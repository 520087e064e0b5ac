"""Datasets: MNIST (shipped), Fashion-MNIST, any IDX directory, toy sets and CSV files.

Nothing here downloads anything: MNIST ships with the package (checksummed), Fashion-MNIST comes
from a directory or the Debian package, toy sets are generated from a seed. ``expand_shifted`` is
Nielsen's offline 5x expansion of a training set.
"""

from .expand import expand_shifted
from .idx import read_idx, write_idx
from .mnist import fashion_mnist, load_idx_dir, mnist
from .named import Dataset, load_dataset
from .tabular import TabularData, load_csv
from .toy import moons, xor

__all__ = ["mnist", "fashion_mnist", "load_idx_dir", "read_idx", "write_idx", "xor", "moons",
           "load_csv", "TabularData", "Dataset", "load_dataset", "expand_shifted"]
