"""The certified smoothed classifier as one self-contained program: what was certified is what ships.

``SmoothedPredictor`` is Cohen et al. 2019, Alg. 1 PREDICT with the base classifier, the Gaussian
noise level, n, alpha and the batch size baked in: it draws n noisy copies of each input, counts the
base classifier's votes, and returns the top class, or -1 (abstain) unless the two-sided binomial test
of the top two counts at p = 1/2 rejects at level alpha. It draws its noise from torch's default
generator in the same batches as ``SmoothedClassifier.predict``, so after ``torch.manual_seed(s)`` its
answer for one input is the engine's ``predict(x, ..., seed=s)``.

``save_predictor`` writes it as a torch.export program (``.pt2``) where the batch loop is short enough
to unroll, and as TorchScript (``.pt``) otherwise: both load with torch alone.
"""

from __future__ import annotations

import io
import json
import math
from typing import Any

import torch
from torch import nn

ABSTAIN = -1
# torch.export traces the batch loop into straight-line code, one copy of the model's graph per batch
EXPORT_MAX_BATCHES = 16


def binomial_tail(k: torch.Tensor, m: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """P(X >= k) for X ~ Binomial(m, 1/2), in float64: sum_{j=k}^{m} C(m, j) 2^-m, summed in log space.

    ``support`` is arange(n + 1) in float64 for some n >= m (a buffer, so the program allocates nothing
    data-dependent).
    """
    log_choose = torch.lgamma(m + 1) - torch.lgamma(support + 1) - torch.lgamma((m - support).clamp(min=0) + 1)
    terms = torch.where((support >= k) & (support <= m), log_choose - m * math.log(2.0),
                        torch.full_like(support, -math.inf))
    return torch.logsumexp(terms, dim=0).exp()


def predict_test_pvalue(top: torch.Tensor, second: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    """The two-sided binomial test's p-value for ``top`` of ``top + second`` at p = 1/2 (Cohen's PREDICT).

    For p = 1/2 the binomial is symmetric, so the two-sided p-value is min(1, 2 P(X >= top)) when
    top > m/2 and 1 at top = m/2: scipy.stats.binomtest's value, which the engine's PREDICT uses.
    """
    m = top + second
    tail = binomial_tail(top, m, support)
    return torch.where(2 * top > m, (2 * tail).clamp(max=1.0), torch.ones_like(tail))


class SmoothedPredictor(nn.Module):
    """Cohen's PREDICT for ``base`` under N(0, sigma^2 I) with n, alpha and the batch size fixed.

    forward: a batch of inputs (B, C, H, W) on the [0, 1] scale -> (B,) int64 classes, -1 = abstain.
    """

    def __init__(self, base: nn.Module, num_classes: int, input_shape: tuple[int, ...] | list[int], sigma: float,
                 n: int, alpha: float, batch_size: int, bf16: bool = False) -> None:
        super().__init__()
        if not (sigma > 0 and n >= 1 and 0 < alpha < 1 and batch_size >= 1 and num_classes >= 2):
            raise ValueError(f"need sigma > 0, n >= 1, 0 < alpha < 1, batch_size >= 1 and >= 2 classes; got "
                             f"sigma={sigma}, n={n}, alpha={alpha}, batch_size={batch_size}, classes={num_classes}")
        self.base = base.eval()
        self.num_classes = int(num_classes)
        self.input_shape = [int(v) for v in input_shape]
        self.sigma = float(sigma)
        self.n = int(n)
        self.alpha = float(alpha)
        self.batch = min(int(batch_size), self.n)
        self.batches = -(-self.n // self.batch)
        self.bf16 = bool(bf16)  # a bf16 job certified the bf16 model: noise in fp32, the batch rounded once
        self.register_buffer("support", torch.arange(self.n + 1, dtype=torch.float64), persistent=True)

    def votes(self, x: torch.Tensor) -> torch.Tensor:
        """The base classifier's counts over n noisy copies of one input (C, H, W), in the engine's batches."""
        counts = torch.zeros(self.num_classes, dtype=torch.int64, device=x.device)
        buffer = torch.empty([self.batch] + self.input_shape, dtype=torch.float32, device=x.device)
        ones = torch.ones(self.batch, dtype=torch.int64, device=x.device)
        for i in range(self.batches):
            b = min(self.batch, self.n - i * self.batch)
            noisy = buffer[:b].normal_(0.0, self.sigma).add_(x)
            logits = self.base(noisy.to(torch.bfloat16) if self.bf16 else noisy)
            counts = counts.scatter_add(0, logits.argmax(dim=1), ones[:b])
        return counts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(torch.float32)
        answers = []
        for row in x.unbind(0):
            counts = self.votes(row)
            # top two with ties towards the lower index, as the engine's top_two
            values, indices = torch.sort(counts, dim=0, descending=True, stable=True)
            pvalue = predict_test_pvalue(values[0].to(torch.float64), values[1].to(torch.float64), self.support)
            answers.append(torch.where(pvalue <= self.alpha, indices[0], torch.full_like(indices[0], -1)))
        return torch.stack(answers)


def predictor_format(predictor: SmoothedPredictor) -> str:
    """``export`` (a .pt2 program) when the batch loop is short enough to unroll, else ``torchscript``."""
    return "export" if predictor.batches <= EXPORT_MAX_BATCHES else "torchscript"


def save_predictor(predictor: SmoothedPredictor, metadata: dict[str, Any], fmt: str | None = None) -> tuple[bytes, str]:
    """The predictor as file bytes and their format; ``metadata`` goes along as ``kavach.json``.

    A torch.export program is traced for one input at a time (batch dimension 1); a base model that
    torch.export cannot trace falls back to TorchScript, and one neither can compile is an error.
    """
    fmt = fmt or predictor_format(predictor)
    extra = {"kavach.json": json.dumps(metadata, sort_keys=True)}
    buffer = io.BytesIO()
    if fmt == "export":
        example = torch.zeros([1] + predictor.input_shape)
        try:
            program = torch.export.export(predictor.eval(), (example,))
        except Exception:  # noqa: BLE001  not traceable as a whole: TorchScript keeps the loop instead
            return save_predictor(predictor, metadata, "torchscript")
        torch.export.save(program, buffer, extra_files=extra)
        return buffer.getvalue(), "export"
    scripted = torch.jit.script(predictor.eval())
    torch.jit.save(scripted, buffer, _extra_files=extra)
    return buffer.getvalue(), "torchscript"
