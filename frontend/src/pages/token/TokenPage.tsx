import { useState } from 'react';
import { setToken } from '../../api';

/** Asks for the API token once; it stays in this browser's localStorage. */
export function TokenPage({ message, onSaved }: { message: string; onSaved: (token: string) => void }) {
  const [value, setValue] = useState('');
  return (
    <div className="token-page">
      <h1>Kavach</h1>
      <p role="alert" className="notice">{message}</p>
      <form onSubmit={(e) => { e.preventDefault(); if (value.trim()) { setToken(value); onSaved(value.trim()); } }}>
        <label>API token
          <input name="token" type="password" autoComplete="off" value={value}
                 onChange={(e) => setValue(e.target.value)} placeholder="paste the token here" />
        </label>
        <button type="submit" disabled={!value.trim()}>Save token</button>
      </form>
      <p className="muted">The API's interactive docs: <a href="/docs" target="_blank" rel="noreferrer">/docs</a></p>
    </div>
  );
}
