/**
 * Where the socket owner remembers which transport worked, per origin of the service.
 *
 * IndexedDB, because the owner may be a SharedWorker, which has no localStorage. Kept to
 * this tiny adapter so the owner's logic runs in Node against an in-memory stand-in with
 * the same two methods. Nothing here ever rejects: a browser without IndexedDB (or one
 * that refuses it, as some private modes do) simply remembers nothing.
 *
 * @typedef {object} TransportMemory
 * @property {(key: string) => Promise<unknown>} get the value stored under `key`, or null
 * @property {(key: string, value: unknown) => Promise<void>} set
 */

const DB_NAME = "rrr-transports";
const STORE = "transports";

/**
 * @param {IDBFactory|undefined} [idb]
 * @returns {TransportMemory|null} null where there is no IndexedDB
 */
export function openTransportMemory(idb = globalThis.indexedDB) {
  if (!idb) return null;
  /** @type {Promise<IDBDatabase|null>|null} */
  let db = null;
  const ready = () =>
    (db ??= new Promise((resolve) => {
      try {
        const request = idb.open(DB_NAME, 1);
        request.onupgradeneeded = () => request.result.createObjectStore(STORE);
        request.onsuccess = () => resolve(request.result);
        request.onerror = request.onblocked = () => resolve(null);
      } catch {
        resolve(null);
      }
    }));

  /** One request on the store; its result, or null on any failure. */
  const run = async (mode, act) => {
    const database = await ready();
    if (!database) return null;
    return new Promise((resolve) => {
      try {
        const request = act(database.transaction(STORE, mode).objectStore(STORE));
        request.onsuccess = () => resolve(request.result ?? null);
        request.onerror = () => resolve(null);
      } catch {
        resolve(null);
      }
    });
  };

  return {
    get: (key) => run("readonly", (store) => store.get(key)),
    set: async (key, value) => {
      await run("readwrite", (store) => store.put(value, key));
    },
  };
}

/**
 * What `memory` holds under `key`, or null if it has not answered within `waitMs` (the owner
 * does not hold its first connection back for a slow disk).
 * @param {TransportMemory|null} memory
 * @param {string} key
 * @param {number} waitMs
 */
export function recall(memory, key, waitMs) {
  if (!memory) return Promise.resolve(null);
  return new Promise((resolve) => {
    const timer = setTimeout(() => resolve(null), waitMs);
    memory.get(key).then(
      (value) => {
        clearTimeout(timer);
        resolve(value ?? null);
      },
      () => {
        clearTimeout(timer);
        resolve(null);
      },
    );
  });
}
