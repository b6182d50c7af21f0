"""The Dagster layer stays thin and light: asset bodies of read -> call -> write -> metadata (no
body over 40 lines), ml/ and dft/ free of Dagster, no asset module reaching into another's
private names, code versions derived from the source, and the definitions and `wycryst targets
list` loading without torch."""

import ast
import os
import subprocess
import sys

import pytest

from tests.conftest import REPO_ROOT

MAX_BODY_LINES = 40


def _env(**extra):
    return {**os.environ, "PYTHONPATH": f"{REPO_ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", **extra}


def test_no_asset_body_over_40_lines():
    from benchmarks.lifecycle_figures import asset_body_lengths

    lengths = asset_body_lengths()
    assert len(lengths) >= 13  # every asset was found (13 today; more join)
    assert {name: n for name, n in lengths.items() if n > MAX_BODY_LINES} == {}


def test_the_body_counter_counts_what_it_should(tmp_path):
    from benchmarks.lifecycle_figures import asset_body_lengths

    (tmp_path / "a.py").write_text('import dagster as dg\n\n@dg.asset(group_name="x")\ndef a():\n    """doc\n    more"""\n'
                                   '    x = 1\n    return x\n\n\ndef helper():\n    pass\n')
    assert asset_body_lengths(tmp_path) == {"a": 2}


def _imports(path):
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update((a.name, None) for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.update((node.module, a.name) for a in node.names)
    return names


def test_ml_and_dft_never_import_dagster():
    offenders = [str(p.relative_to(REPO_ROOT)) for pkg in ("ml", "dft") for p in (REPO_ROOT / pkg).rglob("*.py")
                 if any(m.split(".")[0] in ("dagster", "dagster_duckdb") for m, _ in _imports(p))]
    assert offenders == []


def test_asset_modules_import_no_private_names_of_each_other():
    offenders = []
    for path in (REPO_ROOT / "wycryst_assets" / "assets").glob("*.py"):
        for module, name in _imports(path):
            if module.startswith("wycryst_assets.assets.") and name and name.startswith("_"):
                offenders.append(f"{path.name}: from {module} import {name}")
    assert offenders == []


def test_every_asset_carries_the_code_version_of_its_source():
    from wycryst_assets.definitions import defs
    from wycryst_assets.versions import source_version

    graph = defs.resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        node = graph.get(key)
        module = node.assets_def.op.compute_fn.decorated_fn.__module__
        assert node.code_version == source_version(module), key


def test_definitions_and_targets_list_load_without_torch():
    probe = "import sys; print(sorted(m for m in ('torch', 'pytorch_lightning', 'dagster') if m in sys.modules))"
    defs = subprocess.run([sys.executable, "-c", f"import wycryst_assets.definitions\n{probe}"], cwd=REPO_ROOT,
                          env=_env(), capture_output=True, text=True, check=True)
    assert defs.stdout.split("\n")[-2] == "['dagster']"
    listing = subprocess.run([sys.executable, "-c", "from wycryst_assets.cli import main\n"
                              "main(['targets', 'list'], standalone_mode=False)\n" + probe],
                             cwd=REPO_ROOT, env=_env(), capture_output=True, text=True, check=True)
    assert "SrTiO3-221" in listing.stdout and listing.stdout.split("\n")[-2] == "[]"  # no torch, no dagster


@pytest.mark.parametrize("text", ['{"targets": [', '["SrTiO3-221"]', ""])
def test_a_malformed_registry_is_one_line_and_a_nonzero_exit(tmp_path, text):
    registry = tmp_path / "targets.json"
    registry.write_text(text)
    for command in (["targets", "list"], ["targets", "sync"]):
        out = subprocess.run([sys.executable, "-m", "wycryst_assets.cli", *command], cwd=REPO_ROOT,
                             env=_env(WYCRYST_TARGETS=str(registry), WYCRYST_HOME=str(tmp_path / "home"),
                                      DAGSTER_HOME=str(tmp_path / "dh")), capture_output=True, text=True)
        assert out.returncode == 1, out
        assert "Traceback" not in out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and str(registry) in lines[0], out.stderr
