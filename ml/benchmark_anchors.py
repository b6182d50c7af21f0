"""Published generator scores the platform's own metrics are shown beside (theirs, not ours).

One place for every external number, each with its source and the protocol that produced it, so
a reader of ``generator_metrics`` can tell a like-for-like comparison from a loose one.

WyFormer DFT evaluation
    Kazeev et al., "Wyckoff Transformer: Generation of Symmetric Crystals", ICML 2025, Table 1;
    the numbers are the cell outputs of ``ICML_eval/DFT_eval.ipynb`` of
    github.com/SymmetryAdvantage/WyckoffTransformer (``tables[0.08]`` and ``tables[0]``, notebook
    at commit 6e0fa7cb9e8d9b1df77e450845eef32ba4b6dbcd). Protocol: each generator trained on
    MP-20; ~105 structures per generator drawn at random (seed 42) from its raw samples, kept when
    unique (StructureMatcher) and novel (Wyckoff fingerprint + StructureMatcher vs MP-20
    train+val), relaxed with VASP PBE (MP-compatible settings, free relaxation), E_hull against
    MP with MP2020 corrections. ``S.U.N. = source novelty x (#(unique, novel, E_hull <= t) /
    #structures sent to DFT)``: DFT failures count as not S.U.N.; the source novelty is the
    fraction of all raw samples novel by Wyckoff fingerprint (StructureMatcher where structures
    exist). The table's "Source Novelty" column additionally multiplies the in-DFT novelty
    (WyCryst: 58.4 % x 97.1 % = 56.7 %). WyCryst there: its samples built with CrySPR (PyXtal) and
    relaxed with CHGNet before DFT, trained on the binary+ternary part of MP-20.
    ``sun_chgnet_008``: the same notebook's CHGNet-decided S.U.N. (unique, novel, CHGNet
    E_hull < 0.08 over all CHGNet-relaxed samples, no source-novelty factor): the like-for-like
    anchor for an MLIP-decided S.U.N. rate, and a warning -- WyCryst's 36 % by CHGNet fell to 10 %
    by DFT (the notebook's Pearson r between the two calls: -0.17 for WyCryst, 0.66 for WyFormer).

PhononBench
    Han et al., "PhononBench: A Large-Scale Phonon-Based Benchmark for Dynamical Stability in
    Crystal Generation", arXiv:2512.21227v3 (2026): MatterSim phonons (phonopy) of 133,838
    structures from 7 generators, stable when no mode below -0.1 THz; mean dynamical-stability
    rate 32.15 %, best (MatterGen) 45.05 %, over all generated structures (not only stable ones).

LeMat-GenBench
    github.com/LeMaterial/lemat-genbench (NeurIPS AI4Mat 2025): validity = charge neutrality
    (bond valence, then pymatgen oxidation-state guesses; not SMACT), min distance > 0.5 x the sum
    of atomic radii, physical plausibility; uniqueness = |unique(G)| / |G| (BAWL fingerprint or
    StructureMatcher); novelty = fraction not in LeMat-Bulk; SUN = stable (E_hull <= 0) -> unique
    -> novel, over all |G|; MetaSUN = 0 < E_hull <= 0.1 (stable ones are *not* counted in
    MetaSUN), E_hull the mean of an MLIP ensemble (UMA, ORB, MACE) against LeMat-Bulk's hull;
    diversity = Vendi scores of element / space-group / site-number / size distributions.

WyCryst paper (the platform's own reference)
    Table S7 and the text: 639 genes generated, 102 to DFT (atoms <= 50, DoF <= 5), 8
    phonon-stable new materials (VASP DFPT).
"""

from __future__ import annotations

WYFORMER_SOURCE = ("Kazeev et al., ICML 2025, Table 1; SymmetryAdvantage/WyckoffTransformer "
                   "ICML_eval/DFT_eval.ipynb @ 6e0fa7cb")
PHONONBENCH_SOURCE = "Han et al., PhononBench, arXiv:2512.21227v3"
LEMAT_SOURCE = "LeMaterial/lemat-genbench (NeurIPS AI4Mat 2025)"

# model -> DFT-decided figures (%), from DFT_eval.ipynb; None where the notebook has none
WYFORMER_DFT: dict[str, dict[str, float | int | None]] = {
    "MatterGen": {"sun_008": 25.2, "sun_0": 2.6, "source_novelty": 91.2, "sg_preserved": 87.5,
                  "p1_in_source": 18.0, "sun_chgnet_008": 57.1, "n_dft": 104},
    "WyFormer": {"sun_008": 23.5, "sun_0": 4.3, "source_novelty": 91.3, "sg_preserved": 96.2,
                 "p1_in_source": 1.5, "sun_chgnet_008": 39.1, "n_dft": 104},
    "DiffCSP": {"sun_008": 22.6, "sun_0": 6.9, "source_novelty": 89.3, "sg_preserved": 78.4,
                "p1_in_source": 31.1, "sun_chgnet_008": 56.7, "n_dft": 104},
    "CrystalFormer": {"sun_008": 20.1, "sun_0": 5.4, "source_novelty": 79.4, "sg_preserved": 94.3,
                      "p1_in_source": 1.7, "sun_chgnet_008": 36.9, "n_dft": 89},
    "SymmCD": {"sun_008": 17.2, "sun_0": 4.3, "source_novelty": 86.5, "sg_preserved": 92.4,
               "p1_in_source": 2.2, "sun_chgnet_008": 32.6, "n_dft": 96},
    "FlowMM": {"sun_008": 16.2, "sun_0": 3.6, "source_novelty": 88.0, "sg_preserved": 63.9,
               "p1_in_source": 40.4, "sun_chgnet_008": 49.1, "n_dft": 104},
    "DiffCSP++": {"sun_008": 13.8, "sun_0": 0.9, "source_novelty": 89.5, "sg_preserved": 96.1,
                  "p1_in_source": 1.8, "sun_chgnet_008": 40.8, "n_dft": 103},
    "WyCryst": {"sun_008": 10.0, "sun_0": 1.7, "source_novelty": 56.7, "sg_preserved": None,
                "p1_in_source": 4.3, "sun_chgnet_008": 36.2, "n_dft": 103},
}
PHONONBENCH = {"mean_rate": 32.15, "best_rate": 45.05, "best_model": "MatterGen", "threshold_thz": -0.1,
               "structures": 133_838, "generators": 7, "potential": "MatterSim"}
WYCRYST_PAPER = {"genes_generated": 639, "genes_to_dft": 102, "phonon_stable": 8}


def _fmt(model_values: dict[str, float | None]) -> str:
    return ", ".join(f"{m} {v:g} %" for m, v in model_values.items() if v is not None)


def wyformer_column(field: str) -> str:
    """'MatterGen 25.2 %, WyFormer 23.5 %, ...' for one WyFormer-table field."""
    return _fmt({m: row[field] for m, row in WYFORMER_DFT.items()})


def anchor_rows() -> list[dict]:
    """The WyFormer DFT table as rows (for a metadata table of the anchors)."""
    return [{"model": m, "S.U.N. E_hull<=0.08 (%)": r["sun_008"], "S.U.N. E_hull<=0 (%)": r["sun_0"],
             "source novelty (%)": r["source_novelty"], "SG preserved (%)": r["sg_preserved"],
             "P1 in source (%)": r["p1_in_source"], "S.U.N. by CHGNet <0.08 (%)": r["sun_chgnet_008"],
             "relaxed by DFT": r["n_dft"]} for m, r in WYFORMER_DFT.items()]
