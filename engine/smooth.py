"""The smoothed classifier g(x) = argmax_c Pr_e[F(x + e) = c]: PREDICT and CERTIFY.

Neyman-Pearson certification (Cohen et al. 2019), optionally with input-specific sample sizes
(Chen et al. 2022), and DSRS (Li et al. 2022) with a second sampling distribution Q. The class
only composes the pure pieces: a ``Voter`` for sampling (``count_votes_many`` on a model), ``engine.bounds`` for confidence
intervals and ``engine.radius`` for radii.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any, Literal

import torch

from engine.bounds import (
    binomial_abstain,
    clopper_pearson,
    clopper_pearson_lower,
    clopper_pearson_upper,
    split_alpha,
)
from engine.freeze import FrozenModel, freeze_model
from engine.noise import Noise
from engine.options import COMPILE_CONFLICT
from engine.radius import dsrs_radius, dsrs_threshold_heuristic, np_radius
from engine.sampling import Classifier, ModelVoter, Voter, model_dtype
from engine.schedule import SampleSchedule, SequentialSchedule

if TYPE_CHECKING:
    from engine.config import CertifyConfig

ABSTAIN = -1
Method = Literal["np", "dsrs"]


@dataclass(frozen=True)
class CertifyResult:
    """One input's certificate: ``prediction`` is -1 on abstention (then ``radius`` is 0).

    ``p_lower``/``p_upper`` bound pA under P and ``q_lower``/``q_upper`` under Q (None for NP, or when
    DSRS did not sample Q); ``samples`` counts every forward pass, the n0 selection draws included.

    On abstention only, ``top_class`` and ``runner_up`` say between which classes the smoothed classifier
    could not decide: the two with the most votes in the n0 selection draws (``top_class`` is cA, the class
    whose probability was then bounded; ties go to the lower index). ``runner_up`` is None when no other
    class drew a vote, both are None without selection draws, and both are None for a prediction. They are
    for reading failures only: no bound or radius depends on them.
    """

    prediction: int
    radius: float
    p_lower: float
    p_upper: float
    q_lower: float | None
    q_upper: float | None
    samples: int
    seconds: float
    method: str
    top_class: int | None = None
    runner_up: int | None = None

    @property
    def abstained(self) -> bool:
        return self.prediction == ABSTAIN

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def top_two(counts: torch.Tensor) -> tuple[int, int, int]:
    """(top class, its count, runner-up count); ties broken towards the lower class index."""
    values, classes = torch.sort(counts, descending=True, stable=True)
    second = int(values[1]) if values.numel() > 1 else 0
    return int(classes[0]), int(values[0]), second


def selection_pair(counts0: torch.Tensor) -> tuple[int | None, int | None]:
    """(top class, runner-up) of the n0 selection draws ``counts0``, as ``top_two`` orders them (so the top
    class is the cA that certify picks); None for a class that drew no vote."""
    values, classes = torch.sort(counts0, descending=True, stable=True)
    top = int(classes[0]) if int(values[0]) > 0 else None
    second = int(classes[1]) if values.numel() > 1 and int(values[1]) > 0 else None
    return top, second


def scheduled_n(schedule: SampleSchedule, pilot_votes: int, n0: int, alpha: float) -> int:
    """ISS (Chen et al. 2022): the fresh sample size from the pilot's interval for pA. The pilot only
    chooses how many fresh samples to draw, so the certificate stays at alpha."""
    low, high = clopper_pearson(pilot_votes, n0, alpha)
    return int(schedule.sample_size(float(low), float(high)))


def prepare_model(model: Classifier, *, channels_last: bool = False, dtype: torch.dtype | None = None,
                  compile: bool | str = False, freeze: bool = False) -> Classifier:
    """The base classifier as ``SmoothedClassifier`` runs it: eval mode, converted in place to ``dtype``
    and NHWC, then frozen into one TorchScript graph or wrapped by ``torch.compile`` (see its __init__)."""
    if freeze and compile:
        raise ValueError(COMPILE_CONFLICT)
    if isinstance(model, FrozenModel):  # converted before it was frozen
        if dtype is not None and dtype != model_dtype(model):
            raise ValueError(f"the frozen graph computes in {model_dtype(model)}, not {dtype}: freeze the model "
                             "again in that precision")
    elif isinstance(model, torch.nn.Module):
        model.eval()
        if dtype is not None:
            model.to(dtype)
        if channels_last:
            model.to(memory_format=torch.channels_last)
    if freeze:
        return freeze_model(model)
    if compile and not isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        return torch.compile(model, dynamic=False, mode=compile if isinstance(compile, str) else None)
    return model


class SmoothedClassifier:
    """Randomized smoothing of ``model`` (a batch in the [0, 1] input scale -> logits) under ``noise``."""

    def __init__(self, model: Classifier | Voter, num_classes: int, noise: Noise, *, channels_last: bool = False,
                 dtype: torch.dtype | None = None, compile: bool | str = False, freeze: bool = False) -> None:
        """``model`` is a base classifier run in this process (converted by ``prepare_model`` with the
        options below), or a ``Voter`` that answers votes itself (a sandboxed model process), which
        takes no options: it converted its model already.

        ``channels_last=True`` converts ``model`` in place to NHWC weights and feeds it NHWC batches:
        faster convolutions on CPU (oneDNN) and GPU (cuDNN), the same function up to rounding.

        ``dtype=torch.bfloat16`` converts the model in place; noise is still drawn and added in float32
        and the noisy batch rounded once to bf16. The certificate is then exactly that of the bf16 base
        classifier, the function that was sampled, so it stays sound; its radii can differ from fp32's.

        ``compile=True`` runs the model through ``torch.compile`` (after the conversions above) and feeds
        it batches of one shape, so it compiles once per batch size; the first call pays the compile. A
        module that ``torch.compile`` wrapped already is kept as it is, so a caller that keeps the wrapper
        (a worker, across shards) keeps the graphs it compiled. A string is ``torch.compile``'s mode:
        ``"reduce-overhead"`` replays CUDA graphs on a GPU, which the static batch shapes allow.

        ``freeze=True`` scripts the model and freezes it into one TorchScript graph optimised for inference
        (``engine.freeze``: BatchNorm folded, weights prepacked for oneDNN): the fast path on a CPU. A model
        frozen already is kept. It excludes ``compile``; a model TorchScript cannot script is refused.
        """
        if noise.threshold is not None:
            raise ValueError("the smoothing distribution P must not be truncated; truncation is DSRS's Q")
        self.num_classes = int(num_classes)
        self.noise = noise
        if isinstance(model, Voter):
            if channels_last or dtype is not None or compile or freeze:
                raise ValueError("a Voter runs its own model: convert that model before it answers votes")
            self.voter: Voter = model
            return
        self.voter = ModelVoter(prepare_model(model, channels_last=channels_last, dtype=dtype, compile=compile,
                                              freeze=freeze),
                                num_classes, channels_last=channels_last, static_shapes=bool(compile))

    @property
    def model(self) -> Classifier:
        """The base classifier as it is run (converted, frozen or compiled); a Voter has none here."""
        if not isinstance(self.voter, ModelVoter):
            raise AttributeError("this smoothed classifier's model runs behind a Voter")  # noqa: TRY004  (a property: hasattr must say False)
        return self.voter.model

    def _generator(self, generator: Any, seed: int | None) -> Any:
        return generator if generator is not None else self.voter.generator(seed)

    def _votes(self, x: torch.Tensor, noise: Noise, n: int, batch_size: int, generator: Any) -> torch.Tensor:
        return self.voter.votes(x.unsqueeze(0), noise, [n], batch_size, generator)[0]

    def predict(self, x: torch.Tensor, n: int, alpha: float, batch_size: int, *,
                generator: torch.Generator | None = None, seed: int | None = None) -> int:
        """Cohen et al. 2019, Alg. 1 PREDICT: the top class, or -1 unless a two-sided binomial test of
        the top two counts at p = 1/2 rejects at level alpha (wrong with probability <= alpha)."""
        counts = self._votes(x, self.noise, n, batch_size, self._generator(generator, seed))
        top, n_top, n_second = top_two(counts)
        return ABSTAIN if binomial_abstain(n_top, n_second, alpha) else top

    def certify(
        self,
        x: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        *,
        method: Method = "np",
        schedule: SampleSchedule | None = None,
        q_sigma: float | None = None,
        q_threshold: float | Literal["auto"] | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> CertifyResult:
        """Certify one input (C, H, W): a class and an L2 radius valid with probability >= 1 - alpha.

        ``method="np"``: Cohen et al. 2019, Alg. 1 CERTIFY; with ``schedule`` the n0 pilot also sets
        the estimation size (ISS). ``method="dsrs"``: Li et al. 2022, n split evenly between P and Q.
        """
        start = time.perf_counter()
        gen = self._generator(generator, seed)
        if method == "np":
            result = self._certify_np(x, n0, n, alpha, batch_size, schedule, gen)
        elif method == "dsrs":
            if schedule is not None:
                raise ValueError("sample-size schedules are for method='np'")
            result = self._certify_dsrs(x, n0, n, alpha, batch_size, q_sigma, q_threshold, gen)
        else:
            raise ValueError(f"unknown method {method!r}: use 'np' or 'dsrs'")
        return replace(result, seconds=time.perf_counter() - start)

    def certify_many(
        self,
        xs: torch.Tensor,
        n0: int,
        n: int,
        alpha: float,
        batch_size: int,
        *,
        schedule: SampleSchedule | None = None,
        generator: torch.Generator | None = None,
        seed: int | None = None,
    ) -> list[CertifyResult]:
        """NP certificates for a stack of inputs (m, C, H, W), their noisy copies packed into shared batches.

        The same algorithm as ``certify`` (selection on n0 draws, then fresh draws, ISS sizes per input
        from each pilot), so each certificate holds at alpha; only the batching differs, which keeps
        the device full when one input's n0 or n would underfill a batch. Seeds are per call, not per input.
        """
        if isinstance(schedule, SequentialSchedule):
            raise ValueError("the sequential schedule certifies inputs one at a time; use certify")  # noqa: TRY004
        start = time.perf_counter()
        gen = self._generator(generator, seed)
        counts0 = self.voter.votes(xs, self.noise, [n0] * len(xs), batch_size, gen)
        winners = [top_two(c)[0] for c in counts0]
        sizes = [n] * len(xs)
        if schedule is not None:
            sizes = [scheduled_n(schedule, int(c[w]), n0, alpha) for c, w in zip(counts0, winners, strict=True)]
        counts = self.voter.votes(xs, self.noise, sizes, batch_size, gen)
        seconds = (time.perf_counter() - start) / max(len(xs), 1)
        d = xs[0].numel()
        return [replace(self._np_result(w, int(c[w]), size, alpha, d, n0 + size, "np", c0), seconds=seconds)
                for c, c0, w, size in zip(counts, counts0, winners, sizes, strict=True)]

    # -- the two certificates ---------------------------------------------------------------------
    def _np_radius(self, p_lower: float, d: int) -> float:
        return np_radius(p_lower, sigma=self.noise.sigma, noise=self.noise.kind, d=d, k=self.noise.k)

    def _select(self, x: torch.Tensor, n0: int, batch_size: int,
                gen: torch.Generator | None) -> tuple[int, torch.Tensor]:
        # selection draws only pick cA; estimates always use fresh draws (Cohen et al. 2019, Sec. 3.2.2)
        counts0 = self._votes(x, self.noise, n0, batch_size, gen)
        return top_two(counts0)[0], counts0

    def _np_result(self, c_a: int, successes: int, trials: int, alpha: float, d: int, samples: int,
                   method: str, counts0: torch.Tensor) -> CertifyResult:
        """One-sided CP lower bound at alpha, then Cohen's abstain-or-radius rule; an abstention also names
        the selection draws' top two classes (``counts0``), for display."""
        p_lower = float(clopper_pearson_lower(successes, trials, alpha))
        p_upper = float(clopper_pearson_upper(successes, trials, alpha))
        if p_lower < 0.5:
            top, second = selection_pair(counts0)
            return CertifyResult(prediction=ABSTAIN, radius=0.0, p_lower=p_lower, p_upper=p_upper, q_lower=None,
                                 q_upper=None, samples=samples, seconds=0.0, method=method, top_class=top,
                                 runner_up=second)
        return CertifyResult(prediction=c_a, radius=self._np_radius(p_lower, d), p_lower=p_lower, p_upper=p_upper,
                             q_lower=None, q_upper=None, samples=samples, seconds=0.0, method=method)

    def _certify_np(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                    schedule: SampleSchedule | None, gen: torch.Generator | None) -> CertifyResult:
        c_a, counts0 = self._select(x, n0, batch_size, gen)
        if isinstance(schedule, SequentialSchedule):
            return self._certify_sequential(x, c_a, counts0, n0, batch_size, schedule, gen)
        if schedule is not None:
            n = scheduled_n(schedule, int(counts0[c_a]), n0, alpha)
        n_a = int(self._votes(x, self.noise, n, batch_size, gen)[c_a])
        return self._np_result(c_a, n_a, n, alpha, x.numel(), n0 + n, "np", counts0)

    def _certify_sequential(self, x: torch.Tensor, c_a: int, counts0: torch.Tensor, n0: int, batch_size: int,
                            schedule: SequentialSchedule, gen: torch.Generator | None) -> CertifyResult:
        """Draw fresh samples up to each look of ``schedule`` and stop by its rule; every look's bound is at
        ``schedule.look_alpha()``, so the reported one holds at level alpha by the union bound over looks."""
        alpha_look, drawn, n_a = schedule.look_alpha(), 0, 0
        for size in schedule.looks():
            n_a += int(self._votes(x, self.noise, size - drawn, batch_size, gen)[c_a])
            drawn = size
            p_lower, p_upper = (float(v) for v in clopper_pearson(n_a, drawn, alpha_look))
            if schedule.should_stop(p_lower, p_upper):
                break
        return self._np_result(c_a, n_a, drawn, alpha_look, x.numel(), n0 + drawn, "np", counts0)

    def _check_q(self, q_sigma: float | None, q_threshold: float | Literal["auto"] | None) -> None:
        if (q_sigma is None) == (q_threshold is None):
            raise ValueError("DSRS needs exactly one of q_sigma (smaller-sigma Q) or q_threshold (truncated Q)")
        if q_sigma is not None and not 0 < q_sigma < self.noise.sigma:
            raise ValueError(f"q_sigma must be in (0, sigma={self.noise.sigma}), got {q_sigma}")
        if q_threshold is not None and q_threshold != "auto" and not 0 < float(q_threshold) < 1:
            raise ValueError(f"q_threshold must be in (0, 1) or 'auto', got {q_threshold!r}")

    def _q_noise(self, p_lower: float, q_sigma: float | None,
                 q_threshold: float | Literal["auto"] | None) -> tuple[Noise, float | None, float | None]:
        if q_sigma is not None:
            return self.noise.scaled(q_sigma), float(q_sigma), None
        threshold = dsrs_threshold_heuristic(p_lower) if q_threshold == "auto" else float(q_threshold)
        return self.noise.truncated(threshold), None, threshold

    def _certify_dsrs(self, x: torch.Tensor, n0: int, n: int, alpha: float, batch_size: int,
                      q_sigma: float | None, q_threshold: float | Literal["auto"] | None,
                      gen: torch.Generator | None) -> CertifyResult:
        self._check_q(q_sigma, q_threshold)
        d = x.numel()
        c_a, counts0 = self._select(x, n0, batch_size, gen)
        if n0 > 0 and int(counts0[c_a]) == n0:
            # Every pilot vote for cA: Q would hardly tighten anything, so all n samples go to P and
            # NP certifies at alpha. Li et al. (App. E) decide this from the P samples themselves and
            # then reuse them, which only bounds the error by ~2 alpha; the independent pilot keeps alpha.
            k_all = int(self._votes(x, self.noise, n, batch_size, gen)[c_a])
            return self._np_result(c_a, k_all, n, alpha, d, n0 + n, "dsrs", counts0)
        n_p, n_q = n // 2, n - n // 2
        alpha_each = split_alpha(alpha, 2)
        k_p = int(self._votes(x, self.noise, n_p, batch_size, gen)[c_a])
        p_lower, p_upper = (float(v) for v in clopper_pearson(k_p, n_p, alpha_each))
        if p_lower <= 0.5:
            # no radius is possible whatever Q shows, so its samples would be wasted
            top, second = selection_pair(counts0)
            return CertifyResult(prediction=ABSTAIN, radius=0.0, p_lower=p_lower, p_upper=p_upper, q_lower=None,
                                 q_upper=None, samples=n0 + n_p, seconds=0.0, method="dsrs", top_class=top,
                                 runner_up=second)
        q_noise, sigma_q, threshold = self._q_noise(p_lower, q_sigma, q_threshold)
        k_q = int(self._votes(x, q_noise, n_q, batch_size, gen)[c_a])
        q_lower, q_upper = (float(v) for v in clopper_pearson(k_q, n_q, alpha_each))
        radius = dsrs_radius((p_lower, p_upper), (q_lower, q_upper), d=d, k=self.noise.k,
                             sigma=self.noise.sigma, q_sigma=sigma_q, q_threshold=threshold)
        return CertifyResult(prediction=c_a, radius=float(radius), p_lower=p_lower, p_upper=p_upper,
                             q_lower=q_lower, q_upper=q_upper, samples=n0 + n, seconds=0.0, method="dsrs")


def certify_group(smoothed: SmoothedClassifier, config: CertifyConfig, xs: torch.Tensor, first: int,
                  schedule: SampleSchedule | None) -> list[CertifyResult]:
    """Certify one of ``config.groups``: inputs ``xs`` (m, C, H, W) whose first is the input at index ``first``.

    With ``pack`` 1 the input goes through ``certify``; else the group, even a last one of one input, goes
    through ``certify_many`` (their noisy copies sharing batches). Seeded by ``config.input_seed(first)``:
    ``kavach certify`` and the worker both run this, so their certificates agree.
    """
    c, seed = config, config.input_seed(first)
    if c.pack > 1:
        return smoothed.certify_many(xs, c.n0, c.n, c.alpha, c.batch_size, schedule=schedule, seed=seed)
    return [smoothed.certify(xs[0], c.n0, c.n, c.alpha, c.batch_size, method=c.method.value, schedule=schedule,
                             q_sigma=c.q_sigma, q_threshold=c.q_threshold, seed=seed)]
