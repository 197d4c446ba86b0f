import { useEffect } from 'react';
import { Link, useParams } from 'react-router-dom';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import {
  cancelJobApiV1JobsIdCancelPostMutation, readJobApiV1JobsIdGetOptions, readJobApiV1JobsIdGetQueryKey,
  readModelApiV1ModelsIdGetOptions, readResultsApiV1JobsIdResultsGetQueryKey, readResultsApiV1JobsIdResultsGetOptions,
  readSummaryApiV1JobsIdSummaryGetOptions, readSummaryApiV1JobsIdSummaryGetQueryKey,
} from '../../client/@tanstack/react-query.gen';
import { exportCsvApiV1JobsIdResultsCsvGet, exportJsonApiV1JobsIdResultsJsonGet } from '../../client/sdk.gen';
import { errorMessage } from '../../api';
import { CurveChart } from '../../charts/CurveChart';
import { HistogramChart } from '../../charts/HistogramChart';
import { configLabel, radiusHistogram } from '../../charts/shape';
import { ProgressBar } from './ProgressBar';
import { ResultsTable } from './ResultsTable';
import { useJobEvents } from './useJobEvents';

async function download(id: number, kind: 'csv' | 'json') {
  const get = kind === 'csv' ? exportCsvApiV1JobsIdResultsCsvGet : exportJsonApiV1JobsIdResultsJsonGet;
  const { data, error } = await get({ path: { id }, parseAs: 'blob' });
  if (error || !(data instanceof Blob)) { alert(`download failed: ${errorMessage(error)}`); return; }
  const url = URL.createObjectURL(data);
  const a = Object.assign(document.createElement('a'), { href: url, download: `job-${id}-results.${kind}` });
  a.click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

const FINISHED = new Set(['done', 'failed', 'cancelled']);

/** One job: live progress while it runs, then (and already during) its results. */
export function JobPage() {
  const id = Number(useParams().id);
  const queryClient = useQueryClient();
  const job = useQuery({
    ...readJobApiV1JobsIdGetOptions({ path: { id } }),
    refetchInterval: (q) => (q.state.data && FINISHED.has(q.state.data.state) ? false : 5000),
  });
  const finished = !!job.data && FINISHED.has(job.data.state);
  useJobEvents(id, !!job.data && !finished);
  const model = useQuery({ ...readModelApiV1ModelsIdGetOptions({ path: { id: job.data?.model_id ?? 0 } }), enabled: !!job.data });
  const summary = useQuery(readSummaryApiV1JobsIdSummaryGetOptions({ path: { id } }));
  const results = useQuery(readResultsApiV1JobsIdResultsGetOptions({ path: { id }, query: { limit: 10000 } }));
  const cancel = useMutation({
    ...cancelJobApiV1JobsIdCancelPostMutation(),
    onSuccess: (data) => queryClient.setQueryData(readJobApiV1JobsIdGetQueryKey({ path: { id } }), data),
  });

  // new rows arrived (or the job finished): refresh what is drawn from them
  const done = job.data?.progress.done;
  const state = job.data?.state;
  useEffect(() => {
    if (done === undefined) return;
    queryClient.invalidateQueries({ queryKey: readSummaryApiV1JobsIdSummaryGetQueryKey({ path: { id } }) });
    queryClient.invalidateQueries({ queryKey: readResultsApiV1JobsIdResultsGetQueryKey({ path: { id }, query: { limit: 10000 } }) });
  }, [done, state, id, queryClient]);

  if (job.isError) return <p className="error" role="alert">{errorMessage(job.error)}</p>;
  if (!job.data) return <p>Loading job #{id}…</p>;
  const j = job.data;
  const s = summary.data;
  const rows = results.data?.data ?? [];
  const certified = rows.filter((r) => r.prediction >= 0).map((r) => r.radius);

  return (
    <section>
      <p><Link to="/">← Models</Link></p>
      <h1>Job #{j.id} <span className={`state ${j.state}`} data-testid="job-state">{j.state}</span></h1>
      <p className="muted">
        {model.data?.name ?? `model #${j.model_id}`} on {j.dataset} ({j.split}) · {configLabel(j.id, j.config)} · alpha {j.config.alpha}
      </p>
      <ProgressBar progress={j.progress} />
      {!finished && <button className="danger" onClick={() => cancel.mutate({ path: { id } })} disabled={cancel.isPending}>Cancel</button>}
      {j.error && <p className="error" role="alert">{j.error}</p>}

      {s && s.count > 0 && (
        <>
          <div className="stats" data-testid="summary">
            <div><b>{s.acr.toFixed(3)}</b><span>ACR</span></div>
            <div><b>{(s.clean_accuracy * 100).toFixed(1)}%</b><span>clean smoothed accuracy</span></div>
            <div><b>{(s.abstain_rate * 100).toFixed(1)}%</b><span>abstain rate</span></div>
            <div><b>{s.samples_per_second ? Math.round(s.samples_per_second).toLocaleString() : '–'}</b><span>samples/s</span></div>
            <div><b>{s.count}</b><span>inputs</span></div>
          </div>
          <div className="two">
            <div>
              <h2>Certified accuracy against radius</h2>
              <CurveChart series={[{ name: 'certified accuracy', radius: s.curve.map((p) => p.radius), accuracy: s.curve.map((p) => p.certified_accuracy) }]} />
            </div>
            <div>
              <h2>Certified radii</h2>
              <HistogramChart bins={radiusHistogram(certified)} />
            </div>
          </div>
          <div className="row-between">
            <h2>Inputs</h2>
            <div>
              <button onClick={() => download(id, 'csv')}>Download CSV</button>{' '}
              <button onClick={() => download(id, 'json')}>Download JSON</button>{' '}
              <Link className="button" to={`/compare?jobs=${id}`}>Compare…</Link>
            </div>
          </div>
          <ResultsTable jobId={id} rows={rows} classNames={model.data?.class_names} />
        </>
      )}
    </section>
  );
}
