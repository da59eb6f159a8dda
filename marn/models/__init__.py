"""MARN, its ablations and the baselines; `registry.MODELS` maps names to builders."""
