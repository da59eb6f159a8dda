"""Custom ops of MARN: the fused APGRU recurrence and the multi-granularity embedding lookup.

Each op has a plain-PyTorch reference (`*_reference`), compiled C++/CUDA kernels (`csrc/`, the
`marn::` ops) and Triton kernels (the `marn_triton::` ops); `marn.ops.backend` picks one per call, as the
innermost `use_backend(name)` block chose.
"""

from marn.ops.apgru import apgru_cell, apgru_cell_reference, apgru_sequence, apgru_sequence_reference, input_gates
from marn.ops.backend import BACKEND_ENV, BACKENDS, requested_backend, use_backend
from marn.ops.embedding import multi_granularity_embedding, multi_granularity_embedding_reference

__all__ = [
    "BACKENDS",
    "BACKEND_ENV",
    "apgru_cell",
    "apgru_cell_reference",
    "apgru_sequence",
    "apgru_sequence_reference",
    "input_gates",
    "multi_granularity_embedding",
    "multi_granularity_embedding_reference",
    "requested_backend",
    "use_backend",
]
