import type { QueryClient, QueryKey } from '@tanstack/react-query';

/**
 * Fetch these queries again, from now. `invalidateQueries` alone joins a fetch already in flight when
 * the query has no data yet (TanStack deduplicates it), and that fetch may have read the job before the
 * rows this refresh is for: the table then kept 2 of a finished job's 3 rows. Cancel it first.
 */
export async function refetchFresh(queryClient: QueryClient, queryKeys: QueryKey[]): Promise<void> {
  await Promise.all(queryKeys.map(async (queryKey) => {
    await queryClient.cancelQueries({ queryKey });
    await queryClient.invalidateQueries({ queryKey });
  }));
}
