"""Which energy model does what in the cascade -- the defaults, in one place, with their evidence.

The cascade (README "Energy-model cascade"): a fast model relaxes every trial
(``relaxed_structures``); the most accurate model re-relaxes and rescores the best trial of each
promising gene (``rescored_structures``) and its energies decide E_hull, the ground-state rank,
the S.U.N. list and which structures get phonons; phonons use the model with the best phonon
agreement. Every name is a :data:`dft.relax.MODELS` entry (weights shipped in an installed
wheel, never downloaded) and every default can be changed in the assets' config.

Evidence (``benchmarks/energy_models.py --max-materials 328``: 328 snapshot materials, 119
polymorph formulas, 282 scored same-formula pairs, every model relaxing MP's structure with the
platform's relaxer; table in ``benchmarks/results/energy_models.md`` and the README):

* **relaxer = CHGNet 0.3.0**: the fastest model here; it relaxes every trial (tens to hundreds
  per partition), so speed decides: 0.65 core-s per relaxation (SevenNet-0 1.54, SevenNet-l3i5
  4.11). It is also the least accurate: E_hull MAE 30.2 meV/atom, 74.1 % of same-formula polymorph
  pairs ordered as MP orders them, GPAW pair order 8/10 (matbench-discovery: F1 0.613, MAE 0.063
  eV/atom).
* **rescorer = SevenNet-0**: first by E_hull MAE (17.9 meV/atom), second by polymorph ordering
  (79.8 %), 9/10 GPAW pairs, GPAW pair-energy MAE 5.9 meV/atom (the lowest); SevenNet-l3i5 ties
  on the rank sum (18.1 meV/atom, 81.2 %; statistically indistinguishable on these 328) and the
  rule takes the lower E_hull MAE; SevenNet-0 is also 2.7x cheaper per relaxation.
  matbench-discovery F1 0.724, MAE 0.048 eV/atom.
* **phonon model = SevenNet-l3i5**: the lowest public kappa_SRME (phonon / thermal-conductivity
  quality, lower is better) among the models available here -- SevenNet-l3i5 0.55, SevenNet-0
  0.76, CHGNet 1.72 (matbench-discovery leaderboard).

Scales: CHGNet's energies are already MP2020-corrected, SevenNet's are raw MPtrj energies that
MP2020 corrects (``dft.relax.ModelSpec.energy_scale``; tests/test_model_registry.py checks each
against MP's E_f of a snapshot oxide).
"""

DEFAULT_RELAXER = "chgnet"
DEFAULT_RESCORER = "sevennet-0"
DEFAULT_PHONON_MODEL = "sevennet-l3i5"

RESCORER_REASON = ("best E_hull MAE (17.9 meV/atom) and 2nd-best polymorph ordering (79.8 %) in "
                   "benchmarks/energy_models.py on 328 materials (CHGNet: 30.2 meV/atom, 74.1 %; "
                   "SevenNet-l3i5 ties on the rank sum: 18.1 meV/atom, 81.2 %, 2.7x the cost)")
PHONON_MODEL_REASON = ("lowest public kappa_SRME among the models available here (matbench-discovery): "
                       "SevenNet-l3i5 0.55, SevenNet-0 0.76, CHGNet 1.72")

# rescorer "none": no second model; the fast model's numbers pass through, marked so
NO_RESCORER = "none"

# which genes the rescorer re-relaxes by default: fast-model E_hull <= 0.2 eV/atom (the phonon
# stage's default window; model E_hull errors are tens of meV/atom, so 0.2 keeps every gene the
# decider could move below the 0.1 S.U.N. cut)
DEFAULT_RESCORE_MAX_E_ABOVE_HULL = 0.2
