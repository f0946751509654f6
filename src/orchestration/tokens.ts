/**
 * API tokens. A token is shown once when made; the database keeps only its SHA-256. The first server
 * start writes an admin token to DATA_DIR/admin.token (mode 0600).
 */
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { FerryError } from '../errors.js';
import type { TokenView } from '../protocol/views.js';
import { writeFileDurable } from '../util/durable-fs.js';
import { newId } from '../util/ids.js';
import type { CoreContext } from './context.js';

/** Who a request is from. */
export interface Principal {
  tokenId: string;
  role: 'admin' | 'agent';
}

function hashSecret(secret: string): string {
  return createHash('sha256').update(secret).digest('hex');
}

/** Makes, checks and bootstraps tokens. */
export class Tokens {
  constructor(private readonly context: CoreContext) {}

  /** Creates a token of `role`; the returned `token` is the only copy of the secret. */
  async create(role: 'admin' | 'agent', name?: string): Promise<TokenView> {
    const token = `ferry_${role}_${randomBytes(24).toString('base64url')}`;
    const id = newId('tok');
    const tokenName = name ?? `${role}-${id.slice(4, 10)}`;
    await this.context.db
      .insertInto('tokens')
      .values({ id, role, name: tokenName, secret_hash: hashSecret(token), created_at: this.context.now() })
      .execute();
    return { id, role, name: tokenName, token };
  }

  /** The principal a bearer secret belongs to; throws unauthorized for anything unknown. */
  async authenticate(secret: string | undefined): Promise<Principal> {
    if (!secret) throw new FerryError('unauthorized', 'missing token: send "Authorization: Bearer <token>" (ferry --token or FERRY_TOKEN)');
    const digest = hashSecret(secret);
    const row = await this.context.db.selectFrom('tokens').select(['id', 'role', 'secret_hash']).where('secret_hash', '=', digest).executeTakeFirst();
    if (!row || !timingSafeEqual(Buffer.from(row.secret_hash), Buffer.from(digest))) {
      throw new FerryError('unauthorized', 'token not recognised by this server');
    }
    return { tokenId: row.id, role: row.role };
  }

  /**
   * Makes sure `tokenFile` holds a working admin token: creates both on first start, and re-registers
   * the file's token if the database was replaced.
   */
  async ensureAdminTokenFile(tokenFile: string): Promise<void> {
    await this.ensureTokenFile(tokenFile, 'admin', 'admin');
  }

  /**
   * Makes sure `tokenFile` (mode 0600) holds a working token of `role`: creates both when the file is
   * missing or empty, and re-registers the file's token (under `name`) if the database does not know it.
   */
  async ensureTokenFile(tokenFile: string, role: 'admin' | 'agent', name: string): Promise<string> {
    let secret: string | null = null;
    try {
      secret = (await fs.readFile(tokenFile, 'utf8')).trim() || null;
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
    }
    if (secret) {
      const known = await this.context.db.selectFrom('tokens').select('id').where('secret_hash', '=', hashSecret(secret)).executeTakeFirst();
      if (!known) {
        await this.context.db
          .insertInto('tokens')
          .values({ id: newId('tok'), role, name, secret_hash: hashSecret(secret), created_at: this.context.now() })
          .execute();
      }
      return secret;
    }
    const created = await this.create(role, name);
    await writeFileDurable(tokenFile, `${created.token}\n`, 0o600);
    await fs.chmod(tokenFile, 0o600);
    return created.token;
  }
}
