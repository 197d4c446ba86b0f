"""Certification jobs: creation with its checks, shards, progress, cancel, results and summary."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from sqlalchemy import func
from sqlmodel import Session, col, select

from backend import leases
from backend.core.config import Settings
from backend.crud import get_owned, lock_owner
from backend.datasets import find_dataset, load_for_job
from backend.models import (
    CurvePoint,
    Dataset,
    Job,
    JobConfig,
    JobCreate,
    JobPublic,
    JobState,
    JobSummary,
    Model,
    ModelKind,
    Owner,
    Progress,
    ResultRow,
    ResultRowPublic,
    Shard,
    Subset,
    utcnow,
)
from engine.bounds import clopper_pearson_lower
from engine.metrics import (
    abstain_rate,
    average_certified_radius,
    certified_accuracy_curve,
    clean_accuracy,
    radius_grid,
)
from engine.options import Method, NoiseKind
from engine.radius.np import gaussian_np_radius


class NotFound(LookupError):
    pass


class Invalid(ValueError):
    """The request is well-formed but does not fit the model or the dataset (a 422)."""


class OverQuota(ValueError):
    """The owner's active jobs already use what the service allows one owner (a 429)."""


ACTIVE = (JobState.queued, JobState.running)


def check_quota(*, session: Session, owner: Owner, inputs: int, config: JobConfig, settings: Settings) -> None:
    """MAX_ACTIVE_JOBS_PER_OWNER and MAX_SAMPLES_IN_FLIGHT_PER_OWNER (the samples the owner's unfinished
    inputs may still draw, n0 + n each), with this job counted in. The caller holds the owner's lock
    (``lock_owner``) until the job is stored: two requests checked at once would each count the jobs
    before the other's insert, and both pass."""
    active = session.exec(select(Job).where(Job.owner_id == owner.id, col(Job.state).in_(ACTIVE))).all()
    if len(active) >= settings.MAX_ACTIVE_JOBS_PER_OWNER:
        raise OverQuota(f"{len(active)} of your jobs are queued or running; MAX_ACTIVE_JOBS_PER_OWNER = "
                        f"{settings.MAX_ACTIVE_JOBS_PER_OWNER}: wait for one to finish or cancel one")
    wanted = inputs * (config.n0 + config.n)
    if wanted > settings.MAX_SAMPLES_IN_FLIGHT_PER_OWNER:
        raise Invalid(f"the job would draw up to {wanted:,} samples ({inputs:,} inputs x (n0 + n)); "
                      f"MAX_SAMPLES_IN_FLIGHT_PER_OWNER = {settings.MAX_SAMPLES_IN_FLIGHT_PER_OWNER:,}")
    done = dict(session.exec(select(ResultRow.job_id, func.count(col(ResultRow.id)))
                             .where(col(ResultRow.job_id).in_([job.id for job in active]))
                             .group_by(ResultRow.job_id)).all()) if active else {}
    flying = sum((job.total - done.get(job.id, 0)) * (job.config["n0"] + job.config["n"]) for job in active)
    if flying + wanted > settings.MAX_SAMPLES_IN_FLIGHT_PER_OWNER:
        raise OverQuota(f"your queued and running jobs may still draw {flying:,} samples and this one {wanted:,}; "
                        f"MAX_SAMPLES_IN_FLIGHT_PER_OWNER = {settings.MAX_SAMPLES_IN_FLIGHT_PER_OWNER:,}")


def resolve_indices(subset: Subset, size: int, max_inputs: int) -> list[int]:
    if subset.indices is not None:
        picks = list(subset.indices)
        bad = [i for i in picks if not 0 <= i < size]
        if bad:
            raise Invalid(f"indices {bad[:5]} are outside the dataset (size {size})")
        if len(set(picks)) != len(picks):
            raise Invalid("indices must not repeat")
    else:
        picks = list(range(subset.start, size, subset.stride))
    picks = picks if subset.count is None else picks[:subset.count]
    if not picks:
        raise Invalid("the subset selects no inputs")
    if len(picks) > max_inputs:
        raise Invalid(f"the subset selects {len(picks):,} inputs; MAX_JOB_INPUTS = {max_inputs:,} (give a count)")
    return picks


def check_fit(model: Model, shape: list[int], labels: np.ndarray, config: JobConfig) -> None:
    if list(model.input_shape) != list(shape):
        raise Invalid(f"model {model.id} ({model.name}) reads inputs of shape {model.input_shape}, "
                      f"the dataset's are {shape}")
    if model.kind is not ModelKind.classifier:
        raise Invalid(f"model {model.id} is a {model.kind.value}, not a classifier")
    top = int(labels.max(initial=0))
    if model.num_classes is not None and top >= model.num_classes:
        raise Invalid(f"the dataset has label {top} but model {model.id} has {model.num_classes} classes")
    d = int(np.prod(shape))
    try:
        config.make_noise(d)
    except ValueError as error:
        raise Invalid(str(error)) from None


def check_still_stored(*, session: Session, models: list[Model], dataset: Dataset | str) -> None:
    """The job's models and uploaded dataset were read before the owner's lock was taken: one deleted since
    is a 404 now, not a job that names a missing file (read from the database, not the session's cache)."""
    for model in models:
        if session.exec(select(Model.id).where(Model.id == model.id)).first() is None:
            raise NotFound(f"model {model.id} not found")
    if isinstance(dataset, Dataset) and session.exec(select(Dataset.id).where(Dataset.id == dataset.id)).first() is None:
        raise NotFound(f"dataset {dataset.id} not found")


def _format_outside(rows: list[Model], formats: tuple[str, ...]) -> Model | None:
    """The first of the job's models whose file format is not among ``formats`` (unknown formats pass)."""
    return next((row for row in rows if row.format is not None and row.format.value not in formats), None)


def create_job(*, session: Session, owner: Owner, job_in: JobCreate, settings: Settings) -> tuple[Job, list[Shard]]:
    model = get_owned(session=session, table=Model, id=job_in.model_id, owner=owner)
    if model is None:
        raise NotFound(f"model {job_in.model_id} not found")
    if job_in.config.denoiser_id is not None:
        denoiser = get_owned(session=session, table=Model, id=job_in.config.denoiser_id, owner=owner)
        if denoiser is None:
            raise NotFound(f"denoiser {job_in.config.denoiser_id} not found")
        if denoiser.kind is not ModelKind.denoiser:
            raise Invalid(f"denoiser_id {denoiser.id} ({denoiser.name}) is a {denoiser.kind.value}, not a denoiser")
        if list(denoiser.input_shape) != list(model.input_shape):
            raise Invalid(f"denoiser {denoiser.id} ({denoiser.name}) reads images of shape {denoiser.input_shape}, "
                          f"model {model.id} reads {model.input_shape}")
    used = [model] if job_in.config.denoiser_id is None else [model, denoiser]
    if job_in.config.bf16 and (row := _format_outside(used, CONVERTIBLE_FORMATS)):
        raise Invalid(f"bf16 converts weights files ({', '.join(CONVERTIBLE_FORMATS)}); model {row.id} "
                      f"({row.name}) is {row.format.value}, whose precision is fixed in the file")
    if job_in.config.compile and (row := _format_outside(used, COMPILABLE_FORMATS)):
        raise Invalid(f"compile runs PyTorch modules through torch.compile ({', '.join(COMPILABLE_FORMATS)} "
                      f"files); model {row.id} ({row.name}) is {row.format.value}, a compiled graph already")
    if job_in.config.freeze and (row := _format_outside(used, FREEZABLE_FORMATS)):
        raise Invalid(f"freeze scripts PyTorch modules into TorchScript ({', '.join(FREEZABLE_FORMATS)} files); "
                      f"model {row.id} ({row.name}) is {row.format.value}, which TorchScript cannot script")
    found = find_dataset(session=session, ref=job_in.dataset, owner=owner)
    if found is None:
        raise NotFound(f"dataset {job_in.dataset!r} not found")
    try:
        data = load_for_job(found, job_in.split)
    except FileNotFoundError as error:
        if isinstance(found, Dataset):  # deleted since it was looked up
            raise NotFound(f"dataset {found.id} not found") from None
        raise Invalid(str(error)) from None
    except ValueError as error:
        raise Invalid(str(error)) from None
    indices = resolve_indices(job_in.subset, len(data.x), settings.MAX_JOB_INPUTS)
    check_fit(model, list(data.x.shape[1:]), data.y[indices].numpy(), job_in.config)
    try:
        job_in.config.input_seed(max(indices))  # the last input's seed must exist
    except ValueError as error:
        raise Invalid(str(error)) from None
    lock_owner(session=session, owner=owner)
    try:
        check_still_stored(session=session, models=used, dataset=found)
        check_quota(session=session, owner=owner, inputs=len(indices), config=job_in.config, settings=settings)
    except (NotFound, ValueError):
        session.rollback()  # the owner's lock goes with it
        raise
    shard_size = settings.SHARD_SIZE
    job = Job(owner_id=owner.id, model_id=model.id, dataset=job_in.dataset, split=job_in.split,
              subset=job_in.subset.model_dump(), config=job_in.config.model_dump(mode="json"), total=len(indices))
    session.add(job)
    session.flush()
    shards = [Shard(job_id=job.id, number=n, indices=indices[start:start + shard_size], dispatched_at=job.created_at)
              for n, start in enumerate(range(0, len(indices), shard_size))]
    session.add_all(shards)
    session.commit()
    session.refresh(job)
    for shard in shards:
        session.refresh(shard)
    return job, shards


def _aware(moment: datetime | None) -> datetime | None:
    return moment if moment is None or moment.tzinfo else moment.replace(tzinfo=UTC)


def job_progress(*, session: Session, job: Job) -> Progress:
    done, samples = session.exec(
        select(func.count(col(ResultRow.id)), func.coalesce(func.sum(ResultRow.samples), 0))
        .where(ResultRow.job_id == job.id)).one()
    rate = eta = None
    started = _aware(job.started_at)
    if started is not None and done:
        elapsed = ((_aware(job.finished_at) or utcnow()) - started).total_seconds()
        if elapsed > 0:
            rate = samples / elapsed
            eta = 0.0 if job.state.finished else elapsed / done * (job.total - done)
    return Progress(done=done, total=job.total, samples=samples, samples_per_second=rate, eta_seconds=eta)


def job_public(*, session: Session, job: Job) -> JobPublic:
    return JobPublic(id=job.id, model_id=job.model_id, dataset=job.dataset, split=job.split,
                     subset=Subset(**job.subset), config=JobConfig(**job.config), state=job.state, error=job.error,
                     created_at=job.created_at, started_at=job.started_at, finished_at=job.finished_at,
                     progress=job_progress(session=session, job=job))


def list_jobs(*, session: Session, owner: Owner, offset: int, limit: int) -> tuple[list[Job], int]:
    where = Job.owner_id == owner.id
    count = session.exec(select(func.count(col(Job.id))).where(where)).one()
    jobs = session.exec(select(Job).where(where).order_by(col(Job.id).desc()).offset(offset).limit(limit)).all()
    return list(jobs), count


def cancel_job(*, session: Session, job: Job) -> Job:
    leases.cancel_job(session, job.id)
    session.refresh(job)
    return job


def row_public(row: ResultRow) -> ResultRowPublic:
    return ResultRowPublic(**row.model_dump(include=set(ResultRowPublic.model_fields) - {"correct"}),
                           correct=row.prediction == row.label)


def job_rows(*, session: Session, job: Job, offset: int = 0, limit: int | None = None) -> list[ResultRow]:
    query = select(ResultRow).where(ResultRow.job_id == job.id).order_by(col(ResultRow.index)).offset(offset)
    return list(session.exec(query if limit is None else query.limit(limit)).all())


SUMMARY_RADIUS_STEP = 0.01
# formats whose weights the worker rebuilds as PyTorch modules, and so can convert to bfloat16
CONVERTIBLE_FORMATS = ("state_dict", "safetensors")
# formats the worker loads as PyTorch modules that torch.compile can trace: weights files, and torch.export
# programs (their module() compiles, the certificates those of the eager program); TorchScript archives and
# ONNX graphs (run by onnxruntime) are compiled graphs already
COMPILABLE_FORMATS = ("state_dict", "safetensors", "export")
# formats whose modules freeze into one TorchScript graph: the registry's architectures, and TorchScript archives
# themselves; torch.export programs and ONNX graphs do not script
FREEZABLE_FORMATS = ("state_dict", "safetensors", "torchscript")


def count_rows(*, session: Session, job: Job) -> int:
    return session.exec(select(func.count(col(ResultRow.id))).where(ResultRow.job_id == job.id)).one()


def job_summary(*, session: Session, job: Job) -> JobSummary:
    rows = job_rows(session=session, job=job)
    radii = np.array([r.radius for r in rows], dtype=np.float64)
    correct = np.array([r.prediction == r.label for r in rows], dtype=bool)
    # a fine grid so that the dashboard's curve follows the certified radii, not a coarse staircase
    grid = radius_grid(max(float(radii.max(initial=0.0)), 0.25), step=SUMMARY_RADIUS_STEP)
    curve = certified_accuracy_curve(radii, correct, grid)
    samples = sum(r.samples for r in rows)
    seconds = sum(r.seconds for r in rows)
    return JobSummary(job_id=job.id, state=job.state, count=len(rows),
                      curve=[CurvePoint(radius=float(r), certified_accuracy=float(a)) for r, a in zip(grid, curve)],
                      acr=average_certified_radius(radii, correct), abstain_rate=abstain_rate([r.prediction for r in rows]),
                      clean_accuracy=clean_accuracy(correct), samples=samples, seconds=seconds,
                      samples_per_second=samples / seconds if seconds > 0 else None, max_radius=max_radius(job))


def max_radius(job: Job) -> float | None:
    """NP's radius when all N estimation samples vote the top class: sigma Phi^-1 of the one-sided
    Clopper-Pearson lower bound at N of N, alpha ** (1 / N), the engine's own bound. No input of the job
    can certify beyond it. Gaussian NP only (generalized Gaussian needs a numerical search, DSRS its Q)."""
    config = JobConfig.model_validate(job.config)
    if config.method is not Method.np or config.noise is not NoiseKind.gaussian:
        return None
    return gaussian_np_radius(float(clopper_pearson_lower(config.n, config.n, config.alpha)), config.sigma)
