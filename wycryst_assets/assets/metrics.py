"""``generator_metrics``: the generator scored the way the field scores generators."""

import dagster as dg
from dagster_duckdb import DuckDBResource

from wycryst_assets.assets.sampling import filtered_genes
from wycryst_assets.assets.structures import phonon_verdicts, relaxed_structures, trial_structures
from wycryst_assets.automation import REPORT_AUTOMATION
from wycryst_assets.partitions import current_registry, targets_partitions
from wycryst_assets.plots import markdown_table, rounded_rows
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_partition, replace_partition


class GeneratorMetricsConfig(dg.Config):
    """Which energies decide (a rescoring may add its own E_hull column to relaxed_structures)."""

    energy_column: str = "e_above_hull"  # E_hull on MP's scale, a relaxed_structures column
    energy_model: str = ""  # "": the relaxed rows' `relaxer`
    sun_thresholds: list[float] = [0.0, 0.08]  # eV/atom: WyFormer's S.U.N. (<= 0 and <= 0.08)
    metasun_threshold: float = 0.1  # LeMat-GenBench MetaSUN; the paper's phonon cut
    diversity_threshold: float = 0.08  # diversity is counted among S.U.N. at this threshold


@dg.asset(
    group_name="report",
    kinds={"duckdb"},
    partitions_def=targets_partitions,
    deps=[filtered_genes, trial_structures, relaxed_structures, phonon_verdicts],
    pool="duckdb_writer",
    code_version=source_version(__name__),
    automation_condition=REPORT_AUTOMATION,
    description="Validity, uniqueness, novelty, symmetry, S.U.N. / MetaSUN, dynamical stability and "
    "diversity of the partition's generator, each with its denominator and the energy model that "
    "decided it, beside the published anchors (WyFormer DFT, LeMat-GenBench, PhononBench); the paper's "
    "named materials traced through the funnel. DuckDB `generator_metrics`, `generator_trace`.",
)
def generator_metrics(context: dg.AssetExecutionContext, config: GeneratorMetricsConfig, warehouse: DuckDBResource):
    from dft.generator_report import TABLES, generator_report
    from ml.benchmark_anchors import anchor_rows
    from ml.generator_metrics import MetricsConfig, headline, metrics_markdown

    key = context.partition_key
    with warehouse.get_connection() as conn:
        tables = {t: read_partition(conn, t, key) for t in TABLES}
    report = generator_report(tables, target=current_registry().get(key), config=MetricsConfig(
        energy_column=config.energy_column, energy_model=config.energy_model or None,
        sun_thresholds=tuple(config.sun_thresholds), metasun_threshold=config.metasun_threshold,
        diversity_threshold=config.diversity_threshold))
    with warehouse.get_connection() as conn:
        replace_partition(conn, "generator_metrics", key, report.metrics)
        if report.trace is not None:
            replace_partition(conn, "generator_trace", key, report.trace)
    values = {k: dg.MetadataValue.float(round(v, 4)) for k, v in headline(report.metrics).items() if v is not None}
    meta = {**values, "selection": report.selection, "budget": dg.MetadataValue.int(report.budget),
            "metrics": dg.MetadataValue.md(metrics_markdown(report.metrics)),
            "anchors_wyformer_dft": dg.MetadataValue.md(markdown_table(anchor_rows()))}
    if report.trace is not None:
        meta["paper_materials"] = dg.MetadataValue.md(markdown_table(rounded_rows(report.trace.to_dicts())))
    return dg.MaterializeResult(metadata=meta)
