"""SQLModel tables and their API schemas, in the Base / Create / table / Public / ...sPublic ladder."""

from __future__ import annotations

import math
from datetime import UTC, datetime
from enum import Enum
from typing import Annotated

from pydantic import Field as PydanticField
from pydantic import FiniteFloat, model_validator
from sqlalchemy import JSON, UniqueConstraint
from sqlmodel import Field, SQLModel

from backend.core.config import get_settings
from engine.config import CertifyConfig, with_ceilings

# request bounds (configurable settings, read once at start): every number a user sends has a ceiling
LIMITS = get_settings()
ID_MAX = (1 << 31) - 1  # ids, indices and offsets fit the databases' 32-bit integer columns
NAME_CHARS = 255


def utcnow() -> datetime:
    return datetime.now(UTC)


class JobState(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobState.done, JobState.failed, JobState.cancelled)


class ShardState(str, Enum):
    queued = "queued"
    running = "running"
    done = "done"
    failed = "failed"
    cancelled = "cancelled"


class ModelFormat(str, Enum):
    torchscript = "torchscript"
    state_dict = "state_dict"
    safetensors = "safetensors"
    export = "export"
    onnx = "onnx"


class ModelKind(str, Enum):
    classifier = "classifier"
    denoiser = "denoiser"


# -- owners and tokens --------------------------------------------------------------------------

class Owner(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(unique=True, index=True, max_length=255)
    created_at: datetime = Field(default_factory=utcnow)


class ApiToken(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    name: str = Field(max_length=255)
    token_hash: str = Field(unique=True, index=True, max_length=64)
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None  # refused from this moment on; none: never expires
    revoked_at: datetime | None = None  # `kavach token revoke`: refused from then on


# -- models -------------------------------------------------------------------------------------

class ModelBase(SQLModel):
    name: str = Field(min_length=1, max_length=255)
    kind: ModelKind = ModelKind.classifier
    format: ModelFormat | None = Field(default=None, description="detected from the file when omitted")
    arch: str | None = Field(default=None, max_length=255,
                             description="registered architecture, for state_dict and safetensors weights")
    input_shape: list[int] = Field(sa_type=JSON, min_length=3, max_length=3,
                                   description=f"one input, (C, H, W); C x H x W at most {LIMITS.MAX_INPUT_ELEMENTS:,} "
                                               "(MAX_INPUT_ELEMENTS)")
    num_classes: int | None = Field(default=None, ge=2, le=LIMITS.MAX_CLASSES,
                                    description="required for classifiers; none for denoisers")
    class_names: list[str] | None = Field(default=None, sa_type=JSON, max_length=LIMITS.MAX_CLASSES)
    input_max: FiniteFloat = Field(default=1.0, gt=0, le=1e6,
                             description="the model reads pixels in [0, input_max]")
    mean: list[FiniteFloat] | None = Field(default=None, sa_type=JSON, max_length=3 * 512,
                                     description="per-channel normalisation")
    std: list[FiniteFloat] | None = Field(default=None, sa_type=JSON, max_length=3 * 512)
    # what the model was trained for: the dashboard's certify form starts from them
    dataset: str | None = Field(default=None, max_length=255,
                                description="the dataset it was trained on (a dataset id from GET /datasets)")
    sigma: FiniteFloat | None = Field(default=None, gt=0, le=100,
                                      description="the training noise level on the [0, 1] pixel scale")


class ModelCreate(ModelBase):
    @model_validator(mode="after")
    def _consistent(self) -> ModelCreate:
        if len(self.input_shape) != 3 or min(self.input_shape) < 1:
            raise ValueError(f"input_shape must be (C, H, W) with positive sizes, got {self.input_shape}")
        elements = math.prod(self.input_shape)
        if elements > LIMITS.MAX_INPUT_ELEMENTS:
            raise ValueError(f"input_shape {self.input_shape} has {elements:,} values per input; the limit is "
                             f"MAX_INPUT_ELEMENTS = {LIMITS.MAX_INPUT_ELEMENTS:,}")
        if self.class_names is not None and any(len(name) > NAME_CHARS for name in self.class_names):
            raise ValueError(f"class names are at most {NAME_CHARS} characters")

        if self.kind is ModelKind.classifier and self.num_classes is None:
            raise ValueError("num_classes is required for a classifier")
        if self.kind is ModelKind.denoiser and (self.num_classes is not None or self.class_names is not None):
            raise ValueError("a denoiser has no classes: leave num_classes and class_names out")
        if self.kind is ModelKind.denoiser and (self.input_max != 1.0 or self.mean is not None):
            raise ValueError("a denoiser reads and returns [0, 1] images: input_max, mean and std are for classifiers")
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither")
        for values in (self.mean, self.std):
            if values is not None and len(values) != self.input_shape[0]:
                raise ValueError(f"mean and std need one value per channel ({self.input_shape[0]})")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError("std must be positive")
        return self


class Model(ModelBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    path: str
    size_bytes: int
    created_at: datetime = Field(default_factory=utcnow)


class ModelPublic(ModelBase):
    id: int
    size_bytes: int
    created_at: datetime


class ModelsPublic(SQLModel):
    data: list[ModelPublic]
    count: int


# -- datasets -----------------------------------------------------------------------------------

class DatasetBase(SQLModel):
    name: str = Field(min_length=1, max_length=255)


class Dataset(DatasetBase, table=True):
    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    path: str
    size: int
    input_shape: list[int] = Field(sa_type=JSON)
    num_classes: int
    class_names: list[str] | None = Field(default=None, sa_type=JSON)
    created_at: datetime = Field(default_factory=utcnow)


class DatasetPublic(DatasetBase):
    id: str = Field(description="a built-in's name, or an upload's number; jobs name a dataset by it")
    builtin: bool
    size: int
    input_shape: list[int]
    num_classes: int
    class_names: list[str] | None = None


class DatasetsPublic(SQLModel):
    data: list[DatasetPublic]
    count: int


# -- jobs ---------------------------------------------------------------------------------------

# the engine's config with the service's ceilings (settings read once at start); every rule is the engine's
_BoundedConfig = with_ceilings(CertifyConfig, "BoundedCertifyConfig", {
    "k": (LIMITS.MAX_INPUT_ELEMENTS // 2, "MAX_INPUT_ELEMENTS / 2"),
    "n0": (LIMITS.MAX_N0, "MAX_N0"),
    "n": (LIMITS.MAX_N, "MAX_N"),
    "batch_size": (LIMITS.MAX_BATCH_SIZE, "MAX_BATCH_SIZE"),
    "pack": (LIMITS.MAX_PACK, "MAX_PACK"),
})


class JobConfig(_BoundedConfig):
    """The engine's certification settings (``engine.config.CertifyConfig``), within the server's limits."""

    denoiser_id: int | None = PydanticField(default=None, ge=1, le=ID_MAX)


class Subset(SQLModel):
    """Which inputs to certify: explicit indices, or start/stride/count."""

    indices: list[Annotated[int, Field(ge=0, le=ID_MAX)]] | None = Field(default=None, max_length=LIMITS.MAX_JOB_INPUTS)
    start: int = Field(default=0, ge=0, le=ID_MAX)
    stride: int = Field(default=1, ge=1, le=ID_MAX)
    count: int | None = Field(default=None, ge=1, le=LIMITS.MAX_JOB_INPUTS,
                              description="at most MAX_JOB_INPUTS inputs per job")


class JobCreate(SQLModel):
    model_id: int = Field(ge=1, le=ID_MAX)
    dataset: str = Field(min_length=1, max_length=NAME_CHARS, description="a dataset id from GET /datasets")
    split: str = Field(default="test", min_length=1, max_length=32)
    subset: Subset = Field(default_factory=Subset)
    config: JobConfig = Field(default_factory=JobConfig)


class Job(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    owner_id: int = Field(foreign_key="owner.id", index=True)
    model_id: int = Field(foreign_key="model.id", index=True)
    dataset: str
    split: str
    subset: dict = Field(sa_type=JSON)
    config: dict = Field(sa_type=JSON)
    state: JobState = Field(default=JobState.queued, index=True)
    total: int
    error: str | None = None
    created_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    finished_at: datetime | None = None


class Progress(SQLModel):
    done: int
    total: int
    samples: int
    samples_per_second: float | None = Field(description="samples drawn over the wall-clock seconds since the job "
                                                         "started (queueing and model loading included)")
    eta_seconds: float | None


class JobPublic(SQLModel):
    id: int
    model_id: int
    dataset: str
    split: str
    subset: Subset
    config: JobConfig
    state: JobState
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    progress: Progress


class JobsPublic(SQLModel):
    data: list[JobPublic]
    count: int


class Shard(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    number: int
    indices: list[int] = Field(sa_type=JSON)
    state: ShardState = Field(default=ShardState.queued, index=True)
    attempts: int = 0
    # the attempt that owns the shard: each start takes token + 1, and rows are stored only under the
    # current token, so an attempt that lost its lease (a slow worker, a retry beside it) can never write
    token: int = Field(default=0, sa_column_kwargs={"server_default": "0"})
    heartbeat_at: datetime | None = None  # the owning attempt renews it; stale means its worker is gone
    dispatches: int = Field(default=0, sa_column_kwargs={"server_default": "0"})  # arq tasks enqueued for it
    dispatched_at: datetime | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    seconds: float | None = None


# -- results ------------------------------------------------------------------------------------

class ResultRowBase(SQLModel):
    index: int = Field(description="position in the dataset split")
    label: int
    prediction: int = Field(description="-1 when the smoothed classifier abstains")
    radius: float
    p_lower: float
    p_upper: float
    q_lower: float | None = None
    q_upper: float | None = None
    samples: int
    seconds: float
    top_class: int | None = Field(default=None, description=(
        "on abstention only: the class with the most votes in the n0 selection draws, the one whose probability "
        "the certificate bounded and found too low; none for a prediction. For reading failures: no bound or "
        "radius depends on it"))
    runner_up: int | None = Field(default=None, description=(
        "on abstention only: the class with the second most votes in the n0 selection draws (none when no other "
        "class drew a vote, and for a prediction). For reading failures: no bound or radius depends on it"))


class ResultRowCreate(ResultRowBase):
    pass


class ResultRow(ResultRowBase, table=True):
    __table_args__ = (UniqueConstraint("job_id", "index", name="uq_resultrow_job_index"),)
    id: int | None = Field(default=None, primary_key=True)
    job_id: int = Field(foreign_key="job.id", index=True)
    shard_id: int = Field(foreign_key="shard.id")
    created_at: datetime = Field(default_factory=utcnow)


class ResultRowPublic(ResultRowBase):
    correct: bool


class ResultRowsPublic(SQLModel):
    data: list[ResultRowPublic]
    count: int


class CurvePoint(SQLModel):
    radius: float
    certified_accuracy: float


class JobSummary(SQLModel):
    job_id: int
    state: JobState
    count: int
    curve: list[CurvePoint]
    acr: float
    abstain_rate: float
    clean_accuracy: float
    samples: int
    seconds: float = Field(description="seconds spent certifying the inputs, summed over inputs (and so over workers)")
    samples_per_second: float | None = Field(description="samples over seconds: the certifying speed, without "
                                                         "queueing or model loading")
    max_radius: float | None = Field(default=None, description=(
        "the largest radius this job's N and alpha allow (every sample votes the top class); "
        "NP with Gaussian noise only, else none"))


class Message(SQLModel):
    detail: str


class Health(SQLModel):
    status: str
    database: bool | None = None
    redis: bool | None = None
