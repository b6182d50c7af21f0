"""Resources: the DuckDB warehouse (path from ``WYCRYST_HOME``) and where structure work runs."""

from __future__ import annotations

from typing import Literal, Optional

import dagster as dg
from dagster_duckdb import DuckDBResource

from wycryst_assets import settings


def warehouse_resource() -> DuckDBResource:
    """The warehouse at ``$WYCRYST_HOME/warehouse.duckdb`` (directory created on demand)."""
    path = settings.warehouse_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    return DuckDBResource(database=str(path))


class ComputeResource(dg.ConfigurableResource):
    """Where relaxations and phonons run: ``local`` processes (default) or ``slurm`` jobs through
    submitit (job arrays of ``chunk_size`` structures each, failed chunks resubmitted). Set from
    the environment: ``WYCRYST_COMPUTE=slurm``, ``WYCRYST_SLURM_PARTITION``, ``WYCRYST_SLURM_ACCOUNT``."""

    mode: Literal["local", "slurm"] = "local"
    max_workers: Optional[int] = None  # local processes; None: the run's CPU budget (wycryst_assets.cpu)
    chunk_size: int = 4
    max_resubmits: int = 1
    slurm_partition: str = "debug"
    time_minutes: int = 60
    cpus_per_task: int = 1
    gpus_per_task: int = 0
    account: Optional[str] = None

    def config(self, folder, threads: int | None = None, **overrides):
        """The executor settings: local workers = ``max_workers``, else ``threads`` (the run's CPU
        budget), each task one thread; ``overrides`` (e.g. ``chunk_size=1`` and a longer
        ``time_minutes`` for DFT, where one task is minutes to hours) win over the resource's."""
        from dft.hpc import ComputeConfig

        settings = dict(mode=self.mode, max_workers=self.max_workers or threads, chunk_size=self.chunk_size,
                        max_resubmits=self.max_resubmits, slurm_partition=self.slurm_partition,
                        time_minutes=self.time_minutes, cpus_per_task=self.cpus_per_task,
                        gpus_per_task=self.gpus_per_task, account=self.account or None, folder=folder)
        settings.update(overrides)
        return ComputeConfig(**settings)


def compute_resource() -> ComputeResource:
    return ComputeResource(
        mode=dg.EnvVar("WYCRYST_COMPUTE").get_value("local") or "local",
        slurm_partition=dg.EnvVar("WYCRYST_SLURM_PARTITION").get_value("debug") or "debug",
        account=dg.EnvVar("WYCRYST_SLURM_ACCOUNT").get_value(None) or None,
    )
