import { describe, expect, it, vi, afterEach } from 'vitest';
import { render, screen, cleanup } from '@testing-library/react';
import userEvent from '@testing-library/user-event';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { client } from '../../api';
import type { ResultRowPublic } from '../../client/types.gen';
import { ResultsTable } from './ResultsTable';

client.setConfig({ baseUrl: 'http://localhost' });

const row = (index: number, label: number, prediction: number, radius: number): ResultRowPublic => ({
  index, label, prediction, radius, p_lower: 0.9, p_upper: 0.95, samples: 100, seconds: 0.1, correct: prediction === label,
});
const rows = [row(0, 7, 7, 0.79964), row(1, 7, 2, 0.3), { ...row(2, 1, -1, 0), top_class: 1, runner_up: 3 },
  row(3, 0, 0, 1.2), { ...row(4, 8, -1, 0), top_class: 8, runner_up: null }];

afterEach(() => { cleanup(); vi.unstubAllGlobals(); });

describe('ResultsTable', () => {
  it('filters wrong and abstained inputs, names classes and the abstentions\' top two, and rounds radii down', async () => {
    vi.stubGlobal('fetch', vi.fn(async () => new Response(null, { status: 404 })));
    const queries = new QueryClient({ defaultOptions: { queries: { retry: false } } });
    const names = ['T-shirt/top', 'Trouser', 'Pullover', 'Dress', 'Coat', 'Sandal', 'Shirt', 'Sneaker', 'Bag', 'Ankle boot'];
    const { container } = render(<QueryClientProvider client={queries}><ResultsTable jobId={1} rows={rows} classNames={names} /></QueryClientProvider>);
    expect(screen.getByText('0.799')).toBeInTheDocument();
    expect(screen.queryByText('0.800')).toBeNull();
    expect(screen.getAllByText('Sneaker').length).toBeGreaterThan(0);
    const user = userEvent.setup();
    await user.selectOptions(screen.getByTestId('outcome-filter'), 'failures');
    const outcomes = () => [...container.querySelectorAll('tbody tr')].map((tr) => (tr as HTMLElement).dataset.outcome);
    expect(outcomes()).toEqual(['wrong', 'abstain', 'abstain']);
    await user.selectOptions(screen.getByTestId('outcome-filter'), 'abstain');
    expect(outcomes()).toEqual(['abstain', 'abstain']);
    // each abstention names the selection draws' top class and runner-up, by class name; predictions name none
    const between = screen.getAllByTestId('runner-up');
    expect(between.map((b) => b.textContent)).toEqual(['Trouser vs Dress (selection draws)',
      'top Bag, no other class drawn (selection draws)']);
    expect(between[0]).toHaveAttribute('title', expect.stringContaining('no bound or radius depends on them'));
    await user.selectOptions(screen.getByTestId('outcome-filter'), 'all');
    expect(screen.getAllByTestId('runner-up')).toHaveLength(2);
  });
});
