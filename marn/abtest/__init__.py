"""Stage `abtest`: an offline simulation of the paper's online A/B test (Table 6) — CTR and GMV lift.

`simulation` and `statistics` are the pure parts (arrays in, numbers out); `response` is the relevance
model for real data; `population`, `relevance`, `experiment`, `scoring` and `report` tie them to the prepared
data, the synthetic truth and the trained models; `stage` runs them in order.
"""
