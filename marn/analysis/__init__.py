"""Analyses of the paper (§4.3-4.5): tables over seeds with significance, popularity, cold start, t-SNE, curves."""
