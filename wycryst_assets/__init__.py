"""Dagster definitions of the WyCryst platform (thin glue over ``ml`` and ``dft``).

``defs`` is loaded on first access (PEP 562), so ``wycryst_assets.cli``, ``.settings`` and the
other helpers import without Dagster's definitions; ``dagster dev -m wycryst_assets`` still finds
``defs`` (its module scan lists it through ``__dir__``).
"""

__all__ = ["defs"]


def __getattr__(name: str):
    if name == "defs":
        from wycryst_assets.definitions import defs

        return defs
    raise AttributeError(f"module 'wycryst_assets' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + ["defs"])
