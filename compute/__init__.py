"""Causal engine: per-window analysis, domain mapping, graph store, Ray driver."""
