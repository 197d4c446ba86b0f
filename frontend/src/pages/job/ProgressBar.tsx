import type { Progress } from '../../client/types.gen';

export function formatSeconds(s: number | null | undefined): string {
  if (s == null || !Number.isFinite(s)) return '–';
  if (s < 60) return `${Math.round(s)} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
  return `${Math.floor(s / 3600)} h ${Math.round((s % 3600) / 60)} min`;
}

/** done/total, samples per second and ETA of a job. */
export function ProgressBar({ progress }: { progress: Progress }) {
  const pct = progress.total ? Math.round((100 * progress.done) / progress.total) : 0;
  return (
    <div className="progress" data-testid="progress">
      <div className="bar" role="progressbar" aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
        <div style={{ width: `${pct}%` }} />
      </div>
      <div className="progress-stats">
        <span data-testid="progress-count">{progress.done}/{progress.total} inputs ({pct}%)</span>
        <span>{progress.samples_per_second != null ? `${Math.round(progress.samples_per_second).toLocaleString()} samples/s` : '– samples/s'}</span>
        <span>ETA {formatSeconds(progress.eta_seconds)}</span>
      </div>
    </div>
  );
}
