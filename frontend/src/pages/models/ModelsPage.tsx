import { useState } from 'react';
import { Link } from 'react-router-dom';
import { useQuery } from '@tanstack/react-query';
import {
  readJobsApiV1JobsGetOptions, readModelsApiV1ModelsGetOptions, readSummaryApiV1JobsIdSummaryGetOptions,
} from '../../client/@tanstack/react-query.gen';
import type { JobPublic } from '../../client/types.gen';
import { errorMessage } from '../../api';
import { accuracyAtRadius } from '../../charts/shape';
import { floorFixed, floorPercent, formatDate } from '../../format';

/** The latest finished job's certified accuracy at the chosen radius, and its ACR. */
function LatestResult({ job, radius }: { job: JobPublic | undefined; radius: number }) {
  const summary = useQuery({ ...readSummaryApiV1JobsIdSummaryGetOptions({ path: { id: job?.id ?? 0 } }), enabled: !!job });
  if (!job) return <><td className="muted">–</td><td className="muted">–</td><td /></>;
  const s = summary.data;
  const acc = s ? accuracyAtRadius(s.curve.map((p) => p.radius), s.curve.map((p) => p.certified_accuracy), radius) : null;
  return (
    <>
      <td>{acc == null ? '…' : floorPercent(acc)}</td>
      <td>{s ? floorFixed(s.acr) : '…'}</td>
      <td><Link to={`/jobs/${job.id}`}>job #{job.id}</Link> <span className={`state ${job.state}`}>{job.state}</span></td>
    </>
  );
}

export function ModelsPage() {
  const [radius, setRadius] = useState('0.25');
  const models = useQuery(readModelsApiV1ModelsGetOptions());
  const jobs = useQuery(readJobsApiV1JobsGetOptions({ query: { limit: 1000 } }));
  const r = Number(radius) >= 0 ? Number(radius) : 0;
  // the newest job with rows for each model (done first, else the newest of any state)
  const latest = new Map<number, JobPublic>();
  for (const job of [...(jobs.data?.data ?? [])].sort((a, b) => a.id - b.id)) {
    const prev = latest.get(job.model_id);
    if (!prev || job.state === 'done' || prev.state !== 'done') latest.set(job.model_id, job);
  }

  return (
    <section>
      <div className="row-between">
        <h1>Models</h1>
        <Link className="button" to="/models/new">Add model</Link>
      </div>
      {models.isError && <p className="error" role="alert">{errorMessage(models.error)}</p>}
      {models.data && models.data.count === 0 && <p>No models yet. <Link to="/models/new">Add one</Link>.</p>}
      {models.data && models.data.count > 0 && (
        <>
          <label className="inline">Certified accuracy at radius{' '}
            <input name="radius" inputMode="decimal" size={5} value={radius} onChange={(e) => setRadius(e.target.value)} />
          </label>
          <div className="table-wrap">
            <table className="models">
              <thead>
                {/* the action sits beside the name: at any width it is on screen, never behind a horizontal scroll */}
                <tr><th>Name</th><th><span className="sr-only">Action</span></th><th>Dataset</th><th>Cert. acc. @ {r}</th><th>ACR</th>
                  <th>Latest job</th><th className="wide-only">Input</th><th className="wide-only">Classes</th>
                  <th className="wide-only">Format</th><th className="wide-only">Added</th></tr>
              </thead>
              <tbody>
                {models.data.data.map((m) => (
                  <tr key={m.id} data-model={m.name}>
                    <td className="name">{m.name}{m.kind === 'denoiser' && <span className="muted"> (denoiser)</span>}
                      {m.sigma != null && <span className="muted"> · σ {m.sigma}</span>}</td>
                    <td>{m.kind !== 'denoiser' && <Link className="button small" to={`/models/${m.id}/certify`}>Certify</Link>}</td>
                    <td data-testid="model-dataset">{m.dataset ?? latest.get(m.id)?.dataset ?? '–'}</td>
                    <LatestResult job={latest.get(m.id)} radius={r} />
                    <td className="wide-only">{m.input_shape.join('×')}</td>
                    <td className="wide-only">{m.num_classes ?? '–'}</td>
                    <td className="wide-only">{m.format}</td>
                    <td className="wide-only"><time dateTime={m.created_at}>{formatDate(m.created_at)}</time></td>
                  </tr>
                ))}
              </tbody>
            </table>
          </div>
        </>
      )}
    </section>
  );
}
