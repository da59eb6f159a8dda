"""MARN, its ablations and (later) the baselines; `registry.MODELS` maps names to builders."""
