/** A portal path that names no page. */
import { Link } from '../router.js';
import { useTitle } from '../session.js';

/** Says the page does not exist and links back to the overview. */
export function NotFoundPage({ path }: { path: string }) {
  useTitle('Not found');
  return (
    <>
      <h1 tabIndex={-1}>No such page</h1>
      <p>
        The portal has no page at <code>{path}</code>. Go to the <Link to="/">overview</Link>.
      </p>
    </>
  );
}
