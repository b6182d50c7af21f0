"""Leave-group-out PVAE: one real (tiny) training serves every partition of a registry model group,
with every member left out; a second partition never retrains; ordinary targets keep their own."""

from __future__ import annotations

import json

import dagster as dg
import polars as pl
import pytest

from ml.gene_table import gene_row
from ml.model_groups import (group_fields, group_members, group_text, synthesizability_scope, train_target_model,
                              training_exclusion)
from ml.pvae import PVAEConfig
from ml.targets import load_registry
from tests.conftest import asset_runner

MEMBERS = ("mp-10884", "mp-1069538")  # AlFeCo2 (Fm-3m Heusler), CsPbI3 (Pm-3m)
LONER = "mp-5020"  # BaTiO3 R3m: a target without a group
TINY = PVAEConfig(max_epochs=1, latent_dim=16, batch_size=64)


def _entry(gene: dict, partition: str, group: str | None) -> dict:
    entry = {"partition": partition, "task": "polymorph", "formula": gene["formula"],
             "space_group": gene["space_group"], "wyckoff": json.loads(gene["wyckoff"])}
    if group:
        entry["model_group"] = group
    return entry


@pytest.fixture(scope="module")
def group_setup(materials, tmp_path_factory):
    """~250 real ternaries (the three targets included) and a registry: two members of group
    'bench', one target of its own."""
    from ml.snapshot import write_snapshot

    ternary = materials.filter(pl.col("nelements") == 3)
    keep = pl.concat([materials.filter(pl.col("material_id").is_in([*MEMBERS, LONER])),
                      ternary.sample(250, seed=11)]).unique("material_id", keep="first")
    base = tmp_path_factory.mktemp("groups")
    write_snapshot(keep, base / "snap", database_version="group-test-1", description="model group test subset")
    genes = {}
    for r in keep.filter(pl.col("material_id").is_in([*MEMBERS, LONER])).iter_rows(named=True):
        genes[r["material_id"]] = gene_row(r["material_id"], r["cif"])[0]
    doc = {"targets": [_entry(genes["mp-10884"], "AlFeCo2-225", "bench"),
                       _entry(genes["mp-1069538"], "CsPbI3-221", "bench"),
                       _entry(genes[LONER], "BaTiO3-160", None)]}
    (base / "targets.json").write_text(json.dumps(doc))
    rows = []
    for r in keep.iter_rows(named=True):
        g, _ = gene_row(r["material_id"], r["cif"])
        if g and g["n_elements"] == 3:
            rows.append({**g, "formation_energy_per_atom": r["formation_energy_per_atom"],
                         "band_gap": r["band_gap"]})
    return {"dir": base, "registry": load_registry(base / "targets.json"), "genes": pl.DataFrame(rows)}


def test_group_trains_once_with_every_member_left_out(group_setup, tmp_path):
    from ml.training import train_pvae

    registry, genes = group_setup["registry"], group_setup["genes"]
    a, b, loner = (registry.get(k) for k in ("AlFeCo2-225", "CsPbI3-221", "BaTiO3-160"))
    assert [t.partition for t in group_members(registry, a)] == ["AlFeCo2-225", "CsPbI3-221"]
    excluded, members = training_exclusion(genes, registry, b)
    assert set(MEMBERS) <= set(excluded) and LONER not in excluded and members == ["AlFeCo2-225", "CsPbI3-221"]
    own_excluded, own_members = training_exclusion(genes, registry, loner)
    assert LONER in own_excluded and not set(MEMBERS) & set(own_excluded) and own_members == ["BaTiO3-160"]

    calls = []

    def counted(*args, **kwargs):  # the real training, counted
        calls.append(args[2])
        return train_pvae(*args, **kwargs)

    groups = tmp_path / "groups"
    first = train_target_model(genes, registry, a, TINY, tmp_path / "AlFeCo2-225", groups, database_version="v1",
                               train=counted, log=None, accelerator="cpu", devices=1)
    second = train_target_model(genes, registry, b, TINY, tmp_path / "CsPbI3-221", groups, database_version="v1",
                                train=counted, log=None, accelerator="cpu", devices=1)
    assert (first.reused, second.reused, len(calls)) == (False, True, 1)
    assert second.result.checkpoint_path == first.result.checkpoint_path
    assert second.result.metrics == first.result.metrics
    assert second.result.train_latent.shape == first.result.train_latent.shape
    # no member is in the training set
    assert not set(MEMBERS) & set(second.result.train_material_ids)
    assert (tmp_path / "CsPbI3-221").is_dir()  # the partition's own folder exists for its model.json
    # origins come from the genes the model saw: none of the members
    assert not set(MEMBERS) & set(second.training_genes["material_id"].to_list())
    assert second.training_genes.height == genes.height - len(second.training_excluded_ids)
    assert group_fields(second) == {"model_group": "bench", "group_members": ["AlFeCo2-225", "CsPbI3-221"],
                                    "reused_group_model": True, "training_excluded_material_ids": excluded}
    assert group_text(first) == f"bench (2 members, trained; {len(excluded)} left out)"
    # another data version or config trains anew
    third = train_target_model(genes, registry, b, PVAEConfig(max_epochs=1, latent_dim=16, batch_size=64, seed=1),
                               tmp_path / "CsPbI3-221", groups, database_version="v1", train=counted, log=None,
                               accelerator="cpu", devices=1)
    assert not third.reused and len(calls) == 2
    # a target of its own trains into its own folder, every time, without the members left out
    own = train_target_model(genes, registry, loner, TINY, tmp_path / "BaTiO3-160", groups, database_version="v1",
                             train=counted, log=None, accelerator="cpu", devices=1)
    assert own.group is None and not own.reused and len(calls) == 3
    assert group_text(own) == "none (own model)" and LONER not in own.training_genes["material_id"].to_list()
    assert own.result.checkpoint_path.startswith(str(tmp_path / "BaTiO3-160"))
    assert set(MEMBERS) <= set(own.training_genes["material_id"].to_list())  # train or validation split


def test_second_partition_of_a_group_reuses_the_model_through_dagster(group_setup, wycryst_env, monkeypatch):
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.pvae import TrainingDevice, pvae_model
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.partitions import sync_target_partitions
    from wycryst_assets.resources import warehouse_resource

    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(group_setup["dir"] / "snap"))
    monkeypatch.setenv("WYCRYST_TARGETS", str(group_setup["dir"] / "targets.json"))
    resources = {"warehouse": warehouse_resource(), "training_device": TrainingDevice(accelerator="cpu", devices="1")}
    tiny = {"pvae_model": {"config": {"max_epochs": 1, "latent_dim": 16, "batch_size": 64}}}
    with dg.DagsterInstance.get() as instance:
        sync_target_partitions(instance)
        run = asset_runner(instance, resources)
        assert run([mp_snapshot, wyckoff_genes], config={"wyckoff_genes": {"config": {"processes": 1}}}).success
        first = run([pvae_model], "AlFeCo2-225", tiny)
        second = run([pvae_model], "CsPbI3-221", tiny)
    m1 = first.asset_materializations_for_node("pvae_model")[0].metadata
    m2 = second.asset_materializations_for_node("pvae_model")[0].metadata
    assert "trained" in m1["model_group"].value and "reused" in m2["model_group"].value
    assert m2["training_minutes"].value < m1["training_minutes"].value
    home = wycryst_env["home"] / "artifacts" / "pvae_model"
    j1 = json.loads((home / "AlFeCo2-225" / "model.json").read_text())
    j2 = json.loads((home / "CsPbI3-221" / "model.json").read_text())
    assert j1["checkpoint"] == j2["checkpoint"] and j2["reused_group_model"] and not j1["reused_group_model"]
    # each partition's own held-out material is what it treats as unpublished; training left out both
    assert j1["excluded_material_ids"] == ["mp-10884"] and j2["excluded_material_ids"] == ["mp-1069538"]
    assert j1["training_excluded_material_ids"] == j2["training_excluded_material_ids"]
    assert set(MEMBERS) <= set(j2["training_excluded_material_ids"])


def test_two_members_started_together_train_the_group_once(group_setup, tmp_path):
    """The run queue runs two partitions at once: the second waits for the first's training (a
    lock per group cache entry) and reuses it."""
    import threading

    from ml.training import train_pvae

    registry, genes = group_setup["registry"], group_setup["genes"]
    calls, out = [], {}

    def counted(*args, **kwargs):
        calls.append(args[2])
        return train_pvae(*args, **kwargs)

    def member(key):
        out[key] = train_target_model(genes, registry, registry.get(key), TINY, tmp_path / key, tmp_path / "groups",
                                      database_version="v1", train=counted, log=None, accelerator="cpu", devices=1)

    threads = [threading.Thread(target=member, args=(k,)) for k in ("AlFeCo2-225", "CsPbI3-221")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(calls) == 1 and sorted(m.reused for m in out.values()) == [False, True]
    assert out["AlFeCo2-225"].result.checkpoint_path == out["CsPbI3-221"].result.checkpoint_path


def test_synthesizability_scope_follows_the_model_group():
    group = {"model_group": "loo bench", "excluded_material_ids": ["mp-2"],
             "training_excluded_material_ids": ["mp-3", "mp-1", "mp-2"]}
    assert synthesizability_scope(group, "A-1") == ("group-loo_bench", ["mp-1", "mp-2", "mp-3"])
    other_member = {**group, "excluded_material_ids": ["mp-1"]}
    assert synthesizability_scope(other_member, "B-2") == synthesizability_scope(group, "A-1")  # one classifier
    assert synthesizability_scope({"model_group": None, "excluded_material_ids": ["mp-9"]}, "C-3") == ("C-3", ["mp-9"])
    assert synthesizability_scope({"excluded_material_ids": []}, "D-4") == ("D-4", [])
