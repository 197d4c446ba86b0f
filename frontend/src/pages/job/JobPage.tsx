import { useEffect, useState } from 'react';
import { floorFixed, floorPercent, isNotFound, routeId } from '../../format';
import { NotFound } from '../notfound/NotFound';
import { Link, useParams } from 'react-router-dom';
import { useMutation, useQuery, useQueryClient } from '@tanstack/react-query';
import {
  cancelJobApiV1JobsIdCancelPostMutation, readJobApiV1JobsIdGetOptions, readJobApiV1JobsIdGetQueryKey,
  readDatasetsApiV1DatasetsGetOptions, readModelApiV1ModelsIdGetOptions, readResultsApiV1JobsIdResultsGetQueryKey, readResultsApiV1JobsIdResultsGetOptions,
  readSummaryApiV1JobsIdSummaryGetOptions, readSummaryApiV1JobsIdSummaryGetQueryKey,
} from '../../client/@tanstack/react-query.gen';
import {
  downloadSmoothedModelApiV1JobsIdSmoothedModelGet, exportCsvApiV1JobsIdResultsCsvGet, exportJsonApiV1JobsIdResultsJsonGet,
} from '../../client/sdk.gen';
import { errorMessage, FINISHED } from '../../api';
import { CurveChart } from '../../charts/CurveChart';
import { HistogramChart } from '../../charts/HistogramChart';
import { configLabel, radiusHistogram } from '../../charts/shape';
import { ProgressBar } from './ProgressBar';
import { refetchFresh } from './refetchFresh';
import { ResultsTable } from './ResultsTable';
import { useJobEvents } from './useJobEvents';

async function download(id: number, kind: 'csv' | 'json') {
  const get = kind === 'csv' ? exportCsvApiV1JobsIdResultsCsvGet : exportJsonApiV1JobsIdResultsJsonGet;
  const { data, error } = await get({ path: { id }, parseAs: 'blob' });
  if (error || !(data instanceof Blob)) { alert(`download failed: ${errorMessage(error)}`); return; }
  saveBlob(data, `job-${id}-results.${kind}`);
}

function saveBlob(data: Blob, name: string) {
  const url = URL.createObjectURL(data);
  Object.assign(document.createElement('a'), { href: url, download: name }).click();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

/** The job's smoothed classifier as a program (compiled on the first request: it can take a while). */
function DownloadModel({ id }: { id: number }) {
  const [busy, setBusy] = useState(false);
  const [failure, setFailure] = useState<string | null>(null);
  const fetchModel = async () => {
    setBusy(true);
    setFailure(null);
    const { data, error, response } = await downloadSmoothedModelApiV1JobsIdSmoothedModelGet({ path: { id }, parseAs: 'blob' });
    setBusy(false);
    if (error || !(data instanceof Blob)) { setFailure(errorMessage(error)); return; }
    const named = response?.headers.get('content-disposition')?.match(/filename="?([^";]+)"?/)?.[1];
    saveBlob(data, named ?? `kavach-job${id}-smoothed.pt2`);
  };
  return (
    <>
      <button onClick={fetchModel} disabled={busy} data-testid="download-model"
              title="Cohen's PREDICT with this model, sigma, N and alpha baked in: a torch.export program that runs with torch alone">
        {busy ? 'Preparing the model…' : 'Download certified model'}
      </button>{' '}
      {failure && <span className="error" role="alert">{failure}</span>}
    </>
  );
}

/** One job: live progress while it runs, then (and already during) its results. */
export function JobPage() {
  const raw = useParams().id;
  const id = routeId(raw);
  // "/jobs/abc" is not a job: say so without asking the API for /jobs/NaN
  if (id == null) return <NotFound what={`Job "${raw}"`} />;
  return <Job key={id} id={id} />;
}

function Job({ id }: { id: number }) {
  const queryClient = useQueryClient();
  const job = useQuery({
    ...readJobApiV1JobsIdGetOptions({ path: { id } }),
    // a 404 stays a 404: no retries, no polling (they made the page flip between loading and not found)
    retry: (count, error) => !isNotFound(error) && count < 2,
    refetchInterval: (q) => (q.state.error || (q.state.data && FINISHED.has(q.state.data.state)) ? false : 5000),
  });
  const finished = !!job.data && FINISHED.has(job.data.state);
  useJobEvents(id, !!job.data && !finished);
  const model = useQuery({ ...readModelApiV1ModelsIdGetOptions({ path: { id: job.data?.model_id ?? 0 } }), enabled: !!job.data });
  const summary = useQuery({ ...readSummaryApiV1JobsIdSummaryGetOptions({ path: { id } }), enabled: !!job.data });
  const results = useQuery({ ...readResultsApiV1JobsIdResultsGetOptions({ path: { id }, query: { limit: 10000 } }), enabled: !!job.data });
  const datasets = useQuery({ ...readDatasetsApiV1DatasetsGetOptions(), enabled: !!job.data });
  const cancel = useMutation({
    ...cancelJobApiV1JobsIdCancelPostMutation(),
    onSuccess: (data) => queryClient.setQueryData(readJobApiV1JobsIdGetQueryKey({ path: { id } }), data),
  });

  // new rows arrived (or the job finished): refresh what is drawn from them
  const done = job.data?.progress.done;
  const state = job.data?.state;
  useEffect(() => {
    if (done === undefined) return;
    void refetchFresh(queryClient, [readSummaryApiV1JobsIdSummaryGetQueryKey({ path: { id } }),
      readResultsApiV1JobsIdResultsGetQueryKey({ path: { id }, query: { limit: 10000 } })]);
  }, [done, state, id, queryClient]);

  if (job.isError && isNotFound(job.error)) return <NotFound what={`Job #${id}`} />;
  if (job.isError) return <p className="error" role="alert">{errorMessage(job.error)}</p>;
  if (!job.data) return <p>Loading job #{id}…</p>;
  const j = job.data;
  const s = summary.data;
  const rows = results.data?.data ?? [];
  // the histogram counts correctly classified inputs only: a misclassified input's radius certifies a wrong answer
  const certified = rows.filter((r) => r.prediction >= 0 && r.correct).map((r) => r.radius);
  // the model's own class names, else the dataset's (built-ins name theirs)
  const classNames = model.data?.class_names ?? datasets.data?.data.find((d) => d.id === j.dataset)?.class_names;

  return (
    <section>
      <p><Link to="/">← Models</Link></p>
      <h1>Job #{j.id} <span className={`state ${j.state}`} data-testid="job-state">{j.state}</span></h1>
      <p className="muted">
        {model.data?.name ?? `model #${j.model_id}`} on {j.dataset} ({j.split}) · {configLabel(j.id, j.config)} · alpha {j.config.alpha}
      </p>
      <ProgressBar progress={j.progress} finished={finished} />
      {!finished && <button className="danger" onClick={() => cancel.mutate({ path: { id } })} disabled={cancel.isPending}>Cancel</button>}
      {j.error && <p className="error" role="alert">{j.error}</p>}

      {s && s.count > 0 && (
        <>
          <div className="stats" data-testid="summary">
            <div><b>{floorFixed(s.acr)}</b><span>ACR (average certified radius)</span></div>
            <div><b>{floorPercent(s.clean_accuracy)}</b><span>clean smoothed accuracy</span></div>
            <div><b>{(s.abstain_rate * 100).toFixed(1)}%</b><span>abstain rate</span></div>
            <div><b>{s.samples_per_second ? Math.round(s.samples_per_second).toLocaleString() : '–'}</b><span title="samples over the seconds spent certifying the inputs, summed over workers">samples/s while certifying</span></div>
            <div><b>{s.count}</b><span>inputs</span></div>
          </div>
          <div className="two">
            <div>
              <h2>Certified accuracy against radius</h2>
              <CurveChart series={[{ name: 'certified accuracy', radius: s.curve.map((p) => p.radius), accuracy: s.curve.map((p) => p.certified_accuracy) }]}
                          maxRadius={s.max_radius ?? undefined} />
              {s.max_radius != null && <p className="hint" data-testid="max-radius">Dashed line: {floorFixed(s.max_radius)}, the largest
                radius N = {(j.config.n ?? 0).toLocaleString()} and alpha = {j.config.alpha} allow (every sample votes the top class).</p>}
            </div>
            <div>
              <h2>Certified radii of correctly classified inputs</h2>
              {certified.length > 0 || !results.data
                ? <HistogramChart bins={radiusHistogram(certified)} what="correct inputs" />
                : <p className="chart empty" data-testid="histogram-empty">No input was classified correctly, so no radius counts.</p>}
              <p className="hint">Misclassified and abstained inputs are left out: their certificate is worth nothing.</p>
            </div>
          </div>
          <div className="row-between">
            <h2>Inputs</h2>
            <div>
              <button onClick={() => download(id, 'csv')}>Download CSV</button>{' '}
              <button onClick={() => download(id, 'json')}>Download JSON</button>{' '}
              {j.state === 'done' && (j.config.noise ?? 'gaussian') === 'gaussian' && !j.config.k && <DownloadModel id={id} />}
              <Link className="button" to={`/compare?jobs=${id}`}>Compare…</Link>
            </div>
          </div>
          <ResultsTable jobId={id} rows={rows} classNames={classNames} />
        </>
      )}
    </section>
  );
}
