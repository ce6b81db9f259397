// Numbers, durations, sizes and shell words as the page writes them.

export const number = new Intl.NumberFormat();

export function seconds(value) {
  if (value === null || value === undefined) return "unknown";
  if (value < 1) return "under a second";
  if (value < 90) return `${Math.round(value)} s`;
  return `${Math.round(value / 60)} min`;
}

export function work(cost) {
  if (cost >= 1e9) return `${(cost / 1e9).toFixed(1)} G`;
  if (cost >= 1e6) return `${(cost / 1e6).toFixed(1)} M`;
  if (cost >= 1e3) return `${(cost / 1e3).toFixed(1)} k`;
  return String(cost);
}

export function size(width, height) {
  return `${width}×${height}`;
}

export function shellQuote(text) {
  return `'${String(text).replaceAll("'", "'\\''")}'`;
}
