import { useMemo, useState } from 'react';
import type { ResultRowPublic } from '../../client/types.gen';
import { floorFixed } from '../../format';
import { Thumbnail } from './Thumbnail';

type Key = 'index' | 'label' | 'prediction' | 'radius' | 'p_lower' | 'samples' | 'seconds';
const COLUMNS: [Key, string][] = [
  ['index', 'Input'], ['label', 'Label'], ['prediction', 'Prediction'], ['radius', 'Radius'],
  ['p_lower', 'pA bounds'], ['samples', 'Samples'], ['seconds', 'Seconds'],
];
const PAGE = 25;

export type Outcome = 'all' | 'wrong' | 'abstain' | 'failures' | 'correct';
const outcome = (r: ResultRowPublic): Exclude<Outcome, 'all' | 'failures'> =>
  r.prediction < 0 ? 'abstain' : r.correct ? 'correct' : 'wrong';

const BETWEEN_TITLE = 'The two classes with the most votes in the n0 selection draws: the certificate bounded the first ' +
  "one's probability and could not show it above 1/2. For reading failures only: no bound or radius depends on them.";

/** On an abstained row, the selection draws' top class and runner-up: between which classes it could not decide. */
function Between({ row, name }: { row: ResultRowPublic; name: (c: number) => string }) {
  if (row.prediction >= 0 || row.top_class == null) return null;
  return (
    <span className="between" data-testid="runner-up" title={BETWEEN_TITLE}>
      {row.runner_up == null
        ? <>top {name(row.top_class)}, no other class drawn</>
        : <>{name(row.top_class)} vs {name(row.runner_up)}</>}
      <span className="muted"> (selection draws)</span>
    </span>
  );
}

/** Per-input certificates with a thumbnail of each input, sorted by any column and shown a page at a time. */
export function ResultsTable({ jobId, rows, classNames }: {
  jobId: number; rows: ResultRowPublic[]; classNames?: string[] | null;
}) {
  const [sort, setSort] = useState<{ key: Key; desc: boolean }>({ key: 'index', desc: false });
  const [page, setPage] = useState(0);
  const [show, setShow] = useState<Outcome>('all');
  const counts = useMemo(() => {
    const c = { correct: 0, wrong: 0, abstain: 0 };
    for (const r of rows) c[outcome(r)] += 1;
    return c;
  }, [rows]);
  const sorted = useMemo(() => {
    const kept = rows.filter((r) => show === 'all' || outcome(r) === show ||
      (show === 'failures' && outcome(r) !== 'correct'));
    const out = kept.sort((a, b) => (a[sort.key] as number) - (b[sort.key] as number));
    return sort.desc ? out.reverse() : out;
  }, [rows, sort, show]);
  const pages = Math.max(1, Math.ceil(sorted.length / PAGE));
  const shown = sorted.slice(page * PAGE, (page + 1) * PAGE);
  const name = (c: number) => (c < 0 ? 'abstain' : classNames?.[c] ?? String(c));
  const toggle = (key: Key) => { setSort((s) => ({ key, desc: s.key === key ? !s.desc : false })); setPage(0); };

  return (
    <div>
      <label className="inline">Show{' '}
        <select name="outcome" data-testid="outcome-filter" value={show}
                onChange={(e) => { setShow(e.target.value as Outcome); setPage(0); }}>
          <option value="all">all inputs ({rows.length})</option>
          <option value="failures">wrong or abstained ({counts.wrong + counts.abstain})</option>
          <option value="wrong">wrong: certified a wrong class ({counts.wrong})</option>
          <option value="abstain">abstained ({counts.abstain})</option>
          <option value="correct">correct ({counts.correct})</option>
        </select>
      </label>
      <div className="table-wrap">
        <table className="results" data-testid="results-table">
          <thead>
            <tr>
              {COLUMNS.map(([key, label]) => (
                <th key={key} aria-sort={sort.key === key ? (sort.desc ? 'descending' : 'ascending') : 'none'}>
                  <button className="link" onClick={() => toggle(key)}>
                    {label}{sort.key === key ? (sort.desc ? ' ▼' : ' ▲') : ''}
                  </button>
                </th>
              ))}
            </tr>
          </thead>
          <tbody>
            {shown.map((r) => (
              <tr key={r.index} className={outcome(r)} data-outcome={outcome(r)}>
                <td className="input"><Thumbnail jobId={jobId} index={r.index} />{r.index}</td>
                <td>{name(r.label)}</td>
                <td>{name(r.prediction)}<Between row={r} name={name} /></td>
                <td>{floorFixed(r.radius)}</td>
                <td>[{r.p_lower.toFixed(4)}, {r.p_upper.toFixed(4)}]{r.q_lower != null && ` Q [${r.q_lower.toFixed(4)}, ${r.q_upper?.toFixed(4)}]`}</td>
                <td>{r.samples.toLocaleString()}</td>
                <td>{r.seconds.toFixed(2)}</td>
              </tr>
            ))}
          </tbody>
        </table>
      </div>
      <div className="pager">
        <button onClick={() => setPage((p) => p - 1)} disabled={page === 0}>Previous</button>
        <span>page {page + 1} of {pages} ({sorted.length} inputs)</span>
        <button onClick={() => setPage((p) => p + 1)} disabled={page + 1 >= pages}>Next</button>
      </div>
    </div>
  );
}
