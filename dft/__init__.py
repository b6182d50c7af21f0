"""WyCryst structure library: PyXtal trials, relaxers, energetics, phonons, HPC submission.

Plain Python (no Dagster).
"""
