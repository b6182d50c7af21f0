"""pvae_model for one target partition through a real Dagster instance: a tiny training run
writes a loadable checkpoint, the LOO exclusion and the metrics."""

import json

import dagster as dg
import polars as pl
import pytest

from tests.conftest import KEY_MATERIALS, asset_runner, materialize_through_sampling


@pytest.fixture(scope="module")
def training_snapshot(materials, tmp_path_factory):
    """~400 real ternaries incl. cubic CsPbI3 (mp-1069538) and every other SG-221 ternary sampled."""
    from ml.snapshot import write_snapshot

    ternary = materials.filter(pl.col("nelements") == 3)
    keep = pl.concat([
        materials.filter(pl.col("material_id").is_in(list(KEY_MATERIALS))),
        ternary.filter(pl.col("symmetry_number") == 221).head(40),
        ternary.sample(360, seed=7),
    ]).unique("material_id", keep="first")
    out = tmp_path_factory.mktemp("train") / "snap"
    write_snapshot(keep, out, database_version="train-test-1", description="training test subset")
    return out


def test_tiny_training_through_dagster(wycryst_env, training_snapshot, monkeypatch):
    from ml.training import load_pvae
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.pvae import TrainingDevice, pvae_model
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.resources import warehouse_resource

    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(training_snapshot))
    resources = {"warehouse": warehouse_resource(), "training_device": TrainingDevice(accelerator="cpu", devices="1")}
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        base = dg.materialize([mp_snapshot, wyckoff_genes], instance=instance, resources=resources,
                              run_config={"ops": {"wyckoff_genes": {"config": {"processes": 1}}}})
        assert base.success
        result = dg.materialize(
            [pvae_model], instance=instance, resources=resources, partition_key="CsPbI3-221",
            run_config={"ops": {"pvae_model": {"config": {"max_epochs": 2, "latent_dim": 32, "batch_size": 64}}}},
            selection=[pvae_model], raise_on_error=False,
        )
    meta = result.asset_materializations_for_node("pvae_model")[0].metadata
    assert meta["excluded_material_ids"].value == ["mp-1069538"]
    for key in ("element_accuracy", "wyckoff_accuracy", "space_group_accuracy"):
        assert 0.0 <= meta[key].value <= 1.0
    assert meta["ef_mae"].value >= 0 and meta["epoch_seconds"].value > 0 and meta["epochs"].value == 2
    assert "data:image/png;base64," in meta["plots"].value
    model_json = json.loads((wycryst_env["home"] / "artifacts/pvae_model/CsPbI3-221/model.json").read_text())
    assert model_json["excluded_material_ids"] == ["mp-1069538"]
    module = load_pvae(model_json["checkpoint"])
    assert module.hparams is not None
    # a 2-epoch model is far below the paper: the blocking reconstruction check says so
    (check,) = result.get_asset_check_evaluations()
    assert check.check_name == "reconstruction_quality"
    assert check.passed == (meta["element_accuracy"].value >= 0.95 and meta["space_group_accuracy"].value >= 0.80)
    assert result.success == check.passed  # the check is blocking: a failed check fails the partition
    assert check.severity == dg.AssetCheckSeverity.ERROR and check.metadata["epochs"].value == 2


def test_campaign_trains_short_and_its_reconstruction_check_warns(wycryst_env, training_snapshot, monkeypatch):
    """A campaign partition without max_epochs trains CAMPAIGN_MAX_EPOCHS (a leave-one-out one
    LOO_MAX_EPOCHS), and a reconstruction below the gate warns instead of stopping the partition;
    the same failure on a leave-one-out partition stops it (test above). Its latent sampling starts
    from the campaign's ternaries on the snapshot's hull when the ground-state limit is set."""
    import duckdb
    from ml.pvae_config import CAMPAIGN_MAX_EPOCHS, LOO_MAX_EPOCHS, default_max_epochs
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.pvae import TrainingDevice, pvae_model
    from wycryst_assets.assets.sampling import sampled_genes
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.partitions import current_registry, sync_target_partitions
    from wycryst_assets.resources import warehouse_resource

    assert (default_max_epochs("campaign"), default_max_epochs("polymorph"),
            default_max_epochs("ground_state")) == (CAMPAIGN_MAX_EPOCHS, LOO_MAX_EPOCHS, LOO_MAX_EPOCHS)
    assert CAMPAIGN_MAX_EPOCHS < LOO_MAX_EPOCHS
    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(training_snapshot))
    resources = {"warehouse": warehouse_resource(), "training_device": TrainingDevice(accelerator="cpu", devices="1")}
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        assert dg.materialize([mp_snapshot, wyckoff_genes], instance=instance, resources=resources,
                              run_config={"ops": {"wyckoff_genes": {"config": {"processes": 1}}}}).success
        result = dg.materialize(
            [pvae_model], instance=instance, resources=resources, partition_key="campaign-paper",
            run_config={"ops": {"pvae_model": {"config": {"latent_dim": 16, "batch_size": 64}}}},
            raise_on_error=False,
        )
        # the campaign keeps every origin by default; the ground-state limit keeps those on the hull
        sampled = dg.materialize([sampled_genes], instance=instance, resources=resources, partition_key="campaign-paper",
                                 run_config={"ops": {"sampled_genes": {"config": {
                                     "samples_per_origin": 20, "max_origin_e_above_hull": 0.0}}}})
        # an explicit limit that leaves no origin fails the partition with a clear reason
        none_left = dg.materialize([sampled_genes], instance=instance, resources=resources,
                                   partition_key="campaign-paper", raise_on_error=False, run_config={
                                       "ops": {"sampled_genes": {"config": {"max_origin_e_above_hull": -1.0}}}})
    assert not none_left.success
    assert "max_origin_e_above_hull" in str(none_left.failure_data_for_node("sampled_genes").error)
    meta = result.asset_materializations_for_node("pvae_model")[0].metadata
    assert meta["epochs"].value == CAMPAIGN_MAX_EPOCHS and meta["excluded_material_ids"].value == []
    (check,) = result.get_asset_check_evaluations()
    assert not check.passed  # a 3-epoch model on ~400 genes is far below the gate
    assert check.severity == dg.AssetCheckSeverity.WARN and check.metadata["task"].value == "campaign"
    assert result.success  # warned, not stopped

    # independent count: ternary genes made only of the campaign's elements, and those on the hull
    allowed = set(current_registry().get("campaign-paper").elements)
    con = duckdb.connect(str(wycryst_env["home"] / "warehouse.duckdb"), read_only=True)
    rows = con.execute("SELECT slot_elements, energy_above_hull FROM wyckoff_genes WHERE n_elements = 3").fetchall()
    hits = con.execute("SELECT sum(hits) FROM sampled_genes WHERE target = 'campaign-paper'").fetchone()[0]
    con.close()
    in_campaign = [e_hull for elements, e_hull in rows if set(elements) <= allowed]
    on_hull = sum(e_hull == 0 for e_hull in in_campaign)
    assert 0 < on_hull < len(in_campaign)  # the limit bites on this snapshot
    origins = sampled.asset_materializations_for_node("sampled_genes")[0].metadata["origins"].value
    assert origins.startswith(f"{on_hull} ") and f"ground states (E_hull = 0): {on_hull} of {len(in_campaign)}" in origins
    assert hits == 20 * on_hull  # every latent point came from an on-hull origin
    manifest = json.loads((wycryst_env["home"] / "artifacts" / "pvae_model" / "campaign-paper" / "model.json").read_text())
    assert manifest["n_origins"] == len(in_campaign)  # the model's default origins: every one


def test_unknown_partition_fails_clearly(wycryst_env):
    from wycryst_assets.assets.pvae import TrainingDevice, pvae_model
    from wycryst_assets.partitions import targets_partitions
    from wycryst_assets.resources import warehouse_resource

    with dg.DagsterInstance.get() as instance:
        instance.add_dynamic_partitions(targets_partitions.name, ["NaCl-225"])
        result = dg.materialize([pvae_model], instance=instance, partition_key="NaCl-225",
                                resources={"warehouse": warehouse_resource(), "training_device": TrainingDevice()},
                                raise_on_error=False)
    assert not result.success
    assert "no target 'NaCl-225' in the registry" in str(result.failure_data_for_node("pvae_model").error)


def test_tiny_partition_from_genes_to_filtered_genes(wycryst_env, training_snapshot, monkeypatch):
    """Snapshot -> genes -> synthesizability -> PVAE -> sampled -> filtered for one LOO partition,
    plus the forward model, every step a run in the real instance writing the real warehouse."""
    import duckdb

    from wycryst_assets.assets.forward import forward_model
    from wycryst_assets.assets.pvae import TrainingDevice
    from wycryst_assets.assets.sampling import filtered_genes, sampled_genes
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.resources import warehouse_resource

    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(training_snapshot))
    resources = {"warehouse": warehouse_resource(), "training_device": TrainingDevice(accelerator="cpu", devices="1")}
    key = "CsPbI3-221"
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        run = asset_runner(instance, resources)
        sampled = materialize_through_sampling(run, key, samples_per_origin=50)
        assert sampled.success
        filtered = run([filtered_genes], key)
        assert filtered.success
        again = run([sampled_genes], key, {"sampled_genes": {"config": {"samples_per_origin": 50}}})
        assert again.success
        forward = run([forward_model], config={"forward_model": {"config": {"model": "hgb", "n_splits": 2}}})
        assert forward.success

    meta = filtered.asset_materializations_for_node("filtered_genes")[0].metadata
    assert "held_out_gene_sampled" in meta and "| stage |" in meta["funnel"].value
    con = duckdb.connect(str(wycryst_env["home"] / "warehouse.duckdb"), read_only=True)
    n_sampled, hits = con.execute("SELECT count(*), sum(hits) FROM sampled_genes WHERE target = ?", [key]).fetchone()
    n_origins = sampled.asset_materializations_for_node("sampled_genes")[0].metadata["origins"].value.split()[0]
    assert hits == 50 * int(n_origins)  # re-materializing replaced the partition's rows
    n_filtered, n_passed = con.execute(
        "SELECT count(*), count(*) FILTER (WHERE passed) FROM filtered_genes WHERE target = ?", [key]).fetchone()
    assert n_filtered == n_sampled and n_passed <= n_filtered  # every sampled gene has a verdict
    con.close()
    fmeta = forward.asset_materializations_for_node("forward_model")[0].metadata
    assert fmeta["formation_energy_mae"].value > 0
