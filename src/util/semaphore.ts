/**
 * A counting semaphore: at most `limit` holders at once, the others waiting in arrival order. What
 * bounds work that holds scarce memory (the chunk store's batches, each holding shared buffers of the
 * codec pool) without dropping or refusing any of it.
 */
export class Semaphore {
  private held = 0;
  private readonly waiting: (() => void)[] = [];

  /** At most `limit` (≥ 1) holders at once. */
  constructor(readonly limit: number) {}

  /**
   * Waits for a slot (first come, first served) and resolves with the function that gives it back;
   * giving it back twice is harmless. A slot given back goes straight to the longest waiter.
   */
  async acquire(): Promise<() => void> {
    if (this.held < this.limit) this.held++;
    else await new Promise<void>((resolve) => this.waiting.push(resolve));
    let released = false;
    return () => {
      if (released) return;
      released = true;
      const next = this.waiting.shift();
      if (next) next();
      else this.held--;
    };
  }

  /** Runs `section` holding a slot, which is given back however `section` ends. */
  async run<T>(section: () => Promise<T>): Promise<T> {
    const release = await this.acquire();
    try {
      return await section();
    } finally {
      release();
    }
  }
}
