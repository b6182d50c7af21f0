"""Gene -> fixed-length feature arrays (the reference implementation's shape).

Per element slot (``N_SLOTS`` = 3: ternaries and below; slots ordered cation-first by
electronegativity): the element's index in the vocabulary (the one-hot is built from it at
training time), its atom count in the conventional cell, its fraction, its descriptors, and its
count on each of the 27 Wyckoff letters; plus the space-group index (0..229).
"""

from __future__ import annotations

import numpy as np

from ml.elements import N_DESCRIPTORS, descriptor_matrix, element_index, slot_order
from ml.genes import Gene, GeneError, GeneSummary
from ml.wyckoff import LETTER_INDEX, N_LETTERS, parse_site_label

N_SLOTS = 3


def check_vocabulary(elements) -> None:
    index = element_index()
    outside = sorted(set(elements) - set(index))
    if outside:
        raise GeneError("element_outside_encoding", ",".join(outside))


def gene_features(gene: Gene, summary: GeneSummary) -> dict | None:
    """Feature columns of one gene, or ``None`` for genes with more than ``N_SLOTS`` elements."""
    check_vocabulary(gene.wyckoff)
    if len(gene.wyckoff) > N_SLOTS:
        return None
    index = element_index()
    descriptors = descriptor_matrix()
    total = summary.atoms_per_cell
    slots = slot_order(gene.wyckoff)
    el_index = np.full(N_SLOTS, -1, dtype=np.int32)
    counts = np.zeros(N_SLOTS, dtype=np.int32)
    fractions = np.zeros(N_SLOTS, dtype=np.float32)
    desc = np.zeros((N_SLOTS, N_DESCRIPTORS), dtype=np.float32)
    letters = np.zeros((N_SLOTS, N_LETTERS), dtype=np.int32)
    for i, el in enumerate(slots):
        el_index[i] = index[el]
        counts[i] = summary.counts[el]
        fractions[i] = summary.counts[el] / total
        desc[i] = descriptors[index[el]]
        for label in gene.wyckoff[el]:
            letters[i, LETTER_INDEX[parse_site_label(label)[1]]] += 1
    return {
        "slot_elements": slots,
        "element_index": el_index.tolist(),
        "element_count": counts.tolist(),
        "element_fraction": fractions.tolist(),
        "element_descriptors": desc.ravel().tolist(),
        "wyckoff_letter_counts": letters.ravel().tolist(),
        "sg_index": gene.space_group - 1,
    }
