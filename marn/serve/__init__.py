"""Serving a trained MARN from pre-extracted item representations (paper §4.9.2).

`scoring`: the export and the scorer; `server`: the HTTP app; `cli`: `python -m marn.serve`.
"""
