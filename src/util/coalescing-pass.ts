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

/** What a `FollowingPass` listens to: an EventEmitter, or anything with its `on` and `off`. */
interface EventSource {
  on(event: string, listener: () => void): unknown;
  off(event: string, listener: () => void): unknown;
}

/**
 * A pass that follows an event: it runs at `start()` and on every `event` from `source` until `stop()`,
 * one at a time with wake-ups coalesced (CoalescingPass); a failed pass goes to `onError`, and the next
 * event tries again. `stop()` ends repetition, stops listening and waits for the pass in progress. What
 * the event-driven engines (failovers, reprotects, recovery plan runs) share.
 */
export class FollowingPass {
  private stopped = false;
  private readonly passes: CoalescingPass;
  private readonly onEvent = () => void this.run().catch(this.onError);

  constructor(
    private readonly source: EventSource,
    private readonly event: string,
    pass: () => Promise<void>,
    private readonly onError: (error: unknown) => void,
  ) {
    this.passes = new CoalescingPass(pass, () => this.stopped);
  }

  /** Starts following, with a pass now (to resume what a stop or crash left). */
  start(): void {
    this.stopped = false;
    this.source.on(this.event, this.onEvent);
    this.onEvent();
  }

  /** Stops following and waits for the pass in progress, if any. */
  async stop(): Promise<void> {
    this.stopped = true;
    this.source.off(this.event, this.onEvent);
    await this.passes.idle();
  }

  /** True from `stop()` until the next `start()`: a long pass may check it to end early. */
  get stopping(): boolean {
    return this.stopped;
  }

  /** A pass now (or one more after the one running); rejects with a failed pass's error. */
  run(): Promise<void> {
    return this.passes.run();
  }
}
