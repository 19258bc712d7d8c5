"""Which per-sample-gradient mode DP-SGD runs a model in, and whether Opacus accepts the model.

:func:`choose_grad_sample_mode` is what :func:`fedapp.privacy.dp_sgd.dp_train` runs for
``grad_sample_mode="auto"``; :func:`check_model` and :func:`make_compatible` are the model
checks every side (server and nodes) applies before training. Opacus is imported only
when a function is called.
"""

from __future__ import annotations

from torch import nn

from fedapp.privacy.fused import fused_supported, trainable_layers


def check_model(model: nn.Module) -> None:
    """Raise ``ValueError`` if Opacus cannot compute per-example gradients for ``model``.

    ``ModuleValidator.fix`` is *not* applied here: replacing a layer (e.g. BatchNorm
    by GroupNorm) changes the parameter names and shapes, and the server aggregates
    by name. Build the model through :func:`make_compatible` on server *and* nodes.
    """
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ValueError("model is not DP-SGD compatible (build it with "
                         f"fedapp.privacy.make_compatible on every side): {errors}")


def make_compatible(model: nn.Module) -> nn.Module:
    """``ModuleValidator.fix`` (e.g. BatchNorm -> GroupNorm) then a strict validation."""
    from opacus.validators import ModuleValidator

    fixed = ModuleValidator.fix(model)
    ModuleValidator.validate(fixed, strict=True)
    return fixed


#: Per-sample-gradient modes :func:`dp_train` accepts ("auto" picks one): ``"fused"``
#: (:mod:`fedapp.privacy.fused`) or one of Opacus's ``grad_sample_mode``s.
GRAD_SAMPLE_MODES = ("auto", "fused", "ghost", "ew", "hooks", "functorch")
#: Expected batch size from which "auto" prefers ghost clipping to expanded weights for
#: models made only of layers with a ghost norm sampler (measured on the 64-64-10 MLP,
#: benchmarks/privacy.py: ghost is faster from batch 128, slower at 32-64).
GHOST_MIN_BATCH = 96


def _expanded_weights_layers() -> tuple[type[nn.Module], ...]:
    """Layer types whose per-sample gradients torch's ExpandedWeights computes."""
    return (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Embedding, nn.GroupNorm,
            nn.LayerNorm, nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


def choose_grad_sample_mode(model: nn.Module, expected_batch_size: float, *,
                            fused: bool = True) -> str:
    """The fastest DP-SGD mode that supports every trainable layer of ``model``.

    - ``"fused"`` (:mod:`fedapp.privacy.fused`: closed-form per-example gradients, clipping
      fused into the sum, no Opacus wrappers) when every trainable layer is a Linear, Conv2d
      or GroupNorm (:func:`~fedapp.privacy.fused.fused_supported`) and ``fused``; else
      Opacus's modes:
    - ``"ghost"`` (ghost clipping: per-example gradient *norms* without materialising the
      per-example gradients, then a second backward pass) when every trainable layer has a
      ghost norm sampler in Opacus (Linear, Embedding) and the expected batch is at least
      :data:`GHOST_MIN_BATCH`;
    - ``"ew"`` (torch's ExpandedWeights) when every trainable layer is one it supports
      (Linear, Conv, Embedding, GroupNorm, LayerNorm, InstanceNorm);
    - ``"hooks"`` (Opacus's module hooks, the most general) otherwise.
    """
    from opacus.grad_sample import GradSampleModuleFastGradientClipping

    if fused and fused_supported(model):
        return "fused"
    layers = trainable_layers(model)
    ghost = GradSampleModuleFastGradientClipping.NORM_SAMPLERS
    if layers and expected_batch_size >= GHOST_MIN_BATCH and all(
            type(m) in ghost for m in layers):
        return "ghost"
    if layers and all(type(m) in _expanded_weights_layers() for m in layers):
        return "ew"
    return "hooks"
