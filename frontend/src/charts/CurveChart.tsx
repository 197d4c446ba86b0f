import { CartesianGrid, Legend, Line, LineChart, ReferenceLine, ResponsiveContainer, Tooltip, XAxis, YAxis } from 'recharts';
import { floorFixed } from '../format';
import { overlayCurves, type CurveSeries } from './shape';

const COLORS = ['#2563eb', '#dc2626', '#16a34a', '#9333ea', '#ea580c', '#0891b2', '#be185d', '#4d7c0f'];

/** Certified accuracy against radius, one step line per series. */
export function CurveChart({ series, height = 320, maxRadius }: { series: CurveSeries[]; height?: number; maxRadius?: number }) {
  const rows = overlayCurves(series);
  // the x axis ends at the largest radius drawn (rows are sorted by radius) or the max-radius line
  const right = Math.max(maxRadius ?? 0, rows.at(-1)?.radius ?? 0);
  // a line near the left edge takes its label on its right, clear of the y axis
  const labelSide = maxRadius != null && maxRadius < 0.2 * right ? 'insideTopLeft' : 'insideTopRight';
  return (
    <div className="chart" data-testid="curve-chart">
      <ResponsiveContainer width="100%" height={height}>
        <LineChart data={rows} margin={{ top: 8, right: 16, bottom: 24, left: 16 }}>
          <CartesianGrid strokeDasharray="3 3" />
          <XAxis dataKey="radius" type="number" domain={[0, right]} tickFormatter={(v: number) => v.toFixed(2)}
                 label={{ value: 'L2 radius (on the [0, 1] pixel scale)', position: 'insideBottom', offset: -12 }} />
          <YAxis domain={[0, 1]} tickFormatter={(v: number) => `${Math.round(v * 100)}%`}
                 label={{ value: 'certified accuracy', angle: -90, position: 'insideLeft', offset: -4, style: { textAnchor: 'middle' } }} />
          <Tooltip formatter={(v) => `${(Number(v) * 100).toFixed(1)}%`}
                   labelFormatter={(r) => `radius ${Number(r).toFixed(3)}`} />
          {maxRadius != null && <ReferenceLine x={maxRadius} stroke="#64748b" strokeDasharray="6 4"
            label={{ value: `max ${floorFixed(maxRadius)}`, position: labelSide, fontSize: 11 }} />}
          {series.length > 1 && <Legend verticalAlign="top" />}
          {series.map((s, i) => (
            <Line key={s.name} dataKey={s.name} name={s.name} type="stepAfter" dot={false}
                  stroke={COLORS[i % COLORS.length]} strokeWidth={2} isAnimationActive={false} />
          ))}
        </LineChart>
      </ResponsiveContainer>
    </div>
  );
}
