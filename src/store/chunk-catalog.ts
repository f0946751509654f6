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
 * Memory: it grows with what the store holds (like restic's and borg's in-memory indexes), so it is kept
 * in typed arrays, not one JavaScript object per chunk. Each container keeps its entries' names (32
 * bytes each), offsets and lengths; the catalog is an open-addressing hash table (linear probing, at most
 * half full, first slot from four bytes of the name at an offset chosen at random per catalog) whose slots say which container and which entry of it a name is read from, and when it was
 * touched. About 44 bytes per entry in the containers and 32-64 in the table; 141 bytes per entry
 * measured with 140k entries, about 2 MB per GiB of unique data at 64 KiB chunks. A Map of strings to
 * entry objects took 220 bytes per entry, on the event loop's heap: a server under 20 MB/s of churn grew
 * by 30 MB of them in two minutes.
 */
import { randomInt } from 'node:crypto';
import { FerryError } from '../errors.js';

/** Object names are 32 bytes: a chunk's SHA-256, or its keyed name in an encrypted store (64 hex). */
const NAME_BYTES = 32;
const NAME_PATTERN = /^[0-9a-f]{64}$/;

/** The object names of a container's entries in order, kept as bytes; read as 64-hex strings. */
export class ContainerNames implements Iterable<string> {
  /** `bytes` holds the names back to back, NAME_BYTES each. */
  constructor(readonly bytes: Uint8Array) {}

  /** Number of names. */
  get length(): number {
    return this.bytes.length / NAME_BYTES;
  }

  /** The name at `position` as 64 hex characters. */
  at(position: number): string {
    return Buffer.from(this.bytes.buffer, this.bytes.byteOffset + position * NAME_BYTES, NAME_BYTES).toString('hex');
  }

  /** Each name with its position, like `Array.prototype.entries`. */
  *entries(): IterableIterator<[number, string]> {
    for (let position = 0; position < this.length; position++) yield [position, this.at(position)];
  }

  *[Symbol.iterator](): IterableIterator<string> {
    for (let position = 0; position < this.length; position++) yield this.at(position);
  }
}

/** One container of chunk objects: a pack, or a single loose chunk object. */
export interface ChunkContainer {
  /** Backend key of the object. */
  readonly key: string;
  readonly kind: 'pack' | 'loose';
  /** Size of the object on the backend. */
  readonly size: number;
  /** Milliseconds since the epoch of the object's last write or backend touch. */
  modifiedAt: number;
  /** Object names of the entries it holds, whether or not the catalog reads them from this copy. */
  readonly names: ContainerNames;
  /** Where each entry (same position as in `names`) lies in the container. */
  readonly offsets: Float64Array;
  readonly lengths: Uint32Array;
}

/** Where one chunk object is read from, and when it was last written or touched: a snapshot, not updated later. */
export interface CatalogEntry {
  readonly container: ChunkContainer;
  /** Byte offset in the container (0 for a loose object). */
  readonly offset: number;
  /** Byte length of the chunk object (the whole object for a loose one). */
  readonly length: number;
  /** Milliseconds since the epoch of the last write or touch of this chunk. */
  readonly touchedAt: number;
}

/** Slots in a new catalog's table (a power of two); it doubles whenever it would be more than half full. */
const INITIAL_SLOTS = 1024;
/** `slotContainer` value of an empty slot; others hold the container's number plus one. */
const EMPTY = 0;

/** Chunk object name -> location, and the containers they live in. */
export class ChunkCatalog {
  /** The hash table: per slot, the container number + 1 (EMPTY for none), the entry's position in it, its touch time. */
  private slotContainer = new Uint32Array(INITIAL_SLOTS);
  private slotPosition = new Uint32Array(INITIAL_SLOTS);
  private slotTouchedAt = new Float64Array(INITIAL_SLOTS);
  private entryCount = 0;
  /** Containers by number (a slot names its container by number); numbers of forgotten ones are reused. */
  private readonly containerByNumber: (ChunkContainer | undefined)[] = [];
  private readonly freeNumbers: number[] = [];
  private readonly numberByKey = new Map<string, number>();
  /** A name being looked up, as bytes (one buffer, reused). */
  private readonly wanted = Buffer.alloc(NAME_BYTES);

  /**
   * `probeOffset`: which four bytes of a name pick its first slot; random by default, so an agent that
   * knew it could not grind chunks whose hashes share those bytes to lengthen probe runs (tests fix it).
   */
  constructor(private readonly probeOffset = randomInt(0, NAME_BYTES - 3)) {}

  /** Number of distinct chunk objects catalogued. */
  get size(): number {
    return this.entryCount;
  }

  /** The location of chunk object `name`, or undefined when the store does not hold it. */
  get(name: string): CatalogEntry | undefined {
    const slot = this.find(name);
    return slot < 0 ? undefined : this.entryAt(slot);
  }

  /**
   * Marks chunk object `name` touched at `at` (and its container modified then); false when the store
   * does not hold it.
   */
  touch(name: string, at: number): boolean {
    const slot = this.find(name);
    if (slot < 0) return false;
    this.slotTouchedAt[slot] = at;
    this.containerAt(slot).modifiedAt = at;
    return true;
  }

  /** The container stored at `key`, if catalogued. */
  container(key: string): ChunkContainer | undefined {
    const number = this.numberByKey.get(key);
    return number === undefined ? undefined : this.containerByNumber[number];
  }

  /** Every catalogued container (a snapshot: later changes do not affect the array). */
  containers(): ChunkContainer[] {
    return this.containerByNumber.filter((container): container is ChunkContainer => container !== undefined);
  }

  /**
   * Records a container the backend durably holds and its entries, touched at `touchedAt`. A name
   * already catalogued elsewhere keeps its current location (this copy becomes a duplicate that
   * garbage collection removes; the chunk keeps the later of the two touch times), unless `replace`
   * says this container supersedes the old one (repacking). Throws internal for a name that is not 64
   * hex characters.
   */
  add(container: Omit<ChunkContainer, 'names' | 'offsets' | 'lengths'>, entries: readonly { name: string; offset: number; length: number }[], touchedAt: number, replace = false): void {
    const names = Buffer.alloc(entries.length * NAME_BYTES);
    entries.forEach((entry, position) => {
      if (!NAME_PATTERN.test(entry.name)) throw new FerryError('internal', `chunk object name '${entry.name}' in ${container.key} is not 64 hex characters`);
      names.write(entry.name, position * NAME_BYTES, 'hex');
    });
    const record: ChunkContainer = {
      key: container.key,
      kind: container.kind,
      size: container.size,
      modifiedAt: container.modifiedAt,
      names: new ContainerNames(names),
      offsets: Float64Array.from(entries, (entry) => entry.offset),
      lengths: Uint32Array.from(entries, (entry) => entry.length),
    };
    if (this.numberByKey.has(record.key)) this.forgetContainer(record.key); // the same key written again: the new one counts
    const number = this.freeNumbers.pop() ?? this.containerByNumber.length;
    this.containerByNumber[number] = record;
    this.numberByKey.set(record.key, number);
    for (let position = 0; position < entries.length; position++) {
      const slot = this.findBytes(names, position * NAME_BYTES);
      if (slot >= 0 && !replace) {
        this.slotTouchedAt[slot] = Math.max(this.slotTouchedAt[slot]!, touchedAt);
        continue;
      }
      this.put(slot, names, number, position, Math.max(touchedAt, slot >= 0 ? this.slotTouchedAt[slot]! : 0));
    }
  }

  /**
   * Makes the catalog read `container`'s entry at `position` for its name: for a duplicate copy whose
   * current copy turned out to be gone. The chunk counts as touched when the container last was.
   */
  adopt(container: ChunkContainer, position: number): CatalogEntry {
    const number = this.numberByKey.get(container.key);
    if (number === undefined || this.containerByNumber[number] !== container) throw new FerryError('internal', `${container.key} is not catalogued`);
    const slot = this.findBytes(container.names.bytes, position * NAME_BYTES);
    return this.entryAt(this.put(slot, container.names.bytes, number, position, container.modifiedAt));
  }

  /** True when the catalog reads chunk `name` from `container` (and not from another copy). */
  isCurrent(name: string, container: ChunkContainer): boolean {
    const slot = this.find(name);
    return slot >= 0 && this.containerAt(slot) === container;
  }

  /**
   * Forgets a container and every entry read from it (it was deleted, or found missing on the backend).
   * Entries read from other copies stay.
   */
  forgetContainer(key: string): void {
    const number = this.numberByKey.get(key);
    if (number === undefined) return;
    const container = this.containerByNumber[number]!;
    for (let position = 0; position < container.names.length; position++) {
      const slot = this.findBytes(container.names.bytes, position * NAME_BYTES);
      if (slot >= 0 && this.slotContainer[slot] === number + 1) this.remove(slot);
    }
    this.numberByKey.delete(key);
    this.containerByNumber[number] = undefined;
    this.freeNumbers.push(number);
  }

  /** The slot holding `name` (64 hex), or -1; a malformed name is simply not held. */
  private find(name: string): number {
    if (!NAME_PATTERN.test(name)) return -1;
    this.wanted.write(name, 0, 'hex');
    return this.findBytes(this.wanted, 0);
  }

  /** The slot holding the name at `at` in `bytes`, or -1. */
  private findBytes(bytes: Uint8Array, at: number): number {
    const mask = this.slotContainer.length - 1;
    for (let slot = this.home(bytes, at); ; slot = (slot + 1) & mask) {
      if (this.slotContainer[slot] === EMPTY) return -1;
      if (this.slotHolds(slot, bytes, at)) return slot;
    }
  }

  /**
   * Points the catalog's entry for the name at `at` in `bytes` at entry `position` of container `number`:
   * in `slot` when the name has one, else in a new slot (the table grows first if it would be more than
   * half full). Returns the slot used.
   */
  private put(slot: number, bytes: Uint8Array, number: number, position: number, touchedAt: number): number {
    if (slot < 0) {
      if ((this.entryCount + 1) * 2 > this.slotContainer.length) this.grow();
      const mask = this.slotContainer.length - 1;
      slot = this.home(bytes, at(position));
      while (this.slotContainer[slot] !== EMPTY) slot = (slot + 1) & mask;
      this.entryCount++;
    }
    this.slotContainer[slot] = number + 1;
    this.slotPosition[slot] = position;
    this.slotTouchedAt[slot] = touchedAt;
    return slot;
  }

  /** Empties `slot`, moving later entries of its probe run back so every name stays findable (no tombstones). */
  private remove(slot: number): void {
    const mask = this.slotContainer.length - 1;
    let hole = slot;
    for (let next = (hole + 1) & mask; this.slotContainer[next] !== EMPTY; next = (next + 1) & mask) {
      const container = this.containerAt(next);
      const home = this.home(container.names.bytes, at(this.slotPosition[next]!));
      // The entry at `next` may fill the hole unless its home lies cyclically after the hole, up to `next`.
      const homeAfterHole = hole <= next ? home > hole && home <= next : home > hole || home <= next;
      if (homeAfterHole) continue;
      this.slotContainer[hole] = this.slotContainer[next]!;
      this.slotPosition[hole] = this.slotPosition[next]!;
      this.slotTouchedAt[hole] = this.slotTouchedAt[next]!;
      hole = next;
    }
    this.slotContainer[hole] = EMPTY;
    this.entryCount--;
  }

  /** Doubles the table and puts every entry back. */
  private grow(): void {
    const containers = this.slotContainer;
    const positions = this.slotPosition;
    const touchedAts = this.slotTouchedAt;
    this.slotContainer = new Uint32Array(containers.length * 2);
    this.slotPosition = new Uint32Array(containers.length * 2);
    this.slotTouchedAt = new Float64Array(containers.length * 2);
    const mask = this.slotContainer.length - 1;
    for (let old = 0; old < containers.length; old++) {
      if (containers[old] === EMPTY) continue;
      const position = positions[old]!;
      let slot = this.home(this.containerByNumber[containers[old]! - 1]!.names.bytes, at(position));
      while (this.slotContainer[slot] !== EMPTY) slot = (slot + 1) & mask;
      this.slotContainer[slot] = containers[old]!;
      this.slotPosition[slot] = position;
      this.slotTouchedAt[slot] = touchedAts[old]!;
    }
  }

  /** The slot a name's probe starts at: four of its bytes, at `probeOffset` (names are hashes, so evenly spread). */
  private home(bytes: Uint8Array, at: number): number {
    const from = at + this.probeOffset;
    return (bytes[from]! | (bytes[from + 1]! << 8) | (bytes[from + 2]! << 16) | (bytes[from + 3]! << 24)) & (this.slotContainer.length - 1);
  }

  /** True when `slot` holds the name at `at` in `bytes`. */
  private slotHolds(slot: number, bytes: Uint8Array, at: number): boolean {
    const names = this.containerAt(slot).names.bytes;
    const stored = this.slotPosition[slot]! * NAME_BYTES;
    for (let index = 0; index < NAME_BYTES; index++) if (names[stored + index] !== bytes[at + index]) return false;
    return true;
  }

  private containerAt(slot: number): ChunkContainer {
    return this.containerByNumber[this.slotContainer[slot]! - 1]!;
  }

  private entryAt(slot: number): CatalogEntry {
    const container = this.containerAt(slot);
    const position = this.slotPosition[slot]!;
    return { container, offset: container.offsets[position]!, length: container.lengths[position]!, touchedAt: this.slotTouchedAt[slot]! };
  }
}

/** Byte offset of the name at `position` in a container's names. */
function at(position: number): number {
  return position * NAME_BYTES;
}
