/**
 * The zstd level new stores and agents compress with, in a module of its own so the CLI can name it
 * without loading the zstd binding. Why level 1: see the measurements in chunk-object.ts.
 */
export const DEFAULT_ZSTD_LEVEL = 1;
