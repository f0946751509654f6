/** The signed-in session pages share: the token's live store, sign-out, and the current time. */
import { createContext, useContext, useEffect, useState } from 'react';
import { type LiveState, type LiveStore, useLiveState } from './live.js';

/** What a signed-in page may use. */
export interface Session {
  store: LiveStore;
  signOut(): void;
}

/** Provided by App once signed in. */
export const SessionContext = createContext<Session | null>(null);

/** The session; only pages rendered while signed in call it. */
export function useSession(): Session {
  const session = useContext(SessionContext);
  if (!session) throw new Error('useSession outside a signed-in portal');
  return session;
}

/** The live state (machines, jobs, events), re-rendering on every update. */
export function useLive(): LiveState {
  return useLiveState(useSession().store);
}

/** The current time, ticking every `intervalMs` (RPOs and durations grow between updates). */
export function useNow(intervalMs = 1000): number {
  const [now, setNow] = useState(() => Date.now());
  useEffect(() => {
    const timer = setInterval(() => setNow(Date.now()), intervalMs);
    return () => clearInterval(timer);
  }, [intervalMs]);
  return now;
}

/** Sets the document title to "PAGE – Ferry". */
export function useTitle(page: string): void {
  useEffect(() => {
    document.title = `${page} – Ferry`;
  }, [page]);
}
