"""The code's shape: every import points down (no cycles, counting imports inside functions),
no package module is imported inside a function (but matplotlib's plots, lazily, in the CLI),
kernels/ holds only @triton.jit code, and the registry is the one list of kernels."""
import ast
import os

import pytest

from triton_dsd import registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = {"triton_dsd": os.path.join(ROOT, "triton_dsd"),
            "triton_dsd.kernels": os.path.join(ROOT, "kernels"),
            "triton_dsd.autotune_configs": os.path.join(ROOT, "autotune_configs")}
#: the only function-level imports of package modules allowed: heavy optional tools
LAZY_ALLOWED = {("triton_dsd.cli", "triton_dsd.plots")}


def _modules():
    out = {}
    for pkg, folder in PACKAGES.items():
        for name in sorted(os.listdir(folder)):
            if name.endswith(".py"):
                mod = pkg if name == "__init__.py" else f"{pkg}.{name[:-3]}"
                with open(os.path.join(folder, name)) as f:
                    out[mod] = ast.parse(f.read(), name)
    return out


MODULES = _modules()


def _targets(node, module):
    """The package modules an import statement names."""
    names = []
    if isinstance(node, ast.Import):
        names = [a.name for a in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:
            parts = module.split(".")[:-node.level]
            base = ".".join(parts + ([base] if base else []))
        names = [base] + [f"{base}.{a.name}" for a in node.names]
    return [n for n in names if n in MODULES]


def _imports(module, tree):
    """(target, nested) for every import of a package module in ``module``."""
    found = []

    def visit(node, nested):
        for child in ast.iter_child_nodes(node):
            inner = nested or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for t in _targets(child, module):
                    # `from triton_dsd import x` imports x, not the package's __init__
                    if t == "triton_dsd" and isinstance(child, ast.ImportFrom) and \
                            child.module == "triton_dsd":
                        continue
                    found.append((t, nested))
            visit(child, inner)

    visit(tree, False)
    return found


def test_no_import_cycles_counting_nested_imports():
    graph = {m: {t for t, _ in _imports(m, tree) if t != m} for m, tree in MODULES.items()}
    state = {}
    stack = []

    def dfs(m):
        state[m] = 1
        stack.append(m)
        for t in graph[m]:
            if state.get(t) == 1:
                cycle = stack[stack.index(t):] + [t]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if t not in state:
                dfs(t)
        stack.pop()
        state[m] = 2

    for m in graph:
        if m not in state:
            dfs(m)


def test_no_function_level_imports_of_package_modules():
    nested = [(m, t) for m, tree in MODULES.items() for t, n in _imports(m, tree) if n]
    assert set(nested) <= LAZY_ALLOWED, sorted(set(nested) - LAZY_ALLOWED)


def test_kernels_folder_holds_only_jit_code():
    for mod, tree in MODULES.items():
        if not mod.startswith("triton_dsd.kernels."):
            continue
        for node in tree.body:
            if isinstance(node, ast.FunctionDef):
                decos = [ast.unparse(d) for d in node.decorator_list]
                assert decos == ["triton.jit"], (mod, node.name, decos)
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names]
                assert (isinstance(node, ast.Import) and set(names) <= {"triton", "triton.language"}
                        or isinstance(node, ast.ImportFrom) and node.module.startswith(
                            ("triton", "triton_dsd.kernels"))), (mod, ast.unparse(node))
            else:
                assert isinstance(node, (ast.Expr, ast.Assign)), (mod, ast.unparse(node))


def test_registry_is_the_one_list_of_kernels():
    """Every @triton.jit kernel (a function named *_kernel) in kernels/ is in the registry."""
    defined = {node.name for mod, tree in MODULES.items() if mod.startswith("triton_dsd.kernels.")
               for node in tree.body if isinstance(node, ast.FunctionDef)
               and node.name.endswith("_kernel")}
    assert defined == set(registry.KERNEL_NAMES)
    assert set(registry.FAMILIES) == {"depthwise_fwd", "depthwise_bwd_input",
                                      "depthwise_bwd_weight", "pointwise_fwd",
                                      "pointwise_bwd_weight", "dsd_fwd"}


def test_packaging_metadata_is_honest():
    """An SPDX license string (the TOML table is deprecated) and a Triton floor that CI runs."""
    import tomllib
    with open(os.path.join(ROOT, "pyproject.toml"), "rb") as f:
        meta = tomllib.load(f)
    assert meta["project"]["license"] == "MIT"
    deps = meta["project"]["dependencies"]
    assert "triton>=3.6" in deps, deps  # .ci/run tests 3.6 (and the newest here)
    with open(os.path.join(ROOT, ".ci", "run")) as f:
        assert '"triton==3.6.*"' in f.read()
