import type { ReactNode } from 'react';

/** A labelled input with its error beside it (the id ties the message to the input for screen readers). */
export function Field({ name, label, error, hint, children }: {
  name: string; label: string; error?: string; hint?: string; children: ReactNode;
}) {
  return (
    <div className={`field${error ? ' invalid' : ''}`}>
      <label htmlFor={`f-${name}`}>{label}</label>
      {children}
      {hint && !error && <small className="hint">{hint}</small>}
      {error && <small className="error" id={`f-${name}-error`} role="alert" data-field={name}>{error}</small>}
    </div>
  );
}
