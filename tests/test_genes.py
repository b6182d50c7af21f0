"""Gene extraction, validity and equivalence, against the paper's targets and pymatgen."""

import json

import polars as pl
import pytest

from ml.genes import (Gene, GeneError, canonical_configuration, equivalent_configurations, gene_from_structure,
                      gene_key, normalize_formula, reduced_formula, validate_gene, wyckoff_json)
from ml.gene_table import gene_row


def test_every_target_and_its_equivalent_configurations_share_one_key(targets):
    for t in targets:
        if t["task"] == "campaign":
            continue
        summary = validate_gene(t["formula"], t["space_group"], t["wyckoff"])
        assert summary.atoms_per_cell > 0
        key = gene_key(t["formula"], t["space_group"], t["wyckoff"])
        canonical = canonical_configuration(t["space_group"], t["wyckoff"])
        assert key.split("|", 2)[2] == wyckoff_json(canonical)  # the key is built from the canonical form
        for eq in t.get("equivalent_wyckoff", []):
            validate_gene(t["formula"], t["space_group"], eq)
            assert gene_key(t["formula"], t["space_group"], eq) == key, t["partition"]
            assert canonical_configuration(t["space_group"], eq) == canonical, t["partition"]
            assert validate_gene(t["formula"], t["space_group"], eq) == summary  # same mults, DoF, counts


def test_paper_table3_examples():
    # CaTiO3 SG 62: Ti on 4a or 4b is one gene
    a = gene_key("CaTiO3", 62, {"Ca": ["4c"], "Ti": ["4a"], "O": ["4c", "8d"]})
    b = gene_key("CaTiO3", 62, {"Ca": ["4c"], "Ti": ["4b"], "O": ["4c", "8d"]})
    assert a == b
    # SrTiO3 221: Sr 1b/Ti 1a/O 3d == Sr 1a/Ti 1b/O 3c; but not the same as Sr 1a/Ti 1b/O 3d
    k1 = gene_key("SrTiO3", 221, {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]})
    k2 = gene_key("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3c"]})
    k3 = gene_key("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3d"]})
    assert k1 == k2 != k3
    # Zn2GeSe4: Ge 2a <-> 2b. The paper's Table 3 prints SG 122, but 8i exists only in I-42m
    # (121, the stannite group); I-42d (122) has letters a-e. Checked in 121:
    assert gene_key("Zn2GeSe4", 121, {"Zn": ["4d"], "Ge": ["2b"], "Se": ["8i"]}) == gene_key(
        "Zn2GeSe4", 121, {"Zn": ["4d"], "Ge": ["2a"], "Se": ["8i"]}
    )
    with pytest.raises(GeneError) as err:
        gene_key("Zn2GeSe4", 122, {"Zn": ["4d"], "Ge": ["2b"], "Se": ["8i"]})
    assert err.value.reason == "letter_not_in_space_group"


def test_canonical_json_sorts_elements_and_sites():
    assert wyckoff_json({"Ti": ["3a"], "O": ["9b"], "Ba": ["3a"]}) == '{"Ba": ["3a"], "O": ["9b"], "Ti": ["3a"]}'
    assert wyckoff_json({"O": ["8d", "4c"]}) == '{"O": ["4c", "8d"]}'
    assert Gene("CaTiO3", 62, {"O": ["8d", "4c"], "Ca": ["4c"], "Ti": ["4b"]}) == Gene.from_json(
        "CaTiO3", 62, '{"Ca": ["4c"], "O": ["4c", "8d"], "Ti": ["4b"]}'
    )


@pytest.mark.parametrize(
    "formula,sg,wyckoff,reason",
    [
        ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1a"], "O": ["3d"]}, "dof0_site_occupied_twice"),
        ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["1a"]}, "dof0_site_occupied_twice"),
        ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["6e"]}, "composition_mismatch"),
        ("SrTiO3", 221, {"Sr": ["1a"], "Ti": ["1b"], "O": ["3z"]}, "letter_not_in_space_group"),
        ("SrTiO3", 221, {"Sr": ["2a"], "Ti": ["1b"], "O": ["3c"]}, "multiplicity_mismatch"),
        ("SrTiO3", 231, {"Sr": ["1a"]}, "space_group_out_of_range"),
        ("SrTiO3", 221, {"Sr": ["a1"], "Ti": ["1b"], "O": ["3c"]}, "bad_wyckoff_label"),
        ("SrTiO3", 221, {}, "empty_gene"),
    ],
)
def test_invalid_genes_have_reasons(formula, sg, wyckoff, reason):
    with pytest.raises(GeneError) as err:
        validate_gene(formula, sg, wyckoff)
    assert err.value.reason == reason


def test_batio3_mp5020_gene(materials):
    row = materials.filter(pl.col("material_id") == "mp-5020")
    gene, rejection = gene_row("mp-5020", row["cif"][0])
    assert rejection is None
    assert gene["space_group"] == 160
    assert json.loads(gene["wyckoff"]) == {"Ba": ["3a"], "O": ["9b"], "Ti": ["3a"]}
    assert gene["atoms_per_cell"] == 15 and gene["total_dof"] == 4  # 3a: z (x2 Ba/Ti), 9b: x,z


def test_fast_genes_agree_with_pymatgen_symmetrized_structure(materials):
    """The fast path (gemmi CIF + spglib dataset) vs pymatgen's plain path (CifParser ->
    SpacegroupAnalyzer(0.1) -> conventional standard -> symmetrized structure)."""
    from pymatgen.core import Structure
    from pymatgen.symmetry.analyzer import SpacegroupAnalyzer

    sample = materials.sample(40, seed=3)
    for mid, cif in zip(sample["material_id"], sample["cif"]):
        fast, _ = gene_row(mid, cif)
        conv = SpacegroupAnalyzer(Structure.from_str(cif, fmt="cif"), symprec=0.1).get_conventional_standard_structure()
        sga = SpacegroupAnalyzer(conv, symprec=0.1)
        sym = sga.get_symmetrized_structure()
        w: dict = {}
        for sites, label in zip(sym.equivalent_sites, sym.wyckoff_symbols):
            w.setdefault(sites[0].specie.symbol, []).append(label)
        sg = sga.get_space_group_number()
        assert fast["space_group"] == sg, mid
        assert fast["gene_key"] == gene_key(conv.composition.reduced_formula, sg, w), mid


def test_gene_from_structure_rejects_disorder():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(4.0), [{"Sr": 0.5, "Ca": 0.5}, "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    with pytest.raises(GeneError) as err:
        gene_from_structure(s)
    assert err.value.reason == "disordered_structure"


def test_gene_from_hand_built_perovskite():
    from pymatgen.core import Lattice, Structure

    s = Structure(Lattice.cubic(3.905), ["Sr", "Ti", "O", "O", "O"],
                  [[0, 0, 0], [0.5, 0.5, 0.5], [0.5, 0.5, 0], [0.5, 0, 0.5], [0, 0.5, 0.5]])
    gene, summary = gene_from_structure(s)
    assert gene.space_group == 221 and gene.formula == "SrTiO3"
    assert gene.key == gene_key("SrTiO3", 221, {"Sr": ["1b"], "Ti": ["1a"], "O": ["3d"]})
    assert summary.atoms_per_cell == 5 and summary.total_dof == 0
    # the gene is written in the canonical form of its class: the smaller JSON of the two
    # origins of Pm-3m, {O 3c, Sr 1a, Ti 1b} < {O 3d, Sr 1b, Ti 1a}; moving the origin onto
    # Ti (Sr then on 1b in any standardization) writes the same gene
    assert gene.wyckoff == {"O": ["3c"], "Sr": ["1a"], "Ti": ["1b"]}
    s.translate_sites(list(range(len(s))), [0.5, 0.5, 0.5])
    assert gene_from_structure(s)[0].wyckoff == gene.wyckoff


def test_equivalent_configurations_are_the_json_of_each_settings_image():
    """The images written directly as text are exactly ``wyckoff_json`` of each alternative
    setting's image of the configuration, on random configurations of every space group."""
    import random

    from ml.wyckoff import space_group_table

    rng = random.Random(5)
    for sg in range(1, 231):
        table = space_group_table(sg)
        letters = sorted(table.sites)
        for _ in range(3):
            wyckoff = {}
            for el in rng.sample(["O", "Ba", "Ti", "Zn", "Se", "Ca"], rng.randint(1, 4)):
                chosen = rng.sample(letters, rng.randint(1, min(3, len(letters))))
                wyckoff[el] = [f"{table.multiplicity(x)}{x}" for x in chosen]
            expected = []
            for perm in table.alternatives:
                image = wyckoff_json({el: [f"{table.multiplicity(perm.get(s[-1], s[-1]))}{perm.get(s[-1], s[-1])}"
                                           for s in sites] for el, sites in wyckoff.items()})
                if image not in expected:
                    expected.append(image)
            assert equivalent_configurations(sg, wyckoff) == expected, (sg, wyckoff)


def test_reduced_formulas_are_returned_unparsed_exactly_as_pymatgen_would(materials):
    """normalize_formula returns a formula that reduced_formula wrote without parsing it again;
    that is only right because pymatgen's reduced formula of such a formula is the formula
    itself. Checked on a sample of snapshot compositions, random compositions over the whole
    encoding, and pymatgen's special formulas (peroxides, superoxides, diatomic elements)."""
    import random
    import warnings

    from pymatgen.core import Composition

    from ml import genes
    from ml.elements import vocabulary

    rng = random.Random(11)
    cases = [Composition(c).get_el_amt_dict() for c in materials.sample(1500, seed=4)["composition"]]
    cases += [{el: rng.randint(1, 48) for el in rng.sample(vocabulary(), rng.randint(1, 5))} for _ in range(2500)]
    cases += [{el: a, "O": b} for el in ("Li", "Na", "K", "Rb", "Cs", "H") for a, b in ((1, 1), (2, 2), (1, 2), (2, 1))]
    cases += [{el: n} for el in ("O", "N", "F", "Cl", "H", "Br", "I") for n in (1, 2, 3)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # no electronegativity for noble gases: pymatgen warns
        for counts in cases:
            formula = reduced_formula(counts)
            assert formula == Composition(counts).reduced_formula
            assert formula in genes._REDUCED_FORMULAS  # the shortcut is what is tested here
            assert normalize_formula.__wrapped__(formula) == formula == Composition(formula).reduced_formula
    # any other spelling is still parsed by pymatgen
    assert normalize_formula("CuInS2") == "InCuS2" and "CuInS2" not in genes._REDUCED_FORMULAS
    assert normalize_formula("Li2O2") == Composition("Li2O2").reduced_formula
