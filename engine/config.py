"""One certification config: what ``kavach certify``, the service's API and its worker all run.

``CertifyConfig`` holds the settings of a certification and their rules: each field's bounds (those
that hold wherever the engine runs: alpha in (0, 1), a seed below 2^64, ...) and the rules between
fields (a schedule needs method np, DSRS needs one Q, ...). It builds what a run needs from them: the
noise (``make_noise``), the sample-size schedule (``make_schedule``) and each input's seed
(``input_seed``, the one seed rule). Resource ceilings (how large n may be) are a service's business:
``with_ceilings`` derives a config with lower maxima from the service's settings, keeping every rule.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Annotated, Any, Literal, Self, TypeVar, cast

from pydantic import BaseModel, Field, FiniteFloat, ValidationError, create_model, model_validator

from engine.options import COMPILE_CONFLICT, Method, Mode, NoiseKind

if TYPE_CHECKING:  # torch, NumPy and SciPy are imported when a config builds them, not by validating one
    from engine.noise import Noise
    from engine.schedule import SampleSchedule

SEED_LIMIT = 1 << 64  # torch's generators take seeds below 2^64
OpenUnit = Annotated[FiniteFloat, Field(gt=0, lt=1)]


class CertifyConfig(BaseModel):
    """The engine's certification settings (see ``SmoothedClassifier.certify``)."""

    method: Method = Method.np
    noise: NoiseKind = NoiseKind.gaussian
    k: int = Field(default=0, ge=0, description="generalized Gaussian exponent")
    sigma: FiniteFloat = Field(default=0.25, gt=0, le=100, description="noise level on the [0, 1] pixel scale")
    alpha: FiniteFloat = Field(default=0.001, gt=0, lt=1)
    n0: int = Field(default=100, ge=1, description="selection samples")
    n: int = Field(default=100_000, ge=1,
                   description="estimation samples (DSRS: over P and Q; ISS and sequential: maximum)")
    batch_size: int = Field(default=1000, ge=1)
    pack: int = Field(default=1, ge=1, description="certify this many inputs together, their noisy copies sharing "
                                                   "batches; NP with fixed n or ISS only")
    iss_delta: FiniteFloat | None = Field(default=None, gt=0, le=1e6, description="ISS budget; None keeps n fixed")
    iss_mode: Mode = "absolute"
    sequential_delta: FiniteFloat | None = Field(
        default=None, gt=0, le=1e6, description="anytime-valid sequential sampling (method np): draw n in growing "
                                                "looks and stop once more samples cannot add more than this to the "
                                                "radius; None keeps n fixed")
    q_sigma: FiniteFloat | None = Field(default=None, gt=0, le=100,
                                        description="DSRS: Q is the same noise at this sigma (below sigma)")
    q_threshold: OpenUnit | Literal["auto"] | None = Field(default=None, description="DSRS: truncated P as Q")
    bf16: bool = Field(default=False, description="run the model (and denoiser) in bfloat16: faster on GPUs and "
                                                  "AVX512-BF16 CPUs; the certificate is for the bf16 model")
    compile: bool = Field(default=False, description="run the model (with its denoiser) through torch.compile: pays on "
                                                     "long runs, especially on GPUs; the first batch of each size "
                                                     "waits for the compile. The certificates are those of the same "
                                                     "function, up to floating-point rounding. PyTorch modules only "
                                                     "(state_dict, safetensors and torch.export files); TorchScript "
                                                     "and ONNX models are refused")
    freeze: bool = Field(default=False, description="script the model (with its denoiser) and freeze it into one "
                                                    "TorchScript graph optimised for inference (BatchNorm folded, "
                                                    "weights prepacked for oneDNN): the fast path on CPU workers, "
                                                    "ready at once. The certificates are those of the same function, "
                                                    "up to floating-point rounding. State dict, safetensors and "
                                                    "TorchScript files; not with compile")
    seed: int | None = Field(default=None, ge=0, lt=SEED_LIMIT,
                             description="input i uses seed + i (below 2^64); with pack > 1, each group of inputs "
                                         "uses seed + the group's first index")

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if problem := config_problem(self):
            raise ValueError(problem)
        return self

    def make_noise(self, d: int) -> Noise:
        """The smoothing distribution P for inputs of ``d`` values (a ValueError if they do not fit k)."""
        from engine.noise import make_noise

        return make_noise(self.noise.value, self.sigma, k=self.k, d=d if self.k else None)

    def make_schedule(self) -> SampleSchedule | None:
        """The sample-size schedule the config names; None keeps n fixed."""
        from engine.schedule import ISSSchedule, SequentialSchedule

        if self.iss_delta is not None:
            return ISSSchedule(self.sigma, self.n, self.alpha, delta=self.iss_delta, mode=self.iss_mode,
                               batch_size=self.batch_size)
        if self.sequential_delta is not None:
            return SequentialSchedule(self.sigma, self.n, self.alpha, delta=self.sequential_delta,
                                      first=min(self.n, self.batch_size), batch_size=self.batch_size)
        return None

    def input_seed(self, index: int) -> int | None:
        """The seed of the input at ``index`` (of a packed group: of its first input), or None when unseeded.

        The one seed rule, so that a job's rows equal ``kavach certify``'s: seed + index, below 2^64.
        """
        if self.seed is None:
            return None
        if self.seed + index >= SEED_LIMIT:
            raise ValueError(f"seed + input index must stay below 2^64: seed {self.seed} + index {index}")
        return self.seed + index

    def groups(self, indices: list[int]) -> Iterator[list[int]]:
        """The inputs in the groups certified together: ``pack`` at a time, in order."""
        return (indices[g:g + self.pack] for g in range(0, len(indices), self.pack))


def config_problem(c: CertifyConfig) -> str | None:
    """What makes the fields disagree with each other, or None."""
    if c.iss_delta is not None and c.method is not Method.np:
        return "iss_delta (input-specific sampling) works with method np"
    if c.sequential_delta is not None and c.method is not Method.np:
        return "sequential_delta (sequential sampling) works with method np"
    if c.iss_delta is not None and c.sequential_delta is not None:
        return "choose one of iss_delta and sequential_delta"
    if c.iss_mode == "relative" and c.iss_delta is not None and c.iss_delta >= 1:
        return "a relative iss_delta is a fraction of the radius: below 1"
    # the engine packs NP certificates only, and a sequential schedule's looks go input by input
    if c.pack > 1 and c.method is not Method.np:
        return "pack (inputs certified together) works with method np"
    if c.pack > 1 and c.sequential_delta is not None:
        return "pack (inputs certified together) works with a fixed n or iss_delta, not sequential_delta"
    if c.method is Method.dsrs and (c.q_sigma is None) == (c.q_threshold is None):
        return "method dsrs needs exactly one of q_sigma and q_threshold"
    if c.method is Method.dsrs and c.q_sigma is not None and c.q_sigma >= c.sigma:
        return f"q_sigma must be below sigma ({c.sigma}): Q is the narrower noise"
    if c.freeze and c.compile:
        return COMPILE_CONFLICT
    if c.noise is NoiseKind.gaussian and c.k:
        return "k is for general_gaussian noise"
    if c.noise is NoiseKind.general_gaussian and c.k < 1:
        return "general_gaussian needs k >= 1"
    return None


Config = TypeVar("Config", bound=CertifyConfig)


def with_ceilings(model: type[Config], name: str, ceilings: Mapping[str, tuple[int, str]]) -> type[Config]:
    """``model`` with lower maxima: {field: (maximum, where it comes from)}, e.g. a service's settings.

    Each field keeps its default, its other bounds and its description (which names the source of
    the maximum), and the model keeps its rules; JSON schemas show the maxima.
    """
    fields: dict[str, Any] = {}
    for field, (maximum, source) in ceilings.items():
        info = model.model_fields[field]
        described = f"{info.description}; at most {source}" if info.description else f"at most {source}"
        fields[field] = (Annotated[info.annotation, info, Field(le=maximum, description=described)], info.default)
    return cast(type[Config], create_model(name, __base__=model, **fields))


def explain(error: ValidationError, name: Callable[[str], str] = str) -> str:
    """A validation error in plain words, a line per field; ``name`` spells a field (e.g. as an option)."""
    problems: dict[str, list[str]] = {}
    for item in error.errors():  # a union's branches fail one by one: their messages go on one line
        field = name(str(item["loc"][0])) if item["loc"] else ""
        problems.setdefault(field, []).append(item["msg"].removeprefix("Value error, "))
    return "\n".join(f"{field}: {' or '.join(texts)}" if field else "; ".join(texts)
                     for field, texts in problems.items())
