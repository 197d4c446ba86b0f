import { Link, useSearchParams } from 'react-router-dom';
import { useQueries, useQuery } from '@tanstack/react-query';
import {
  readJobsApiV1JobsGetOptions, readModelsApiV1ModelsGetOptions, readSummaryApiV1JobsIdSummaryGetOptions,
} from '../../client/@tanstack/react-query.gen';
import { CurveChart } from '../../charts/CurveChart';
import { configLabel, type CurveSeries } from '../../charts/shape';
import { formatSeconds } from '../../format';
import { JobSummaryCells } from '../jobs/JobSummaryCells';
import { jobSeconds } from '../jobs/JobsPage';

/** Several jobs' certified-accuracy curves in one chart; the chosen jobs live in the URL (?jobs=1,2). */
export function ComparePage() {
  const [params, setParams] = useSearchParams();
  const chosen = (params.get('jobs') ?? '').split(',').filter(Boolean).map(Number);
  const jobs = useQuery(readJobsApiV1JobsGetOptions({ query: { limit: 1000 } }));
  const models = useQuery(readModelsApiV1ModelsGetOptions({ query: { limit: 1000 } }));
  const modelName = (id: number) => models.data?.data.find((m) => m.id === id)?.name ?? `model #${id}`;
  const summaries = useQueries({ queries: chosen.map((id) => readSummaryApiV1JobsIdSummaryGetOptions({ path: { id } })) });
  const byId = new Map((jobs.data?.data ?? []).map((j) => [j.id, j]));

  const series: CurveSeries[] = chosen.flatMap((id, i) => {
    const s = summaries[i]?.data;
    const job = byId.get(id);
    if (!s || !job) return [];
    return [{ name: `${modelName(job.model_id)} ${configLabel(id, job.config)}`, radius: s.curve.map((p) => p.radius),
      accuracy: s.curve.map((p) => p.certified_accuracy) }];
  });
  const toggle = (id: number) => {
    const next = chosen.includes(id) ? chosen.filter((j) => j !== id) : [...chosen, id];
    setParams(next.length ? { jobs: next.join(',') } : {});
  };

  return (
    <section>
      <h1>Compare jobs</h1>
      {series.length > 0 ? <CurveChart series={series} height={380} /> : <p className="muted">Pick jobs below to overlay their curves.</p>}
      <div className="table-wrap">
        <table>
          <thead><tr><th /><th>Job</th><th>Model</th><th>Config</th><th>Dataset</th><th>State</th><th>ACR</th><th>Cert. acc. @ 0.25</th><th>Time</th></tr></thead>
          <tbody>
            {[...(jobs.data?.data ?? [])].reverse().map((j) => (
              <tr key={j.id}>
                <td><input type="checkbox" aria-label={`compare job ${j.id}`} checked={chosen.includes(j.id)} onChange={() => toggle(j.id)} /></td>
                <td><Link to={`/jobs/${j.id}`}>#{j.id}</Link></td>
                <td>{modelName(j.model_id)}</td>
                <td>{configLabel(j.id, j.config).replace(/^#\d+ /, '')}</td>
                <td>{j.dataset}</td>
                <td><span className={`state ${j.state}`}>{j.state}</span></td>
                <JobSummaryCells jobId={j.id} radius={0.25} hasRows={j.progress.done > 0} />
                <td>{formatSeconds(jobSeconds(j))}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
    </section>
  );
}
