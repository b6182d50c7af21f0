"""Code versions follow the code (wycryst_assets.versions), and Dagster's own staleness then
reports results of old code: through a real instance, a changed upstream code version marks the
upstream stale and, once it is re-materialized, its downstream assets."""

import shutil

import dagster as dg
import pytest

from tests.conftest import REPO_ROOT


@pytest.fixture
def repo_copy(tmp_path):
    for pkg in ("ml", "dft", "wycryst_assets"):
        shutil.copytree(REPO_ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_a_version_moves_with_the_modules_an_asset_runs_and_only_with_them(repo_copy):
    from wycryst_assets.versions import source_modules, source_version

    sampling, snapshot = "wycryst_assets.assets.sampling", "wycryst_assets.assets.snapshot"
    assert {"ml.filters", "ml.sampling", "ml.origins", "wycryst_assets.io"} <= set(source_modules(sampling, repo_copy))
    assert not any(m.startswith("wycryst_assets.assets.") and m != sampling for m in source_modules(sampling, repo_copy))
    before = {m: source_version(m, repo_copy) for m in (sampling, snapshot)}
    assert before[sampling] == source_version(sampling)  # the copy is the code itself

    filters = repo_copy / "ml" / "filters.py"
    text = filters.read_text()
    # a comment and a docstring edit do not move any version ...
    filters.write_text(text.replace('"""Reliability and feasibility', '"""Reliability (edited) and feasibility', 1)
                       + "\n# a comment\n")
    assert {m: source_version(m, repo_copy) for m in before} == before
    # ... a changed rule does, for the assets that run it only (filtered_genes, not mp_snapshot)
    filters.write_text(text.replace("DEFAULT_MAX_ATOMS_PER_CELL = 50", "DEFAULT_MAX_ATOMS_PER_CELL = 40"))
    assert source_version(sampling, repo_copy) != before[sampling]
    assert source_version(snapshot, repo_copy) == before[snapshot]


def _stale(instance, assets):
    """{asset: (status, causes)} from Dagster's own resolver (what the UI's GraphQL reports)."""
    from dagster._core.definitions.data_version import CachingStaleStatusResolver
    from dagster._core.loader import LoadingContextForTest

    from wycryst_assets.resources import warehouse_resource

    defs = dg.Definitions(assets=assets, resources={"warehouse": warehouse_resource()})
    resolver = CachingStaleStatusResolver(instance, defs.resolve_asset_graph(), LoadingContextForTest(instance))
    out = {}
    for a in assets:
        status = resolver.get_status(a.key)
        out[a.key.to_user_string()] = (status.value, [c.reason for c in resolver.get_stale_causes(a.key)])
    return out


def test_changed_upstream_code_marks_downstream_stale(wycryst_env, small_snapshot, monkeypatch):
    from wycryst_assets.assets.genes import wyckoff_genes
    from wycryst_assets.assets.sampling import synthesizability_model
    from wycryst_assets.assets.snapshot import mp_snapshot
    from wycryst_assets.resources import warehouse_resource

    monkeypatch.setenv("WYCRYST_SNAPSHOT", str(small_snapshot))
    resources = {"warehouse": warehouse_resource()}
    genes_cfg = {"ops": {"wyckoff_genes": {"config": {"processes": 1}}}}
    # wyckoff_genes as it would load after an edit of ml/gene_table.py: another code version
    edited = wyckoff_genes.map_asset_specs(lambda spec: spec.replace_attributes(code_version="edited-source"))
    with dg.DagsterInstance.get() as instance:
        assert instance.is_persistent
        assert dg.materialize([mp_snapshot, wyckoff_genes, synthesizability_model], instance=instance,
                              resources=resources, run_config=genes_cfg).success
        fresh = _stale(instance, [mp_snapshot, wyckoff_genes, synthesizability_model])
        assert {k: v[0] for k, v in fresh.items()} == {"mp_snapshot": "FRESH", "wyckoff_genes": "FRESH",
                                                       "synthesizability_model": "FRESH"}
        # the new code is deployed: the asset whose code changed is stale, with that cause
        after = _stale(instance, [mp_snapshot, edited, synthesizability_model])
        assert after["wyckoff_genes"] == ("STALE", ["has a new code version"])
        assert after["synthesizability_model"][0] == "FRESH"  # its input has not changed yet
        # re-materialized with the new code: its data version changes, so the downstream is stale
        assert dg.materialize([mp_snapshot, edited], selection=[edited], instance=instance, resources=resources,
                              run_config=genes_cfg).success
        later = _stale(instance, [mp_snapshot, edited, synthesizability_model])
    assert later["wyckoff_genes"][0] == "FRESH"
    assert later["synthesizability_model"] == ("STALE", ["has a new dependency data version"])
