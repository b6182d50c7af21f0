"""Figures of the PVAE as PNG bytes (matplotlib figures rendered by Agg, pyplot never imported), and a Markdown embedding helper.

Every function returns the PNG file's bytes so a caller can write them to disk, attach them to a
report, or embed them in Markdown with :func:`png_markdown` (e.g. Dagster ``MetadataValue.md``).
"""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence

import numpy as np


def _figure(width: float = 6.0, height: float = 4.5):
    # a bare Figure (no pyplot): rendered by the Agg canvas on savefig, no global backend state
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100)


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def png_markdown(png_bytes: bytes, alt: str = "figure") -> str:
    """``![alt](data:image/png;base64,...)`` for Markdown metadata."""
    return f"![{alt}](data:image/png;base64,{base64.b64encode(png_bytes).decode('ascii')})"


def training_curves_png(history: Sequence[dict], *,
                        loss_keys: Sequence[str] = ("train/loss", "val/loss"),
                        accuracy_keys: Sequence[str] = ("val/element_accuracy", "val/wyckoff_accuracy",
                                                        "val/space_group_accuracy")) -> bytes:
    """Loss (log scale) and validation accuracies per epoch, from ``TrainResult.history``."""
    fig = _figure(10, 4)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(h.get("epoch", i)) + 1 for i, h in enumerate(history)]
    for key in loss_keys:
        values = [h.get(key, np.nan) for h in history]
        ax_loss.plot(epochs, values, marker=".", label=key)
    ax_loss.set_yscale("log")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("loss")
    ax_loss.legend()
    for key in accuracy_keys:
        values = [h.get(key, np.nan) for h in history]
        ax_acc.plot(epochs, values, marker=".", label=key.split("/")[-1])
    ax_acc.set_ylim(0, 1.02)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("validation accuracy")
    ax_acc.legend(loc="lower right")
    fig.suptitle("PVAE training")
    return _png(fig)


def parity_png(true_or_predictions, predicted: Sequence[float] | None = None, *,
               label: str = "formation energy (eV/atom)", true_column: str = "formation_energy_true",
               predicted_column: str = "formation_energy_pred") -> bytes:
    """Predicted vs true values with the y = x line and the MAE in the title (NaNs dropped).

    Either ``parity_png(true, predicted)`` or ``parity_png(predictions_df)`` with the
    ``formation_energy_true`` / ``formation_energy_pred`` columns of ``TrainResult.val_predictions``.
    """
    if predicted is None:
        df = true_or_predictions
        true, predicted = df[true_column].to_numpy(), df[predicted_column].to_numpy()
    else:
        true = true_or_predictions
    t = np.asarray(true, dtype=float)
    p = np.asarray(predicted, dtype=float)
    keep = np.isfinite(t) & np.isfinite(p)
    t, p = t[keep], p[keep]
    fig = _figure(5, 5)
    ax = fig.subplots()
    ax.scatter(t, p, s=4, alpha=0.4)
    if len(t):
        lo, hi = float(min(t.min(), p.min())), float(max(t.max(), p.max()))
        ax.plot([lo, hi], [lo, hi], color="black", linewidth=1)
        ax.set_title(f"MAE {np.abs(t - p).mean():.3f}  (n = {len(t)})")
    ax.set_xlabel(f"true {label}")
    ax.set_ylabel(f"predicted {label}")
    ax.set_aspect("equal", adjustable="datalim")
    return _png(fig)


def latent_pca_png(latent: np.ndarray, highlight: np.ndarray | Sequence[int] | None = None, *,
                   label: str = "origins", color: Sequence[float] | None = None,
                   color_label: str = "formation energy (eV/atom)", extra: np.ndarray | None = None,
                   extra_label: str = "samples") -> bytes:
    """2-D PCA (scikit-learn) of latent means, coloured by ``color``.

    ``highlight``: indices (or a boolean mask) of rows of ``latent`` drawn as black points (the
    sampling origins), named ``label`` in the legend; ``extra``: further latent points (e.g. perturbed samples) projected with the
    same PCA and drawn in green.
    """
    from sklearn.decomposition import PCA

    latent = np.asarray(latent, dtype=float)
    if latent.ndim != 2 or min(latent.shape) < 2:
        raise ValueError(f"need at least 2 latent points of at least 2 dimensions, got {latent.shape}")
    pca = PCA(n_components=2).fit(latent)
    xy = pca.transform(latent)
    fig = _figure(6, 5)
    ax = fig.subplots()
    if color is not None:
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=np.asarray(color, dtype=float), s=3, cmap="viridis", alpha=0.6)
        fig.colorbar(sc, ax=ax, label=color_label)
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=3, color="grey", alpha=0.5)
    if extra is not None and len(extra):
        e = pca.transform(np.asarray(extra, dtype=float))
        ax.scatter(e[:, 0], e[:, 1], s=8, color="tab:green", label=extra_label)
    if highlight is not None:
        h = np.asarray(highlight)
        points = xy[h] if h.size else np.zeros((0, 2))
        ax.scatter(points[:, 0], points[:, 1], s=30, color="black", marker="o", label=label)
    ratio = pca.explained_variance_ratio_
    ax.set_xlabel(f"PC1 ({ratio[0]:.0%})")
    ax.set_ylabel(f"PC2 ({ratio[1]:.0%})")
    if (highlight is not None and len(np.asarray(highlight))) or (extra is not None and len(extra)):
        ax.legend(loc="best")
    ax.set_title("PVAE latent space (PCA)")
    return _png(fig)


def bar_chart_png(labels: Sequence, values: Sequence[float], *, title: str, xlabel: str, ylabel: str) -> bytes:
    """A bar chart (e.g. a filter funnel or genes per space group)."""
    fig = _figure(7.0, 3.0)
    ax = fig.add_subplot()
    ax.bar([str(x) for x in labels], values, color="#4477aa")
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.tick_params(axis="x", labelrotation=90, labelsize=7)
    return _png(fig)
