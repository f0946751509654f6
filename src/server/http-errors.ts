/**
 * The server's one error handler: FerryErrors become their status and JSON body; validation errors
 * become 400 naming the field; anything else is logged with its stack and answered 500.
 */
import type { FastifyError, FastifyReply, FastifyRequest } from 'fastify';
import { ZodError, type z } from 'zod';
import { FerryError, httpStatusOf } from '../errors.js';

/** Validates `value` against `schema`, throwing invalid-request that names the failing field. */
export function parse<Schema extends z.ZodType>(schema: Schema, value: unknown, where: string): z.infer<Schema> {
  const result = schema.safeParse(value ?? {});
  if (!result.success) throw invalidRequest(result.error, where);
  return result.data;
}

function invalidRequest(error: ZodError, where: string): FerryError {
  const issue = error.issues[0]!;
  const field = issue.path.length ? issue.path.join('.') : '(whole)';
  return new FerryError('invalid-request', `invalid ${where}: field '${field}': ${issue.message}`, {
    details: { field, issues: error.issues.map((entry) => ({ path: entry.path.join('.'), message: entry.message })) },
  });
}

/** Fastify error handler implementing the mapping above. */
export function handleError(error: FastifyError | Error, request: FastifyRequest, reply: FastifyReply): void {
  if (error instanceof FerryError) {
    if (httpStatusOf(error.code) >= 500) request.log.error({ err: error }, error.message);
    void reply.status(httpStatusOf(error.code)).send(error.toBody());
    return;
  }
  if (error instanceof ZodError) {
    void reply.status(400).send(invalidRequest(error, 'request').toBody());
    return;
  }
  const fastifyError = error as FastifyError;
  if (fastifyError.statusCode && fastifyError.statusCode < 500) {
    // Fastify's own rejections: unparsable JSON, body too large, wrong content type.
    const code = fastifyError.statusCode === 401 ? 'unauthorized' : fastifyError.statusCode === 404 ? 'not-found' : 'invalid-request';
    void reply.status(fastifyError.statusCode).send(new FerryError(code, `invalid request: ${fastifyError.message}`).toBody());
    return;
  }
  request.log.error({ err: error }, 'unhandled error');
  void reply.status(500).send(new FerryError('internal', `internal error: ${error.message}`).toBody());
}
