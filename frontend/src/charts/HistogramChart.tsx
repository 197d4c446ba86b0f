import { Bar, BarChart, CartesianGrid, ResponsiveContainer, Tooltip, XAxis, YAxis } from 'recharts';
import type { Bin } from './shape';

/** Counts of inputs per radius bin. */
export function HistogramChart({ bins, height = 240 }: { bins: Bin[]; height?: number }) {
  return (
    <div className="chart" data-testid="histogram-chart">
      <ResponsiveContainer width="100%" height={height}>
        <BarChart data={bins} margin={{ top: 8, right: 16, bottom: 8, left: 0 }}>
          <CartesianGrid strokeDasharray="3 3" />
          <XAxis dataKey="label" fontSize={11} />
          <YAxis allowDecimals={false} />
          <Tooltip />
          <Bar dataKey="count" name="inputs" fill="#2563eb" isAnimationActive={false} />
        </BarChart>
      </ResponsiveContainer>
    </div>
  );
}
