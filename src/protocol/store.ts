/**
 * Requests and views of the store maintenance routes (`/api/v1/store/...`, admin): statistics,
 * verification and garbage collection. Shared by the server (which validates with the schemas) and
 * the CLI (which prints the views).
 */
import type { GarbageCollectionResult } from '../store/garbage-collector.js';
import type { StoreStats } from '../store/stats.js';
import { z } from 'zod';

/** `POST /store/verify`: `deep` reads every chunk back and re-hashes it (default: only check it exists). */
export const storeVerifyRequest = z.object({ deep: z.boolean().default(false) }).strict();

/**
 * `POST /store/gc`: `graceSeconds` overrides the server's grace period for this run (0 to 30 days).
 * Replication jobs in progress are protected whatever the grace (see docs/architecture.md).
 */
export const storeGcRequest = z.object({ graceSeconds: z.number().int().min(0).max(30 * 86400).optional() }).strict();

export type StoreVerifyRequest = z.infer<typeof storeVerifyRequest>;
export type StoreGcRequest = z.infer<typeof storeGcRequest>;

/** A recovery point named by a report. */
export interface PointRefView {
  machine: string;
  pointId: string;
}

/** One missing or damaged object and every point that needs it. */
export interface StoreProblemView {
  kind: 'missing-index' | 'corrupt-index' | 'missing-chunk' | 'corrupt-chunk';
  /** The index name, for index problems. */
  index?: string;
  /** The chunk name (SHA-256 hex), for chunk problems. */
  chunk?: string;
  message: string;
  points: PointRefView[];
}

/** `POST /store/verify`: 200 with this report, whether or not it found problems. */
export interface StoreVerifyView {
  deep: boolean;
  startedAt: string;
  endedAt: string;
  /** What was looked at: committed points, their distinct indexes and distinct chunks; chunk bytes read (deep). */
  checked: { points: number; indexes: number; chunks: number; bytesRead: number };
  /** Index problems first, then chunk problems; at most 1000. */
  problems: StoreProblemView[];
  /** Problems beyond the listed ones. */
  problemsOmitted: number;
  /** Every point a problem affects (complete even when problems are omitted); empty when all is sound. */
  affectedPoints: PointRefView[];
}

/** `POST /store/gc`: what one garbage collection did (the counts are `GarbageCollectionResult`'s). */
export interface StoreGcView extends GarbageCollectionResult {
  startedAt: string;
  endedAt: string;
  graceSeconds: number;
  /** Unreferenced objects last written or touched before this instant were deleted. */
  cutoff: string;
  /** The oldest active replication job, when it (not the grace period) set the cutoff. */
  heldBackByJob: string | null;
}

/** `GET /store/stats`: the store's numbers (definitions in docs/architecture.md, "Store statistics") and where it is. */
export interface StoreStatsView extends StoreStats {
  location: string;
}
