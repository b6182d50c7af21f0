"""``forward_model``: the paper's forward regressor on the Wyckoff representation (5-fold CV)."""

from typing import Literal

import dagster as dg
from dagster_duckdb import DuckDBResource

from wycryst_assets.assets.genes import wyckoff_genes
from wycryst_assets.cpu import cpu_budget
from wycryst_assets.plots import markdown_table
from wycryst_assets.versions import source_version
from wycryst_assets.warehouse import read_table


class ForwardModelConfig(dg.Config):
    model: Literal["mlp", "hgb"] = "mlp"  # mlp (torch) | hgb (scikit-learn gradient boosting)
    epochs: int = 60
    n_splits: int = 5
    seed: int = 21


@dg.asset(
    group_name="pvae",
    kinds={"pytorch"},
    deps=[wyckoff_genes],
    code_version=source_version(__name__),
    description="Forward model (paper Table 1): E_f and band gap from the Wyckoff representation of "
    "the ternary genes, k-fold cross-validated; MAE / R^2 per fold as metadata.",
)
def forward_model(context: dg.AssetExecutionContext, config: ForwardModelConfig, warehouse: DuckDBResource):
    from ml.forward import ForwardConfig, cross_validate_forward
    from ml.plots import parity_png, png_markdown
    from ml.tensors import encode_table
    from ml.training import select_ternaries

    with warehouse.get_connection() as conn:
        genes = read_table(conn, "SELECT * FROM wyckoff_genes WHERE n_elements = 3")
    arrays = encode_table(select_ternaries(genes))
    cfg = ForwardConfig(model=config.model, epochs=config.epochs, n_splits=config.n_splits, seed=config.seed)
    meta: dict = {"genes": dg.MetadataValue.int(len(arrays)), "model": config.model,
                  "database_version": genes["database_version"][0]}
    for target in ("formation_energy", "band_gap"):
        with cpu_budget(context, torch_too=config.model == "mlp"):
            result = cross_validate_forward(arrays, target, cfg, log=context.log.info)
        meta[f"{target}_mae"] = dg.MetadataValue.float(round(result.mae, 5))
        meta[f"{target}_r2"] = dg.MetadataValue.float(round(result.r2, 5))
        meta[f"{target}_folds"] = dg.MetadataValue.md(markdown_table(
            [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in f.items()} for f in result.folds]))
        meta[f"{target}_parity"] = dg.MetadataValue.md(
            png_markdown(parity_png(result.true, result.predictions, label=target.replace("_", " ")),
                         f"{target} out-of-fold parity"))
    return dg.MaterializeResult(metadata=meta)
