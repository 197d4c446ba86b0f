import { Link } from 'react-router-dom';

/** A missing job, model or page: says so plainly and links back (no form, no endless loading). */
export function NotFound({ what }: { what: string }) {
  return (
    <section data-testid="not-found">
      <h1>Not found</h1>
      <p>{what} does not exist, or belongs to another token.</p>
      <p><Link to="/">← Back to the models</Link> · <Link to="/jobs">all jobs</Link></p>
    </section>
  );
}
