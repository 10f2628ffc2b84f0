#!/usr/bin/env node
// Gathers one run's measurements into bench/results/<stamp>.json (every
// figure and the time series), <stamp>.md (a Markdown table of every figure,
// also printed) and <stamp>.png (messages/s over time, wacast and baseline;
// gnuplot). Usage: node report.js REPORT.json
'use strict';
const fs = require('fs');
const os = require('os');
const path = require('path');
const { execFileSync } = require('child_process');
const { readJson, baselineRequire } = require('./lib');

const run = readJson(process.argv[2]);
const dir = run.dir;
const opt = (f) => (fs.existsSync(path.join(dir, f)) ? readJson(path.join(dir, f)) : null);
const lines = (f) =>
  fs.existsSync(path.join(dir, f))
    ? fs.readFileSync(path.join(dir, f), 'utf8').split('\n').filter(Boolean).map((l) => JSON.parse(l))
    : [];
const sh = (cmd, args) => {
  try {
    return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim();
  } catch {
    return 'unknown';
  }
};

const fmt = (x, d = 0) =>
  x === null || x === undefined || Number.isNaN(x)
    ? '—'
    : Number(x).toLocaleString('en-US', { minimumFractionDigits: d, maximumFractionDigits: d });
const pct = (x) => (x === null || x === undefined ? '—' : `${(100 * x).toFixed(1)}%`);

// Per stage: when it completed, its average rate over the campaign (from
// the instant it was due), and its peak rate over a 1 s window.
function stages(samples, names) {
  const out = {};
  for (const k of names) {
    const pts = samples.filter((s) => typeof s[k] === 'number').map((s) => [s.t, s[k]]);
    if (pts.length < 2) continue;
    const final = pts[pts.length - 1][1];
    const first = pts.find((p) => p[1] > 0);
    const done = pts.find((p) => p[1] >= final);
    let peak = 0;
    for (let i = 0, j = 0; i < pts.length; i++) {
      while (j < i && pts[i][0] - pts[j][0] > 1.25) j++;
      if (j < i && pts[i][0] - pts[j][0] >= 0.75) peak = Math.max(peak, (pts[i][1] - pts[j][1]) / (pts[i][0] - pts[j][0]));
    }
    out[k] = {
      final,
      first_s: first ? first[0] : null,
      done_s: done ? done[0] : null,
      avg_per_s: done && done[0] > 0 ? final / done[0] : null,
      peak_per_s: Math.round(peak),
    };
  }
  return out;
}

// Rate series (per second, over ~2 s windows) for the plot.
function rateSeries(samples, key) {
  const out = [];
  for (let i = 4; i < samples.length; i += 1) {
    const a = samples[i - 4],
      b = samples[i];
    if (typeof a[key] !== 'number' || typeof b[key] !== 'number') continue;
    const dt = b.t - a.t;
    if (dt > 0) out.push([(a.t + b.t) / 2, (b[key] - a[key]) / dt]);
  }
  return out;
}

function csvRps(file) {
  const f = path.join(dir, file);
  if (!fs.existsSync(f)) return null;
  const rows = fs.readFileSync(f, 'utf8').trim().split('\n');
  const last = rows[rows.length - 1].split(',').map((s) => s.replace(/"/g, ''));
  return Number(last[1]);
}

const wacast = { phase: opt('wacast.phase.json'), verify: opt('wacast.verify.json'), samples: lines('wacast.samples.jsonl') };
const baseline = { phase: opt('baseline.phase.json'), verify: opt('baseline.verify.json'), samples: lines('baseline.samples.jsonl') };
const rawPg = opt('raw-pg.json');
const raw = {
  redis_xadd_per_s: csvRps('redis-xadd.csv'),
  redis_xadd_150b_per_s: csvRps('redis-xadd-150.csv'),
  pg: rawPg,
};
wacast.stages = stages(wacast.samples, ['inserted', 'published', 'routed', 'sent_recorded', 'sent_reported', 'results_written', 'written']);
baseline.stages = stages(baseline.samples, ['inserted', 'published', 'sent_recorded', 'written']);

let bullmqVersion = 'unknown';
try {
  bullmqVersion = baselineRequire('bullmq/package.json').version;
} catch {}
const env = {
  cpus: os.cpus().length,
  cpu_model: os.cpus()[0] ? os.cpus()[0].model : 'unknown',
  mem_gib: Number((os.totalmem() / 2 ** 30).toFixed(1)),
  kernel: os.release(),
  redis: sh('redis-server', ['--version']).replace(/^Redis server /, ''),
  postgres: sh('/usr/lib/postgresql/15/bin/postgres', ['--version']),
  node: process.version,
  bullmq: bullmqVersion,
  git: run.git,
};

const w = wacast.phase && wacast.phase.msgs_per_s;
const b = baseline.phase && baseline.phase.msgs_per_s;
const rawUpd = rawPg ? rawPg.best_update_rows_per_s : null;
const rawIns = rawPg ? rawPg.best_insert_rows_per_s : null;
const cpuTotal = (p) => (p && p.procs ? Object.values(p.procs).reduce((a, r) => a + (r.cpu_s || 0), 0) : null);
const done = (p) => (p ? (p.partial ? p.written : p.total) : null);
const wCpu = cpuTotal(wacast.phase),
  bCpu = cpuTotal(baseline.phase);
const headline = {
  // What each pipeline would do with the machine to itself: cores x messages / CPU-s used.
  wacast_cpu_s_per_100k: wCpu && done(wacast.phase) ? (100000 * wCpu) / done(wacast.phase) : null,
  baseline_cpu_s_per_100k: bCpu && done(baseline.phase) ? (100000 * bCpu) / done(baseline.phase) : null,
  wacast_cpu_bound_ceiling: wCpu ? (env.cpus * done(wacast.phase)) / wCpu : null,
  baseline_cpu_bound_ceiling: bCpu ? (env.cpus * done(baseline.phase)) / bCpu : null,
  // PostgreSQL alone, if each message cost one raw batched insert and one raw batched update.
  pg_ceiling_insert_plus_update: rawIns && rawUpd ? 1 / (1 / rawIns + 1 / rawUpd) : null,
  wacast_msgs_per_s: w || null,
  baseline_msgs_per_s: b || null,
  wacast_over_baseline: w && b ? w / b : null,
  wacast_over_raw_update: w && rawUpd ? w / rawUpd : null,
  goals: {
    e2e_50k_per_s: w ? w >= 50000 : null,
    five_x_baseline: w && b ? w / b >= 5 : null,
    thirty_pct_raw_update: w && rawUpd ? w / rawUpd >= 0.3 : null,
  },
};

const result = { stamp: run.stamp, settings: run, env, headline, wacast, baseline, raw };
const base = path.join(run.outdir, run.stamp);
fs.writeFileSync(base + '.json', JSON.stringify(result, null, 1));

// ---- plot ------------------------------------------------------------------------------------
const plotData = base + '.plot.tmp';
const series = [
  ['wacast: statuses written', rateSeries(wacast.samples, 'written')],
  ['wacast: sends recorded', rateSeries(wacast.samples, 'sent_recorded')],
  ['wacast: rows inserted', rateSeries(wacast.samples, 'inserted')],
  ['baseline: statuses written', rateSeries(baseline.samples, 'written')],
  ['baseline: sends recorded', rateSeries(baseline.samples, 'sent_recorded')],
  ['baseline: rows inserted', rateSeries(baseline.samples, 'inserted')],
].filter(([, s]) => s.length > 0);
let png = null;
if (series.length) {
  fs.writeFileSync(plotData, series.map(([, s]) => s.map(([t, r]) => `${t.toFixed(2)} ${r.toFixed(1)}`).join('\n')).join('\n\n\n') + '\n');
  const styles = {
    'wacast: statuses written': 'lw 2.5 lc rgb "#1b7837"',
    'wacast: sends recorded': 'lw 1.2 dt 2 lc rgb "#5aae61"',
    'wacast: rows inserted': 'lw 1.2 dt 3 lc rgb "#1b7837"',
    'baseline: statuses written': 'lw 2.5 lc rgb "#b2182b"',
    'baseline: sends recorded': 'lw 1.2 dt 2 lc rgb "#ef8a62"',
    'baseline: rows inserted': 'lw 1.2 dt 3 lc rgb "#b2182b"',
  };
  const plots = series.map(([name], i) => `'${plotData}' index ${i} using 1:2 with lines ${styles[name]} title '${name}'`);
  const title =
    `${fmt(run.messages)} messages, ${fmt(run.devices)} sim devices, ${env.cpus} cores — ` +
    `wacast ${fmt(w)} msg/s` + (b ? `, BullMQ baseline ${fmt(b)} msg/s` : '');
  const gp = [
    'set terminal pngcairo size 1200,650 font "sans,10"',
    `set output '${base}.png'`,
    `set title "${title}"`,
    'set xlabel "seconds since the campaign became due"',
    'set ylabel "messages per second (2 s windows)"',
    'set grid',
    'set key outside bottom center horizontal',
    'set format y "%.0f"',
    'set yrange [0:*]',
    'plot ' + plots.join(', \\\n  '),
  ].join('\n');
  fs.writeFileSync(base + '.gp.tmp', gp + '\n');
  try {
    execFileSync('gnuplot', [base + '.gp.tmp'], { stdio: ['ignore', 'ignore', 'pipe'] });
    png = base + '.png';
  } catch (e) {
    // pngcairo missing: plain png terminal.
    try {
      fs.writeFileSync(base + '.gp.tmp', gp.replace('pngcairo size 1200,650 font "sans,10"', 'png size 1200,650') + '\n');
      execFileSync('gnuplot', [base + '.gp.tmp'], { stdio: ['ignore', 'ignore', 'pipe'] });
      png = base + '.png';
    } catch (e2) {
      console.error(`report: gnuplot failed: ${e2.message}`);
    }
  }
  fs.rmSync(plotData, { force: true });
  fs.rmSync(base + '.gp.tmp', { force: true });
}

// ---- Markdown ------------------------------------------------------------------------------
const md = [];
const row = (...c) => md.push('| ' + c.join(' | ') + ' |');
md.push(`# wacast benchmark ${run.stamp}`, '');
md.push(
  `${fmt(run.messages)} messages (one campaign, zero pacing delays) over ${fmt(run.devices)} simulated devices; ` +
    `wacast: 1 scheduler, ${run.dispatchers} dispatcher(s), ${run.senders} sender(s); ` +
    `baseline: 1 producer + ${run.baseline_workers} BullMQ worker process(es) at concurrency ${run.baseline_concurrency}. ` +
    `${env.cpus} × ${env.cpu_model}, ${env.mem_gib} GiB; Redis ${env.redis.split(' ')[0]} ` +
    `(AOF appendfsync ${run.appendfsync || 'everysec'}), ${env.postgres}, ` +
    `Node ${env.node}, BullMQ ${env.bullmq}; wacast ${env.git}. Seeding took ${run.seed_s} s.`,
  ''
);
md.push('## Headline', '');
row('figure', 'value', 'goal');
row('---', '---:', '---');
row('wacast end to end (due → every status in PostgreSQL)', `${fmt(w)} msg/s` + (wacast.phase ? ` (${fmt(wacast.phase.e2e_s, 2)} s)` : ''), '≥ 50,000 msg/s: ' + (headline.goals.e2e_50k_per_s === null ? '—' : headline.goals.e2e_50k_per_s ? 'met' : 'NOT met'));
row(
  'BullMQ baseline end to end',
  b
    ? baseline.phase.partial
      ? `${fmt(b)} msg/s (cut short by its time-out: ${fmt(baseline.phase.written)} of ${fmt(run.messages)} in ${fmt(baseline.phase.wall_s, 1)} s)`
      : `${fmt(b)} msg/s (${fmt(baseline.phase.e2e_s, 2)} s)`
    : '—',
  ''
);
row('wacast ÷ baseline', headline.wacast_over_baseline ? `${headline.wacast_over_baseline.toFixed(2)}×` : '—', '≥ 5×: ' + (headline.goals.five_x_baseline === null ? '—' : headline.goals.five_x_baseline ? 'met' : 'NOT met'));
row('raw PostgreSQL batched UPDATE … FROM unnest (best)', rawUpd ? `${fmt(rawUpd)} rows/s` : '—', '');
row('wacast ÷ raw batched update', pct(headline.wacast_over_raw_update), '≥ 30%: ' + (headline.goals.thirty_pct_raw_update === null ? '—' : headline.goals.thirty_pct_raw_update ? 'met' : 'NOT met'));
row('raw PostgreSQL batched INSERT … unnest (best)', rawIns ? `${fmt(rawIns)} rows/s` : '—', '');
row('PostgreSQL ceiling: 1 raw insert + 1 raw update per message, whole machine', headline.pg_ceiling_insert_plus_update ? `${fmt(headline.pg_ceiling_insert_plus_update)} msg/s` : '—', 'what no pipeline writing each message twice can beat here');
row('wacast CPU cost (daemons + Redis + PostgreSQL)', headline.wacast_cpu_s_per_100k ? `${fmt(headline.wacast_cpu_s_per_100k, 1)} CPU-s per 100k msgs → ${fmt(headline.wacast_cpu_bound_ceiling)} msg/s on ${env.cpus} idle cores` : '—', 'noise-free view: other load on the machine does not change it much');
row('baseline CPU cost (Node + Redis + PostgreSQL)', headline.baseline_cpu_s_per_100k ? `${fmt(headline.baseline_cpu_s_per_100k, 1)} CPU-s per 100k msgs → ${fmt(headline.baseline_cpu_bound_ceiling)} msg/s on ${env.cpus} idle cores` : '—', '');
row('raw Redis XADD, pipelined (-P 64, 50 clients, "f v")', raw.redis_xadd_per_s ? `${fmt(raw.redis_xadd_per_s)} /s` : '—', '');
row('raw Redis XADD, pipelined, 150-byte value', raw.redis_xadd_150b_per_s ? `${fmt(raw.redis_xadd_150b_per_s)} /s` : '—', '');
md.push('');

md.push('## Correctness', '');
row('pipeline', 'verdict', 'rows', 'status sent', 'distinct recipients', 'provider sends', 'distinct sent', 'duplicates', 'wrong recipient', 'unknown');
row('---', '---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:');
for (const [name, p] of [['wacast', wacast], ['baseline', baseline]]) {
  const v = p.verify;
  if (!v) {
    row(name, p.phase ? 'not verified' : 'not run', '', '', '', '', '', '', '', '');
    continue;
  }
  row(name, v.ok ? (v.partial ? 'cut short by its time-out; nothing sent twice ✔' : 'exactly once ✔') : 'WRONG: ' + v.errors.join('; '), fmt(v.postgres.rows), fmt(v.postgres.sent), fmt(v.postgres.phones), fmt(v.record.entries), fmt(v.record.distinct_messages), fmt(v.record.duplicates), fmt(v.record.wrong_recipient), fmt(v.record.unknown_msg));
}
md.push('');

md.push('## Stages over time', '');
md.push('Seconds since the campaign became due; average = count ÷ time to complete; peak over a 1 s window (samples every ' + run.interval_ms + ' ms).', '');
row('pipeline', 'stage', 'count', 'first at (s)', 'complete at (s)', 'average /s', 'peak /s');
row('---', '---', '---:', '---:', '---:', '---:', '---:');
const stageNames = {
  inserted: 'rows inserted in broadcast_messages (campaigns.total_count)',
  published: 'messages queued (published to the jobs stream / BullMQ jobs added)',
  routed: 'routed to device outboxes (dispatcher)',
  sent_recorded: 'sent (sim provider record length)',
  sent_reported: 'sent (senders\' counters)',
  results_written: 'status changes written (dispatcher counter)',
  written: 'statuses written (campaign sent+failed+skipped)',
};
for (const [name, p] of [['wacast', wacast], ['baseline', baseline]])
  for (const [k, s] of Object.entries(p.stages || {}))
    row(name, stageNames[k] || k, fmt(s.final), fmt(s.first_s, 1), fmt(s.done_s, 1), fmt(s.avg_per_s), fmt(s.peak_per_s));
md.push('');

md.push('## Latency', '');
row('pipeline', 'queued → sent p50 (ms)', 'p90', 'p99', 'p99.9', 'max', 'rows without queued_at', 'negative', 'due → sent p50 (s)', 'p99 (s)', 'max (s)');
row('---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:');
for (const [name, p] of [['wacast', wacast], ['baseline', baseline]]) {
  if (!p.verify) continue;
  const q = p.verify.latency_ms.queued_to_sent,
    d = p.verify.latency_ms.due_to_sent;
  row(name, fmt(q.p50, 1), fmt(q.p90, 1), fmt(q.p99, 1), fmt(q.p999, 1), fmt(q.max, 1), fmt(p.verify.postgres.no_queued_at), fmt(q.negative), fmt(d.p50 / 1000, 2), fmt(d.p99 / 1000, 2), fmt(d.max / 1000, 2));
}
md.push('');

md.push('## Resources (during the measured window)', '');
row('pipeline', 'process', 'CPU s (user+sys)', 'CPU s per 100k msgs', 'peak RSS (MiB)', 'note');
row('---', '---', '---:', '---:', '---:', '---');
for (const [name, p] of [['wacast', wacast], ['baseline', baseline]]) {
  if (!p.phase) continue;
  let total = 0;
  for (const [proc, r] of Object.entries(p.phase.procs)) {
    total += r.cpu_s || 0;
    const note = r.peak_pss_total_mb !== undefined ? `${r.processes} processes; RSS = largest one; PSS sum peak ${fmt(r.peak_pss_total_mb)} MiB` : '';
    row(name, proc, fmt(r.cpu_s, 1), fmt(p.phase.total ? (100000 * r.cpu_s) / p.phase.total : null, 2), fmt(r.peak_rss_mb, 1), note);
  }
  row(name, '**all of the above**', fmt(total, 1), fmt(p.phase.total ? (100000 * total) / p.phase.total : null, 2), '', `of ${fmt(env.cpus * p.phase.wall_s, 0)} core-seconds in the window`);
  if (p.phase.sampler_cpu_s !== undefined) row(name, 'bench sampler (node)', fmt(p.phase.sampler_cpu_s, 1), '', '', 'the harness itself');
  if (p.phase.machine_busy_cpu_s !== undefined) {
    const other = p.phase.machine_busy_cpu_s - total - (p.phase.sampler_cpu_s || 0);
    row(name, 'anything else on the machine', fmt(Math.max(0, other), 1), '', '', 'other users\' processes, kernel threads: noise if large');
  }
}
md.push('');

md.push('## Where the time goes (server-side counters over the measured window)', '');
row('pipeline', 'PostgreSQL commits / msg', 'WAL bytes / msg', 'WAL records / msg', 'tuples inserted / msg', 'tuples updated / msg', 'Redis commands / msg', 'Redis µs / msg', 'AOF rewrites', 'AOF size at end (MiB)');
row('---', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:', '---:');
for (const [name, p] of [['wacast', wacast], ['baseline', baseline]]) {
  const ph = p.phase;
  if (!ph || !ph.postgres || !ph.total) continue;
  const n = ph.total;
  const calls = ph.redis_commands.reduce((a, c) => a + c.calls, 0);
  const usec = ph.redis_commands.reduce((a, c) => a + c.usec, 0);
  const aof = ph.redis_persistence || {};
  row(name, fmt(ph.postgres.database.xact_commit / n, 3), fmt(ph.postgres.wal.wal_bytes / n), fmt(ph.postgres.wal.wal_records / n, 1), fmt(ph.postgres.database.tup_inserted / n, 2), fmt(ph.postgres.database.tup_updated / n, 2), fmt(calls / n, 2), fmt(usec / n, 1), fmt(aof.aof_rewrites), fmt(aof.aof_current_size / 2 ** 20, 0));
}
md.push('Redis µs / msg is time inside commands (INFO commandstats); reading, parsing and answering them, the AOF and its rewrites cost Redis about as much again (compare with its CPU seconds above).', '');
for (const [name, p] of [['wacast', wacast], ['baseline', baseline]]) {
  const ph = p.phase;
  if (!ph || !ph.redis_commands) continue;
  md.push(`### ${name}: Redis commands (INFO commandstats)`, '');
  row('command', 'calls', 'calls / msg', 'µs total', 'µs / call');
  row('---', '---:', '---:', '---:', '---:');
  for (const c of ph.redis_commands.slice(0, 14)) row(c.cmd, fmt(c.calls), fmt(c.calls / ph.total, 3), fmt(c.usec), fmt(c.usec_per_call, 2));
  md.push('');
  md.push(`### ${name}: PostgreSQL statements by total time (pg_stat_statements)`, '');
  row('calls', 'rows', 'total ms', 'mean ms', 'of which JIT ms', 'WAL bytes / row', 'statement');
  row('---:', '---:', '---:', '---:', '---:', '---:', '---');
  for (const st of ph.postgres.statements.filter((x) => !x.error).slice(0, 10)) {
    const q = st.query.length > 160 ? st.query.slice(0, 157) + '…' : st.query;
    row(fmt(st.calls), fmt(st.rows), fmt(st.total_ms, 0), fmt(st.mean_ms, 2), fmt(st.jit_ms, 0), fmt(st.wal_bytes_per_row), '`' + q.replace(/\|/g, '\\|').replace(/`/g, "'") + '`');
  }
  md.push('');
}

if (rawPg) {
  md.push('## Raw PostgreSQL', '');
  md.push(`Table created with (LIKE broadcast_messages INCLUDING ALL), ${fmt(rawPg.rows)} rows, batches of ${fmt(rawPg.batch)}, one transaction per batch.`, '');
  row('connections', 'INSERT … unnest rows/s', 'INSERT time (s)', 'INSERT WAL bytes / row', 'UPDATE … FROM unnest rows/s', 'UPDATE time (s)', 'UPDATE WAL bytes / row');
  row('---:', '---:', '---:', '---:', '---:', '---:', '---:');
  for (const r of rawPg.runs) row(r.conns, fmt(r.insert_rows_per_s), fmt(r.insert_s, 2), fmt(r.insert_wal_bytes_per_row), fmt(r.update_rows_per_s), fmt(r.update_s, 2), fmt(r.update_wal_bytes_per_row));
  md.push('');
}
if (png) md.push(`![messages per second](${path.basename(png)})`, '');
fs.writeFileSync(base + '.md', md.join('\n'));
process.stdout.write('\n' + md.join('\n') + '\n');
