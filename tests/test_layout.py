"""The package's shape: concerns in folders, one error base, no import cycle, every command
answers --help (README "Layout")."""

from __future__ import annotations

import ast
import importlib
import inspect
import os
import pathlib
import pkgutil
import subprocess
import sys

import lima_jax
from lima_jax.errors import LimaError

PACKAGE = pathlib.Path(lima_jax.__file__).parent
COMMANDS = ("train", "decode", "evaluate", "curate", "ablate", "bench", "convert", "data", "model")


def _modules() -> list[str]:
    return [m.name for m in pkgutil.walk_packages([str(PACKAGE)], "lima_jax.")
            if not m.name.endswith("__main__")]


def test_the_top_level_is_short_and_has_no_families():
    top = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in ("__init__", "__main__"))
    assert len(top) <= 8, top
    assert not [m for m in top if m.startswith(("train_", "ablate_")) or m.endswith("_bench")]


def test_every_error_class_derives_from_lima_error():
    orphans = []
    for name in _modules():
        module = importlib.import_module(name)
        for cls_name, cls in inspect.getmembers(module, inspect.isclass):
            if (cls.__module__ == name and issubclass(cls, Exception)
                    and not issubclass(cls, LimaError)):
                orphans.append(f"{name}.{cls_name}")
    assert not orphans


def _imports(path: pathlib.Path, module: str) -> set[str]:
    """lima_jax modules `module` imports anywhere in its file (functions included)."""
    found = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("lima_jax")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + [base]).strip(".")
            if base.startswith("lima_jax"):
                found.add(base)
                found |= {f"{base}.{a.name}" for a in node.names}
    return found


def test_no_import_cycle_counting_imports_inside_functions():
    files = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        files[name] = path
    graph = {name: {m for m in _imports(path, name) if m in files and m != name}
             for name, path in files.items()}
    # A package's __init__ handing on its own submodules' names is not a cycle.
    graph = {name: {m for m in deps if not m.startswith(name + ".")} for name, deps in graph.items()}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for dep in sorted(graph[node]):
            if state.get(dep) == "open":
                cycles.append(stack[stack.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles, cycles


def test_every_command_answers_help():
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    running = {command: subprocess.Popen([sys.executable, "-m", f"lima_jax.{command}", "--help"],
                                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
               for command in COMMANDS}  # side by side: each only imports and prints
    for command, process in running.items():
        out, err = process.communicate(timeout=300)
        assert process.returncode == 0, (command, err[-2000:])
        assert "usage" in out.lower() or "--config" in out, command
