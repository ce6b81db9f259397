// Upscale inputs, kept for the before/after comparison: IndexedDB where it works, memory
// otherwise (a reload then loses them, and the comparison with them).

export const inputs = (() => {
  const memory = new Map();
  let opening = null;
  const open = () => (opening ??= new Promise((resolve) => {
    try {
      const request = indexedDB.open("cascade", 1);
      request.onupgradeneeded = () => request.result.createObjectStore("inputs");
      request.onsuccess = () => resolve(request.result);
      request.onerror = () => resolve(null);
    } catch {
      resolve(null);
    }
  }));
  const run = async (mode, action) => {
    const db = await open();
    if (!db) return null;
    return new Promise((resolve) => {
      try {
        const request = action(db.transaction("inputs", mode).objectStore("inputs"));
        request.onsuccess = () => resolve(request.result ?? null);
        request.onerror = () => resolve(null);
      } catch {
        resolve(null);
      }
    });
  };
  return {
    async put(id, blob) {
      memory.set(id, blob);
      await run("readwrite", (store) => store.put(blob, id));
    },
    async get(id) {
      return memory.get(id) ?? (await run("readonly", (store) => store.get(id)));
    },
    async remove(id) {
      memory.delete(id);
      await run("readwrite", (store) => store.delete(id));
    },
  };
})();
