"""``wycryst`` command line: instance setup, the main job, snapshot export, target sync."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import click

from wycryst_assets import settings
from wycryst_assets.cpu import RUN_THREADS_ENV, usable_cores

# What `wycryst run` materializes: the unpartitioned ground, then one published partition
# through the end of the graph. It grows with the asset graph; the command stays the same.
MAIN_PARTITION = "SrTiO3-221"
MAIN_STAGES = (
    ("mp_snapshot,wyckoff_genes,synthesizability_model", False),
    ("pvae_model,sampled_genes,filtered_genes", True),
    ("trial_structures,relaxed_structures,refined_structures,phonon_verdicts,loo_report", True),
)
# The main job samples 500 perturbations per origin (the asset's default is 5,000): a quick
# look at a partition in minutes; rerun sampled_genes from the UI for the full sampling.
MAIN_RUN_CONFIG = {"ops": {"sampled_genes": {"config": {"samples_per_origin": 500}}}}


def init_dagster_home() -> Path:
    """Create ``$DAGSTER_HOME`` (default ``$WYCRYST_HOME/dagster_home``) holding the repo's dagster.yaml."""
    home = settings.dagster_home()
    home.mkdir(parents=True, exist_ok=True)
    src = settings.REPO_ROOT / "dagster.yaml"
    dest = home / "dagster.yaml"
    if not dest.exists() or dest.read_bytes() != src.read_bytes():
        shutil.copyfile(src, dest)
    return home


def _user_error(exc: Exception) -> bool:
    """Errors that are the input's fault (an unreadable registry or snapshot, no API key): one
    line for the user, not a traceback. Imported only when something failed."""
    from ml.mp_source import MissingApiKeyError
    from ml.snapshot import SnapshotError
    from ml.targets import TargetError

    return isinstance(exc, (TargetError, SnapshotError, MissingApiKeyError))


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
            raise
        except Exception as exc:
            if _user_error(exc):
                raise click.ClickException(str(exc)) from None
            raise


@click.group(cls=_Group)
def main() -> None:
    """WyCryst: MP snapshot -> Wyckoff genes -> PVAE -> new symmetry-aware crystals."""


@main.group(cls=_Group)
def home() -> None:
    """The local Dagster instance."""


@home.command("init")
def home_init() -> None:
    """Create DAGSTER_HOME with the project's dagster.yaml."""
    click.echo(f"DAGSTER_HOME={init_dagster_home()}")


@main.command("run")
@click.option("--select", default=None, help="One Dagster asset selection instead of the main job's stages.")
@click.option("--partition", default=None,
              help=f"Target partition key for the partitioned assets (main job default: {MAIN_PARTITION}).")
def run_main(select: str | None, partition: str | None) -> None:
    """Materialize the main job on the embedded defaults through the local Dagster instance."""
    import time

    dagster_home = init_dagster_home()
    settings.wycryst_home().mkdir(parents=True, exist_ok=True)
    os.environ["DAGSTER_HOME"] = str(dagster_home)
    import dagster as dg

    from wycryst_assets.partitions import sync_target_partitions

    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
    # the stages run one at a time: each run may use every core (wycryst_assets.cpu)
    env = {**os.environ, "DAGSTER_HOME": str(dagster_home), "WYCRYST_HOME": str(settings.wycryst_home())}
    env.setdefault(RUN_THREADS_ENV, str(usable_cores()))
    click.echo(f"WYCRYST_HOME={env['WYCRYST_HOME']}\nDAGSTER_HOME={dagster_home}")
    if select:
        stages = [(select, partition)]
    else:
        stages = [(sel, (partition or MAIN_PARTITION) if partitioned else None) for sel, partitioned in MAIN_STAGES]
    import json
    start = time.perf_counter()
    for selection, part in stages:
        cmd = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "wycryst_assets", "--select", selection]
        if part:
            cmd += ["--partition", part]
        if not select and "sampled_genes" in selection:
            cmd += ["--config-json", json.dumps(MAIN_RUN_CONFIG)]
        click.echo(f"$ {' '.join(cmd)}")
        result = subprocess.run(cmd, env=env, cwd=settings.REPO_ROOT)
        if result.returncode != 0:
            raise SystemExit(result.returncode)
    if not select:
        _print_report(partition or MAIN_PARTITION)
    click.echo(
        "\nDone in {m:.1f} min. Warehouse: {w}\nOpen the UI with:\n  DAGSTER_HOME={d} WYCRYST_HOME={h} "
        ".venv/bin/dagster dev -m wycryst_assets -h 127.0.0.1 -p 3000\nthen browse http://127.0.0.1:3000".format(
            m=(time.perf_counter() - start) / 60, w=settings.warehouse_path(), d=dagster_home, h=settings.wycryst_home()
        )
    )


def _print_report(key: str) -> None:
    """The partition's loo_report row, as the user's "did it work" line."""
    import duckdb

    con = duckdb.connect(str(settings.warehouse_path()), read_only=True)
    try:
        row = con.execute("SELECT * FROM loo_report WHERE target = ?", [key]).fetchone()
        cols = [d[0] for d in con.description]
    except duckdb.Error:
        row = None
    finally:
        con.close()
    if row is None:
        click.echo(f"no loo_report row for {key}")
        return
    rep = dict(zip(cols, row))
    click.echo(f"\n{key}: recovered={rep['recovered']} (sampled={rep['sampled']}, passed={rep['passed']}, "
               f"relaxed={rep['relaxed']}, SG kept={rep['sg_kept']}, lattice error={rep['lattice_max_error']}, "
               f"relaxed lattice={rep['relaxed_lattice']}){'' if rep['recovered'] else ' why not: ' + rep['why_not']}")


@main.group(cls=_Group)
def snapshot() -> None:
    """Materials Project snapshots (materials.parquet + manifest.json)."""


@snapshot.command("export")
@click.option("--out", "out_dir", required=True, type=click.Path(file_okay=False), help="Directory to write.")
@click.option("--max-elements", default=3, show_default=True, help="Export materials with at most this many elements.")
@click.option("--num-chunks", default=None, type=int, help="Stop after this many API pages (for a quick look).")
def snapshot_export(out_dir: str, max_elements: int, num_chunks: int | None) -> None:
    """Pull a snapshot from the live MP API (needs MP_API_KEY), e.g. on a login node."""
    from ml.mp_source import MissingApiKeyError, export_snapshot

    try:
        info = export_snapshot(out_dir, max_elements=max_elements, num_chunks=num_chunks, log=click.echo)
    except MissingApiKeyError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"wrote {info.n_materials} materials of {info.database_version} to {info.path}")
    click.echo(f"use it offline with: WYCRYST_SNAPSHOT={info.path}")


@snapshot.command("verify")
@click.argument("directory", type=click.Path(exists=True, file_okay=False))
def snapshot_verify(directory: str) -> None:
    """Check a snapshot directory's manifest, checksum and columns."""
    from ml.snapshot import SnapshotError, verify_snapshot

    try:
        info = verify_snapshot(directory)
    except SnapshotError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"ok: {info.database_version}, {info.n_materials} materials, sha256 {info.sha256}")


@main.group(cls=_Group)
def targets() -> None:
    """The target registry ($WYCRYST_TARGETS) and the `targets` partitions."""


@targets.command("sync")
def targets_sync() -> None:
    """Register every registry entry as a `targets` partition in the local instance."""
    import dagster as dg

    from wycryst_assets.partitions import current_registry, sync_target_partitions

    init_dagster_home()
    registry = current_registry()
    with dg.DagsterInstance.get() as instance:
        new = sync_target_partitions(instance, registry)
    click.echo(f"{len(registry.keys)} targets in {registry.path}; added {len(new)}: {', '.join(new) or '-'}")
    for name, reason in registry.invalid.items():
        click.echo(f"skipped {name}: {reason}", err=True)


@targets.command("list")
def targets_list() -> None:
    """Show the registry's targets and the entries that cannot be used (no Dagster, no torch)."""
    from ml.targets import load_registry

    registry = load_registry(settings.targets_file())
    for key in registry.keys:
        t = registry.targets[key]
        what = t.formula and f"{t.formula} SG {t.space_group}" or f"elements {','.join(t.elements)}"
        click.echo(f"{key:20s} {t.task:13s} {what}")
    for name, reason in registry.invalid.items():
        click.echo(f"{name:20s} INVALID       {reason}")


if __name__ == "__main__":
    main()
