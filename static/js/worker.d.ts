// The SharedWorker script (`rrr-client/worker`): it exports nothing; an app with esbuild builds it as
// worker.js beside its bundle (docs/guides/bundlers.md).
export {};
