import { describe, expect, it, vi, afterEach } from 'vitest';
import { render, screen, cleanup } from '@testing-library/react';
import { QueryClient, QueryClientProvider } from '@tanstack/react-query';
import { client } from '../../api';
import type { ResultRowPublic } from '../../client/types.gen';
import { ResultsTable } from './ResultsTable';

client.setConfig({ baseUrl: 'http://localhost', auth: () => 'tok' }); // jsdom's Request needs an absolute URL

const row = (index: number): ResultRowPublic => ({
  index, label: 1, prediction: 1, radius: 0.5, p_lower: 0.9, p_upper: 0.95, samples: 100, seconds: 0.1, correct: true,
});

afterEach(() => { cleanup(); vi.unstubAllGlobals(); });

describe('ResultsTable', () => {
  it('fetches a thumbnail with the token for each row on the visible page only', async () => {
    const fetchMock = vi.fn(async (_req: Request) => new Response(new Uint8Array([0x89, 0x50, 0x4e, 0x47]), { headers: { 'Content-Type': 'image/png' } }));
    vi.stubGlobal('fetch', fetchMock);
    vi.stubGlobal('URL', Object.assign(URL, { createObjectURL: vi.fn(() => 'blob:thumb'), revokeObjectURL: vi.fn() }));
    const queries = new QueryClient({ defaultOptions: { queries: { retry: false } } });
    render(<QueryClientProvider client={queries}><ResultsTable jobId={7} rows={Array.from({ length: 30 }, (_, i) => row(i))} /></QueryClientProvider>);
    expect(await screen.findByAltText('input 0')).toHaveAttribute('src', 'blob:thumb');
    await screen.findByAltText('input 24');
    const requests = fetchMock.mock.calls.map(([req]) => req);
    expect(requests).toHaveLength(25); // one page of 25, not all 30 rows
    expect(requests[0].url).toBe('http://localhost/api/v1/jobs/7/images/0');
    expect(requests[0].headers.get('Authorization')).toBe('Bearer tok');
  });
});
