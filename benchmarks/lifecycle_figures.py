"""Figures of the Dagster layer: asset body lengths, definitions load time, `wycryst targets list`.

    .venv/bin/python benchmarks/lifecycle_figures.py [--repeat 3]

Body length = lines from the first statement after the docstring to the last line of each
``@asset``-decorated function (tests/test_asset_layout.py holds them to <= 40). Load times are
wall seconds of a fresh interpreter (median of ``--repeat``), and whether torch got imported.
"""

from __future__ import annotations

import argparse
import ast
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def asset_body_lengths(root: Path = REPO / "wycryst_assets" / "assets") -> dict[str, int]:
    """{asset function name: body lines} for every ``@asset``/``@dg.asset`` function under ``root``."""
    out = {}
    for path in sorted(root.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.FunctionDef):
                continue
            names = {ast.unparse(d.func if isinstance(d, ast.Call) else d) for d in node.decorator_list}
            if not names & {"asset", "dg.asset", "dagster.asset"}:
                continue
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant):
                body = body[1:]  # the docstring
            out[node.name] = body[-1].end_lineno - body[0].lineno + 1 if body else 0
    return out


def _timed(code: str, repeat: int) -> tuple[float, bool]:
    env = {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    times, torch = [], False
    for _ in range(repeat):
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", code + "\nimport sys; print('TORCH', 'torch' in sys.modules)"],
                              cwd=REPO, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - start)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-2000:])
        torch = "TORCH True" in proc.stdout
    return statistics.median(times), torch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    lengths = asset_body_lengths()
    print("asset body lengths (lines):")
    for name, n in sorted(lengths.items(), key=lambda kv: -kv[1]):
        print(f"  {name:24s} {n:4d}")
    print(f"  max {max(lengths.values())}, over 40: {sum(n > 40 for n in lengths.values())}")
    loads = {
        "definitions load": "from wycryst_assets.definitions import defs; defs.resolve_asset_graph()",
        "wycryst targets list": "from wycryst_assets.cli import main\n"
                                "main(['targets', 'list'], standalone_mode=False)",
    }
    for label, code in loads.items():
        seconds, torch = _timed(code, args.repeat)
        print(f"{label:22s} {seconds:6.2f} s (median of {args.repeat}; torch imported: {torch})")
    print("load:", os.getloadavg())


if __name__ == "__main__":
    main()
