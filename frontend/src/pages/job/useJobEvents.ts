import { useEffect } from 'react';
import { useQueryClient } from '@tanstack/react-query';
import { client } from '../../api';
import { readJobApiV1JobsIdGetQueryKey } from '../../client/@tanstack/react-query.gen';
import type { JobPublic } from '../../client/types.gen';

/**
 * Follows the job's server-sent events (through the generated client, which sends the bearer token
 * that EventSource cannot) and writes each snapshot into the job query's cache.
 */
export function useJobEvents(id: number, enabled: boolean) {
  const queryClient = useQueryClient();
  useEffect(() => {
    if (!enabled) return;
    const abort = new AbortController();
    (async () => {
      const { stream } = await client.sse.get({
        url: '/api/v1/jobs/{id}/events', path: { id }, security: [{ scheme: 'bearer', type: 'http' }],
        signal: abort.signal, sseMaxRetryAttempts: 5,
      });
      for await (const event of stream) {
        if (event && typeof event === 'object' && 'progress' in event)
          queryClient.setQueryData(readJobApiV1JobsIdGetQueryKey({ path: { id } }), event as JobPublic);
      }
    })().catch(() => { /* aborted on unmount, or the stream gave up: the job query still polls */ });
    return () => abort.abort();
  }, [id, enabled, queryClient]);
}
