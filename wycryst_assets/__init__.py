"""Dagster definitions of the WyCryst platform (thin glue over ``ml`` and ``dft``)."""

from wycryst_assets.definitions import defs

__all__ = ["defs"]
