/**
 * The confirmation dialog every action goes through: a native modal <dialog> (the rest of the page is
 * inert, so focus stays inside; Escape closes it), labelled by its title, saying in plain words what
 * will happen. It shows the server's refusal in place, so the operator can read why and cancel.
 */
import { type ReactNode, useEffect, useId, useRef, useState } from 'react';

/** Props of ConfirmDialog. */
export interface ConfirmDialogProps {
  title: string;
  /** What will happen, in plain words; may hold inputs (a point picker). */
  children: ReactNode;
  confirmLabel: string;
  /** Does the work; a throw is shown in the dialog. Resolving closes it. */
  onConfirm: () => Promise<void>;
  onClose: () => void;
  /** Styles the confirm button as destructive. */
  danger?: boolean;
  /** False keeps the confirm button disabled (e.g. a required choice is missing). */
  canConfirm?: boolean;
}

/** A modal confirmation; mount it to open it, unmount (via onClose) to close it. */
export function ConfirmDialog({ title, children, confirmLabel, onConfirm, onClose, danger = false, canConfirm = true }: ConfirmDialogProps) {
  const ref = useRef<HTMLDialogElement>(null);
  const titleId = useId();
  const bodyId = useId();
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    const dialog = ref.current;
    if (!dialog) return;
    const opener = document.activeElement as HTMLElement | null;
    if (!dialog.open) dialog.showModal();
    // Start on the first choice if there is one, else on Cancel: Enter alone never confirms a failover.
    const first = dialog.querySelector<HTMLElement>('[data-autofocus]') ?? dialog.querySelector<HTMLElement>('button[data-cancel]');
    first?.focus();
    return () => opener?.focus();
  }, []);

  const confirm = async () => {
    setBusy(true);
    setError(null);
    try {
      await onConfirm();
      onClose();
    } catch (failure) {
      setError((failure as Error).message);
      setBusy(false);
    }
  };

  return (
    <dialog
      ref={ref}
      className="dialog"
      aria-labelledby={titleId}
      aria-describedby={bodyId}
      onCancel={(event) => {
        event.preventDefault();
        if (!busy) onClose();
      }}
    >
      <h2 id={titleId}>{title}</h2>
      <div id={bodyId} className="dialog-body">
        {children}
      </div>
      {error && (
        <p role="alert" className="notice notice-error">
          The server refused: {error}
        </p>
      )}
      <div className="dialog-buttons">
        <button type="button" data-cancel onClick={onClose} disabled={busy}>
          Cancel
        </button>
        <button type="button" className={danger ? 'button-danger' : 'button-primary'} onClick={() => void confirm()} disabled={busy || !canConfirm}>
          {busy ? 'Working…' : confirmLabel}
        </button>
      </div>
    </dialog>
  );
}
