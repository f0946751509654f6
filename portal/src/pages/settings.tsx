/**
 * Sites and policies: where failed-over machines come up, and how often points are taken, how long
 * they are kept and the RPO to alarm on. Both can be created and edited here.
 */
import { type FormEvent, useCallback, useEffect, useId, useState } from 'react';
import type { PolicyView, SiteView } from '../../../src/protocol/views.js';
import { api, segment } from '../api.js';
import { Empty, ErrorNotice, FormOutcome } from '../components/bits.js';
import { ConfirmDialog } from '../components/dialog.js';
import { formatDuration, formatTime } from '../format.js';
import { useLive, useTitle } from '../session.js';

/** Disk formats a site can write (src/disks/formats.ts); raw is the default. */
const DISK_FORMATS = ['raw', 'vhd', 'vhd:fixed', 'vhd:dynamic', 'vhdx', 'vhdx:fixed', 'vmdk', 'qcow2', 'qcow2:v3-compressed'];

/** Parses "90", "90s", "5m", "24h", "7d" into seconds; null if it is none of these. */
export function parseDuration(text: string): number | null {
  const match = /^\s*(\d+)\s*([smhd]?)\s*$/i.exec(text);
  if (!match) return null;
  const factor = { '': 1, s: 1, m: 60, h: 3600, d: 86400 }[match[2]!.toLowerCase() as '' | 's' | 'm' | 'h' | 'd'];
  return Number(match[1]) * factor;
}

/** Seconds written back the way parseDuration reads them ("5m", "24h", "90s"). */
function durationText(seconds: number): string {
  if (seconds % 86400 === 0) return `${seconds / 86400}d`;
  if (seconds % 3600 === 0) return `${seconds / 3600}h`;
  if (seconds % 60 === 0) return `${seconds / 60}m`;
  return `${seconds}s`;
}

/** The sites and policies page. */
export function SettingsPage() {
  useTitle('Sites & policies');
  const live = useLive();
  const [sites, setSites] = useState<SiteView[] | null>(null);
  const [policies, setPolicies] = useState<PolicyView[] | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [editing, setEditing] = useState<PolicyView | null>(null);
  const [editingSite, setEditingSite] = useState<SiteView | null>(null);
  const load = useCallback(() => {
    Promise.all([api<{ sites: SiteView[] }>('GET', '/sites'), api<{ policies: PolicyView[] }>('GET', '/policies')]).then(
      ([siteAnswer, policyAnswer]) => {
        setSites(siteAnswer.sites);
        setPolicies(policyAnswer.policies);
        setError(null);
      },
      (failure: Error) => setError(failure.message),
    );
  }, []);
  useEffect(load, [load]);
  const usage = (key: 'site' | 'policy', name: string) => live.machines.filter((machine) => machine[key] === name).length;

  return (
    <>
      <h1 tabIndex={-1}>Sites &amp; policies</h1>
      {error && <ErrorNotice>Could not load sites and policies: {error}</ErrorNotice>}

      <section aria-labelledby="sites-heading">
        <h2 id="sites-heading">Recovery sites</h2>
        {sites?.length === 0 && <Empty>No recovery site yet. Add one below: machines are protected to a site, and fail over there.</Empty>}
        {sites && sites.length > 0 && (
          <table>
            <thead>
              <tr>
                <th scope="col">Site</th>
                <th scope="col">Driver</th>
                <th scope="col">Path on the server</th>
                <th scope="col">Disk format</th>
                <th scope="col">Machines</th>
                <th scope="col">Created</th>
                <th scope="col">
                  <span className="visually-hidden">Edit</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {sites.map((site) => (
                <tr key={site.name}>
                  <th scope="row">{site.name}</th>
                  <td>{site.driver}</td>
                  <td>
                    <code>{site.path}</code>
                  </td>
                  <td>{site.diskFormat}</td>
                  <td>{usage('site', site.name)}</td>
                  <td>{formatTime(site.createdAt)}</td>
                  <td>
                    <button type="button" onClick={() => setEditingSite(site)} aria-label={`Edit site ${site.name}`}>
                      Edit…
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <CreateSiteForm onCreated={load} />
      </section>

      <section aria-labelledby="policies-heading">
        <h2 id="policies-heading">Policies</h2>
        {policies && (
          <table>
            <thead>
              <tr>
                <th scope="col">Policy</th>
                <th scope="col">Point every</th>
                <th scope="col">App-consistent every</th>
                <th scope="col">Kept</th>
                <th scope="col">RPO threshold</th>
                <th scope="col">Machines</th>
                <th scope="col">
                  <span className="visually-hidden">Edit</span>
                </th>
              </tr>
            </thead>
            <tbody>
              {policies.map((policy) => (
                <tr key={policy.name}>
                  <th scope="row">{policy.name}</th>
                  <td>{formatDuration(policy.intervalSeconds)}</td>
                  <td>{formatDuration(policy.appIntervalSeconds)}</td>
                  <td>{formatDuration(policy.retentionSeconds)}</td>
                  <td>{formatDuration(policy.rpoThresholdSeconds)}</td>
                  <td>{usage('policy', policy.name)}</td>
                  <td>
                    <button type="button" onClick={() => setEditing(policy)} aria-label={`Edit policy ${policy.name}`}>
                      Edit…
                    </button>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
        <CreatePolicyForm onCreated={load} />
      </section>
      {editingSite && <EditSiteDialog key={editingSite.name} site={editingSite} onClose={() => setEditingSite(null)} onSaved={load} />}
      {editing && <EditPolicyDialog key={editing.name} policy={editing} machines={usage('policy', editing.name)} onClose={() => setEditing(null)} onSaved={load} />}
    </>
  );
}

function CreateSiteForm({ onCreated }: { onCreated: () => void }) {
  const nameId = useId();
  const pathId = useId();
  const formatId = useId();
  const [name, setName] = useState('');
  const [path, setPath] = useState('');
  const [format, setFormat] = useState('raw');
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<string | null>(null);
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    setCreated(null);
    try {
      const site = await api<SiteView>('POST', '/sites', { name: name.trim(), path: path.trim(), diskFormat: format });
      setCreated(`Site ${site.name} created at ${site.path}.`);
      setName('');
      setPath('');
      onCreated();
    } catch (failure) {
      setError((failure as Error).message);
    }
  };
  return (
    <form onSubmit={(event) => void submit(event)} className="form-grid form-section" aria-label="Add a site">
      <h3 className="span-2">Add a site</h3>
      <label htmlFor={nameId}>Name</label>
      <input id={nameId} value={name} onChange={(event) => setName(event.target.value)} required />
      <label htmlFor={pathId}>Path on the server</label>
      <input id={pathId} value={path} onChange={(event) => setPath(event.target.value)} placeholder="/srv/ferry/dr" required />
      <label htmlFor={formatId}>Disk format</label>
      <select id={formatId} value={format} onChange={(event) => setFormat(event.target.value)}>
        {DISK_FORMATS.map((candidate) => (
          <option key={candidate}>{candidate}</option>
        ))}
      </select>
      <p className="help span-2">The server creates the directory if needed and must be able to write it; failed-over disks are written there in this format.</p>
      <FormOutcome what="site" error={error} created={created} submitLabel="Add site" />
    </form>
  );
}

/** Changes a site's directory or disk format (PATCH /sites/{name}); failovers already written stay where they are. */
function EditSiteDialog({ site, onClose, onSaved }: { site: SiteView; onClose: () => void; onSaved: () => void }) {
  const pathId = useId();
  const formatId = useId();
  const [path, setPath] = useState(site.path);
  const [format, setFormat] = useState(site.diskFormat);
  const changes = { ...(path.trim() !== site.path ? { path: path.trim() } : {}), ...(format !== site.diskFormat ? { diskFormat: format } : {}) };
  return (
    <ConfirmDialog
      title={`Edit site ${site.name}`}
      confirmLabel="Save"
      canConfirm={Object.keys(changes).length > 0}
      onClose={onClose}
      onConfirm={async () => {
        await api<SiteView>('PATCH', `/sites/${segment(site.name)}`, changes);
        onSaved();
      }}
    >
      <div className="form-grid">
        <label htmlFor={pathId}>Path on the server</label>
        <input id={pathId} value={path} onChange={(event) => setPath(event.target.value)} required />
        <label htmlFor={formatId}>Disk format</label>
        <select id={formatId} value={format} onChange={(event) => setFormat(event.target.value)}>
          {[...new Set([site.diskFormat, ...DISK_FORMATS])].map((candidate) => (
            <option key={candidate}>{candidate}</option>
          ))}
        </select>
      </div>
      <p className="what-happens">
        {Object.keys(changes).length === 0
          ? 'Change the path or the format to save.'
          : 'Saving changes where and how the next failovers to this site are written. Failovers and test failovers already written keep their files.'}
      </p>
    </ConfirmDialog>
  );
}

/** The policy fields both forms share, as text ("5m"), keyed like the API. */
type PolicyFields = Record<'intervalSeconds' | 'appIntervalSeconds' | 'retentionSeconds' | 'rpoThresholdSeconds', string>;

const FIELD_LABELS: Record<keyof PolicyFields, string> = {
  intervalSeconds: 'Point every',
  appIntervalSeconds: 'App-consistent point every',
  retentionSeconds: 'Keep points for',
  rpoThresholdSeconds: 'RPO threshold',
};

/** Parses the filled fields; throws naming a field that is not a duration. */
function parseFields(fields: PolicyFields): Partial<Record<keyof PolicyFields, number>> {
  const parsed: Partial<Record<keyof PolicyFields, number>> = {};
  for (const key of Object.keys(fields) as (keyof PolicyFields)[]) {
    if (fields[key].trim() === '') continue;
    const seconds = parseDuration(fields[key]);
    if (seconds === null) throw new Error(`${FIELD_LABELS[key]}: '${fields[key]}' is not a duration like 90s, 5m, 24h or 7d`);
    parsed[key] = seconds;
  }
  return parsed;
}

function PolicyInputs({ fields, onChange, optional }: { fields: PolicyFields; onChange: (fields: PolicyFields) => void; optional: (keyof PolicyFields)[] }) {
  const baseId = useId();
  return (
    <>
      {(Object.keys(FIELD_LABELS) as (keyof PolicyFields)[]).map((key) => (
        <div key={key} className="form-row">
          <label htmlFor={`${baseId}-${key}`}>
            {FIELD_LABELS[key]}
            {optional.includes(key) ? ' (optional)' : ''}
          </label>
          <input
            id={`${baseId}-${key}`}
            value={fields[key]}
            onChange={(event) => onChange({ ...fields, [key]: event.target.value })}
            placeholder="e.g. 5m"
            inputMode="text"
            required={!optional.includes(key)}
          />
        </div>
      ))}
    </>
  );
}

function CreatePolicyForm({ onCreated }: { onCreated: () => void }) {
  const nameId = useId();
  const [name, setName] = useState('');
  const [fields, setFields] = useState<PolicyFields>({ intervalSeconds: '5m', appIntervalSeconds: '', retentionSeconds: '24h', rpoThresholdSeconds: '' });
  const [error, setError] = useState<string | null>(null);
  const [created, setCreated] = useState<string | null>(null);
  const submit = async (event: FormEvent) => {
    event.preventDefault();
    setError(null);
    setCreated(null);
    try {
      const policy = await api<PolicyView>('POST', '/policies', { name: name.trim(), ...parseFields(fields) });
      setCreated(`Policy ${policy.name} created: a point every ${formatDuration(policy.intervalSeconds)}, RPO threshold ${formatDuration(policy.rpoThresholdSeconds)}.`);
      setName('');
      onCreated();
    } catch (failure) {
      setError((failure as Error).message);
    }
  };
  return (
    <form onSubmit={(event) => void submit(event)} className="form-grid form-section" aria-label="Add a policy">
      <h3 className="span-2">Add a policy</h3>
      <label htmlFor={nameId}>Name</label>
      <input id={nameId} value={name} onChange={(event) => setName(event.target.value)} required />
      <PolicyInputs fields={fields} onChange={setFields} optional={['appIntervalSeconds', 'rpoThresholdSeconds']} />
      <p className="help span-2">
        Durations like 90s, 5m, 24h, 7d. The app-consistent interval defaults to every point; the RPO threshold to twice the interval (at least a minute).
      </p>
      <FormOutcome what="policy" error={error} created={created} submitLabel="Add policy" />
    </form>
  );
}

function EditPolicyDialog({ policy, machines, onClose, onSaved }: { policy: PolicyView; machines: number; onClose: () => void; onSaved: () => void }) {
  const initial: PolicyFields = {
    intervalSeconds: durationText(policy.intervalSeconds),
    appIntervalSeconds: durationText(policy.appIntervalSeconds),
    retentionSeconds: durationText(policy.retentionSeconds),
    rpoThresholdSeconds: durationText(policy.rpoThresholdSeconds),
  };
  const [fields, setFields] = useState(initial);
  const changed = (Object.keys(fields) as (keyof PolicyFields)[]).filter((key) => fields[key].trim() !== initial[key]);
  return (
    <ConfirmDialog
      title={`Edit policy ${policy.name}`}
      confirmLabel="Save"
      canConfirm={changed.length > 0}
      onClose={onClose}
      onConfirm={async () => {
        const parsed = parseFields(fields);
        const changes = Object.fromEntries(changed.map((key) => [key, parsed[key]]).filter(([, value]) => value !== undefined));
        await api<PolicyView>('PATCH', `/policies/${segment(policy.name)}`, changes);
        onSaved();
      }}
    >
      <div className="form-grid">
        <PolicyInputs fields={fields} onChange={setFields} optional={[]} />
      </div>
      <p className="what-happens">
        {changed.length === 0
          ? 'Change a setting to save.'
          : `Saving changes ${changed.map((key) => FIELD_LABELS[key].toLowerCase()).join(', ')} for the ${machines} machine(s) on this policy, from their next scheduler tick. Shorter retention lets points past it expire.`}
      </p>
    </ConfirmDialog>
  );
}
