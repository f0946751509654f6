/**
 * Sign-in: the operator pastes an admin token. It is checked with one API call and kept only in this
 * browser session; a refused token shows the server's reason and what to do.
 */
import { type FormEvent, useEffect, useId, useState } from 'react';
import { api, ApiError } from '../api.js';

/** Props of SignInPage: why the operator is here (signed out, token refused), and what to do once in. */
export interface SignInProps {
  notice: string | null;
  onSignedIn: (token: string) => void;
}

/** The sign-in page. */
export function SignInPage({ notice, onSignedIn }: SignInProps) {
  const inputId = useId();
  const helpId = useId();
  const [token, setToken] = useState('');
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    document.title = 'Sign in – Ferry';
  }, []);

  const submit = async (event: FormEvent) => {
    event.preventDefault();
    const candidate = token.trim();
    if (!candidate) {
      setError('Enter a token first.');
      return;
    }
    setBusy(true);
    setError(null);
    try {
      await api('GET', '/sites', undefined, candidate);
      onSignedIn(candidate);
    } catch (failure) {
      setBusy(false);
      if (failure instanceof ApiError && failure.status === 401) setError(`Token refused: ${failure.message}. Check you copied the whole admin token.`);
      else if (failure instanceof ApiError && failure.status === 403) setError(`Token refused: ${failure.message}. The portal needs an admin token, not an agent token.`);
      else setError((failure as Error).message);
    }
  };

  return (
    <main id="main" className="sign-in">
      <h1>Ferry</h1>
      <p className="lead">Disaster recovery and migration.</p>
      {notice && (
        <p className="notice" role="status">
          {notice}
        </p>
      )}
      <form onSubmit={(event) => void submit(event)} noValidate>
        <label htmlFor={inputId}>Admin token</label>
        <input
          id={inputId}
          name="token"
          type="password"
          autoComplete="off"
          spellCheck={false}
          value={token}
          onChange={(event) => setToken(event.target.value)}
          aria-describedby={helpId}
          aria-invalid={error ? true : undefined}
          autoFocus
        />
        <p id={helpId} className="help">
          The server wrote it to <code>DATA_DIR/admin.token</code> on first start; <code>ferry token create --role admin</code> makes another. It is kept in
          this browser tab only, until you sign out or close it.
        </p>
        {error && (
          <p role="alert" className="notice notice-error">
            {error}
          </p>
        )}
        <button type="submit" className="button-primary" disabled={busy}>
          {busy ? 'Checking…' : 'Sign in'}
        </button>
      </form>
    </main>
  );
}
