import { useRef } from 'react';
import type { Progress } from '../../client/types.gen';
import { formatSeconds } from '../../format';

export { formatSeconds };

/**
 * The ETA from a smoothed rate: the API's estimate jumps each time an input finishes, so it is blended
 * (exponential moving average of inputs per second) and counted down between updates.
 */
function useSmoothedEta(progress: Progress, finished: boolean): number | null {
  const state = useRef<{ done: number; at: number; rate: number | null } | null>(null);
  const now = performance.now() / 1000;
  const remaining = progress.total - progress.done;
  if (finished || remaining <= 0) return null;
  const prev = state.current;
  if (!prev || progress.done < prev.done) {
    state.current = { done: progress.done, at: now, rate: null };
  } else if (progress.done > prev.done) {
    const rate = (progress.done - prev.done) / Math.max(now - prev.at, 1e-3);
    state.current = { done: progress.done, at: now, rate: prev.rate == null ? rate : 0.3 * rate + 0.7 * prev.rate };
  }
  const rate = state.current!.rate;
  if (rate != null && rate > 0) return remaining / rate;
  return progress.eta_seconds ?? null; // no rate of our own yet: the API's first estimate
}

/** done/total, samples per second and ETA of a job. */
export function ProgressBar({ progress, finished = false }: { progress: Progress; finished?: boolean }) {
  const pct = progress.total ? Math.floor((100 * progress.done) / progress.total) : 0;
  const eta = useSmoothedEta(progress, finished);
  return (
    <div className="progress" data-testid="progress">
      <div className="bar" role="progressbar" aria-valuemin={0} aria-valuemax={100} aria-valuenow={pct}>
        <div style={{ width: `${pct}%` }} />
      </div>
      <div className="progress-stats">
        <span data-testid="progress-count">{progress.done}/{progress.total} inputs ({pct}%)</span>
        <span title="samples drawn so far over the time since the job started (model loading and queueing included)">
          {progress.samples_per_second != null ? Math.round(progress.samples_per_second).toLocaleString() : '–'} samples/s since start
        </span>
        {/* after the end there is nothing left to estimate */}
        {!finished && progress.done < progress.total && <span data-testid="eta">ETA {formatSeconds(eta)}</span>}
      </div>
    </div>
  );
}
