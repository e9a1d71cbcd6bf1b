"""Benchmarks of the engine against its naive baselines, measured in the same run.

Each suite builds (or reuses) a random model of a stated shape, times the
engine and the baseline with the same inputs, and reports medians and ratios.
Scripts in ``benchmarks/`` and ``qaflora bench`` call these suites.
"""
