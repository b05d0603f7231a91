// errors.ts — ApiError: the one error type that crosses the API boundary, as `{error: {code, message}}`
// on the wire and as a real Error (with code, hint and field errors) on both sides.
import type { ErrorBody, ErrorCode, FieldError } from './contract.js';

export class ApiError extends Error {
  readonly code: ErrorCode | string;
  readonly hint: string | undefined;
  readonly fields: FieldError[] | undefined;

  constructor(code: ErrorCode | string, message: string, opts: { hint?: string; fields?: FieldError[] } = {}) {
    super(message);
    this.name = 'ApiError';
    this.code = code;
    this.hint = opts.hint;
    this.fields = opts.fields;
  }

  toBody(): ErrorBody {
    const body: ErrorBody = { code: this.code, message: this.message };
    if (this.hint !== undefined) body.hint = this.hint;
    if (this.fields !== undefined) body.fields = this.fields;
    return body;
  }

  static fromBody(body: ErrorBody): ApiError {
    const opts: { hint?: string; fields?: FieldError[] } = {};
    if (body.hint !== undefined) opts.hint = body.hint;
    if (body.fields !== undefined) opts.fields = body.fields;
    return new ApiError(body.code, body.message, opts);
  }
}

/**
 * HTTP status for an error code (the server's mapping; IPC carries the code only). The user's mistakes and
 * what their paths hold are 4xx (a browser logs a 500 as a server fault); 500 stays for real internal errors.
 */
export function httpStatusFor(code: string): number {
  switch (code) {
    case 'BAD_REQUEST':
    case 'BAD_INPUT':
      return 400;
    case 'UNAUTHORIZED':
      return 401;
    case 'AUTH':
      return 403;
    case 'NOT_FOUND':
      return 404;
    case 'CONFLICT':
    case 'EXISTS': // the output file exists: the client may retry with overwrite: true
    case 'ABORTED': // cancelled by the user: the request ended as asked, not a server fault
      return 409;
    case 'UNSUPPORTED':
    case 'IO': // a path the request names cannot be read or written (missing, a folder, read-only, full)
      return 422;
    case 'HTTP': // the Hub (or the network to it) failed: not this server's fault
    case 'CHECKSUM':
      return 502;
    case 'UNAVAILABLE':
      return 503;
    default:
      return 500;
  }
}
