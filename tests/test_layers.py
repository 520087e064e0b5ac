"""The layer contract: every import of the package points down the layers, and none form a cycle.

bpgpu is built in layers, each importing only from itself and the layers below it -- imports
inside functions count as much as those at the top of a module:

    foundation   errors, _compat, _version
    kernels      bpgpu.kernels (Numba kernels, CUDA sources, launch conditions, codes)
    backends     bpgpu.backends (how each op runs; the compiled epoch's recorder and generator)
    model        the network's math: network, workspace, optim, activations, init, streams,
                 augment, weights
    run          training runs and files: train, options, history, signals, checkpoint, io,
                 files, schedules, gradcheck, datasets, distributed
    interfaces   what users call: mlp (the MLP class), cli, sklearn, bench, demos, plots,
                 sysinfo, warmup, recipes, interop (ONNX, PyTorch, safetensors, skl2onnx),
                 __main__
    package      bpgpu/__init__.py (the public names)

The graph is drawn from the installed package's sources with ``ast`` (so it covers the
``bpgpu.kernels`` package that lives in the top-level kernels/ directory); a module that is in
no layer fails the test, so a new module must be placed deliberately.
"""

import ast
from importlib import resources

import pytest

LAYERS = (
    ("foundation", ("bpgpu.errors", "bpgpu._compat", "bpgpu._version")),
    ("kernels", ("bpgpu.kernels",)),
    ("backends", ("bpgpu.backends",)),
    ("model", ("bpgpu.network", "bpgpu.workspace", "bpgpu.optim", "bpgpu.activations",
               "bpgpu.init", "bpgpu.streams", "bpgpu.augment", "bpgpu.weights",
               "bpgpu.rows")),
    ("run", ("bpgpu.train", "bpgpu.options", "bpgpu.history", "bpgpu.signals",
             "bpgpu.checkpoint", "bpgpu.checkpoint_schema", "bpgpu.io", "bpgpu.files",
             "bpgpu.schedules", "bpgpu.gradcheck", "bpgpu.datasets", "bpgpu.distributed", "bpgpu.runlog",
             "bpgpu.tensorboard", "bpgpu.feeder")),
    ("interfaces", ("bpgpu.mlp", "bpgpu.cli", "bpgpu.sklearn", "bpgpu.bench", "bpgpu.demos",
                    "bpgpu.plots", "bpgpu.sysinfo", "bpgpu.warmup", "bpgpu.recipes",
                    "bpgpu.interop", "bpgpu.__main__")),
    ("package", ("bpgpu",)),
)


def _modules():
    """``{module name: source text}`` of every module of the installed bpgpu."""
    found = {}
    for package in ("bpgpu", "bpgpu.kernels"):
        root = resources.files(package)
        stack = [(root, package)]
        while stack:
            folder, name = stack.pop()
            for entry in folder.iterdir():
                if entry.is_dir() and (entry / "__init__.py").is_file() and \
                        entry.name != "__pycache__":
                    if f"{name}.{entry.name}" != "bpgpu.kernels":
                        stack.append((entry, f"{name}.{entry.name}"))
                elif entry.name.endswith(".py"):
                    module = name if entry.name == "__init__.py" else f"{name}.{entry.name[:-3]}"
                    found[module] = entry.read_text(encoding="utf-8")
    return found


MODULES = _modules()


def _imports(module, source):
    """The bpgpu modules ``module`` imports anywhere in its source (functions included)."""
    package = module.split(".") if _is_package(module) else module.split(".")[:-1]
    targets = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            prefix = ".".join(base + ([node.module] if node.module else []))
            names = [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in MODULES else prefix
                     for a in node.names]
        else:
            continue
        for name in names:
            parts = name.split(".")
            for i in range(len(parts), 0, -1):          # the longest module prefix
                if ".".join(parts[:i]) in MODULES:
                    targets.add(".".join(parts[:i]))
                    break
    targets.discard(module)
    return targets


def _is_package(module):
    return any(other.startswith(module + ".") for other in MODULES)


def layer_of(module):
    """Index of the module's layer (its longest listed prefix), or None."""
    best = None
    for index, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                if best is None or len(prefix) > best[1]:
                    best = (index, len(prefix))
    return None if best is None else best[0]


GRAPH = {m: _imports(m, src) for m, src in MODULES.items()}


def test_every_module_is_in_a_layer():
    assert "bpgpu.kernels.cpu" in MODULES and "bpgpu.cli.train" in MODULES
    assert [m for m in MODULES if layer_of(m) is None] == []


@pytest.mark.parametrize("module", sorted(MODULES))
def test_imports_point_down(module):
    mine = layer_of(module)
    upward = sorted(f"{t} ({LAYERS[layer_of(t)][0]})" for t in GRAPH[module]
                    if layer_of(t) > mine)
    assert upward == [], f"{module} ({LAYERS[mine][0]}) imports from above: {upward}"


def test_no_import_cycles():
    """Tarjan's strongly connected components of the whole graph: every one a single module."""
    index, low, stack, on_stack, cycles = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    assert cycles == []


def test_the_contract_sees_imports_inside_functions():
    """A function-level upward import is caught (the model importing the loop, as it once did)."""
    source = "def fit(self):\n    from .train import fit\n"
    assert "bpgpu.train" in _imports("bpgpu.network", source)
    assert layer_of("bpgpu.train") > layer_of("bpgpu.network")
