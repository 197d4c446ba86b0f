import { describe, expect, it } from 'vitest';
import { QueryClient, QueryObserver } from '@tanstack/react-query';
import { refetchFresh } from './refetchFresh';

/** A query whose fetch reads the "server" when it starts and answers 50 ms later, as a request does. */
function slowQuery() {
  const server = { rows: 2 };
  const client = new QueryClient({ defaultOptions: { queries: { retry: false } } });
  const queryKey = ['rows'];
  const observer = new QueryObserver(client, {
    queryKey,
    queryFn: async () => {
      const seen = server.rows;
      await new Promise((resolve) => setTimeout(resolve, 50));
      return seen;
    },
  });
  const unsubscribe = observer.subscribe(() => {}); // an active query, as on the job page
  const settled = async () => {
    await new Promise((resolve) => setTimeout(resolve, 200));
    unsubscribe();
    return client.getQueryData<number>(queryKey);
  };
  return { server, client, queryKey, settled };
}

describe('refetchFresh', () => {
  it('does not join a first fetch that began before the new rows', async () => {
    const { server, client, queryKey, settled } = slowQuery();
    server.rows = 3; // the last row lands while the first fetch is in flight
    await refetchFresh(client, [queryKey]);
    expect(await settled()).toBe(3);
  });

  it('is needed: invalidateQueries alone keeps that first fetch\'s stale answer', async () => {
    const { server, client, queryKey, settled } = slowQuery();
    server.rows = 3;
    await client.invalidateQueries({ queryKey });
    expect(await settled()).toBe(2);
  });
});
