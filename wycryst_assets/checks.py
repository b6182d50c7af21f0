"""Asset checks: quality gates on the warehouse tables."""


import dagster as dg
from dagster_duckdb import DuckDBResource

from wycryst_assets.assets.genes import wyckoff_genes


@dg.asset_check(asset=wyckoff_genes, blocking=True,
                description="Every snapshot material is in exactly one of wyckoff_genes / wyckoff_gene_rejections.")
def every_material_accounted_for(warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as conn:
        materials, genes, rejections, both, missing, dup_genes = conn.execute(
            """
            SELECT
              (SELECT count(*) FROM materials),
              (SELECT count(*) FROM wyckoff_genes),
              (SELECT count(*) FROM wyckoff_gene_rejections),
              (SELECT count(*) FROM wyckoff_genes g JOIN wyckoff_gene_rejections r USING (material_id)),
              (SELECT count(*) FROM materials m
                 WHERE m.material_id NOT IN (SELECT material_id FROM wyckoff_genes)
                   AND m.material_id NOT IN (SELECT material_id FROM wyckoff_gene_rejections)),
              (SELECT count(*) - count(DISTINCT material_id) FROM wyckoff_genes)
            """
        ).fetchone()
    ok = both == 0 and missing == 0 and dup_genes == 0 and genes + rejections == materials
    return dg.AssetCheckResult(
        passed=bool(ok),
        metadata={
            "materials": materials,
            "genes": genes,
            "rejections": rejections,
            "in_both_tables": both,
            "in_neither_table": missing,
            "duplicate_gene_rows": dup_genes,
        },
    )


@dg.asset_check(asset=wyckoff_genes,
                description="Our space groups agree with MP's own (SpacegroupAnalyzer symprec=0.1) for >= 99 % of genes.")
def space_groups_agree_with_mp(warehouse: DuckDBResource) -> dg.AssetCheckResult:
    with warehouse.get_connection() as conn:
        total, agree = conn.execute(
            "SELECT count(*), count(*) FILTER (WHERE space_group = symmetry_number) FROM wyckoff_genes"
        ).fetchone()
    fraction = agree / total if total else 0.0
    return dg.AssetCheckResult(
        passed=fraction >= 0.99,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={"genes": total, "agreeing": agree, "fraction": round(fraction, 5)},
    )
