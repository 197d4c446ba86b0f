import { useEffect, useState } from 'react';
import { useQuery } from '@tanstack/react-query';
import { readJobImageApiV1JobsIdImagesIndexGet } from '../../client/sdk.gen';

/** Input `index` of job `jobId`'s dataset as a blob: through the client, so the request carries the token. */
export function useJobImage(jobId: number, index: number) {
  return useQuery({
    queryKey: ['job-image', jobId, index],
    queryFn: async () => {
      const { data, error } = await readJobImageApiV1JobsIdImagesIndexGet({ path: { id: jobId, index }, parseAs: 'blob' });
      if (error || !data) throw error ?? new Error('no image');
      return data as Blob;
    },
    staleTime: Infinity, // an input never changes
    retry: false,
  });
}

/** A small picture of one input; mounted only for the rows on the visible page, so images load per page. */
export function Thumbnail({ jobId, index }: { jobId: number; index: number }) {
  const { data } = useJobImage(jobId, index);
  const [src, setSrc] = useState<string>();
  useEffect(() => {
    if (!data) return undefined;
    const url = URL.createObjectURL(data);
    setSrc(url);
    return () => { URL.revokeObjectURL(url); setSrc(undefined); };
  }, [data]);
  return src
    ? <img className="thumb" src={src} alt={`input ${index}`} />
    : <span className="thumb" aria-hidden="true" />;
}
