/**
 * The chunk catalog: where each stored chunk object lives (in which pack, at which offset, or as a loose
 * object of the older one-file-per-chunk layout) and when it was last written or touched. It is the
 * chunk store's answer to "do you have chunk X?" without any I/O, and garbage collection's view of the
 * store.
 *
 * The catalog is memory only, rebuilt when a store is opened from what the backend durably holds (pack
 * directories and loose chunk objects), so it can never name data that was not stored. It is changed
 * only after the backend has made a change durable (a pack written) or before it makes one (a pack
 * about to be deleted is forgotten first, so nobody is sent to it).
 *
 * Memory: one entry per distinct chunk object, about 150-200 bytes (a 64-character key and a small
 * record): ~3 MB per GiB of unique data at 64 KiB chunks, 0.5 GB for 2.5 TiB. Like restic's and
 * borg's in-memory indexes, it grows with what the store holds, not with any one disk.
 */

/** One container of chunk objects: a pack, or a single loose chunk object. */
export interface ChunkContainer {
  /** Backend key of the object. */
  readonly key: string;
  readonly kind: 'pack' | 'loose';
  /** Size of the object on the backend. */
  readonly size: number;
  /** Milliseconds since the epoch of the object's last write or backend touch. */
  modifiedAt: number;
  /** Object names (64 hex) of the entries it holds, whether or not the catalog points at this copy. */
  readonly names: string[];
  /** Where each entry (same position as in `names`) lies in the container. */
  readonly offsets: Float64Array;
  readonly lengths: Uint32Array;
}

/** Where one chunk object is read from, and when it was last written or touched. */
export interface CatalogEntry {
  readonly container: ChunkContainer;
  /** Byte offset in the container (0 for a loose object). */
  readonly offset: number;
  /** Byte length of the chunk object (the whole object for a loose one). */
  readonly length: number;
  /** Milliseconds since the epoch of the last write or touch of this chunk. */
  touchedAt: number;
}

/** Chunk object name -> location, and the containers they live in. */
export class ChunkCatalog {
  private readonly entries = new Map<string, CatalogEntry>();
  private readonly containerByKey = new Map<string, ChunkContainer>();

  /** Number of distinct chunk objects catalogued. */
  get size(): number {
    return this.entries.size;
  }

  /** The location of chunk object `name`, or undefined when the store does not hold it. */
  get(name: string): CatalogEntry | undefined {
    return this.entries.get(name);
  }

  /** The container stored at `key`, if catalogued. */
  container(key: string): ChunkContainer | undefined {
    return this.containerByKey.get(key);
  }

  /** Every catalogued container (a snapshot: later changes do not affect the array). */
  containers(): ChunkContainer[] {
    return [...this.containerByKey.values()];
  }

  /**
   * Records a container the backend durably holds and its entries, touched at `touchedAt`. A name
   * already catalogued elsewhere keeps its current location (this copy becomes a duplicate that
   * garbage collection removes; the chunk keeps the later of the two touch times), unless `replace`
   * says this container supersedes the old one (repacking).
   */
  add(container: Omit<ChunkContainer, 'names' | 'offsets' | 'lengths'>, entries: readonly { name: string; offset: number; length: number }[], touchedAt: number, replace = false): void {
    const record: ChunkContainer = {
      ...container,
      names: entries.map((entry) => entry.name),
      offsets: Float64Array.from(entries, (entry) => entry.offset),
      lengths: Uint32Array.from(entries, (entry) => entry.length),
    };
    this.containerByKey.set(record.key, record);
    for (const entry of entries) {
      const existing = this.entries.get(entry.name);
      if (existing && !replace) {
        existing.touchedAt = Math.max(existing.touchedAt, touchedAt);
        continue;
      }
      this.entries.set(entry.name, { container: record, offset: entry.offset, length: entry.length, touchedAt: Math.max(touchedAt, existing?.touchedAt ?? 0) });
    }
  }

  /**
   * Makes the catalog read `container`'s entry at `position` for its name: for a duplicate copy whose
   * current copy turned out to be gone. The chunk counts as touched when the container last was.
   */
  adopt(container: ChunkContainer, position: number): CatalogEntry {
    const entry: CatalogEntry = { container, offset: container.offsets[position]!, length: container.lengths[position]!, touchedAt: container.modifiedAt };
    this.entries.set(container.names[position]!, entry);
    return entry;
  }

  /** True when the catalog reads chunk `name` from `container` (and not from another copy). */
  isCurrent(name: string, container: ChunkContainer): boolean {
    return this.entries.get(name)?.container === container;
  }

  /**
   * Forgets a container and every entry read from it (it was deleted, or found missing on the backend).
   * Entries read from other copies stay.
   */
  forgetContainer(key: string): void {
    const container = this.containerByKey.get(key);
    if (!container) return;
    this.containerByKey.delete(key);
    for (const name of container.names) if (this.entries.get(name)?.container === container) this.entries.delete(name);
  }
}
