// What the producer and the workers of the BullMQ baseline share: settings,
// connections, the message template and phone normalisation.
'use strict';
const { Redis } = require('ioredis');

const env = (k, d) => (process.env[k] !== undefined && process.env[k] !== '' ? process.env[k] : d);

const settings = {
  databaseUrl: env('DATABASE_URL', 'postgresql://localhost/baseline'),
  redisUrl: env('REDIS_URL', 'redis://127.0.0.1:6379/0'),
  queue: env('BASELINE_QUEUE', 'sends'),
  simKey: env('BASELINE_SIM_KEY', 'baseline:sim:sends'),
  simMaxLen: Number(env('BASELINE_SIM_MAXLEN', '5000000')),
  batch: Number(env('BASELINE_BATCH', '2000')), // leads per expansion page
  bulk: Number(env('BASELINE_BULK', '1000')), // jobs per queue.addBulk
  concurrency: Number(env('BASELINE_CONCURRENCY', '100')), // jobs in flight per worker
  flushRows: Number(env('BASELINE_FLUSH_ROWS', '2000')), // statuses per UPDATE
  flushMs: Number(env('BASELINE_FLUSH_MS', '100')), // or this often
  defaultCountry: env('BASELINE_DEFAULT_COUNTRY', '60'),
  pollMs: Number(env('BASELINE_POLL_MS', '500')),
  instance: env('BASELINE_INSTANCE', `baseline-${process.pid}`),
  readyFile: env('BASELINE_READY_FILE', ''),
};

// BullMQ wants maxRetriesPerRequest: null on the connections its workers block on.
function bullConnection() {
  return new Redis(settings.redisUrl, { maxRetriesPerRequest: null });
}

// --- template: {{var}}, {{var | default "x"}}, {{greeting}}, spintax {a|b|c} ---

function greeting(hour) {
  if (hour >= 5 && hour < 12) return 'Good morning';
  if (hour >= 12 && hour < 18) return 'Good afternoon';
  return 'Good evening';
}

// Compiles once per campaign into a tree of parts: strings, {v, def} vars and
// {alt: [parts...]} spintax groups; rendering walks it.
function compile(text) {
  let i = 0;
  function parseSeq(inSpin) {
    const alts = [[]];
    let lit = '';
    const flush = () => {
      if (lit) alts[alts.length - 1].push(lit);
      lit = '';
    };
    while (i < text.length) {
      const ch = text[i];
      if (ch === '\\' && i + 1 < text.length && '{}|\\'.includes(text[i + 1])) {
        lit += text[i + 1];
        i += 2;
      } else if (ch === '{' && text[i + 1] === '{' && text[i + 2] !== '{') {
        const end = text.indexOf('}}', i + 2);
        if (end < 0) throw new Error(`unterminated '{{' at offset ${i}`);
        const body = text.slice(i + 2, end).trim();
        const m = body.match(/^([A-Za-z_][A-Za-z0-9_.]*)\s*(?:\|\s*default\s+"((?:[^"\\]|\\.)*)")?$/);
        if (!m) throw new Error(`bad placeholder at offset ${i}`);
        flush();
        alts[alts.length - 1].push({ v: m[1], def: m[2] !== undefined ? m[2].replace(/\\(.)/g, '$1') : null });
        i = end + 2;
      } else if (ch === '{') {
        flush();
        i++;
        alts[alts.length - 1].push({ alt: parseSeq(true) });
      } else if (ch === '}' && inSpin) {
        flush();
        i++;
        return alts;
      } else if (ch === '|' && inSpin) {
        flush();
        alts.push([]);
        i++;
      } else {
        lit += ch;
        i++;
      }
    }
    if (inSpin) throw new Error('unbalanced {');
    flush();
    return alts[0];
  }
  return parseSeq(false);
}

function render(parts, vars, hour) {
  let out = '';
  for (const p of parts) {
    if (typeof p === 'string') out += p;
    else if (p.alt) out += render(p.alt[Math.floor(Math.random() * p.alt.length)], vars, hour);
    else if (p.v === 'greeting') out += greeting(hour);
    else {
      const v = vars[p.v];
      out += v !== undefined && v !== null && v !== '' ? String(v) : p.def !== null ? p.def : '';
    }
  }
  return out;
}

// E.164 with a default country code for local numbers ("012-345 6789" ->
// "+60123456789"); null when it cannot be a phone number.
function normalizePhone(raw, cc) {
  const s = String(raw).trim();
  if (!/^\+?[0-9 ().\-]+$/.test(s)) return null;
  let d = s.replace(/[^0-9]/g, '');
  if (s.startsWith('+')) {
    /* as written */
  } else if (d.startsWith('00')) d = d.slice(2);
  else if (d.startsWith('0')) d = cc + d.slice(1);
  else if (!d.startsWith(cc)) d = cc + d;
  if (d.length < 8 || d.length > 15 || d[0] === '0') return null;
  return '+' + d;
}

module.exports = { settings, bullConnection, compile, render, normalizePhone };
