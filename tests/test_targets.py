"""Target registry, LOO exclusion and the `targets` partitions in a real Dagster instance."""

import json

import dagster as dg
import polars as pl
import pytest

from ml.gene_table import gene_row
from ml.targets import TargetError, load_registry, loo_excluded_ids, parse_target


def test_shared_registry_loads_all_seven(shared_data):
    reg = load_registry(shared_data / "targets.json")
    assert not reg.invalid
    assert set(reg.keys) == {"CaTiO3-62", "BaTiO3-160", "CaTiO3-221", "SrTiO3-221", "CsPbI3-221",
                             "CuInS2-122", "campaign-paper"}
    assert reg.get("campaign-paper").task == "campaign" and "Te" in reg.get("campaign-paper").elements
    with pytest.raises(TargetError, match="no target 'NaCl-225'"):
        reg.get("NaCl-225")


def test_bad_entries_are_recorded_not_dropped(tmp_path):
    entries = [
        {"partition": "SrTiO3-221", "formula": "SrTiO3", "space_group": 221, "task": "polymorph",
         "wyckoff": {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]}},
        {"partition": "XxTiO3-221", "formula": "XxTiO3", "space_group": 221, "task": "polymorph"},
        {"partition": "SrTiO3-bad", "formula": "SrTiO3", "space_group": 221, "task": "polymorph",
         "wyckoff": {"Sr": ["1a"], "Ti": ["1a"], "O": ["3d"]}},
        {"partition": "camp", "task": "campaign", "elements": ["Bi", "Qq"]},
        {"partition": "nofield", "task": "ground_state"},
    ]
    path = tmp_path / "targets.json"
    path.write_text(json.dumps({"targets": entries}))
    reg = load_registry(path)
    assert reg.keys == ["SrTiO3-221"]
    assert "unknown element" in reg.invalid["XxTiO3-221"]
    assert "impossible Wyckoff" in reg.invalid["SrTiO3-bad"] and "dof0_site_occupied_twice" in reg.invalid["SrTiO3-bad"]
    assert "Qq" in reg.invalid["camp"] and "formula" in reg.invalid["nofield"]
    with pytest.raises(TargetError, match="unusable"):
        reg.get("SrTiO3-bad")


def _genes_for(materials, ids):
    rows = materials.filter(pl.col("material_id").is_in(ids))
    return pl.DataFrame([gene_row(m, c)[0] for m, c in zip(rows["material_id"], rows["cif"])])


def test_loo_exclusion_drops_target_and_equivalents(materials, targets):
    # BaTiO3 R3m (mp-5020) and cubic CsPbI3 (mp-1069538: spglib gives Cs 1b / Pb 1a / I 3d, an
    # equivalent configuration of the registry's Cs 1a / Pb 1b / I 3c; matched by gene_key)
    other = materials.filter((pl.col("formula_pretty") == "BaTiO3") & (pl.col("material_id") != "mp-5020"))
    ids = ["mp-5020", "mp-1069538", *other["material_id"].to_list()]
    genes = _genes_for(materials, ids)
    by_key = {t["partition"]: parse_target(t) for t in targets}
    assert loo_excluded_ids(genes, by_key["BaTiO3-160"]) == ["mp-5020"]
    assert loo_excluded_ids(genes, by_key["CsPbI3-221"]) == ["mp-1069538"]
    # registry entries keep their published letters: either equivalent form alone (no
    # equivalent_wyckoff listed) is matched by gene_key to the stored row
    stored = json.loads(genes.filter(pl.col("material_id") == "mp-1069538")["wyckoff"][0])
    assert stored == {"Cs": ["1a"], "I": ["3c"], "Pb": ["1b"]}  # the canonical form (tests/test_gene_table_fast.py)
    for form in ({"Cs": ["1a"], "Pb": ["1b"], "I": ["3c"]}, {"Cs": ["1b"], "Pb": ["1a"], "I": ["3d"]}):
        one_form = parse_target({**by_key["CsPbI3-221"].raw, "wyckoff": form, "equivalent_wyckoff": []})
        assert loo_excluded_ids(genes, one_form) == ["mp-1069538"]
    assert loo_excluded_ids(genes, by_key["campaign-paper"]) == []


def test_sync_adds_registry_keys_to_the_instance(wycryst_env, shared_data):
    from wycryst_assets.partitions import sync_target_partitions, targets_partitions

    with dg.DagsterInstance.get() as instance:
        added = sync_target_partitions(instance)
        assert "CaTiO3-62" in added and len(added) == 7
        assert sync_target_partitions(instance) == []
        assert set(instance.get_dynamic_partitions(targets_partitions.name)) == set(added)


def test_sensor_requests_missing_partitions(wycryst_env):
    from wycryst_assets.sensors import target_registry_sync

    with dg.DagsterInstance.get() as instance:
        result = target_registry_sync(dg.build_sensor_context(instance=instance))
        assert isinstance(result, dg.SensorResult)
        (request,) = result.dynamic_partitions_requests
        assert request.partitions_def_name == "targets" and "SrTiO3-221" in request.partition_keys


def test_heldout_campaign_draws_outside_the_tuned_campaign():
    from ml.targets import heldout_campaign

    # pool by hand: {Na, Cl, K, Br, Mg, O, Ca, S} minus the excluded {Na, Cl}, minus Ar (noble gas)
    # and U, Tc (radioactive) -> [Br, Ca, K, Mg, O, S]
    genes = [["Na", "Cl", "O"], ["K", "Br", "O"], ["Mg", "Ar", "U"], ["Ca", "S", "Tc"], ["Na", "K", "Cl"]]
    entry = heldout_campaign(genes, ["Na", "Cl"], seed=3, n_elements=4, selection={"max_total_dof": 5})
    pool = ["Br", "Ca", "K", "Mg", "O", "S"]
    import random

    assert entry["elements"] == sorted(random.Random(3).sample(pool, 4))
    assert set(entry["elements"]) <= set(pool) and len(entry["elements"]) == 4
    assert entry["partition"] == "campaign-heldout-3" and entry["selection"] == {"max_total_dof": 5}
    assert heldout_campaign(genes, ["Na", "Cl"], seed=3, n_elements=4)["elements"] == entry["elements"]
    target = parse_target(entry)  # a registry entry the platform accepts as it stands
    assert target.task == "campaign" and set(target.elements) == set(entry["elements"])
    assert heldout_campaign(genes, ["Na", "Cl"], seed=4, n_elements=6)["elements"] == pool  # the whole pool
    with pytest.raises(ValueError, match="only 6 elements"):
        heldout_campaign(genes, ["Na", "Cl"], seed=0, n_elements=7)


def test_unconditional_campaign_takes_every_element_of_the_training_genes():
    from ml.targets import unconditional_campaign

    # by hand: {Na, Cl, O, K, Br, Mg, Ar, U, Ca, S, Tc} minus Ar (noble gas), U and Tc (radioactive)
    genes = [["Na", "Cl", "O"], ["K", "Br", "O"], ["Mg", "Ar", "U"], ["Ca", "S", "Tc"], ["Na", "K", "Cl"]]
    entry = unconditional_campaign(genes, selection={"max_total_dof": 5})
    assert entry["elements"] == ["Br", "Ca", "Cl", "K", "Mg", "Na", "O", "S"]
    assert entry["partition"] == "campaign-unconditional" and entry["selection"] == {"max_total_dof": 5}
    target = parse_target(entry)
    assert target.task == "campaign" and set(target.elements) == set(entry["elements"])
    with pytest.raises(ValueError, match="no elements"):
        unconditional_campaign([["Ar", "U"]])
