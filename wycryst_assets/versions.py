"""Code versions derived from the source an asset runs, so Dagster's staleness follows the code.

``source_version("wycryst_assets.assets.sampling")`` hashes the asset module and every project
module it reaches through imports (``ml.*``, ``dft.*`` and the shared ``wycryst_assets`` helpers,
found by walking the import statements of the source files, function-local imports included),
plus the installed versions of the scientific libraries those modules import. Other asset modules
and the Dagster wiring (definitions, sensors, checks, CLI) are not followed: an asset depends on
another asset's *data* (data versions carry that), not on its code.

What is hashed is the module's syntax tree without docstrings (``ast.dump``), so comments,
docstrings and formatting do not move a version, while any change to a statement does. Nothing is
imported: the files are parsed, so computing the versions at definitions load costs tens of
milliseconds and never loads torch.
"""

from __future__ import annotations

import ast
import hashlib
from functools import lru_cache
from importlib import metadata
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
PROJECT_PACKAGES = ("ml", "dft", "wycryst_assets")
# wiring that does not compute an asset's data
NOT_FOLLOWED = ("wycryst_assets.assets.", "wycryst_assets.definitions", "wycryst_assets.sensors",
                "wycryst_assets.checks", "wycryst_assets.cli")
# import name -> distribution, for the libraries whose numbers end up in the tables
SCIENCE_LIBRARIES = {
    "torch": "torch", "pytorch_lightning": "pytorch-lightning", "lightning": "pytorch-lightning",
    "sklearn": "scikit-learn", "pymatgen": "pymatgen", "spglib": "spglib", "pyxtal": "pyxtal", "ase": "ase",
    "chgnet": "chgnet", "sevenn": "sevenn", "phonopy": "phonopy", "smact": "smact", "gemmi": "gemmi",
}


def module_file(name: str, repo: Path = REPO_ROOT) -> Path | None:
    """The source file of a project module (``ml.filters`` -> ml/filters.py), None otherwise."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = Path(repo).joinpath(*name.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _parsed(path: Path) -> tuple[str, frozenset[str]]:
    """(digest of the syntax tree without docstrings, names of every imported module)."""
    return _analysed(path.read_text())


@lru_cache(maxsize=None)
def _analysed(source: str) -> tuple[str, frozenset[str]]:
    tree = ast.parse(source)
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            imported.add(node.module)
            imported.update(f"{node.module}.{alias.name}" for alias in node.names)  # from ml import filters
    digest = hashlib.sha1(ast.dump(tree, annotate_fields=False).encode()).hexdigest()
    return digest, frozenset(imported)


def _project_name(name: str, repo: Path) -> str:
    """``name`` as a dotted project module name, also when the module was loaded under another
    name (e.g. from a file path): its file decides."""
    import sys

    if module_file(name, repo) is not None:
        return name
    path = getattr(sys.modules.get(name), "__file__", None)
    if path and Path(path).resolve().is_relative_to(Path(repo).resolve()):
        rel = Path(path).resolve().relative_to(Path(repo).resolve()).with_suffix("")
        return ".".join(p for p in rel.parts if p != "__init__")
    return name


def source_modules(root: str, repo: Path = REPO_ROOT) -> dict[str, Path]:
    """``root`` and the project modules it reaches through imports (see the module doc)."""
    seen: dict[str, Path] = {}
    todo = [root]
    while todo:
        name = todo.pop()
        path = module_file(name, repo)
        if name in seen or path is None or (name != root and name.startswith(NOT_FOLLOWED)):
            continue
        seen[name] = path
        todo.extend(_parsed(path)[1])
    return seen


def _library_versions(modules: dict[str, Path]) -> list[str]:
    top = {name.split(".")[0] for path in modules.values() for name in _parsed(path)[1]}
    out = []
    for module in sorted(top & set(SCIENCE_LIBRARIES)):
        try:
            out.append(f"{module}=={metadata.version(SCIENCE_LIBRARIES[module])}")
        except metadata.PackageNotFoundError:
            out.append(f"{module}==absent")
    return out


def source_version(root: str, repo: Path = REPO_ROOT) -> str:
    """The code version of the assets defined in module ``root``: 16 hex digits of a hash over the
    syntax trees of the modules it reaches and the versions of the libraries they import."""
    root = _project_name(root, repo)
    modules = source_modules(root, repo)
    if not modules:
        raise ValueError(f"{root!r} is not a module of the project under {repo}")
    lines = [f"{name}:{_parsed(path)[0]}" for name, path in sorted(modules.items())]
    lines += _library_versions(modules)
    return hashlib.sha1("\n".join(lines).encode()).hexdigest()[:16]
