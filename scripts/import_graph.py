"""Draw fastwarp's module imports, and check the two layers.

    python scripts/import_graph.py          # the drawing: each module and the fastwarp modules it imports
    python scripts/import_graph.py --check  # exit 1 if a rule is broken

The rules (README "Layout"): the op layer (``fastwarp`` and its modules outside ``fastwarp.app``)
imports nothing of the application; every module has one path (no module re-exports another
module's names under a second module path: the only re-exports are a package's ``__init__``
gathering its own submodules' names); and no module of the application is imported by the op
layer at run time either (``import fastwarp`` loads no ``fastwarp.app`` module, nor nibabel,
tqdm or matplotlib beyond what ``import torch`` loads itself; checked in a subprocess).
"""

from __future__ import annotations

import argparse
import ast
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "fastwarp"


def modules() -> dict[str, pathlib.Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def imports_of(name: str, path: pathlib.Path, known: set[str]) -> set[str]:
    """The fastwarp modules ``name`` imports (a name imported from a package counts as that
    package's submodule when one exists, else the package)."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "fastwarp")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "fastwarp":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return {m for m in out if m in known and m != name}


def is_app(module: str) -> bool:
    return module == "fastwarp.app" or module.startswith("fastwarp.app.")


# The one module of the op layer's package that may import the application: ``python -m
# fastwarp``, the module form of the ``fastwarp`` command (never imported by ``import fastwarp``).
COMMAND = "fastwarp.__main__"


def forwards_only(path: pathlib.Path) -> bool:
    """A module (not a package's ``__init__``) that defines nothing: it only imports names
    (and lists them, or runs them as ``__main__``), a second door to another module."""
    if path.name in ("__init__.py", "__main__.py"):
        return False
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return False
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(not (isinstance(t, ast.Name) and t.id == "__all__") for t in targets):
                return False
    return True


def check(graph: dict[str, set[str]], found: dict[str, pathlib.Path]) -> list[str]:
    problems = []
    for module, deps in graph.items():
        if not is_app(module) and module != COMMAND:
            problems += [f"{module} (op layer) imports {d} (application)" for d in sorted(deps) if is_app(d)]
        if forwards_only(found[module]):
            problems.append(f"{module} defines nothing: it only forwards another module's names")
    # (beyond what `import torch` loads itself: torch.hub brings tqdm along)
    code = ("import sys, torch; before = set(sys.modules); import fastwarp; "
            "bad = sorted(m for m in set(sys.modules) - before if m.startswith('fastwarp.app') or "
            "m.split('.')[0] in ('nibabel', 'tqdm', 'matplotlib')); print(' '.join(bad))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout.split()
    problems += [f"`import fastwarp` loads {m}" for m in loaded]
    return problems


def draw(graph: dict[str, set[str]]) -> str:
    lines = []
    for title, pick in (("op layer (torch only)", lambda m: not is_app(m)), ("application", is_app)):
        lines.append(f"{title}:")
        for module in sorted(m for m in graph if pick(m)):
            deps = sorted(graph[module])
            lines.append(f"  {module}" + (f" -> {', '.join(d.removeprefix('fastwarp.') for d in deps)}" if deps else ""))
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="check the rules instead of drawing")
    args = p.parse_args(argv)
    found = modules()
    graph = {name: imports_of(name, path, set(found)) for name, path in found.items()}
    if args.check:
        problems = check(graph, found)
        for line in problems:
            print(line)
        return 1 if problems else 0
    print(draw(graph))
    return 0


if __name__ == "__main__":
    sys.exit(main())
