"""Freezing a base classifier into one optimised TorchScript graph (``torch.jit.freeze``).

Eager PyTorch on a CPU reorders every convolution's activations and weights into oneDNN's blocked
layout and back, and runs BatchNorm and ReLU as passes of their own. ``torch.jit.freeze`` inlines
the weights as constants and folds BatchNorm into the convolutions; ``optimize_for_inference`` then
prepacks the weights for oneDNN once and fuses the activations. On small convolutional classifiers
that makes the forward pass several times faster on a CPU (``docs/performance.md``).

The model is scripted, never traced: a trace records the one branch its example took through
data-dependent code, and would certify a function other than the model. A model that cannot be
scripted is refused with the compiler's reason. The frozen graph is the same function up to
floating-point rounding, and a certificate is one of the function that was sampled: the frozen one.

torch 2.14 marks TorchScript deprecated in favour of ``torch.compile``. On this project's CPU,
certifying through ``torch.compile`` (inductor, with or without its own freezing) runs at about
0.8x the frozen graph's speed and compiles for seconds per batch shape where freezing takes a
fraction of a second, so freezing stays the CPU fast path while the pinned torch has it; ``compile``
is the other path, and the one for GPUs.
"""

from __future__ import annotations

import warnings

import torch
from torch import nn

from engine.options import COMPILE_CONFLICT
from engine.sampling import model_device, model_dtype


class FrozenModel(nn.Module):
    """A frozen graph and the device and dtype it was frozen for (its weights are constants, not
    parameters, so ``model_device`` and ``model_dtype`` read them from an empty buffer). It cannot be
    moved or converted: freeze the model again on the other device."""

    def __init__(self, graph: torch.jit.ScriptModule, device: torch.device, dtype: torch.dtype) -> None:
        super().__init__()
        self.graph = graph
        self.register_buffer("probe", torch.empty(0, device=device, dtype=dtype), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)


def freeze_model(model: nn.Module) -> FrozenModel:
    """``model`` in eval mode, scripted (a TorchScript archive as it is), frozen and optimised for inference.

    Raises ValueError naming the construct TorchScript cannot compile. ``model`` itself is not changed.
    """
    if isinstance(model, FrozenModel):
        return model
    if isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        raise ValueError(COMPILE_CONFLICT)  # noqa: TRY004 - callers catch the engine's ValueErrors
    device, dtype = model_device(model), model_dtype(model)
    was_training = model.training
    model.eval()
    try:
        with warnings.catch_warnings():
            # torch 2.14 marks TorchScript deprecated in favour of torch.compile, which is slower here (module doc)
            warnings.filterwarnings("ignore", category=FutureWarning, module=r"torch\.jit")
            scripted = model if isinstance(model, torch.jit.ScriptModule) else torch.jit.script(model)
            graph = torch.jit.optimize_for_inference(torch.jit.freeze(scripted))
    except Exception as error:  # noqa: BLE001 - TorchScript raises its own frontend errors
        lines = [line.strip() for line in str(error).splitlines() if line.strip()]
        where = next((line for line in lines if line.startswith("File ")), "")
        reason = "; ".join(filter(None, [lines[0].rstrip(":") if lines else type(error).__name__, where]))
        raise ValueError(f"freeze needs a model TorchScript can script; {type(model).__name__} cannot be: "
                         f"{reason}") from None
    finally:
        model.train(was_training)
    return FrozenModel(graph, device, dtype)
