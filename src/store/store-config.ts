/**
 * A chunk store's config: the object `config.json` at the root of the store, written once when the store
 * is created and read every time it is opened. It fixes what cannot change afterwards without rewriting
 * every object: whether the store is encrypted (and how its key is derived), and the compression new
 * objects get.
 *
 * Keys. The *master key* is either the 32 bytes of a key file (raw, or 64 hex characters) or derived from
 * a passphrase with scrypt (random salt, parameters recorded in the config). Three independent subkeys come
 * from it by HKDF-SHA256, salted with the store's random id so that one key file used for two stores still
 * gives two unrelated sets of subkeys:
 *   data      AES-256-GCM key of every object;
 *   naming    HMAC-SHA256 key turning a chunk's SHA-256 into its object name (equal chunks in two stores,
 *             or a chunk an onlooker can guess, do not show up under a predictable name);
 *   key check HMAC-SHA256 key whose MAC of a fixed text is stored as `keyCheck`, so a wrong key is refused
 *             when the store is opened (FerryError 'wrong-key'), before anything is read or written.
 *
 * @example
 *   const { settings } = await openStoreConfig(backend, { passphraseFile: '/etc/ferry/store.pass' });
 *   const store = new ChunkStore(backend, settings);   // what ChunkStore.open does
 */
import { createHmac, hkdfSync, randomBytes, scrypt as scryptCallback, timingSafeEqual, type ScryptOptions } from 'node:crypto';
import { promises as fs } from 'node:fs';
import { z } from 'zod';
import { FerryError } from '../errors.js';
import type { StoreBackend } from './backend.js';
import { DEFAULT_ZSTD_LEVEL, type ObjectCodec, PLAIN_CODEC } from './chunk-object.js';

/** Backend key of the store's config object. */
export const STORE_CONFIG_KEY = 'config.json';

/** Compression a new store can be given. */
export type StoreCompressionName = 'zstd' | 'none';

/** scrypt cost parameters (see RFC 7914). */
export interface ScryptParams {
  N: number;
  r: number;
  p: number;
}

/**
 * scrypt cost for new passphrase-keyed stores: 128 MiB and about 0.8 s on the reference machine, paid
 * once per server start; OWASP's recommended minimum for scrypt.
 */
export const DEFAULT_SCRYPT: Readonly<ScryptParams> = Object.freeze({ N: 2 ** 17, r: 8, p: 1 });

const hex = (bytes: number) => z.string().regex(new RegExp(`^[0-9a-f]{${bytes * 2}}$`));
const storeConfigSchema = z.object({
  format: z.literal('ferry-chunk-store'),
  version: z.literal(1),
  storeId: hex(16),
  createdAt: z.string(),
  compression: z.discriminatedUnion('algorithm', [
    z.object({ algorithm: z.literal('zstd'), level: z.number().int().min(1).max(19) }),
    z.object({ algorithm: z.literal('none') }),
  ]),
  encryption: z
    .object({
      cipher: z.literal('aes-256-gcm'),
      kdf: z.discriminatedUnion('name', [
        // Bounds keep a damaged config from asking for absurd memory or time (128 * N * r bytes <= 1 GiB).
        z.object({
          name: z.literal('scrypt'),
          salt: hex(16),
          N: z.number().int().min(2 ** 10).max(2 ** 20).refine((n) => (n & (n - 1)) === 0, 'must be a power of two'),
          r: z.number().int().min(1).max(32),
          p: z.number().int().min(1).max(16),
        }).refine((kdf) => 128 * kdf.N * kdf.r <= 2 ** 30, 'scrypt memory over 1 GiB'),
        z.object({ name: z.literal('keyfile') }),
      ]),
      keyCheck: hex(32),
    })
    .nullable(),
});

/** The content of `config.json`. */
export type StoreConfig = z.infer<typeof storeConfigSchema>;

/**
 * Where an encrypted store's key comes from: at most one of these. Giving one when the store is created
 * makes it encrypted; an encrypted store cannot be opened without one.
 */
export interface StoreKeyOptions {
  /** A file of exactly 32 bytes, or of 64 hex characters (surrounding whitespace ignored). */
  keyFile?: string;
  /** A file whose content (less one trailing newline) is the passphrase. */
  passphraseFile?: string;
  /** The passphrase itself (e.g. from FERRY_STORE_PASSPHRASE). */
  passphrase?: string;
}

/** How to open (or, when it does not exist yet, create) a store. */
export interface StoreOpenOptions extends StoreKeyOptions {
  /**
   * Compression of a new store (default zstd). For an existing store, giving a value that differs from
   * its config is refused with 'conflict'; leaving it out means "whatever the store has".
   */
  compression?: StoreCompressionName;
  /** scrypt cost when a new store is keyed by a passphrase (default DEFAULT_SCRYPT); tests lower it. */
  scrypt?: ScryptParams;
}

/** What a ChunkStore works with, derived from the config and the key. */
export interface StoreSettings {
  /** How new objects are encoded and stored ones decoded. */
  codec: ObjectCodec;
  /** HMAC-SHA256 key for chunk object names; null when chunks are stored under their plain SHA-256. */
  namingKey: Buffer | null;
}

/** A plain store: no compression, no encryption, plain names (what a store was before configs existed). */
export const PLAIN_STORE_SETTINGS: StoreSettings = Object.freeze({ codec: PLAIN_CODEC, namingKey: null });

/** The result of `openStoreConfig`. */
export interface OpenedStore {
  config: StoreConfig;
  settings: StoreSettings;
  /** True when this call wrote the config (a new store, or one from before configs existed). */
  created: boolean;
}

type KeyMaterial = { kind: 'keyfile'; key: Buffer } | { kind: 'passphrase'; passphrase: Buffer };

/**
 * Reads the store's config and derives its settings; creates the config first when the store has none.
 *
 * - No config and an empty store: writes a config with `options.compression` (default zstd) and, when a
 *   key is given, encryption under that key.
 * - No config but objects present (a store from before configs existed, all plain): writes a config with
 *   the requested compression; a key is refused with 'conflict', since that data cannot be made encrypted.
 * - A config: a compression differing from it is refused with 'conflict'; an encrypted store without a
 *   key is refused with 'invalid-request'; a plain store given a key with 'conflict'; a key that does not
 *   open the store with 'wrong-key'. A refused open writes nothing.
 * A malformed config is 'corrupt-data'; an unreadable key file 'invalid-request'.
 */
export async function openStoreConfig(backend: StoreBackend, options: StoreOpenOptions = {}): Promise<OpenedStore> {
  const material = await readKeyMaterial(options);
  const existing = await readConfig(backend);
  if (existing) {
    return { config: existing, settings: await settingsFor(backend, existing, material, options.compression), created: false };
  }
  if (material && !(await isEmpty(backend))) {
    throw new FerryError('conflict', `the store at ${backend.location} already holds unencrypted data from before store configs existed; encryption can only be chosen when a store is created`);
  }
  const { config, settings } = await newConfig(material, options);
  await backend.put(STORE_CONFIG_KEY, Buffer.from(JSON.stringify(config, null, 2) + '\n'));
  return { config, settings, created: true };
}

/** One line for logs, e.g. "zstd level 3, aes-256-gcm (key from a passphrase)". */
export function describeStoreConfig(config: StoreConfig): string {
  const compression = config.compression.algorithm === 'zstd' ? `zstd level ${config.compression.level}` : 'no compression';
  if (!config.encryption) return `${compression}, not encrypted`;
  return `${compression}, ${config.encryption.cipher} (key from a ${config.encryption.kdf.name === 'scrypt' ? 'passphrase' : 'key file'})`;
}

async function readConfig(backend: StoreBackend): Promise<StoreConfig | null> {
  let bytes: Buffer;
  try {
    bytes = await backend.get(STORE_CONFIG_KEY);
  } catch (error) {
    if (error instanceof FerryError && error.code === 'not-found') return null;
    throw error;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(bytes.toString('utf8'));
  } catch {
    throw new FerryError('corrupt-data', `the config of the store at ${backend.location} (${STORE_CONFIG_KEY}) is not valid JSON`);
  }
  const result = storeConfigSchema.safeParse(parsed);
  if (!result.success) {
    const issue = result.error.issues[0];
    const where = issue && issue.path.length > 0 ? ` at ${issue.path.join('.')}` : '';
    throw new FerryError('corrupt-data', `the config of the store at ${backend.location} (${STORE_CONFIG_KEY}) is not one this Ferry understands${where}: ${issue?.message ?? 'invalid'}`);
  }
  return result.data;
}

async function isEmpty(backend: StoreBackend): Promise<boolean> {
  for await (const _key of backend.list('')) return false;
  return true;
}

async function newConfig(material: KeyMaterial | null, options: StoreOpenOptions): Promise<{ config: StoreConfig; settings: StoreSettings }> {
  const storeId = randomBytes(16).toString('hex');
  const compression: StoreConfig['compression'] = (options.compression ?? 'zstd') === 'zstd' ? { algorithm: 'zstd', level: DEFAULT_ZSTD_LEVEL } : { algorithm: 'none' };
  const compressionLevel = compression.algorithm === 'zstd' ? compression.level : null;
  const config: StoreConfig = { format: 'ferry-chunk-store', version: 1, storeId, createdAt: new Date().toISOString(), compression, encryption: null };
  if (!material) return { config, settings: { codec: { compressionLevel, dataKey: null }, namingKey: null } };

  const kdf: NonNullable<StoreConfig['encryption']>['kdf'] =
    material.kind === 'keyfile' ? { name: 'keyfile' } : { name: 'scrypt', salt: randomBytes(16).toString('hex'), ...(options.scrypt ?? DEFAULT_SCRYPT) };
  // Check the scrypt parameters before spending time on them, so every config written can be opened again.
  const placeholder = '0'.repeat(64);
  const checked = storeConfigSchema.safeParse({ ...config, encryption: { cipher: 'aes-256-gcm', kdf, keyCheck: placeholder } });
  if (!checked.success) throw new FerryError('invalid-request', `store key derivation parameters out of bounds: ${checked.error.issues[0]?.message ?? 'invalid'}`);
  const keys = subkeys(await masterKey(material, kdf), storeId);
  config.encryption = { cipher: 'aes-256-gcm', kdf, keyCheck: keyCheckOf(keys.check).toString('hex') };
  return { config, settings: { codec: { compressionLevel, dataKey: keys.data }, namingKey: keys.naming } };
}

async function settingsFor(backend: StoreBackend, config: StoreConfig, material: KeyMaterial | null, compression: StoreCompressionName | undefined): Promise<StoreSettings> {
  const location = backend.location;
  if (compression !== undefined && compression !== config.compression.algorithm) {
    throw new FerryError('conflict', `the store at ${location} was created with compression '${config.compression.algorithm}'; '${compression}' was asked for, but compression is chosen only when a store is created`);
  }
  const compressionLevel = config.compression.algorithm === 'zstd' ? config.compression.level : null;
  const encryption = config.encryption;
  if (!encryption) {
    if (material) {
      throw new FerryError('conflict', `the store at ${location} is not encrypted, but a store key was given; encryption can only be chosen when a store is created`);
    }
    return { codec: { compressionLevel, dataKey: null }, namingKey: null };
  }
  if (!material) {
    throw new FerryError('invalid-request', `the store at ${location} is encrypted; give its key with --store-key-file or its passphrase with --store-passphrase-file (or FERRY_STORE_PASSPHRASE)`);
  }
  const expected = encryption.kdf.name === 'keyfile' ? 'keyfile' : 'passphrase';
  if (material.kind !== expected) {
    throw new FerryError('wrong-key', `the store at ${location} is encrypted with a ${expected === 'keyfile' ? 'key file' : 'passphrase'}, but a ${material.kind === 'keyfile' ? 'key file' : 'passphrase'} was given`);
  }
  const keys = subkeys(await masterKey(material, encryption.kdf), config.storeId);
  if (!timingSafeEqual(keyCheckOf(keys.check), Buffer.from(encryption.keyCheck, 'hex'))) {
    throw new FerryError('wrong-key', `the store at ${location} is encrypted and the ${material.kind === 'keyfile' ? 'key' : 'passphrase'} given does not open it`);
  }
  return { codec: { compressionLevel, dataKey: keys.data }, namingKey: keys.naming };
}

async function readKeyMaterial(options: StoreKeyOptions): Promise<KeyMaterial | null> {
  const given = [options.keyFile, options.passphraseFile, options.passphrase].filter((value) => value !== undefined);
  if (given.length > 1) throw new FerryError('invalid-request', 'give at most one store key: a key file, a passphrase file, or a passphrase');
  if (options.keyFile !== undefined) return { kind: 'keyfile', key: parseKeyFile(await readSecretFile(options.keyFile, 'key file'), options.keyFile) };
  let passphrase: string;
  if (options.passphraseFile !== undefined) {
    // One trailing newline is what `echo` and editors add; anything else is part of the passphrase.
    passphrase = (await readSecretFile(options.passphraseFile, 'passphrase file')).toString('utf8').replace(/\r?\n$/, '');
  } else if (options.passphrase !== undefined) {
    passphrase = options.passphrase;
  } else {
    return null;
  }
  if (passphrase.length === 0) throw new FerryError('invalid-request', 'the store passphrase is empty');
  // NFC, so the same passphrase typed on systems that compose accents differently gives the same key.
  return { kind: 'passphrase', passphrase: Buffer.from(passphrase.normalize('NFC'), 'utf8') };
}

async function readSecretFile(file: string, what: string): Promise<Buffer> {
  try {
    return await fs.readFile(file);
  } catch (error) {
    throw new FerryError('invalid-request', `cannot read the store ${what} ${file}: ${(error as Error).message}`);
  }
}

/** A key file holds the 32 key bytes as they are, or as 64 hex characters. */
function parseKeyFile(content: Buffer, file: string): Buffer {
  if (content.length === 32) return content;
  const text = content.toString('latin1').trim();
  if (/^[0-9a-fA-F]{64}$/.test(text)) return Buffer.from(text, 'hex');
  throw new FerryError('invalid-request', `the store key file ${file} must hold exactly 32 bytes or 64 hex characters (it has ${content.length} bytes)`);
}

async function masterKey(material: KeyMaterial, kdf: NonNullable<StoreConfig['encryption']>['kdf']): Promise<Buffer> {
  if (material.kind === 'keyfile') return material.key;
  if (kdf.name !== 'scrypt') throw new FerryError('internal', 'a passphrase needs a store config with scrypt parameters');
  const params: ScryptOptions = { N: kdf.N, r: kdf.r, p: kdf.p, maxmem: 256 * kdf.N * kdf.r + 32 * 1024 * 1024 };
  return new Promise((resolve, reject) => {
    scryptCallback(material.passphrase, Buffer.from(kdf.salt, 'hex'), 32, params, (error, key) => (error ? reject(error) : resolve(key)));
  });
}

function subkeys(master: Buffer, storeId: string): { data: Buffer; naming: Buffer; check: Buffer } {
  const salt = Buffer.from(storeId, 'hex');
  const derive = (purpose: string) => Buffer.from(hkdfSync('sha256', master, salt, `ferry chunk store v1 ${purpose}`, 32));
  return { data: derive('data'), naming: derive('naming'), check: derive('key check') };
}

function keyCheckOf(checkKey: Buffer): Buffer {
  return createHmac('sha256', checkKey).update('ferry chunk store key check').digest();
}
