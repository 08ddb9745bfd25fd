// Number and date formatting shared by the views.

export function percent(value, digits = 2) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  return `${(value * 100).toFixed(digits)}%`;
}

export function signedPercent(value, digits = 1) {
  if (value === null || value === undefined || Number.isNaN(value)) return "–";
  const text = `${(value * 100).toFixed(digits)}%`;
  return value > 0 ? `+${text}` : text;
}

export function interval(lower, upper, formatter = percent) {
  if (lower === null || lower === undefined || upper === null || upper === undefined) return "";
  return `[${formatter(lower)}, ${formatter(upper)}]`;
}

export function integer(value) {
  if (value === null || value === undefined) return "–";
  return Number(value).toLocaleString("en-US");
}

export function decimal(value, digits = 3) {
  if (value === null || value === undefined) return "–";
  return Number(value).toFixed(digits);
}

export function dateTime(value) {
  if (!value) return "–";
  const date = new Date(value);
  if (Number.isNaN(date.getTime())) return String(value);
  return date.toISOString().replace("T", " ").slice(0, 19) + " UTC";
}

export function shortTime(value) {
  const date = new Date(value);
  return Number.isNaN(date.getTime()) ? String(value) : date.toISOString().slice(11, 19);
}

export function relative(value, now = Date.now()) {
  if (!value) return "";
  const seconds = Math.round((new Date(value).getTime() - now) / 1000);
  const abs = Math.abs(seconds);
  const [amount, unit] =
    abs < 60 ? [seconds, "second"] : abs < 3600 ? [Math.round(seconds / 60), "minute"]
      : abs < 86400 ? [Math.round(seconds / 3600), "hour"] : [Math.round(seconds / 86400), "day"];
  return new Intl.RelativeTimeFormat("en", { numeric: "auto" }).format(amount, unit);
}

export function shortId(id) {
  return id ? String(id).slice(0, 8) : "–";
}
