"""Synthesizability score of a Wyckoff gene: a classifier over gene features.

The paper's feasibility filter keeps genes with a high synthesizability score (SC, ref. 40:
Zhu et al., ACS Omega 2023, trained on MP's ICSD tag). Labels come from Materials Project's
``theoretical`` flag: ``False`` means the structure has an ICSD (experimental) entry.

Two training modes, chosen from the labels that are actually there (``mode="auto"``):

* ``"pu"`` — positive-unlabeled bagging (Mordelet & Vert 2014, the scheme of the PU
  synthesizability scores, e.g. Jang et al. JACS 2020 "CLscore"). Positives are
  ``theoretical == False``; every other row (``null`` or ``True``) is unlabeled. Each bag trains a
  gradient-boosted classifier on all positives against an equally large random draw of the
  unlabeled rows; the score is the mean probability over the bags (0.5 = as likely known as
  unlabeled, the CLscore convention). The offline snapshot has ~11.5k ``False`` rows and no
  ``True`` rows (the MP-20 rows carry no flag), so this is the mode it trains in.
* ``"supervised"`` — when enough rows are flagged both ways (a live MP pull), the rows with a
  flag are used directly: known (``False``) vs hypothetical (``True``); unflagged rows are left out.

``metrics`` holds the 5-fold cross-validated ROC AUC of that split (PU: known vs unlabeled, an
underestimate of the true known-vs-unsynthesizable AUC because the unlabeled set contains
synthesizable structures), the recall of the known rows at score 0.5 (the paper reports SC as a
recall), the mode, counts and timings.

Caveat for the offline snapshot: its flagged rows are exactly the MPTS-52 rows and its unflagged
rows the MP-20 rows, so "known vs unlabeled" is also "MPTS-52 vs MP-20" (larger cells, more
elements). Cell size alone separates them with AUC ~0.74; within a size band the model still
reaches ~0.78-0.95. Scores of MP-20-like (small-cell) genes therefore run low: at 0.5 about 15 % of
the unlabeled rows pass out of fold. Pick ``FilterConfig.min_synthesizability`` with that in mind.

Features exist for any gene, sampled or from a structure: everything is derived from
``(formula, space_group, wyckoff)`` through :func:`ml.genes.validate_gene` and
:func:`ml.encoding.gene_features` (or read from the gene table's identical columns). A gene that
is not valid, or has more elements than the encoding's slots, has no features and scores NaN.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import polars as pl

from ml.elements import DESCRIPTOR_NAMES, N_DESCRIPTORS, vocabulary
from ml.encoding import N_SLOTS, gene_features
from ml.genes import Gene, GeneError, validate_gene
from ml.wyckoff import N_LETTERS, WYCKOFF_LETTERS

FORMAT_VERSION = 1
MODES = ("auto", "pu", "supervised")
MIN_CLASS_ROWS = 100  # supervised mode needs at least this many rows flagged each way
SCORE_THRESHOLD = 0.5

_FEATURE_COLUMNS = ("element_index", "element_fraction", "element_descriptors", "wyckoff_letter_counts",
                    "sg_index", "atoms_per_cell", "total_dof")
# first space-group number of each crystal system (triclinic .. cubic)
_CRYSTAL_SYSTEM_STARTS = np.array([1, 3, 16, 75, 143, 168, 195])


def feature_names() -> list[str]:
    n_el = len(vocabulary())
    names = [f"frac_{s}" for s in vocabulary()]
    names += [f"slot{i}_{d}" for i in range(N_SLOTS) for d in DESCRIPTOR_NAMES]
    names += [f"mean_{d}" for d in DESCRIPTOR_NAMES] + [f"range_{d}" for d in DESCRIPTOR_NAMES]
    names += [f"slot{i}_fraction" for i in range(N_SLOTS)]
    names += [f"slot{i}_wyckoff_{c}" for i in range(N_SLOTS) for c in WYCKOFF_LETTERS[:N_LETTERS]]
    names += [f"wyckoff_{c}" for c in WYCKOFF_LETTERS[:N_LETTERS]]
    names += ["space_group", "crystal_system", "atoms_per_cell", "total_dof", "n_elements", "n_sites"]
    assert len(names) == n_el + N_SLOTS * N_DESCRIPTORS + 2 * N_DESCRIPTORS + N_SLOTS + (N_SLOTS + 1) * N_LETTERS + 6
    return names


def _feature_matrix(el_index, fraction, descriptors, letters, space_group, atoms, dof) -> np.ndarray:
    """Per-gene arrays (n,3) (n,3) (n,3*D) (n,3*27) (n,) (n,) (n,) -> (n, n_features) float32."""
    el_index = np.asarray(el_index, dtype=np.int64).reshape(-1, N_SLOTS)
    n = len(el_index)
    fraction = np.asarray(fraction, dtype=np.float64).reshape(n, N_SLOTS)
    desc = np.asarray(descriptors, dtype=np.float64).reshape(n, N_SLOTS, N_DESCRIPTORS)
    letters = np.asarray(letters, dtype=np.float64).reshape(n, N_SLOTS, N_LETTERS)
    sg = np.asarray(space_group, dtype=np.float64).reshape(n)
    occupied = el_index >= 0
    comp = np.zeros((n, len(vocabulary())))
    rows, slots = np.nonzero(occupied)
    np.add.at(comp, (rows, el_index[rows, slots]), fraction[rows, slots])
    mean_desc = np.einsum("ns,nsd->nd", fraction, desc)
    masked = np.where(occupied[:, :, None], desc, np.nan)
    with np.errstate(invalid="ignore"):
        spread = np.nanmax(masked, axis=1) - np.nanmin(masked, axis=1) if n else np.zeros((0, N_DESCRIPTORS))
    spread = np.nan_to_num(spread, nan=0.0)
    crystal_system = np.searchsorted(_CRYSTAL_SYSTEM_STARTS, sg, side="right") - 1
    return np.concatenate([
        comp, desc.reshape(n, -1), mean_desc, spread, fraction, letters.reshape(n, -1), letters.sum(axis=1),
        np.stack([sg, crystal_system, np.asarray(atoms, float).reshape(n), np.asarray(dof, float).reshape(n),
                  occupied.sum(axis=1), letters.sum(axis=(1, 2))], axis=1),
    ], axis=1).astype(np.float32)


def _gene_feature_row(formula: str, space_group: int, wyckoff) -> tuple | None:
    try:
        w = json.loads(wyckoff) if isinstance(wyckoff, str) else dict(wyckoff)
        summary = validate_gene(formula, int(space_group), w)
        gene = Gene.from_json(formula, int(space_group), w)
        f = gene_features(gene, summary)
    except (GeneError, ValueError, TypeError, AttributeError):
        return None
    if f is None:
        return None
    return (f["element_index"], f["element_fraction"], f["element_descriptors"], f["wyckoff_letter_counts"],
            f["sg_index"] + 1, summary.atoms_per_cell, summary.total_dof)


def features_for_genes(formula, space_group, wyckoff_json_list) -> np.ndarray:
    """Feature rows of genes given as parallel sequences (formulas, space groups, Wyckoff JSON
    texts or dicts); a single gene may be given as three scalars. Rows of genes without features
    (invalid, or more than 3 elements) are NaN."""
    if isinstance(formula, str):
        formula, space_group, wyckoff_json_list = [formula], [space_group], [wyckoff_json_list]
    formula, space_group, wyckoff_json_list = list(formula), list(space_group), list(wyckoff_json_list)
    if not len(formula) == len(space_group) == len(wyckoff_json_list):
        raise ValueError("formula, space_group and wyckoff differ in length")
    n_features = len(feature_names())
    out = np.full((len(formula), n_features), np.nan, dtype=np.float32)
    cache: dict[tuple, tuple | None] = {}
    ok, parts = [], []
    for i, (f, sg, w) in enumerate(zip(formula, space_group, wyckoff_json_list)):
        key = (f, sg, w if isinstance(w, str) else json.dumps(w, sort_keys=True))
        if key not in cache:
            cache[key] = _gene_feature_row(f, sg, w) if f and sg is not None and w else None
        if cache[key] is not None:
            ok.append(i)
            parts.append(cache[key])
    if ok:
        cols = list(zip(*parts))
        out[ok] = _feature_matrix(*(np.asarray(c) for c in cols))
    return out


def features_from_table(table: pl.DataFrame) -> np.ndarray:
    """Feature rows of a gene table (uses its feature columns where filled) or of any table with
    ``formula``, ``space_group`` and ``wyckoff`` columns (computed)."""
    n = table.height
    out = np.full((n, len(feature_names())), np.nan, dtype=np.float32)
    if n == 0:
        return out
    if all(c in table.columns for c in _FEATURE_COLUMNS):
        filled = table.select(pl.all_horizontal(pl.col(c).is_not_null() for c in _FEATURE_COLUMNS)).to_series()
        rows = np.flatnonzero(filled.to_numpy())
        if len(rows):
            t = table[rows]
            out[rows] = _feature_matrix(
                np.asarray(t["element_index"].to_list()), np.asarray(t["element_fraction"].to_list()),
                np.asarray(t["element_descriptors"].to_list()), np.asarray(t["wyckoff_letter_counts"].to_list()),
                t["sg_index"].to_numpy() + 1, t["atoms_per_cell"].to_numpy(), t["total_dof"].to_numpy(),
            )
        missing = np.flatnonzero(~filled.to_numpy())
    else:
        missing = np.arange(n)
    if len(missing) and all(c in table.columns for c in ("formula", "space_group", "wyckoff")):
        t = table[missing]
        out[missing] = features_for_genes(t["formula"].to_list(), t["space_group"].to_list(), t["wyckoff"].to_list())
    return out


def _classifier(seed: int):
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(max_iter=100, learning_rate=0.15, max_leaf_nodes=31, max_bins=63,
                                          min_samples_leaf=20, l2_regularization=1.0,
                                          early_stopping=False, random_state=seed)


def _bag_indices(train: np.ndarray, y: np.ndarray, mode: str, n_bags: int, rng) -> list[tuple[np.ndarray, int]]:
    """PU: each bag = all positives of ``train`` + an equal-sized draw of its unlabeled rows.
    Supervised: every bag is all of ``train`` (bags differ only in their seed)."""
    pos, unl = train[y[train] == 1], train[y[train] == 0]
    bags = []
    for _ in range(n_bags):
        if mode == "pu":
            idx = np.concatenate([pos, rng.choice(unl, size=min(len(pos), len(unl)), replace=False)])
        else:
            idx = train
        bags.append((np.sort(idx), int(rng.integers(2**31 - 1))))
    return bags


def _fit_one(x: np.ndarray, y: np.ndarray, idx: np.ndarray, seed: int, balance: bool):
    """One classifier, one OpenMP thread (parallelism is across bags: a multi-threaded
    histogram build stalls badly when another process holds a core)."""
    from threadpoolctl import threadpool_limits

    weight = None
    if balance:
        yi = y[idx]
        n_pos = max(int(yi.sum()), 1)
        weight = np.where(yi == 1, len(yi) / (2 * n_pos), len(yi) / (2 * max(len(yi) - n_pos, 1)))
    with threadpool_limits(1):
        return _classifier(seed).fit(x[idx], y[idx], sample_weight=weight)


def _fit_many(x: np.ndarray, y: np.ndarray, jobs: list[tuple[np.ndarray, int]], balance: bool, n_jobs: int) -> list:
    from joblib import Parallel, delayed

    if n_jobs <= 1 or len(jobs) <= 1:
        return [_fit_one(x, y, idx, seed, balance) for idx, seed in jobs]
    # threads, not loky processes: a loky pool outlives the call and keeps a Dagster step
    # process from exiting until its idle timeout; the fits release the GIL in their Cython core
    return Parallel(n_jobs=min(n_jobs, len(jobs)), backend="threading")(
        delayed(_fit_one)(x, y, idx, seed, balance) for idx, seed in jobs)


def _predict(models: Sequence, x: np.ndarray) -> np.ndarray:
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1):  # per-tree OpenMP prediction stalls on a busy machine
        return np.mean([m.predict_proba(x)[:, 1] for m in models], axis=0)


@dataclass
class SynthModel:
    """A trained synthesizability scorer. ``score`` -> probability-like values in [0, 1]
    (NaN where a gene has no features); ``metrics`` -> see the module docstring."""

    models: list
    mode: str
    feature_names: list[str]
    metrics: dict = field(default_factory=dict)
    threshold: float = SCORE_THRESHOLD
    format_version: int = FORMAT_VERSION

    def score(self, rows_or_genes) -> np.ndarray:
        """Scores of a polars DataFrame (gene table or sampled genes), a feature matrix, or an
        iterable of :class:`ml.genes.Gene` / ``(formula, space_group, wyckoff)`` tuples."""
        x = self._features(rows_or_genes)
        out = np.full(len(x), np.nan)
        ok = ~np.isnan(x).any(axis=1)
        if ok.any():
            out[ok] = np.clip(_predict(self.models, x[ok]), 0.0, 1.0)
        return out

    __call__ = score

    def _features(self, data) -> np.ndarray:
        if isinstance(data, pl.DataFrame):
            return features_from_table(data)
        if isinstance(data, np.ndarray) and data.ndim == 2:
            if data.shape[1] != len(self.feature_names):
                raise ValueError(f"expected {len(self.feature_names)} features, got {data.shape[1]}")
            return data.astype(np.float32)
        genes = [(g.formula, g.space_group, g.wyckoff) if isinstance(g, Gene) else tuple(g) for g in data]
        if not genes:
            return np.zeros((0, len(self.feature_names)), np.float32)
        f, sg, w = zip(*genes)
        return features_for_genes(list(f), list(sg), list(w))

    def save(self, path: str | Path) -> Path:
        import joblib

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        joblib.dump(self, path, compress=3)
        return path

    @classmethod
    def load(cls, path: str | Path) -> "SynthModel":
        import joblib

        model = joblib.load(Path(path))
        if not isinstance(model, cls):
            raise TypeError(f"{path} holds a {type(model).__name__}, not a SynthModel")
        if model.format_version != FORMAT_VERSION:
            raise ValueError(f"{path}: format version {model.format_version}, expected {FORMAT_VERSION}")
        return model


load_synthesizability = SynthModel.load


def labels_and_mode(theoretical: pl.Series | Iterable, mode: str = "auto") -> tuple[np.ndarray, np.ndarray, str]:
    """MP ``theoretical`` flags -> (y, use, mode): y = 1 for known (``False``), 0 otherwise; ``use``
    marks the rows that take part (all rows in PU, only flagged rows when supervised)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}")
    flags = pl.Series("theoretical", theoretical, dtype=pl.Boolean) if not isinstance(theoretical, pl.Series) \
        else theoretical.cast(pl.Boolean)
    known = (flags == False).fill_null(False).to_numpy()  # noqa: E712 (polars expression)
    hypothetical = (flags == True).fill_null(False).to_numpy()  # noqa: E712
    if mode == "auto":
        mode = "supervised" if known.sum() >= MIN_CLASS_ROWS and hypothetical.sum() >= MIN_CLASS_ROWS else "pu"
    y = known.astype(np.int64)
    use = np.ones(len(y), bool) if mode == "pu" else (known | hypothetical)
    return y, use, mode


def train_synthesizability(genes_df: pl.DataFrame, seed: int = 0, *, mode: str = "auto", n_bags: int | None = None,
                           cv_folds: int = 5, cv_bags: int = 1, n_jobs: int | None = None) -> SynthModel:
    """Train on a gene table with a ``theoretical`` column (MP's flag) and either the gene
    table's feature columns or formula/space_group/wyckoff.

    ``n_bags`` classifiers make the model (default 5 PU / 1 supervised); the ``cv_folds``-fold
    ROC AUC refits ``cv_bags`` per fold. All fits run as one batch over ``n_jobs`` processes
    (default: up to 2 cores), one thread each. Rows without features (invalid genes, more than
    3 elements) are left out and counted in ``metrics``."""
    import os

    from sklearn.metrics import roc_auc_score
    from sklearn.model_selection import StratifiedKFold

    start = time.perf_counter()
    if "theoretical" not in genes_df.columns:
        raise ValueError("genes_df needs MP's 'theoretical' column")
    x = features_from_table(genes_df)
    y, use, mode = labels_and_mode(genes_df["theoretical"], mode)
    has_features = ~np.isnan(x).any(axis=1)
    n_without_features = int((use & ~has_features).sum())
    use &= has_features
    x, y = x[use], y[use]
    n_pos, n_neg = int(y.sum()), int(len(y) - y.sum())
    if min(n_pos, n_neg) < cv_folds:
        raise ValueError(f"too few rows to train: {n_pos} known, {n_neg} {'unlabeled' if mode == 'pu' else 'hypothetical'}")
    n_bags = n_bags or (5 if mode == "pu" else 1)
    n_jobs = n_jobs or min(2, os.cpu_count() or 1)
    feature_seconds = time.perf_counter() - start

    rng = np.random.default_rng(seed)
    folds = list(StratifiedKFold(cv_folds, shuffle=True, random_state=seed).split(x, y))
    jobs = [bag for tr, _ in folds for bag in _bag_indices(tr, y, mode, cv_bags, rng)]
    jobs += _bag_indices(np.arange(len(y)), y, mode, n_bags, rng)
    fitted = _fit_many(x, y, jobs, balance=(mode == "supervised"), n_jobs=n_jobs)
    oof = np.full(len(y), np.nan)
    fold_auc = []
    for k, (_, te) in enumerate(folds):
        oof[te] = _predict(fitted[k * cv_bags:(k + 1) * cv_bags], x[te])
        fold_auc.append(float(roc_auc_score(y[te], oof[te])))
    models = fitted[cv_folds * cv_bags:]
    other = "unlabeled" if mode == "pu" else "hypothetical"
    metrics = {
        "mode": mode,
        "cv_folds": cv_folds,
        "cv_roc_auc": float(np.mean(fold_auc)),
        "cv_roc_auc_std": float(np.std(fold_auc)),
        "cv_roc_auc_folds": fold_auc,
        "cv_roc_auc_pooled": float(roc_auc_score(y, oof)),
        "auc_meaning": f"known (theoretical=False) vs {other}",
        "cv_recall_known_at_threshold": float((oof[y == 1] >= SCORE_THRESHOLD).mean()),
        "cv_other_fraction_at_threshold": float((oof[y == 0] >= SCORE_THRESHOLD).mean()),
        "threshold": SCORE_THRESHOLD,
        "other_class": other,
        "n_known": n_pos,
        "n_other": n_neg,
        "n_rows_without_features": n_without_features,
        "n_features": int(x.shape[1]),
        "n_bags": n_bags,
        "cv_bags": cv_bags,
        "seed": seed,
        "feature_seconds": feature_seconds,
        "n_jobs": n_jobs,
        "fit_seconds": time.perf_counter() - start - feature_seconds,
        "train_seconds": time.perf_counter() - start,
    }
    return SynthModel(models=models, mode=mode, feature_names=feature_names(), metrics=metrics)


def cached_model(path: str | Path, stamp: dict, train) -> tuple[SynthModel, bool]:
    """``(model, trained)``: the model saved at ``path`` when its stamp file (``path`` with a
    ``.json`` suffix) equals ``stamp`` (e.g. the excluded materials and the release it was trained
    without), else ``train()`` -- saved with the stamp for the next call."""
    path = Path(path)
    stamp_path = path.with_suffix(".json")
    if path.is_file() and stamp_path.is_file() and json.loads(stamp_path.read_text()) == stamp:
        return SynthModel.load(path), False
    model = train()
    path.parent.mkdir(parents=True, exist_ok=True)
    model.save(path)
    stamp_path.write_text(json.dumps(stamp))
    return model, True
