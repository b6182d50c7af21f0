"""Element vocabulary and per-element descriptors for the gene encoding (from pymatgen data).

The vocabulary is H..Pu (Z = 1..94): every element Materials Project computes with. The
descriptors follow the CGCNN atom features the paper uses, as far as pymatgen carries them:
group, period, block, electronegativity, atomic radius, first ionization energy, electron
affinity, molar volume and atomic mass. Missing values (e.g. no Pauling electronegativity for
noble gases) take the vocabulary mean; every column is then standardized to zero mean and unit
variance so no descriptor dominates the reconstruction loss.
"""

from __future__ import annotations

import functools
import math
import warnings

import numpy as np

MAX_Z = 94
DESCRIPTOR_NAMES: tuple[str, ...] = (
    "group",
    "period",
    "block_s",
    "block_p",
    "block_d",
    "block_f",
    "electronegativity",
    "atomic_radius",
    "ionization_energy",
    "electron_affinity",
    "molar_volume",
    "atomic_mass",
)
N_DESCRIPTORS = len(DESCRIPTOR_NAMES)


@functools.lru_cache(maxsize=None)
def vocabulary() -> tuple[str, ...]:
    """Element symbols of the encoding, index = Z - 1."""
    from pymatgen.core import Element

    return tuple(Element.from_Z(z).symbol for z in range(1, MAX_Z + 1))


@functools.lru_cache(maxsize=None)
def element_index() -> dict[str, int]:
    return {symbol: i for i, symbol in enumerate(vocabulary())}


def _number(value) -> float:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return math.nan
    return v if math.isfinite(v) else math.nan


@functools.lru_cache(maxsize=None)
def descriptor_matrix() -> np.ndarray:
    """(94, N_DESCRIPTORS) float32, standardized per column."""
    from pymatgen.core import Element

    rows = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # pymatgen warns on elements lacking a value
        for symbol in vocabulary():
            e = Element(symbol)
            block = str(e.block)
            rows.append(
                [
                    _number(e.group),
                    _number(e.row),
                    float(block == "s"),
                    float(block == "p"),
                    float(block == "d"),
                    float(block == "f"),
                    _number(e.X),
                    _number(e.atomic_radius),
                    _number(e.ionization_energy),
                    _number(e.electron_affinity),
                    _number(e.molar_volume),
                    _number(e.atomic_mass),
                ]
            )
    m = np.array(rows, dtype=np.float64)
    col_mean = np.nanmean(m, axis=0)
    m = np.where(np.isnan(m), col_mean, m)
    std = m.std(axis=0)
    std[std == 0] = 1.0
    return ((m - m.mean(axis=0)) / std).astype(np.float32)


@functools.lru_cache(maxsize=None)
def electronegativity() -> dict[str, float]:
    """Pauling electronegativity (NaN-free: missing -> +inf so such elements sort last)."""
    from pymatgen.core import Element

    out = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for symbol in vocabulary():
            x = _number(Element(symbol).X)
            out[symbol] = x if not math.isnan(x) else math.inf
    return out


def slot_order(elements) -> list[str]:
    """Element-slot order of the encoding: by electronegativity, then Z (cations first)."""
    chi = electronegativity()
    idx = element_index()
    return sorted(elements, key=lambda s: (chi[s], idx[s]))
