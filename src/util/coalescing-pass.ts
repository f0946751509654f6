/**
 * One pass of some "move everything forward" work at a time, with calls made during a pass coalesced
 * into one more pass after it: what event-driven engines (failover follow-up, recovery plan runs) need
 * when every job change wakes them and a pass must see the changes made while the previous one ran.
 */

/** Runs `pass` so that passes never overlap and no wake-up is lost. */
export class CoalescingPass {
  private running: Promise<void> | null = null;
  private again = false;

  /** `pass` does the work; `stopped` (checked between passes) ends the repetition early. */
  constructor(
    private readonly pass: () => Promise<void>,
    private readonly stopped: () => boolean = () => false,
  ) {}

  /**
   * Starts a pass, or, while one runs, asks for one more after it; resolves when no pass is running
   * (the one asked for included). Rejects with the error of a failed pass.
   */
  run(): Promise<void> {
    if (this.running) {
      this.again = true;
      return this.running;
    }
    this.running = (async () => {
      do {
        this.again = false;
        await this.pass();
      } while (this.again && !this.stopped());
    })().finally(() => (this.running = null));
    return this.running;
  }

  /** Resolves once the pass in progress (if any) has ended, whatever its outcome. */
  async idle(): Promise<void> {
    await this.running?.catch(() => undefined);
  }
}
