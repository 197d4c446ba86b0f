"""Monte Carlo votes of a base classifier under noise: the sampling step of randomized smoothing.

Counts of argmax_c F(x + e)_c over e ~ noise (Cohen et al. 2019, SAMPLEUNDERNOISE). Everything stays
on the model's device: one noise buffer is allocated once and refilled in place, votes are
accumulated there with ``scatter_add_``, and the host waits once, at the end.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import torch

from engine.noise import Noise

Classifier = Callable[[torch.Tensor], torch.Tensor]
# called after each batch with the samples drawn so far in the call; it may raise to stop the run
BatchHook = Callable[[int], None]


def model_device(model: Classifier, default: torch.device | str = "cpu") -> torch.device:
    """Device of the first parameter or buffer of ``model``; ``default`` for parameter-free callables."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            return tensor.device
    return torch.device(default)


def model_dtype(model: Classifier, default: torch.dtype = torch.float32) -> torch.dtype:
    """Floating dtype the model computes in (its first floating parameter), else ``default``."""
    if isinstance(model, torch.nn.Module):
        for tensor in (*model.parameters(), *model.buffers()):
            if tensor.is_floating_point():
                return tensor.dtype
    return default


def make_generator(seed: int | None, device: torch.device | str) -> torch.Generator | None:
    """A generator on ``device`` seeded with ``seed``; None (the global RNG) when seed is None."""
    if seed is None:
        return None
    generator = torch.Generator(device=device)
    generator.manual_seed(int(seed))
    return generator


def _check_logits(logits: torch.Tensor, num_classes: int) -> None:
    # a shape check only: reading values here would cost a host sync per batch
    if logits.dim() != 2 or logits.shape[1] != num_classes:
        raise ValueError(f"model returned logits of shape {tuple(logits.shape)}, expected (batch, {num_classes})")


def count_votes(
    model: Classifier,
    x: torch.Tensor,
    noise: Noise,
    n: int,
    num_classes: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
    static_shapes: bool = False,
) -> torch.Tensor:
    """Counts of argmax F(x + e) over n draws e ~ noise (Cohen et al. 2019, Alg. 1 SAMPLEUNDERNOISE).

    ``x`` is one input (C, H, W) in the model's input scale. Returns an int64 CPU tensor of
    ``num_classes`` counts summing to n. ``generator``, if given, must live on the model's device.
    ``channels_last`` lays the noisy batch out as NHWC, for a model converted to that format.
    """
    return count_votes_many(model, x.unsqueeze(0), noise, n, num_classes, batch_size, generator=generator,
                            channels_last=channels_last, static_shapes=static_shapes)[0]


def count_votes_many(
    model: Classifier,
    xs: torch.Tensor | Sequence[torch.Tensor],
    noise: Noise,
    n: int | Sequence[int],
    num_classes: int,
    batch_size: int,
    *,
    generator: torch.Generator | None = None,
    channels_last: bool = False,
    static_shapes: bool = False,
    on_batch: BatchHook | None = None,
) -> torch.Tensor:
    """Votes for several inputs at once: (len(xs), num_classes) int64 counts on the CPU.

    Batches are filled with noisy copies of consecutive inputs, so many small inputs (or small n)
    still fill the device. ``n`` is one sample count for all inputs or one per input. Sample j of
    the flattened run belongs to input searchsorted(cumsum(n), j), computed on the device.
    ``static_shapes`` runs the model on the whole buffer even for a short last batch (its extra rows
    are not counted): a compiled model then sees one batch shape and compiles once. ``on_batch`` runs
    after each batch's votes are queued (it adds no host synchronisation of its own).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not isinstance(xs, torch.Tensor):
        xs = torch.stack(list(xs))
    m = xs.shape[0]
    sizes = [int(n)] * m if isinstance(n, int) else [int(v) for v in n]
    if len(sizes) != m or min(sizes, default=0) < 0:
        raise ValueError(f"need one non-negative sample count per input, got {n!r} for {m} inputs")
    device = model_device(model, xs.device)
    xs = xs.to(device=device, dtype=torch.float32)
    compute_dtype = model_dtype(model)
    counts = torch.zeros(m * num_classes, dtype=torch.int64, device=device)
    total = sum(sizes)
    if total == 0:
        return counts.view(m, num_classes).cpu()

    uniform = len(set(sizes)) == 1
    ends = torch.tensor(sizes, device=device).cumsum(0)
    layout = torch.channels_last if channels_last and xs.dim() == 4 else torch.contiguous_format
    buffer = torch.empty((min(batch_size, total), *xs.shape[1:]), device=device, dtype=torch.float32,
                         memory_format=layout)
    ones = torch.ones(buffer.shape[0], dtype=torch.int64, device=device)
    steps = torch.arange(buffer.shape[0], device=device)
    with torch.inference_mode():
        for start in range(0, total, buffer.shape[0]):
            b = min(buffer.shape[0], total - start)
            batch = noise.sample_(buffer[:b], generator=generator)
            if m == 1:  # one input: no owners to work out per sample
                batch.add_(xs[0])
            else:
                sample_ids = steps[:b] + start
                owner = sample_ids // sizes[0] if uniform else torch.searchsorted(ends, sample_ids, right=True)
                batch.add_(xs[owner])
            inputs = buffer if static_shapes else batch
            logits = model(inputs if compute_dtype == torch.float32 else inputs.to(compute_dtype))[:b]
            _check_logits(logits, num_classes)
            votes = logits.argmax(dim=1)
            counts.scatter_add_(0, votes if m == 1 else owner * num_classes + votes, ones[:b])
            if on_batch is not None:
                on_batch(start + b)
    return counts.view(m, num_classes).cpu()


@runtime_checkable
class Voter(Protocol):
    """What the smoothed classifier asks of its base classifier: votes under noise.

    ``ModelVoter`` answers in this process; a service answers from a sandboxed model process. A
    generator is whatever ``generator(seed)`` returned, passed back unchanged to ``votes``.
    """

    def generator(self, seed: int | None) -> Any: ...

    def votes(self, xs: torch.Tensor, noise: Noise, sizes: Sequence[int], batch_size: int,
              generator: Any) -> torch.Tensor: ...


class ModelVoter:
    """``count_votes_many`` on a model in this process (the model converted beforehand, if at all)."""

    def __init__(self, model: Classifier, num_classes: int, *, channels_last: bool = False,
                 static_shapes: bool = False, on_batch: BatchHook | None = None) -> None:
        self.model, self.num_classes = model, int(num_classes)
        self.channels_last, self.static_shapes, self.on_batch = channels_last, static_shapes, on_batch

    @property
    def device(self) -> torch.device:
        return model_device(self.model)

    def generator(self, seed: int | None) -> torch.Generator | None:
        return make_generator(seed, self.device)

    def votes(self, xs: torch.Tensor, noise: Noise, sizes: Sequence[int], batch_size: int,
              generator: torch.Generator | None) -> torch.Tensor:
        return count_votes_many(self.model, xs, noise, list(sizes), self.num_classes, batch_size, generator=generator,
                                channels_last=self.channels_last, static_shapes=self.static_shapes,
                                on_batch=self.on_batch)
