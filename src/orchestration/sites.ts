/** Recovery sites: where failed-over machines come up. The "files" driver writes their disks under `path`. */
import { constants, promises as fs } from 'node:fs';
import { FerryError, notFound } from '../errors.js';
import type { CreateSiteRequest, UpdateSiteRequest } from '../protocol/requests.js';
import type { SiteView } from '../protocol/views.js';
import type { SiteRow } from '../db/schema.js';
import { checkWritableFormat } from '../disks/formats.js';
import { ensureDirectory } from '../util/durable-fs.js';
import { newId } from '../util/ids.js';
import type { CoreContext } from './context.js';

/** Renders a site row for the API. */
export function siteView(row: SiteRow): SiteView {
  return { id: row.id, name: row.name, driver: row.driver, path: row.path, diskFormat: row.disk_format, createdAt: new Date(row.created_at).toISOString() };
}

/** Creates and finds sites. */
export class Sites {
  constructor(private readonly context: CoreContext) {}

  /** Adds a site (disks written as raw unless `diskFormat` names another writable format); its directory is created if missing and must be writable by the server. */
  async create(request: Omit<CreateSiteRequest, 'diskFormat'> & { diskFormat?: string }): Promise<SiteView> {
    const existing = await this.context.db.selectFrom('sites').select('id').where('name', '=', request.name).executeTakeFirst();
    if (existing) throw new FerryError('conflict', `site '${request.name}' already exists`);
    await usableDirectory(request.path);
    const diskFormat = request.diskFormat ?? 'raw';
    checkWritableFormat(diskFormat);
    const row: SiteRow = { id: newId('site'), name: request.name, driver: request.driver, path: request.path, disk_format: diskFormat, created_at: this.context.now() };
    await this.context.db.insertInto('sites').values(row).execute();
    return siteView(row);
  }

  /**
   * Changes where a site's future failovers go (`path`, created if missing, writable) or the format they
   * are written in; failovers already written keep their files. invalid-request for an unusable path or a
   * format that cannot be written; not-found for an unknown site.
   */
  async update(name: string, request: UpdateSiteRequest): Promise<SiteView> {
    const site = await this.get(name);
    if (request.diskFormat !== undefined) checkWritableFormat(request.diskFormat);
    if (request.path !== undefined) await usableDirectory(request.path);
    await this.context.db
      .updateTable('sites')
      .set({ ...(request.path !== undefined ? { path: request.path } : {}), ...(request.diskFormat !== undefined ? { disk_format: request.diskFormat } : {}) })
      .where('id', '=', site.id)
      .execute();
    return siteView(await this.get(name));
  }

  async list(): Promise<SiteView[]> {
    const rows = await this.context.db.selectFrom('sites').selectAll().orderBy('name').execute();
    return rows.map(siteView);
  }

  /** The site named `name`; throws not-found naming it. */
  async get(name: string): Promise<SiteRow> {
    const row = await this.context.db.selectFrom('sites').selectAll().where('name', '=', name).executeTakeFirst();
    if (!row) throw notFound('site', name);
    return row;
  }
}

/** Creates `directory` if missing and checks the server can write it; invalid-request naming it if not. */
async function usableDirectory(directory: string): Promise<void> {
  try {
    await ensureDirectory(directory);
    await fs.access(directory, constants.W_OK);
  } catch (error) {
    throw new FerryError('invalid-request', `site path ${directory} cannot be used: ${(error as Error).message}`);
  }
}
