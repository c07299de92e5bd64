/**
 * Our ids of a request's fal jobs, the keys of their ledger rows: the use
 * case names each job by them, and the ledger writes its rows under them
 * (ledger-reserve.ts, ledger-jobs.ts).
 */

/** Our id of a request's i-th fal job. */
export function jobIdFor(requestId: string, index: number): string {
  return `${requestId}/${index}`;
}

/** Our id of a job fal made on a refused submit attempt of a request. */
export function strayIdFor(requestId: string, falRequestId: string): string {
  return `${requestId}/stray/${falRequestId}`;
}
