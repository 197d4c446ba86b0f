import { useState } from 'react';
import { Link } from 'react-router-dom';
import { useQuery } from '@tanstack/react-query';
import { readJobsApiV1JobsGetOptions, readModelsApiV1ModelsGetOptions } from '../../client/@tanstack/react-query.gen';
import type { JobPublic } from '../../client/types.gen';
import { errorMessage, FINISHED } from '../../api';
import { formatDateTime, formatSeconds } from '../../format';
import { JobSummaryCells } from './JobSummaryCells';

/** Wall-clock time of a job: from its start to its end (or to now while it runs). */
export function jobSeconds(j: JobPublic): number | null {
  if (!j.started_at) return null;
  const end = j.finished_at ? new Date(j.finished_at).getTime() : Date.now();
  return (end - new Date(j.started_at).getTime()) / 1000;
}

/** Every job, newest first: state, model, method, ACR, certified accuracy and time. */
export function JobsPage() {
  const [radius, setRadius] = useState('0.25');
  const r = Number(radius) >= 0 ? Number(radius) : 0;
  // while any job is queued or running its state and figures change: poll until all are finished
  const jobs = useQuery({
    ...readJobsApiV1JobsGetOptions({ query: { limit: 1000 } }),
    refetchInterval: (q) => (q.state.data?.data.some((j) => !FINISHED.has(j.state)) ? 3000 : false),
  });
  const models = useQuery(readModelsApiV1ModelsGetOptions({ query: { limit: 1000 } }));
  const modelName = (id: number) => models.data?.data.find((m) => m.id === id)?.name ?? `model #${id}`;
  const rows = [...(jobs.data?.data ?? [])].reverse();
  return (
    <section>
      <h1>Jobs</h1>
      {jobs.isError && <p className="error" role="alert">{errorMessage(jobs.error)}</p>}
      {jobs.data && jobs.data.count === 0 && <p>No jobs yet. <Link to="/">Certify a model</Link>.</p>}
      {rows.length > 0 && <>
        <label className="inline">Certified accuracy at radius{' '}
          <input name="radius" inputMode="decimal" size={5} value={radius} onChange={(e) => setRadius(e.target.value)} />
        </label>
        <div className="table-wrap">
          <table data-testid="jobs-table">
            <thead><tr><th>Job</th><th>State</th><th>Model</th><th>Method</th><th>Dataset</th><th>ACR</th>
              <th>Cert. acc. @ {r}</th><th>Time</th><th>Created</th></tr></thead>
            <tbody>
              {rows.map((j) => (
                <tr key={j.id} data-job={j.id}>
                  <td><Link to={`/jobs/${j.id}`}>#{j.id}</Link></td>
                  <td><span className={`state ${j.state}`}>{j.state}</span></td>
                  <td>{modelName(j.model_id)}</td>
                  <td>{(j.config.method ?? 'np').toUpperCase()} σ={j.config.sigma} N={j.config.n}</td>
                  <td>{j.dataset}</td>
                  <JobSummaryCells jobId={j.id} radius={r} hasRows={j.progress.done > 0} />
                  <td>{formatSeconds(jobSeconds(j))}</td>
                  <td><time dateTime={j.created_at}>{formatDateTime(j.created_at)}</time></td>
                </tr>
              ))}
            </tbody>
          </table>
        </div>
      </>}
    </section>
  );
}
