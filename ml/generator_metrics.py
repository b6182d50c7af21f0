"""Generator metrics the way the field scores generators, from rows the platform already has.

:func:`generator_metrics` turns one partition's ``filtered_genes``, ``trial_structures``,
``relaxed_structures`` and ``phonon_verdicts`` rows into one row per metric (:data:`METRIC_SCHEMA`):
its value, numerator, denominator, *what* the denominator counts, what decided it (the energy
model for every energy-based metric), the published anchors (theirs, see
:mod:`ml.benchmark_anchors`) and the protocol differences between their number and ours
(:data:`PROTOCOL_DIFFERENCES`). Any input may be missing (a stage not run yet): its metrics are
then rows with a null value and a note, never an error.

Populations (each metric names its own):

generated samples
    the latent points decoded, i.e. ``hits`` summed over ``filtered_genes`` (each row is one
    distinct gene, equivalent Wyckoff configurations folded by ``gene_key``). Sample-level
    rates are hits-weighted: the field's "fraction of generated samples".
selected genes
    the genes given the relaxation budget (distinct ``gene_key`` in ``trial_structures``),
    whatever happened to them after; failures count against every rate over this population
    (as the anchors count DFT failures as "unreal structures").
relaxed genes
    selected genes with a relaxed structure and energy (the best trial of each: lowest energy,
    converged and symmetry-kept preferred).

Definitions:

* validity: SMACT charge neutrality + electronegativity (``formula_ok``), Wyckoff validity
  (``wyckoff_ok``) over generated samples; PyXtal-buildable (a trial with ``verdict == 'ok'``)
  over selected genes; min interatomic distance > ``min_distance`` after relaxation over relaxed
  genes (``min_distance_relaxed`` column, from :func:`dft.structure_facts.relaxed_structure_facts`).
* uniqueness: distinct gene keys / generated samples (LeMat-GenBench's #unique(G) / #G); after
  relaxation, distinct crystals (``crystal_id``, :func:`dft.matching.same_crystal`) / relaxed genes.
* novelty: Wyckoff-valid samples whose gene is not a snapshot gene (``novel``; a leave-one-out
  target's own genes count as unpublished) / Wyckoff-valid samples; relaxed genes whose structure
  matches no snapshot structure (``is_novel``, StructureMatcher) / relaxed genes.
* symmetry: relaxed SG (``sg_after``, spglib 1e-3) equal to the gene's SG / relaxed genes; P1
  share of novel valid samples.
* S.U.N. (WyFormer's definition): ``sample novelty x #S.U.N. / #selected`` where a S.U.N. gene
  has E_hull <= t, is novel, and counts once per distinct crystal; also the bare
  ``#S.U.N. / #selected``. MetaSUN (LeMat-GenBench): ``0 < E_hull <= 0.1``, unique, novel /
  selected; and both together (E_hull <= 0.1).
* dynamical stability: ``stable`` / phonon-computed (stable + unstable + failed); phonon-stable
  S.U.N. (E_hull <= the MetaSUN threshold, the paper's and ``sun_report``'s cut) / selected.
* diversity among S.U.N. (E_hull <= ``diversity_threshold``, one row per crystal): distinct
  space groups, prototypes (:func:`prototype_label`, anonymous AFLOW-like gene labels) and
  chemical systems.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import reduce

import polars as pl

from ml import benchmark_anchors as anchors
from ml.selection import chemical_system

METRIC_SCHEMA = {
    "group": pl.String, "metric": pl.String, "value": pl.Float64, "numerator": pl.Float64,
    "denominator": pl.Float64, "ci95_low": pl.Float64, "ci95_high": pl.Float64, "denominator_is": pl.String, "decided_by": pl.String, "selection": pl.String,
    "published": pl.String, "protocol_differences": pl.String, "notes": pl.String,
}

# Differences between the anchors' protocols and ours, referenced by key from the metric rows.
PROTOCOL_DIFFERENCES = {
    "energy": "ours: MLIP energies (the model in `decided_by`), MP2020-compatible, E_hull against the "
              "snapshot's hull (a subset of MP: hulls can be shallower, E_hull biased low; how often a stable "
              "call survives MP's full hull: benchmarks/hull_sparsity.py); theirs: VASP PBE "
              "against MP (WyFormer) or an MLIP ensemble against LeMat-Bulk (LeMat-GenBench)",
    "relaxation": "ours: FixSymmetry + FrechetCellFilter relaxation of the best of DoF+1 PyXtal trials per "
                  "gene (the space group cannot drop; several starting points per gene); theirs: one free "
                  "relaxation per sample",
    "sample": "ours: the relaxation sample is drawn from *passed* genes (SMACT, Wyckoff, ternary, novelty, "
              "elements, size, predicted E_f, synthesizability filters) by the rule in `selection`; theirs: "
              "~105 random unique novel raw samples (random_by_hits reproduces their draw)",
    "novelty_level": "ours: sample novelty at gene level (gene_key, equivalent configurations folded, vs the "
                     "snapshot's genes; a gene can match yet relax to a new structure, so this is a lower "
                     "bound); theirs: Wyckoff fingerprint then StructureMatcher vs MP-20 train+val",
    "reference": "ours: novelty and hull against the offline MP snapshot (leave-one-out partitions exclude the "
                 "held-out material and its equivalent genes); theirs: MP-20 (<= 20 atoms/cell) or LeMat-Bulk",
    "uniqueness": "ours: distinct crystals by dft.matching.same_crystal (tight StructureMatcher + equal "
                  "energies within 1 meV/atom); theirs: StructureMatcher at default tolerances (WyFormer) or "
                  "BAWL fingerprints (LeMat)",
    "validity": "ours: SMACT (charge neutrality + Pauling test) on the formula, PyXtal Wyckoff tables on the "
                "gene; LeMat: bond-valence / pymatgen oxidation states on the structure, min distance > 0.5 x "
                "the sum of atomic radii; CDVAE-style: min distance > 0.5 A on unrelaxed structures",
    "phonons": "ours: phonopy finite displacements with the phonon model (phonon_verdicts.phonon_model; the "
               "structure relaxed with it first) on the decider's structure of genes under the phonon_verdicts limits (E_hull, top-N), stable when nothing below -0.1 THz (acoustic "
               "modes near Gamma excepted); PhononBench: MatterSim on all generated structures, -0.1 THz",
    "metasun": "LeMat-GenBench counts MetaSUN as 0 < E_hull <= 0.1 (stable structures excluded); the "
               "combined row counts E_hull <= 0.1",
    "sample_size": "ours: the population sizes in `denominator`; theirs: ~105 DFT relaxations per generator "
                   "(WyFormer; one S.U.N. structure moves a rate by ~1 %)",
}


@dataclass(frozen=True)
class MetricsConfig:
    """Which energies decide, and the thresholds (eV/atom)."""

    energy_column: str = "e_above_hull"  # a relaxed-rows column of E_hull values (a rescoring may add its own)
    energy_model: str | None = None  # None: the relaxed rows' ``relaxer`` values
    sun_thresholds: tuple[float, ...] = (0.0, 0.08)
    metasun_threshold: float = 0.1
    diversity_threshold: float = 0.08
    min_distance: float = 0.5  # Angstrom
    loo: bool = False  # a leave-one-out partition (its held-out genes count as unpublished)
    selection: str | None = None  # the ranking that chose the relaxation sample (read from trials if None)


@dataclass
class _Row:
    group: str
    metric: str
    value: float | None
    numerator: float | None
    denominator: float | None
    denominator_is: str
    decided_by: str
    published: str = ""
    protocol: Sequence[str] = ()
    notes: str = ""


def wilson_interval(k: float, n: float, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a proportion k / n (binomial sampling of the n items): what
    a rate over ~100 relaxed genes can and cannot tell apart (23 of 100: 16-32 %)."""
    if n <= 0:
        return math.nan, math.nan
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _ratio(num, den):
    return None if num is None or not den else float(num) / float(den)


def _col(df: pl.DataFrame | None, name: str) -> bool:
    return df is not None and name in df.columns


def _hits(df: pl.DataFrame, mask: pl.Expr | None = None) -> float:
    sel = df if mask is None else df.filter(mask)
    return float(sel["hits"].fill_null(0).sum()) if sel.height else 0.0


def prototype_label(formula: str | None, space_group, wyckoff) -> str | None:
    """An anonymous AFLOW-like prototype label of a gene: reduced anonymous stoichiometry, space
    group and the Wyckoff letters of each species, species ordered by (count, letters) and named
    A, B, C..., minimised over the space group's equivalent settings. CuInSe2 and AgGaTe2 in the
    chalcopyrite configuration share one label (``AB2C4``-like patterns differ by site letters).
    ``None`` for a gene that is not valid."""
    from ml.genes import GeneError, equivalent_configurations
    from ml.wyckoff import parse_site_label

    try:
        w = json.loads(wyckoff) if isinstance(wyckoff, str) else dict(wyckoff or {})
        sg = int(space_group)
        variants = equivalent_configurations(sg, w)
    except (GeneError, ValueError, TypeError, KeyError):
        return None
    labels = []
    for text in variants:
        species = []
        for sites in json.loads(text).values():
            parsed = [parse_site_label(s) for s in sites]
            species.append((sum(m for m, _ in parsed), "".join(sorted(letter for _, letter in parsed))))
        species.sort()
        gcd = reduce(math.gcd, [c for c, _ in species]) or 1
        names = [chr(ord("A") + i) for i in range(len(species))]
        stoich = "".join(n + ("" if c // gcd == 1 else str(c // gcd)) for n, (c, _) in zip(names, species))
        labels.append(f"{stoich}_{sg}_" + "_".join(letters for _, letters in species))
    return min(labels) if labels else None


def _best_rows(relaxed: pl.DataFrame | None) -> pl.DataFrame | None:
    if relaxed is None:
        return None
    if "best_trial" in relaxed.columns:
        return relaxed.filter(pl.col("best_trial").fill_null(False))
    return relaxed.sort("energy_per_atom", nulls_last=True).unique("gene_key", keep="first", maintain_order=True)


def _energy_model(best: pl.DataFrame | None, config: MetricsConfig) -> str:
    if config.energy_model:
        model = config.energy_model
    elif _col(best, "energy_model") and best.height:  # the cascade's table: name each model and its share
        counts = best.group_by("energy_model").len().sort("len", descending=True).rows()
        model = " + ".join(f"{m} ({n} genes)" for m, n in counts)
    elif _col(best, "relaxer") and best.height:
        model = ",".join(sorted({str(r) for r in best["relaxer"].drop_nulls().to_list()})) or "unknown model"
    else:
        return "(no relaxed rows)"
    return f"{model} ({config.energy_column})"


def _distinct_crystals(rows: pl.DataFrame) -> int:
    if rows.is_empty():
        return 0
    if "crystal_id" in rows.columns:
        return int(rows["crystal_id"].n_unique())
    return int(rows["gene_key"].n_unique())


def _selection(trials: pl.DataFrame | None, config: MetricsConfig) -> str:
    if config.selection:
        return config.selection
    if _col(trials, "selection") and trials.height:
        values = sorted({str(v) for v in trials["selection"].drop_nulls().to_list()})
        if values:
            return ",".join(values)
    return "unknown"


def generator_metrics(filtered: pl.DataFrame | None, trials: pl.DataFrame | None, relaxed: pl.DataFrame | None,
                      phonons: pl.DataFrame | None, config: MetricsConfig | None = None) -> pl.DataFrame:
    """One row per metric (:data:`METRIC_SCHEMA`), in the order validity, uniqueness, novelty,
    symmetry, stability, dynamics, diversity. Inputs are one partition's rows (None: not there)."""
    config = config or MetricsConfig()
    best = _best_rows(relaxed)
    if best is not None and config.energy_column not in best.columns:
        raise ValueError(f"energy column {config.energy_column!r} not in the relaxed rows "
                         f"(have: {', '.join(best.columns)})")
    decided = _energy_model(best, config)
    selection = _selection(trials, config)
    rows: list[_Row] = []
    add = rows.append
    missing = {name: df is None for name, df in
               (("filtered_genes", filtered), ("trial_structures", trials), ("relaxed_structures", relaxed),
                ("phonon_verdicts", phonons))}

    def absent(table: str) -> str:
        return f"{table} not materialized for this partition" if missing[table] else ""

    # ---------------------------------------------------------------- samples (filtered_genes)
    samples = valid_samples = novel_valid = None
    if filtered is not None:
        filtered = filtered.with_columns(pl.col("hits").fill_null(0))
        samples = _hits(filtered)
        valid = pl.col("wyckoff_ok").fill_null(False)
        valid_samples = _hits(filtered, valid)
        novel_valid = _hits(filtered, valid & pl.col("novel").fill_null(False))
        smact = _hits(filtered, pl.col("formula_ok").fill_null(False))
        both = _hits(filtered, valid & pl.col("formula_ok").fill_null(False))
        distinct = int(filtered["gene_key"].n_unique())
        p1 = _hits(filtered, valid & pl.col("novel").fill_null(False) & (pl.col("space_group") == 1))
    note = absent("filtered_genes")
    gen = "generated samples (latent points decoded = hits summed over sampled genes)"
    add(_Row("validity", "charge_neutral_smact", _ratio(smact if filtered is not None else None, samples),
             smact if filtered is not None else None, samples, gen,
             "SMACT smact_validity (ICSD-24 oxidation states, Pauling test, alloys valid)",
             "LeMat-GenBench charge neutrality is judged on structures (bond valence / oxidation-state guesses)",
             ("validity",), note))
    add(_Row("validity", "wyckoff_valid", _ratio(valid_samples, samples), valid_samples, samples, gen,
             "ml.genes.validate_gene (PyXtal Wyckoff tables)",
             "WyFormer: 92-97 % of its samples Wyckoff-valid (DFT_eval notebook, 'Validity')", ("validity",), note))
    add(_Row("validity", "smact_and_wyckoff_valid", _ratio(both if filtered is not None else None, samples),
             both if filtered is not None else None, samples, gen, "SMACT + ml.genes.validate_gene", "",
             ("validity",), note))

    # ---------------------------------------------------------------- selected genes (trials)
    selected = built = None
    if trials is not None:
        selected = int(trials["gene_key"].n_unique())
        built = int(trials.filter(pl.col("verdict") == "ok")["gene_key"].n_unique())
    elif best is not None:
        selected = int(best["gene_key"].n_unique())
    sel_is = f"genes selected for relaxation (distinct gene_key in trial_structures; selection: {selection})"
    add(_Row("validity", "pyxtal_buildable", _ratio(built, selected), built, selected, sel_is,
             "PyXtal from_random, min distance > 0.5 A (dft.trials)", "", (), absent("trial_structures")))

    relaxed_n = None if best is None else best.height
    rel_is = "relaxed genes (best trial per gene with an energy)"
    if best is not None and "min_distance_relaxed" in best.columns:
        have = best.filter(pl.col("min_distance_relaxed").is_not_null())
        ok = int((have["min_distance_relaxed"] > config.min_distance).sum())
        add(_Row("validity", "min_distance_after_relaxation", _ratio(ok, have.height), ok, have.height,
                 rel_is + " with a relaxed structure file", f"{decided} relaxation; distance > {config.min_distance} A",
                 "CDVAE / MatterGen / DiffCSP structural validity: min distance > 0.5 A (unrelaxed)", ("validity",)))
    else:
        add(_Row("validity", "min_distance_after_relaxation", None, None, relaxed_n, rel_is, decided, "",
                 ("validity",),
                 absent("relaxed_structures") or "relaxed structures not read (no min_distance_relaxed)"))

    # ---------------------------------------------------------------- uniqueness
    add(_Row("uniqueness", "unique_samples", _ratio(distinct if filtered is not None else None, samples),
             distinct if filtered is not None else None, samples, gen,
             "gene_key (equivalent Wyckoff configurations folded)",
             "LeMat-GenBench: #unique(G) / #G over generated structures; falls with the number of samples",
             ("uniqueness",), note))
    uniq = None if best is None else _distinct_crystals(best)
    add(_Row("uniqueness", "unique_after_relaxation", _ratio(uniq, relaxed_n), uniq, relaxed_n, rel_is,
             f"dft.matching.same_crystal on {decided} relaxed structures", "", ("uniqueness",),
             absent("relaxed_structures") if best is None else
             ("" if "crystal_id" in best.columns else "no crystal_id column: counted per gene")))

    # ---------------------------------------------------------------- novelty
    loo_note = ("leave-one-out partition: the held-out gene and its equivalent configurations count as "
                "unpublished") if config.loo else ""
    novelty = _ratio(novel_valid, valid_samples)
    add(_Row("novelty", "novel_samples", novelty, novel_valid, valid_samples,
             "Wyckoff-valid generated samples (hits-weighted)", "gene_key not among the snapshot's genes",
             "WyFormer table 'Source Novelty': " + anchors.wyformer_column("source_novelty") +
             " (raw-sample novelty x in-DFT novelty)", ("novelty_level", "reference"),
             "; ".join(filter(None, [note, loo_note]))))
    novel_rel = None if best is None else int(best["is_novel"].fill_null(False).sum())
    add(_Row("novelty", "novel_after_relaxation", _ratio(novel_rel, relaxed_n), novel_rel, relaxed_n, rel_is,
             "StructureMatcher (default tolerances) vs snapshot structures of the same reduced formula",
             "WyFormer 'In-DFT Novelty': 93-100 % of relaxed unique samples (WyCryst 97.1 %)", ("reference",),
             "; ".join(filter(None, [absent("relaxed_structures"), loo_note]))))

    # ---------------------------------------------------------------- symmetry
    if best is not None:
        with_sg = best.filter(pl.col("sg_after").is_not_null())
        kept = int((with_sg["sg_after"] == with_sg["space_group"]).sum())
        kept_den = with_sg.height
    else:
        kept = kept_den = None
    add(_Row("symmetry", "space_group_kept", _ratio(kept, kept_den), kept, kept_den,
             "relaxed genes with a relaxed space group (spglib 1e-3)", f"{decided} relaxation (FixSymmetry)",
             "WyFormer 'SG preserved' (free DFT relaxation): " + anchors.wyformer_column("sg_preserved"),
             ("relaxation",), absent("relaxed_structures")))
    add(_Row("symmetry", "p1_share", _ratio(p1 if filtered is not None else None, novel_valid),
             p1 if filtered is not None else None, novel_valid, "novel Wyckoff-valid samples (hits-weighted)",
             "gene space group", "WyFormer 'P1 in source': " + anchors.wyformer_column("p1_in_source"), (), note))

    # ---------------------------------------------------------------- stability (S.U.N.)
    def energy_ok(lo: float | None, hi: float) -> pl.Expr:
        e = pl.col(config.energy_column)
        cond = e.is_not_null() & (e <= hi)
        return cond & (e > lo) if lo is not None else cond

    novel = pl.col("is_novel").fill_null(False)
    sun_protocol = ("energy", "relaxation", "sample", "novelty_level", "reference", "uniqueness", "sample_size")
    for t in config.sun_thresholds:
        count = None if best is None else _distinct_crystals(best.filter(energy_ok(None, t) & novel))
        in_relaxed = _ratio(count, selected)
        field_name = "sun_008" if abs(t - 0.08) < 1e-9 else "sun_0" if t == 0 else None
        published = ("WyFormer DFT S.U.N.: " + anchors.wyformer_column(field_name)) if field_name else ""
        if field_name == "sun_008":
            published += "; by CHGNet (theirs): " + anchors.wyformer_column("sun_chgnet_008")
        value = None if in_relaxed is None or novelty is None else novelty * in_relaxed
        add(_Row("stability", f"sun_rate_e{t:g}", value, count, selected,
                 sel_is + "; value = novel_samples x numerator / denominator (WyFormer's S.U.N.)", decided,
                 published, sun_protocol,
                 "; ".join(filter(None, [absent("relaxed_structures"),
                                         absent("filtered_genes") and "no sample novelty"]))))
        add(_Row("stability", f"sun_in_relaxed_sample_e{t:g}", in_relaxed, count, selected,
                 sel_is + " (S.U.N. counted once per distinct crystal)", decided,
                 "LeMat-GenBench SUN (t = 0): #(stable -> unique -> novel) / #G" if t == 0 else "",
                 sun_protocol, absent("relaxed_structures")))
    meta_t = config.metasun_threshold
    meta = None if best is None else _distinct_crystals(best.filter(energy_ok(0.0, meta_t) & novel))
    add(_Row("stability", f"metasun_e{meta_t:g}", _ratio(meta, selected), meta, selected,
             sel_is + f" (0 < E_hull <= {meta_t:g}, unique, novel)", decided,
             "LeMat-GenBench MetaSUN (0 < E_hull <= 0.1, stable ones excluded)",
             ("energy", "relaxation", "sample", "metasun", "sample_size"), absent("relaxed_structures")))
    both_n = None if best is None else _distinct_crystals(best.filter(energy_ok(None, meta_t) & novel))
    add(_Row("stability", f"sun_or_metasun_e{meta_t:g}", _ratio(both_n, selected), both_n, selected,
             sel_is + f" (E_hull <= {meta_t:g}, unique, novel)", decided,
             f"WyCryst paper: {anchors.WYCRYST_PAPER['genes_to_dft']} genes to DFT (its 'stable' = E_hull <= 0.1 "
             "for the phonon step)", ("energy", "relaxation", "sample", "metasun"), absent("relaxed_structures")))

    # ---------------------------------------------------------------- dynamics (phonons)
    if phonons is not None:
        computed = phonons.filter(pl.col("verdict").is_in(["stable", "unstable", "failed"]))
        stable_ph = int((computed["verdict"] == "stable").sum())
        failed_ph = int((computed["verdict"] == "failed").sum())
        if _col(phonons, "phonon_model") and phonons["phonon_model"].drop_nulls().len():
            ph_model = ",".join(sorted({str(r) for r in phonons["phonon_model"].drop_nulls().to_list()}))
        else:  # tables from before the cascade: phonons with the (fast) relaxation's potential
            source = "fast_relaxer" if _col(best, "fast_relaxer") else "relaxer" if _col(best, "relaxer") else None
            ph_model = ("?" if source is None else ",".join(sorted({str(r) for r in best[source].drop_nulls().to_list()})))
            ph_model += " (phonon_model not recorded: the relaxation potential, as before the cascade)"
        add(_Row("dynamics", "dynamically_stable", _ratio(stable_ph, computed.height), stable_ph, computed.height,
                 "genes whose phonons were computed (stable + unstable + failed; skipped excluded)",
                 f"phonopy with {ph_model}",
                 f"PhononBench: mean {anchors.PHONONBENCH['mean_rate']} %, best {anchors.PHONONBENCH['best_rate']} % "
                 f"({anchors.PHONONBENCH['best_model']})", ("phonons",),
                 f"{failed_ph} failed (counted as not stable)" if failed_ph else ""))
        stable_genes = set(phonons.filter(pl.col("verdict") == "stable")["gene_key"].to_list())
    else:
        add(_Row("dynamics", "dynamically_stable", None, None, None, "genes whose phonons were computed", "",
                 f"PhononBench: mean {anchors.PHONONBENCH['mean_rate']} %, best {anchors.PHONONBENCH['best_rate']} %",
                 ("phonons",), absent("phonon_verdicts")))
        stable_genes = set()
    ph_sun = None
    if best is not None and phonons is not None:
        phonon_stable = pl.col("gene_key").is_in(sorted(stable_genes))
        ph_sun = _distinct_crystals(best.filter(energy_ok(None, meta_t) & novel & phonon_stable))
    add(_Row("dynamics", f"phonon_stable_sun_e{meta_t:g}", _ratio(ph_sun, selected), ph_sun, selected,
             sel_is + f" (E_hull <= {meta_t:g}, unique, novel, phonon-stable)", f"{decided}; phonons by the phonon model",
             f"WyCryst paper: {anchors.WYCRYST_PAPER['phonon_stable']} phonon-stable new materials of "
             f"{anchors.WYCRYST_PAPER['genes_to_dft']} genes relaxed by DFT (VASP DFPT)",
             ("energy", "phonons", "sample"), absent("phonon_verdicts") or absent("relaxed_structures")))

    # ---------------------------------------------------------------- diversity among S.U.N.
    dt = config.diversity_threshold
    if best is not None:
        sun = best.filter(energy_ok(None, dt) & novel).sort(config.energy_column)
        if "crystal_id" in sun.columns:
            sun = sun.unique("crystal_id", keep="first", maintain_order=True)
        n_sun = sun.height
        sgs = int(sun["sg_after"].fill_null(sun["space_group"]).n_unique()) if n_sun else 0
        protos = len({prototype_label(f, sg, w) for f, sg, w in sun.select("formula", "space_group", "wyckoff").rows()})
        systems = len({chemical_system(f) for f in sun["formula"].to_list()}) if n_sun else 0
    else:
        n_sun = sgs = protos = systems = None
    sun_is = f"S.U.N. crystals (E_hull <= {dt:g}, novel, one per distinct crystal)"
    lemat_div = "LeMat-GenBench diversity: Vendi scores of element / space-group / site-number distributions"
    for name, value, how in (("distinct_space_groups_sun", sgs, "relaxed space group"),
                             ("distinct_prototypes_sun", protos, "prototype_label (anonymous AFLOW-like gene label)"),
                             ("distinct_chemical_systems_sun", systems, "elements of the formula")):
        add(_Row("diversity", name, None if value is None else float(value), value, n_sun, sun_is,
                 f"{how}; S.U.N. by {decided}", lemat_div, (), absent("relaxed_structures") or
                 "value = count of distinct ones (numerator); denominator = S.U.N. crystals"))

    def interval(r: _Row) -> tuple[float | None, float | None]:
        if r.group == "diversity" or r.value is None or r.numerator is None or not r.denominator:
            return None, None
        lo, hi = wilson_interval(float(r.numerator), float(r.denominator))
        scale = novelty if r.metric.startswith("sun_rate") else 1.0  # the sample novelty: ~1e5 samples, exact enough
        return lo * scale, hi * scale

    out = [{"group": r.group, "metric": r.metric, "value": r.value,
            "numerator": None if r.numerator is None else float(r.numerator),
            "denominator": None if r.denominator is None else float(r.denominator),
            "ci95_low": interval(r)[0], "ci95_high": interval(r)[1],
            "denominator_is": r.denominator_is, "decided_by": r.decided_by, "selection": selection,
            "published": r.published,
            "protocol_differences": "; ".join(f"[{k}] {PROTOCOL_DIFFERENCES[k]}" for k in r.protocol),
            "notes": r.notes} for r in rows]
    return pl.DataFrame(out, schema=METRIC_SCHEMA, orient="row")


def metrics_markdown(metrics: pl.DataFrame) -> str:
    """The metric rows as a Markdown table (ours beside theirs), protocol differences as keys
    with a legend below."""
    lines = ["| group | metric | ours [95 % CI] | numerator / denominator | denominator counts | decided by | "
             "published (theirs) | protocol differences |", "|" + "---|" * 8]
    used = []
    for r in metrics.iter_rows(named=True):
        v = r["value"]
        ours = "n/a" if v is None else (f"{100 * v:.1f} %" if r["group"] != "diversity" else f"{v:g}")
        if r["ci95_low"] is not None:
            ours += f" [{100 * r['ci95_low']:.1f}-{100 * r['ci95_high']:.1f}]"
        num, den = r["numerator"], r["denominator"]
        frac = "" if den is None else f"{'-' if num is None else f'{num:g}'} / {den:g}"
        parts = (r["protocol_differences"] or "").split("; ")
        keys = [part[1:part.index("]")] for part in parts if part.startswith("[")]
        used += [k for k in keys if k not in used]
        notes = f" ({r['notes']})" if r["notes"] else ""
        cells = [r["group"], r["metric"], ours + notes, frac, r["denominator_is"], r["decided_by"], r["published"],
                 ", ".join(keys)]
        lines.append("| " + " | ".join(str(c or "").replace("|", "\\|") for c in cells) + " |")
    legend = "\n".join(f"- **{k}**: {PROTOCOL_DIFFERENCES[k]}" for k in used)
    return "\n".join(lines) + ("\n\nProtocol differences (theirs vs ours):\n\n" + legend if legend else "")


def headline(metrics: pl.DataFrame) -> dict[str, float | None]:
    """metric name -> value, for metadata numbers and the yield benchmark."""
    return dict(zip(metrics["metric"].to_list(), metrics["value"].to_list()))


def pooled_sun_rate(runs: Sequence[dict]) -> dict[str, float | int | None]:
    """WyFormer-style S.U.N. pooled over several independent runs (campaigns, draws), each a dict
    with ``novelty`` (its sample novelty), ``sun`` (S.U.N. crystals) and ``selected`` (genes relaxed).

    value = sum(novelty_i * sun_i) / sum(selected_i): every relaxed gene weighs the same, and each
    S.U.N. gene carries its own run's sample novelty (one run's value when given one run). The 95 %
    interval is the Wilson interval of sum(sun) / sum(selected) scaled by the S.U.N.-weighted
    novelty, as :func:`generator_metrics` scales one run's (the novelties rest on ~1e5 samples
    each; the relaxed genes are the binomial part). Also returns the bare ``sun / selected`` with
    its interval and the runs' count."""
    runs = list(runs)
    if not runs:
        raise ValueError("no runs to pool")
    for r in runs:
        missing = [k for k in ("novelty", "sun", "selected") if r.get(k) is None]
        if missing:
            raise ValueError(f"run {r.get('label', r)!r} lacks {missing}")
        if not 0 <= r["sun"] <= r["selected"] or not 0 <= r["novelty"] <= 1:
            raise ValueError(f"run {r.get('label', r)!r}: need 0 <= sun <= selected and 0 <= novelty <= 1")
    k = sum(int(r["sun"]) for r in runs)
    n = sum(int(r["selected"]) for r in runs)
    if n == 0:
        raise ValueError("no relaxed genes in the runs")
    weighted = sum(float(r["novelty"]) * int(r["sun"]) for r in runs)
    scale = weighted / k if k else sum(float(r["novelty"]) * int(r["selected"]) for r in runs) / n
    lo, hi = wilson_interval(k, n)
    return {"runs": len(runs), "sun": k, "selected": n, "sun_in_relaxed": k / n,
            "sun_in_relaxed_ci95_low": lo, "sun_in_relaxed_ci95_high": hi,
            "value": weighted / n, "ci95_low": lo * scale, "ci95_high": hi * scale}
