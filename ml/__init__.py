"""WyCryst machine-learning library: Wyckoff tables, genes, encoding, PVAE, sampling, filters.

Plain Python (no Dagster): usable from a notebook or a script.
"""
