/** Client-side paging of long lists (points, jobs, events): 25 a page with Previous and Next. */
import { type ReactNode, useState } from 'react';

/** Items on a page. */
export const PAGE_SIZE = 25;

/** The items of the current page of `items`, and the pager to show below them (nothing for one page). */
export function usePaged<T>(items: readonly T[], label: string, size = PAGE_SIZE): { pageItems: T[]; pager: ReactNode } {
  const [page, setPage] = useState(0);
  const pages = Math.max(1, Math.ceil(items.length / size));
  const current = Math.min(page, pages - 1);
  const pageItems = items.slice(current * size, (current + 1) * size);
  const pager =
    pages <= 1 ? null : (
      <nav className="pager" aria-label={`Pages of ${label}`}>
        <button type="button" onClick={() => setPage(current - 1)} disabled={current === 0}>
          Previous
        </button>
        <span aria-live="polite">
          Page {current + 1} of {pages} ({items.length} {label})
        </span>
        <button type="button" onClick={() => setPage(current + 1)} disabled={current >= pages - 1}>
          Next
        </button>
      </nav>
    );
  return { pageItems, pager };
}
