import { Bar, BarChart, CartesianGrid, ResponsiveContainer, Tooltip, XAxis, YAxis } from 'recharts';
import type { Bin } from './shape';

/** Counts of inputs per radius bin. */
export function HistogramChart({ bins, height = 240, what = 'inputs' }: { bins: Bin[]; height?: number; what?: string }) {
  return (
    <div className="chart" data-testid="histogram-chart">
      <ResponsiveContainer width="100%" height={height}>
        <BarChart data={bins} margin={{ top: 8, right: 16, bottom: 24, left: 16 }}>
          <CartesianGrid strokeDasharray="3 3" />
          <XAxis dataKey="label" fontSize={11} label={{ value: 'certified L2 radius', position: 'insideBottom', offset: -12 }} />
          <YAxis allowDecimals={false} label={{ value: what, angle: -90, position: 'insideLeft', offset: -4, style: { textAnchor: 'middle' } }} />
          <Tooltip />
          <Bar dataKey="count" name={what} fill="#2563eb" isAnimationActive={false} />
        </BarChart>
      </ResponsiveContainer>
    </div>
  );
}
