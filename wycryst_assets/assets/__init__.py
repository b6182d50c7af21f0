"""The assets, one module per family. How an asset is written here (new ones follow it):

* **Body = read -> call -> write -> metadata**, at most ~30 lines (tests/test_asset_layout.py fails
  above 40): read tables with ``wycryst_assets.warehouse.read_table``, call plain functions of
  ``ml``/``dft`` (every verdict, threshold default and selection rule lives there, with its own
  unit test), write with ``replace_partition`` / ``replace_tables``, return
  ``dg.MaterializeResult(metadata=...)`` (a module-level ``_metadata(...)`` helper may format it).
  Heavy libraries (torch, pymatgen, CHGNet) are imported inside the body, so loading the
  definitions stays fast.
* **Config**: a ``dg.Config`` with ``Literal[...]`` for modes and ``Optional[...] = None`` for "no
  limit / task default" -- never sentinels such as -1; Dagster rejects a wrong value at launch.
* **Code version**: ``code_version=source_version(__name__)`` (wycryst_assets.versions): the
  hash of this module and the ``ml``/``dft`` modules it imports, so the UI marks results of old
  code stale. Don't pin a hand-written version; don't return a ``data_version`` unless the data
  comes from outside (only ``mp_snapshot``: MP's database version).
* **CPU**: CPU-heavy work runs inside ``with cpu_budget(context) as threads:``
  (wycryst_assets.cpu), process pools sized by ``threads``.
* **Shared helpers** come from public modules (``wycryst_assets.io``, ``dft.pipeline``); an asset
  module imports another asset module only for ``deps=[...]``.
* Bad input is a recorded verdict (a row with a reason), not a crash; a missing upstream is a
  ``dg.Failure`` that says what to materialize first.
"""
