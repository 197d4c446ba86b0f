import { useQuery } from '@tanstack/react-query';
import { readSummaryApiV1JobsIdSummaryGetOptions } from '../../client/@tanstack/react-query.gen';
import { accuracyAtRadius } from '../../charts/shape';
import { floorFixed, floorPercent } from '../../format';

/** ACR and certified accuracy at `radius` of one job, as table cells (rounded down, like the certificates). */
export function JobSummaryCells({ jobId, radius, hasRows }: { jobId: number; radius: number; hasRows: boolean }) {
  const summary = useQuery({ ...readSummaryApiV1JobsIdSummaryGetOptions({ path: { id: jobId } }), enabled: hasRows });
  const s = summary.data;
  if (!hasRows || (s && s.count === 0)) return <><td className="muted">–</td><td className="muted">–</td></>;
  if (!s) return <><td>…</td><td>…</td></>;
  const acc = accuracyAtRadius(s.curve.map((p) => p.radius), s.curve.map((p) => p.certified_accuracy), radius);
  return <><td data-testid="job-acr">{floorFixed(s.acr)}</td><td>{floorPercent(acc)}</td></>;
}
