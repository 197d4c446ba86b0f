"""Prometheus metrics read from the database at scrape time, so they count every worker on every machine."""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import func
from sqlmodel import Session, col, select

from backend.db import get_engine
from backend.models import Job, JobState, ResultRow, Shard, ShardState

SHARD_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, float("inf"))


class ServiceCollector(Collector):
    def collect(self) -> Iterator:
        with Session(get_engine()) as session:
            by_state = dict(session.exec(select(Job.state, func.count(col(Job.id))).group_by(Job.state)).all())
            samples = session.exec(select(func.coalesce(func.sum(ResultRow.samples), 0))).one()
            inputs = session.exec(select(func.count(col(ResultRow.id)))).one()
            durations = session.exec(select(Shard.seconds).where(Shard.state == ShardState.done,
                                                                 col(Shard.seconds).is_not(None))).all()
        jobs = GaugeMetricFamily("kavach_jobs", "certification jobs by state", labels=["state"])
        for state in JobState:
            jobs.add_metric([state.value], by_state.get(state, 0))
        yield jobs
        yield CounterMetricFamily("kavach_samples_certified", "noise samples drawn for stored certificates",
                                  value=samples)
        yield CounterMetricFamily("kavach_inputs_certified", "inputs with a stored certificate", value=inputs)
        buckets = [(str(b) if b != float("inf") else "+Inf", sum(d <= b for d in durations)) for b in SHARD_BUCKETS]
        yield HistogramMetricFamily("kavach_shard_duration_seconds", "wall time of finished shards",
                                    buckets=buckets, sum_value=sum(durations))
