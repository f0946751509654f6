import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { asFerryError, exitCodeOf, FerryError, httpStatusOf, notFound, type ErrorCode } from '../../src/errors.js';

describe('errors', () => {
  test('httpStatusOf maps codes to their HTTP statuses', () => {
    const expected: [ErrorCode, number][] = [
      ['unauthorized', 401],
      ['forbidden', 403],
      ['invalid-request', 400],
      ['not-found', 404],
      ['conflict', 409],
      ['chunk-hash-mismatch', 400],
      ['chunk-missing', 409],
      ['delta-base-missing', 409],
      ['corrupt-data', 500],
      ['disk-unreadable', 422],
      ['hook-failed', 422],
      ['server-unreachable', 503],
      ['io-error', 500],
      ['internal', 500],
    ];
    for (const [code, status] of expected) assert.equal(httpStatusOf(code), status, code);
    assert.equal(httpStatusOf('something-new' as ErrorCode), 500);
  });

  test('exitCodeOf: 2 bad input, 3 not found, 4 refused, 5 unreachable, 1 otherwise', () => {
    const expected: [ErrorCode, number][] = [
      ['invalid-request', 2],
      ['not-found', 3],
      ['unauthorized', 4],
      ['forbidden', 4],
      ['conflict', 4],
      ['server-unreachable', 5],
      ['internal', 1],
      ['corrupt-data', 1],
      ['hook-failed', 1],
    ];
    for (const [code, exitCode] of expected) assert.equal(exitCodeOf(new FerryError(code, 'x')), exitCode, code);
  });

  test('retryable defaults by code and can be overridden', () => {
    assert.equal(new FerryError('io-error', 'x').retryable, true);
    assert.equal(new FerryError('server-unreachable', 'x').retryable, true);
    assert.equal(new FerryError('disk-unreadable', 'x').retryable, true);
    assert.equal(new FerryError('invalid-request', 'x').retryable, false);
    assert.equal(new FerryError('conflict', 'x').retryable, false);
    assert.equal(new FerryError('delta-base-missing', 'x').retryable, false, 'the same delta would be refused again: the agent sends the chunk whole instead');
    assert.equal(new FerryError('io-error', 'x', { retryable: false }).retryable, false);
    assert.equal(new FerryError('conflict', 'x', { retryable: true }).retryable, true);
  });

  test('toBody then fromBody gives back code, message, retryable and details', () => {
    const original = new FerryError('chunk-missing', 'index names 2 chunks', { details: { missing: ['aa', 'bb'] } });
    const body = JSON.parse(JSON.stringify(original.toBody())) as unknown;
    assert.deepEqual(body, { error: { code: 'chunk-missing', message: 'index names 2 chunks', retryable: false, details: { missing: ['aa', 'bb'] } } });
    const rebuilt = FerryError.fromBody(409, body);
    assert.ok(rebuilt instanceof FerryError);
    assert.equal(rebuilt.code, 'chunk-missing');
    assert.equal(rebuilt.message, 'index names 2 chunks');
    assert.equal(rebuilt.retryable, false);
    assert.deepEqual(rebuilt.details, { missing: ['aa', 'bb'] });

    const retryable = FerryError.fromBody(500, new FerryError('io-error', 'disk full').toBody());
    assert.equal(retryable.code, 'io-error');
    assert.equal(retryable.retryable, true);
    assert.equal('details' in new FerryError('conflict', 'x').toBody().error, false);
  });

  test('fromBody turns an unknown body into a FerryError chosen by the status', () => {
    for (const body of [undefined, null, 'Bad Gateway', { message: 'no error field' }, { error: { code: 42, message: 'x' } }, { error: 'x' }]) {
      const serverSide = FerryError.fromBody(502, body);
      assert.ok(serverSide instanceof FerryError);
      assert.equal(serverSide.code, 'server-unreachable');
      assert.equal(serverSide.retryable, true);
      assert.match(serverSide.message, /HTTP 502/);
      const clientSide = FerryError.fromBody(404, body);
      assert.equal(clientSide.code, 'internal');
      assert.equal(clientSide.retryable, false);
      assert.match(clientSide.message, /HTTP 404/);
    }
  });

  test('notFound names the kind and the name; asFerryError keeps FerryErrors and wraps the rest', () => {
    const missing = notFound('machine', 'web-01');
    assert.equal(missing.code, 'not-found');
    assert.equal(missing.message, "machine 'web-01' not found");
    assert.equal(asFerryError(missing), missing);
    const cause = new TypeError('boom');
    const wrapped = asFerryError(cause);
    assert.equal(wrapped.code, 'internal');
    assert.equal(wrapped.message, 'boom');
    assert.equal(wrapped.cause, cause);
    assert.equal(asFerryError('plain string').message, 'plain string');
  });
});
