"""Per-example gradient norms and clipped gradient sums of single layers, in closed form.

DP-SGD (Abadi et al. 2016, https://arxiv.org/abs/1607.00133) needs, for a batch of ``B``
examples, each example's gradient norm ``||g_i||`` over *all* parameters and the clipped
sum ``sum_i c_i g_i`` with ``c_i = min(1, C / (||g_i|| + 1e-6))`` (Opacus's clip factor).
For a layer ``z = f(a; W)``, an example's gradient is a function of its input ``a_i`` and
of the loss gradient at its output ``d_i = dL_i / dz_i`` only, so one backward pass to
the layer outputs gives every example's gradient (Goodfellow 2015, "Efficient Per-Example
Gradient Computations", https://arxiv.org/abs/1510.01799):

- Linear on ``(B, in)``: ``g_i(W) = d_i a_i^T``, ``g_i(b) = d_i``, hence
  ``||g_i||^2 = ||d_i||^2 (||a_i||^2 + 1)`` without forming ``g_i`` (the "ghost norm",
  Li et al. 2021, https://arxiv.org/abs/2110.05679), and the clipped sum is one matmul,
  ``sum_i c_i d_i a_i^T = (c * D)^T A`` (clipping fused into the sum);
- Linear on ``(B, T, in)`` and Conv2d (``A_i``: the ``T`` unfolded patches):
  ``g_i(W) = D_i^T A_i``, ``g_i(b) = sum_t D_i[t]``; formed per example when that is
  smaller than the ``T x T`` Gram matrices, else (Conv2d) the ghost norm
  ``||D_i^T A_i||_F^2 = <A_i A_i^T, D_i D_i^T>`` (Bu et al. 2022's mixed ghost clipping,
  https://arxiv.org/abs/2205.10683) and the clipped sum is the convolution's weight
  gradient for the output gradient ``c * D`` (one ``convolution_backward``);
- GroupNorm: ``g_i(gamma) = sum_s d_i * xhat_i``, ``g_i(beta) = sum_s d_i`` over the
  spatial positions ``s``, with ``xhat`` the normalised input.

Each function returns the per-example squared norms ``(B,)`` and a function of the clip
factors ``c`` ``(B,)`` giving the layer's clipped sums, weight then bias (the order of
``module.parameters()``).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ClippedSum = Callable[[Tensor], list[Tensor]]
LayerTerms = tuple[Tensor, ClippedSum]

#: Layer types whose per-example gradients this module computes.
LAYERS: tuple[type[nn.Module], ...] = (nn.Linear, nn.Conv2d, nn.GroupNorm)


def supported(layer: nn.Module) -> bool:
    """True if :func:`layer_terms` handles ``layer``: a Linear, a Conv2d with ``groups=1``,
    zero padding given as numbers, or an affine GroupNorm, all its parameters trainable."""
    if type(layer) not in LAYERS or not all(p.requires_grad for p in layer.parameters()):
        return False
    if isinstance(layer, nn.Conv2d):
        return (layer.groups == 1 and layer.padding_mode == "zeros"
                and not isinstance(layer.padding, str))
    if isinstance(layer, nn.GroupNorm):
        return layer.affine
    return True


def linear_2d(a: Tensor, d: Tensor, bias: bool) -> LayerTerms:
    """Linear on ``(B, in)``: ``||g_i||^2 = ||d_i||^2 (||a_i||^2 + [bias])`` and the clipped
    sums ``(c * D)^T A`` (weight) and ``sum_i c_i d_i`` (bias)."""
    sq = torch.linalg.vecdot(a, a)
    if bias:
        sq.add_(1.0)
    sq.mul_(torch.linalg.vecdot(d, d))

    def clipped(c: Tensor) -> list[Tensor]:
        dc = d * c.unsqueeze(1)
        weight = torch.mm(dc.t(), a)
        return [weight, dc.sum(0)] if bias else [weight]

    return sq, clipped


def conv2d(layer: nn.Conv2d, a: Tensor, d: Tensor) -> LayerTerms:
    """Conv2d (``groups=1``): with ``A_i = unfold(a_i)`` ``(C_in k_h k_w, L)``, the patches
    at its ``L`` output positions, and ``D_i`` the output gradient ``(C_out, L)``,
    ``g_i(W) = D_i A_i^T`` and ``g_i(b) = sum_l D_i[:, l]``.

    If ``L^2 < C_out C_in k_h k_w`` (the per-example weight gradient is larger than the
    Gram matrices) the norms are ghost norms, ``<A_i^T A_i, D_i^T D_i>``, and the clipped
    sum is the weight gradient of the batch for the output gradient ``c * D``; else every
    ``g_i`` is formed (one batched matmul; a grouped convolution with one group per example
    was 1-7x slower here, depending on the buffers' alignment)."""
    flat = d.flatten(2)
    length = flat.shape[2]
    if length * length >= layer.weight.numel():
        cols = _patches(layer, a, d.shape[2:], channels_last=False).flatten(1, 2)
        grads = [torch.bmm(flat, cols.transpose(1, 2)).view(len(d), *layer.weight.shape)]
        return _materialised([*grads, flat.sum(2)] if layer.bias is not None else grads)
    rows = _patches(layer, a, d.shape[2:], channels_last=True)
    gram_a = torch.bmm(rows, rows.transpose(1, 2)).flatten(1)
    sq = torch.linalg.vecdot(gram_a, torch.bmm(flat.transpose(1, 2), flat).flatten(1))
    if layer.bias is not None:
        bias = flat.sum(2)
        sq.add_(torch.linalg.vecdot(bias, bias))
    sq.clamp_(min=0.0)  # a sum of products of two Gram matrices: >= 0 but for rounding

    def clipped(c: Tensor) -> list[Tensor]:
        _, weight, bias = torch.ops.aten.convolution_backward(
            d * c.view(-1, 1, 1, 1), a, layer.weight.detach(),
            None if layer.bias is None else [layer.bias.shape[0]], layer.stride,
            layer.padding, layer.dilation, False, [0, 0], 1,
            [False, True, layer.bias is not None])
        return [weight] if layer.bias is None else [weight, bias]

    return sq, clipped


def _patches(layer: nn.Conv2d, a: Tensor, out_hw: torch.Size, channels_last: bool) -> Tensor:
    """The input patches at the ``L = H_out W_out`` output positions: one strided view of
    the padded input, copied once (``F.unfold`` loops over the examples; this was about
    2-3.5x faster here for the SmallCNN's two convolutions at batch 32-128):

    - ``channels_last=False``: ``(B, C_in, k_h k_w, L)``, ``F.unfold(a)`` once flattened;
    - ``channels_last=True``: ``(B, L, k_h k_w C_in)``, each row one patch with the kernel
      offsets major (contiguous ``C_in`` runs: faster for many channels), the layout for
      Gram matrices, which do not depend on the order of a patch's entries."""
    (ph, pw), (dh, dw), (sh, sw) = layer.padding, layer.dilation, layer.stride
    (kh, kw), (ho, wo) = layer.kernel_size, out_hw
    batch, channels = a.shape[:2]
    if channels_last:
        padded = F.pad(a.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (B, H, W, C)
        s_b, s_h, s_w, s_c = padded.stride()
        return padded.as_strided((batch, ho, wo, kh, kw, channels),
                                 (s_b, sh * s_h, sw * s_w, dh * s_h, dw * s_w, s_c)
                                 ).reshape(batch, ho * wo, -1)
    padded = F.pad(a, (pw, pw, ph, ph))
    s_b, s_c, s_h, s_w = padded.stride()
    return padded.as_strided((batch, channels, kh, kw, ho, wo),
                             (s_b, s_c, dh * s_h, dw * s_w, sh * s_h, sw * s_w)
                             ).reshape(batch, channels, kh * kw, ho * wo)


def group_norm(layer: nn.GroupNorm, a: Tensor, d: Tensor) -> LayerTerms:
    """Affine GroupNorm ``y = xhat * gamma + beta``: ``g_i(gamma) = sum_s d_i xhat_i``,
    ``g_i(beta) = sum_s d_i`` per channel, summed over the spatial positions ``s``."""
    xhat = F.group_norm(a, layer.num_groups, eps=layer.eps)
    spatial = tuple(range(2, a.dim()))
    return _materialised([(d * xhat).sum(spatial), d.sum(spatial)])


def _materialised(grads: list[Tensor]) -> LayerTerms:
    """Per-example gradients ``grads`` (each ``(B, ...)``): their squared norms and clipped
    sums ``sum_i c_i g_i``."""
    flat = [g.flatten(1) for g in grads]
    sq = torch.linalg.vecdot(flat[0], flat[0])
    for g in flat[1:]:
        sq = sq + torch.linalg.vecdot(g, g)

    def clipped(c: Tensor) -> list[Tensor]:
        return [(c @ f).view(g.shape[1:]) for f, g in zip(flat, grads, strict=True)]

    return sq, clipped


def layer_terms(layer: nn.Module, a: Tensor, d: Tensor) -> LayerTerms:
    """Per-example squared gradient norms and clipped sums of ``layer`` (see
    :func:`supported`) from its input ``a`` and the per-example loss gradient ``d`` at its
    output (both with the batch first)."""
    if isinstance(layer, nn.Linear):
        bias = layer.bias is not None
        if a.dim() == 2:
            return linear_2d(a, d, bias)
        a, d = a.flatten(1, -2), d.flatten(1, -2)  # (B, T, in), (B, T, out)
        grads = [torch.bmm(d.transpose(1, 2), a)]
        return _materialised([*grads, d.sum(1)] if bias else grads)
    if isinstance(layer, nn.Conv2d):
        return conv2d(layer, a, d)
    if isinstance(layer, nn.GroupNorm):
        return group_norm(layer, a, d)
    raise TypeError(f"no closed-form per-example gradient for {type(layer).__name__}")


def clip_factors(sq_norms: Tensor, max_grad_norm: float) -> Tensor:
    """Opacus's per-example clip factors ``min(1, C / (||g_i|| + 1e-6))`` from the squared
    norms ``||g_i||^2`` over all parameters."""
    # C / x is x.reciprocal() * C in torch (Tensor.__rtruediv__); written out in place
    return torch.sqrt(sq_norms).add_(1e-6).reciprocal_().mul_(max_grad_norm).clamp_(max=1.0)
