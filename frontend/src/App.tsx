import { useEffect, useState } from 'react';
import { NavLink, Route, Routes } from 'react-router-dom';
import { useQueryClient } from '@tanstack/react-query';
import { clearToken, getToken } from './api';
import { TokenPage } from './pages/token/TokenPage';
import { ModelsPage } from './pages/models/ModelsPage';
import { AddModelPage } from './pages/add-model/AddModelPage';
import { CertifyPage } from './pages/certify/CertifyPage';
import { JobPage } from './pages/job/JobPage';
import { ComparePage } from './pages/compare/ComparePage';
import { DocsPage } from './pages/docs/DocsPage';
import { JobsPage } from './pages/jobs/JobsPage';
import { NotFound } from './pages/notfound/NotFound';

export const UNAUTHORIZED_EVENT = 'kavach:unauthorized';

export function App() {
  const queryClient = useQueryClient();
  const [token, setTokenState] = useState(getToken());
  const [rejected, setRejected] = useState(false);

  useEffect(() => {
    const onUnauthorized = () => { clearToken(); setRejected(true); setTokenState(null); };
    window.addEventListener(UNAUTHORIZED_EVENT, onUnauthorized);
    return () => window.removeEventListener(UNAUTHORIZED_EVENT, onUnauthorized);
  }, []);

  if (!token) {
    return (
      <TokenPage
        message={rejected ? 'The API refused that token: it is unknown or was revoked. Paste a valid one.' :
          'No API token yet. `make run` prints one; `kavach token create NAME` makes another.'}
        onSaved={(t) => { queryClient.clear(); setRejected(false); setTokenState(t); }}
      />
    );
  }
  return (
    <div className="app">
      <header className="topbar">
        <strong className="brand">Kavach</strong>
        <nav>
          <NavLink to="/" end>Models</NavLink>
          <NavLink to="/models/new">Add model</NavLink>
          <NavLink to="/jobs" end>Jobs</NavLink>
          <NavLink to="/compare">Compare</NavLink>
          <NavLink to="/docs">Docs</NavLink>
        </nav>
        <button className="link" onClick={() => { clearToken(); queryClient.clear(); setTokenState(null); }}>
          Change token
        </button>
      </header>
      <main>
        <Routes>
          <Route path="/" element={<ModelsPage />} />
          <Route path="/models/new" element={<AddModelPage />} />
          <Route path="/models/:id/certify" element={<CertifyPage />} />
          <Route path="/jobs" element={<JobsPage />} />
          <Route path="/jobs/:id" element={<JobPage />} />
          <Route path="/compare" element={<ComparePage />} />
          <Route path="/docs" element={<DocsPage />} />
          <Route path="*" element={<NotFound what="This page" />} />
        </Routes>
      </main>
    </div>
  );
}
