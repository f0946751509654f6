/**
 * The portal's shell: sign-in until a token is accepted, then the header (navigation, live status,
 * sign-out) and the page the path names. A token the server stops accepting signs the operator out
 * with the server's reason.
 */
import { useEffect, useMemo, useRef, useState } from 'react';
import { clearToken, onUnauthorized, storedToken, storeToken } from './api.js';
import { LiveStore, useLiveState } from './live.js';
import { JobPage } from './pages/job.js';
import { JobsPage } from './pages/jobs.js';
import { MachinePage } from './pages/machine.js';
import { NotFoundPage } from './pages/not-found.js';
import { OverviewPage } from './pages/overview.js';
import { PlansPage } from './pages/plans.js';
import { SettingsPage } from './pages/settings.js';
import { SignInPage } from './pages/sign-in.js';
import { Link, match, usePath } from './router.js';
import { SessionContext } from './session.js';

/** The whole portal. */
export function App() {
  const [token, setToken] = useState<string | null>(() => storedToken());
  const [signedOutBecause, setSignedOutBecause] = useState<string | null>(null);

  useEffect(
    () =>
      onUnauthorized((error) => {
        clearToken();
        setToken(null);
        setSignedOutBecause(`The server no longer accepts this token (${error.message}). Sign in again with a valid admin token.`);
      }),
    [],
  );

  if (!token) {
    return (
      <SignInPage
        notice={signedOutBecause}
        onSignedIn={(accepted) => {
          storeToken(accepted);
          setSignedOutBecause(null);
          setToken(accepted);
        }}
      />
    );
  }
  return (
    <SignedIn
      key={token}
      token={token}
      onSignOut={() => {
        clearToken();
        setSignedOutBecause('Signed out. The token was removed from this browser session.');
        setToken(null);
      }}
    />
  );
}

const NAV = [
  { to: '/', label: 'Overview', current: (path: string) => path === '/' || path.startsWith('/machines/') },
  { to: '/jobs', label: 'Jobs', current: (path: string) => path.startsWith('/jobs') },
  { to: '/plans', label: 'Recovery plans', current: (path: string) => path.startsWith('/plans') },
  { to: '/settings', label: 'Sites & policies', current: (path: string) => path.startsWith('/settings') },
];

function SignedIn({ token, onSignOut }: { token: string; onSignOut: () => void }) {
  const store = useMemo(() => new LiveStore(token), [token]);
  const live = useLiveState(store);
  const path = usePath();
  const main = useRef<HTMLElement>(null);
  const firstPath = useRef(path);

  useEffect(() => {
    store.start();
    return () => store.stop();
  }, [store]);

  // After navigating, move focus to the new page's heading so keyboard and screen reader users start there.
  useEffect(() => {
    if (path === firstPath.current) return;
    firstPath.current = '';
    main.current?.querySelector<HTMLElement>('h1')?.focus();
  }, [path]);

  const session = useMemo(() => ({ store, signOut: onSignOut }), [store, onSignOut]);
  const statusText = live.status === 'live' ? 'Live' : live.status === 'connecting' ? 'Connecting…' : 'Reconnecting…';

  return (
    <SessionContext.Provider value={session}>
      <a className="skip-link" href="#main">
        Skip to content
      </a>
      <header className="top">
        <Link to="/" className="brand">
          Ferry
        </Link>
        <nav aria-label="Main">
          <ul>
            {NAV.map((item) => (
              <li key={item.to}>
                <Link to={item.to} aria-current={item.current(path) ? 'page' : undefined}>
                  {item.label}
                </Link>
              </li>
            ))}
          </ul>
        </nav>
        <span className={`live live-${live.status}`} role="status" data-testid="live-status">
          {statusText}
        </span>
        <button type="button" onClick={onSignOut}>
          Sign out
        </button>
      </header>
      <main id="main" ref={main} tabIndex={-1}>
        <Page path={path} />
      </main>
    </SessionContext.Provider>
  );
}

function Page({ path }: { path: string }) {
  if (match('/', path)) return <OverviewPage />;
  const machine = match('/machines/:name', path);
  if (machine) return <MachinePage key={machine.name} name={machine.name!} />;
  if (match('/jobs', path)) return <JobsPage />;
  const job = match('/jobs/:id', path);
  if (job) return <JobPage key={job.id} id={job.id!} />;
  if (match('/plans', path)) return <PlansPage />;
  if (match('/settings', path)) return <SettingsPage />;
  return <NotFoundPage path={path} />;
}
