// Numbers for people: durations from nanoseconds, epoch-ns instants in UTC.

export function fmtDuration(ns: number | null | undefined): string {
  if (ns === null || ns === undefined || !Number.isFinite(ns)) return "–";
  const abs = Math.abs(ns);
  if (abs < 1_000) return `${Math.round(ns)} ns`;
  if (abs < 1_000_000) return `${trim(ns / 1_000)} µs`;
  if (abs < 1_000_000_000) return `${trim(ns / 1_000_000)} ms`;
  return `${trim(ns / 1_000_000_000)} s`;
}

function trim(value: number): string {
  const abs = Math.abs(value);
  const digits = abs >= 100 ? 0 : abs >= 10 ? 1 : 2;
  return value.toFixed(digits).replace(/\.0+$|(\.\d*?)0+$/, "$1");
}

export function fmtInstant(ns: number | null | undefined): string {
  if (ns === null || ns === undefined || !Number.isFinite(ns)) return "–";
  const ms = Math.floor(ns / 1_000_000);
  const iso = new Date(ms).toISOString(); // 2026-12-06T09:28:33.305Z
  return `${iso.slice(0, 10)} ${iso.slice(11, 23)} UTC`;
}

// An offset on the timeline's axis, with the precision the visible span needs.
export function fmtOffset(ns: number, visibleSpanNs: number): string {
  if (visibleSpanNs < 20_000) return `${Math.round(ns).toLocaleString("en")} ns`;
  if (visibleSpanNs < 20_000_000) return `${(ns / 1_000).toFixed(visibleSpanNs < 200_000 ? 2 : 1)} µs`;
  if (visibleSpanNs < 20_000_000_000) return `${(ns / 1_000_000).toFixed(visibleSpanNs < 200_000_000 ? 2 : 1)} ms`;
  return `${(ns / 1_000_000_000).toFixed(2)} s`;
}

export function fmtBytes(bytes: number | null | undefined): string {
  if (bytes === null || bytes === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let value = bytes;
  let unit = 0;
  while (Math.abs(value) >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${unit === 0 ? value : value.toFixed(1)} ${units[unit]}`;
}

// An epoch-ns value as the integer string the API takes, offset by deltaNs.
export function nsParam(ns: number, deltaNs = 0): string {
  return (BigInt(Math.round(ns)) + BigInt(Math.round(deltaNs))).toString();
}

export function sqlString(value: string): string {
  return `'${value.replace(/'/g, "''")}'`;
}
