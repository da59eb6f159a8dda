"""Gradient reversal (Ganin & Lempitsky, 2015): identity forward, gradient times −scale backward."""

from __future__ import annotations

import torch


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad_output: torch.Tensor):
        return grad_output * -ctx.scale, None


def reverse_gradient(x: torch.Tensor, scale: float) -> torch.Tensor:
    """`x` unchanged; whatever gradient reaches the result reaches `x` multiplied by −scale."""
    return _ReverseGradient.apply(x, float(scale))
