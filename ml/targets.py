"""The target registry: leave-one-out targets and generation campaigns.

A registry is JSON shaped like ``../shared/data/targets.json``: ``{"targets": [entry, ...]}``.
Each entry needs ``partition`` (the Dagster partition key, e.g. ``CaTiO3-62``), ``task``
(``ground_state`` | ``polymorph`` | ``campaign``) and ``formula`` (LOO tasks) or ``elements``
(campaigns). Optional: ``space_group``, ``wyckoff``, ``equivalent_wyckoff``, lattices
(``lattice_experimental`` preferred, else ``lattice_published_dft``; a ``_rhombohedral`` suffix
marks a rhombohedral primitive cell), ``selection``, ``model_group`` (targets sharing one name
share one PVAE trained with all of them left out: :mod:`ml.model_groups`). Unknown keys are kept
but ignored.

An entry that cannot be used (unknown element, impossible Wyckoff configuration, missing field)
is not dropped: it lands in ``Registry.invalid`` with its reason.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ml.genes import GeneError, gene_key, normalize_formula, validate_gene

TASKS = ("ground_state", "polymorph", "campaign")


class TargetError(ValueError):
    """A registry entry that cannot be used, or a partition key with no entry."""


@dataclass(frozen=True)
class Target:
    partition: str
    task: str
    formula: str | None = None  # as written in the registry (e.g. CuInS2)
    space_group: int | None = None
    wyckoff: dict | None = None
    equivalent_wyckoff: tuple = ()
    elements: tuple[str, ...] = ()
    selection: dict = field(default_factory=dict)
    model_group: str | None = None  # leave-group-out: one PVAE for every target of the group
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def is_loo(self) -> bool:
        return self.task in ("ground_state", "polymorph")

    @property
    def reduced_formula(self) -> str | None:
        return normalize_formula(self.formula) if self.formula else None

    def gene_keys(self) -> set[str]:
        """Keys of the target gene and of every equivalent configuration it lists."""
        if not (self.formula and self.space_group and self.wyckoff):
            return set()
        keys = {gene_key(self.formula, self.space_group, self.wyckoff)}
        keys |= {gene_key(self.formula, self.space_group, w) for w in self.equivalent_wyckoff}
        return keys

    def lattice(self) -> tuple[dict | None, str | None]:
        """(reference lattice, which) — experimental preferred, else published DFT."""
        for name in ("lattice_experimental", "lattice_experimental_rhombohedral",
                     "lattice_published_dft", "lattice_published_dft_rhombohedral"):
            if self.raw.get(name):
                return dict(self.raw[name]), name
        return None, None


@dataclass
class Registry:
    path: Path | None
    targets: dict[str, Target]
    invalid: dict[str, str]  # partition (or entry index) -> reason

    def get(self, partition: str) -> Target:
        if partition in self.targets:
            return self.targets[partition]
        if partition in self.invalid:
            raise TargetError(f"target {partition!r} is in the registry but unusable: {self.invalid[partition]}")
        where = f" ({self.path})" if self.path else ""
        raise TargetError(
            f"no target {partition!r} in the registry{where}; known: {', '.join(sorted(self.targets))}. "
            "Add an entry with partition, task and formula/elements (see README, 'Adding a target')."
        )

    @property
    def keys(self) -> list[str]:
        return sorted(self.targets)


def parse_target(entry: dict) -> Target:
    """One registry entry -> :class:`Target`; raises :class:`TargetError` with the reason."""
    from pymatgen.core import Element

    if not isinstance(entry, dict):
        raise TargetError("entry is not an object")
    partition = entry.get("partition")
    if not partition or not isinstance(partition, str):
        raise TargetError("missing 'partition'")
    task = entry.get("task")
    if task not in TASKS:
        raise TargetError(f"task must be one of {TASKS}, got {task!r}")
    if task == "campaign":
        elements = entry.get("elements") or []
        if not elements:
            raise TargetError("a campaign needs 'elements'")
        bad = [e for e in elements if not Element.is_valid_symbol(e)]
        if bad:
            raise TargetError(f"unknown element(s) {bad}")
        return Target(partition, task, elements=tuple(sorted(set(elements))),
                      selection=dict(entry.get("selection") or {}), raw=entry)
    model_group = entry.get("model_group")
    if model_group is not None and (not isinstance(model_group, str) or not model_group.strip()):
        raise TargetError(f"'model_group' must be a non-empty string, got {model_group!r}")
    formula = entry.get("formula")
    if not formula:
        raise TargetError("a leave-one-out target needs 'formula'")
    try:
        normalize_formula(formula)
    except GeneError as exc:
        raise TargetError(f"unknown element in formula {formula!r}") from exc
    sg = entry.get("space_group")
    wyckoff = entry.get("wyckoff")
    equivalents = tuple(entry.get("equivalent_wyckoff") or ())
    if task == "polymorph" and not sg:
        raise TargetError("a polymorph target needs 'space_group'")
    if wyckoff is not None:
        if not sg:
            raise TargetError("'wyckoff' given without 'space_group'")
        for w in (wyckoff, *equivalents):
            try:
                validate_gene(formula, sg, w)
            except GeneError as exc:
                raise TargetError(f"impossible Wyckoff configuration {json.dumps(w)}: {exc}") from exc
    return Target(partition, task, formula=formula, space_group=int(sg) if sg else None, wyckoff=wyckoff,
                  equivalent_wyckoff=equivalents, elements=(), selection=dict(entry.get("selection") or {}),
                  model_group=model_group, raw=entry)


def load_registry(path: str | Path) -> Registry:
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise TargetError(f"cannot read target registry {path}: {exc}") from exc
    entries = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(entries, list):
        raise TargetError(f"{path} has no 'targets' list")
    targets: dict[str, Target] = {}
    invalid: dict[str, str] = {}
    for i, entry in enumerate(entries):
        name = entry.get("partition") if isinstance(entry, dict) and entry.get("partition") else f"entry-{i}"
        try:
            target = parse_target(entry)
        except TargetError as exc:
            invalid[name] = str(exc)
            continue
        if target.partition in targets:
            invalid[name] = "duplicate partition key"
            continue
        targets[target.partition] = target
    return Registry(path, targets, invalid)


def loo_excluded_ids(genes, target: Target) -> list[str]:
    """material_ids of ``genes`` (a polars DataFrame with material_id, formula, space_group,
    gene_key) equal to the target's gene or an equivalent configuration: same formula, same
    space group, same key. Campaigns and targets without a Wyckoff gene exclude nothing."""
    import polars as pl

    keys = target.gene_keys()
    if not target.is_loo or not keys:
        return []
    hit = genes.filter(
        (pl.col("formula") == target.reduced_formula)
        & (pl.col("space_group") == target.space_group)
        & pl.col("gene_key").is_in(sorted(keys))
    )
    return sorted(hit["material_id"].to_list())


def _campaign_pool(gene_elements, exclude=()) -> list[str]:
    """Sorted elements of ``gene_elements`` outside ``exclude`` that are neither noble gases nor
    radioactive (pymatgen's ``Element.is_noble_gas`` / ``is_radioactive``)."""
    from pymatgen.core import Element

    seen = {str(e) for els in gene_elements for e in els}
    return sorted(e for e in seen - set(exclude)
                  if Element.is_valid_symbol(e) and not Element(e).is_noble_gas and not Element(e).is_radioactive)


def unconditional_campaign(gene_elements, *, selection: dict | None = None) -> dict:
    """A registry entry for the generator with no chemical condition, the way the field's generators
    are scored (WyFormer's DFT table samples each model unconditionally on MP-20): every
    non-noble-gas, non-radioactive element of ``gene_elements`` (the training ternaries'
    ``slot_elements``), so the origins are all training ternaries of those elements. Partition
    ``campaign-unconditional``; ``selection`` is copied. Nothing is drawn or chosen: the entry is
    fixed by the training data."""
    pool = _campaign_pool(gene_elements)
    if not pool:
        raise ValueError("no elements in the training genes")
    return {"partition": "campaign-unconditional", "task": "campaign", "elements": pool,
            "selection": dict(selection or {}),
            "_about": f"unconditional campaign: all {len(pool)} non-noble-gas, non-radioactive elements of the "
                      f"training genes"}


def heldout_campaign(gene_elements, exclude, *, seed: int, n_elements: int = 24,
                     selection: dict | None = None) -> dict:
    """A registry entry for a generation campaign nobody tuned for: ``n_elements`` elements drawn
    (``random.Random(seed).sample`` over the sorted pool) from the elements of ``gene_elements``
    (an iterable of element lists, e.g. the training ternaries' ``slot_elements``) that are not in
    ``exclude`` (the campaign the settings were found on), not noble gases and not radioactive
    (pymatgen's ``Element.is_noble_gas`` / ``is_radioactive``). Partition ``campaign-heldout-<seed>``;
    ``selection`` (e.g. the other campaign's) is copied. Raises ValueError when the pool is smaller
    than ``n_elements``."""
    import random

    pool = _campaign_pool(gene_elements, exclude)
    if len(pool) < n_elements:
        raise ValueError(f"only {len(pool)} elements left to draw from, {n_elements} asked")
    elements = sorted(random.Random(seed).sample(pool, n_elements))
    return {"partition": f"campaign-heldout-{seed}", "task": "campaign", "elements": elements,
            "selection": dict(selection or {}),
            "_about": f"held-out campaign: {n_elements} elements drawn with seed {seed} from the {len(pool)} "
                      f"non-noble-gas, non-radioactive elements of the training genes outside "
                      f"{len(set(exclude))} excluded ones"}
