import type { ReactNode } from 'react';

const LONG = 240;
/** A long API message (a model's traceback) shows its opening and its last line; the rest folds away. */
const brief = (error: string) => {
  if (error.length <= LONG) return error;
  const last = error.trim().split('\n').at(-1) ?? '';
  return `${error.slice(0, 120).split('\n')[0]}… ${last.slice(-200)}`;
};

/** A labelled input with its error beside it (the id ties the message to the input for screen readers). */
export function Field({ name, label, error, hint, children }: {
  name: string; label: string; error?: string; hint?: string; children: ReactNode;
}) {
  return (
    <div className={`field${error ? ' invalid' : ''}`}>
      <label htmlFor={`f-${name}`}>{label}</label>
      {children}
      {hint && !error && <small className="hint">{hint}</small>}
      {error && <small className="error" id={`f-${name}-error`} role="alert" data-field={name}>{brief(error)}
        {error.length > LONG && <details><summary>full message</summary><pre>{error}</pre></details>}</small>}
    </div>
  );
}
