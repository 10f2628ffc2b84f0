#!/usr/bin/env node
// Runs the measured part of one benchmark phase (wacast or the baseline):
//   1. snapshots the CPU counters of every process of the phase;
//   2. makes the campaign due (UPDATE campaigns SET scheduled_at = now()):
//      the end-to-end clock starts at that instant;
//   3. samples progress every intervalMs into a JSON-lines time series
//      (rows inserted, jobs published/routed, sends recorded, statuses
//      written, stream backlogs, cumulative CPU seconds per process);
//   4. stops when every message has a final status written in PostgreSQL
//      and the campaign is finished (or at the time-out), and snapshots the
//      CPU counters and peak memory again, before anyone is sent SIGTERM.
// Writes a summary JSON. Usage: node phase.js CONFIG.json
'use strict';
const fs = require('fs');
const http = require('http');
const { pg, Redis, machineBusy, procCpu, procMem, procPss, childrenOf, sleep, readJson } = require('./lib');

const cfg = readJson(process.argv[2]);

const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
function getMetrics(url) {
  return new Promise((resolve) => {
    const req = http.get(url, { timeout: 400, agent }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d) => (body += d));
      res.on('end', () => {
        const out = {};
        for (const line of body.split('\n')) {
          if (!line || line[0] === '#') continue;
          const sp = line.lastIndexOf(' ');
          out[line.slice(0, sp)] = Number(line.slice(sp + 1));
        }
        resolve(out);
      });
    });
    req.on('error', () => resolve(null));
    req.on('timeout', () => req.destroy());
  });
}

// CPU seconds and memory of one configured process (or process tree). The
// high-water marks (VmHWM) and the PSS walk are read only when asked (every
// 10th sample and at the end): the sampler must stay light.
function readProc(p, full) {
  if (!p.tree) {
    const c = procCpu(p.pid);
    if (!c) return null;
    const m = full ? procMem(p.pid) : null;
    return { cpu: c.utime + c.stime + c.cutime + c.cstime, hwmKb: m ? m.hwmKb : 0, rssKb: c.rssKb };
  }
  // PostgreSQL: the postmaster, its live children, and the children it has
  // already reaped (cutime/cstime of the postmaster).
  const root = procCpu(p.pid);
  if (!root) return null;
  let cpu = root.utime + root.stime + root.cutime + root.cstime;
  let hwmKb = full ? procMem(p.pid)?.hwmKb || 0 : 0;
  let pssKb = full ? procPss(p.pid) : 0;
  let n = 1;
  for (const kid of childrenOf(p.pid)) {
    const c = procCpu(kid);
    if (!c) continue;
    cpu += c.utime + c.stime;
    if (full) {
      hwmKb = Math.max(hwmKb, procMem(kid)?.hwmKb || 0);
      pssKb += procPss(kid);
    }
    n++;
  }
  return { cpu, hwmKb, pssKb, nproc: n };
}

async function main() {
  const db = new pg.Client({ connectionString: cfg.db, application_name: 'bench-phase' });
  await db.connect();
  const redis = new Redis(cfg.redis, { lazyConnect: false, maxRetriesPerRequest: 3 });
  const out = fs.createWriteStream(cfg.out);

  const start = {};
  for (const p of cfg.procs) start[p.name] = readProc(p, false);
  const peak = {};
  for (const p of cfg.procs) peak[p.name] = { rssKb: 0, pssKb: 0, hwmKb: 0 };

  // Where the time goes: statement and command statistics from here on.
  await db.query('SELECT pg_stat_statements_reset()').catch(() => {});
  await redis.config('RESETSTAT');
  const walSql = 'SELECT wal_records, wal_bytes, wal_write, wal_sync FROM pg_stat_wal';
  const dbSql = 'SELECT xact_commit, tup_inserted, tup_updated, blks_hit, blks_read FROM pg_stat_database WHERE datname = current_database()';
  const wal0 = (await db.query(walSql)).rows[0];
  const db0 = (await db.query(dbSql)).rows[0];

  const selfCpu0 = process.cpuUsage();
  const busy0 = machineBusy();
  // A sequence run (bench/run.sh --sequence): the clock starts when the
  // sequence is set active; its counters stand in for the campaign's
  // (enrolled = total, completed = sent, stopped = skipped), and it is
  // finished when every enrolled contact is done.
  const startSql = cfg.sequence
    ? "UPDATE sequences SET status = 'active' WHERE id = $1 RETURNING extract(epoch FROM now()) AS due"
    : 'UPDATE campaigns SET scheduled_at = now() WHERE id = $1 RETURNING extract(epoch FROM due_at) AS due';
  const pollSql = cfg.sequence
    ? "SELECT CASE WHEN s.enrolled_count > 0 AND s.active_count = 0 THEN 'finished' ELSE s.status::text END" +
      ' AS status, s.enrolled_count AS total_count, s.completed_count AS sent_count, s.failed_count,' +
      ' s.stopped_count AS skipped_count, 0 AS cancelled_count,' +
      ' CASE WHEN s.enrolled_count > 0 AND s.active_count = 0 THEN (SELECT extract(epoch FROM max(c.completed_at))' +
      ' FROM sequence_contacts c WHERE c.sequence_id = s.id) END AS finished FROM sequences s WHERE s.id = $1'
    : 'SELECT status, total_count, sent_count, failed_count, skipped_count, cancelled_count,' +
      ' extract(epoch FROM finished_at) AS finished FROM campaigns WHERE id = $1';
  const target = cfg.sequence || cfg.campaign;
  const due = await db.query(startSql, [target]);
  const t0 = Date.now();
  const dueEpoch = due.rows[0].due;
  let last = null;
  let timedOut = false;
  let died = [];
  let samples = 0;
  for (;;) {
    const tick = Date.now();
    const t = (tick - t0) / 1000;
    const c = (await db.query(pollSql, [target])).rows[0];
    for (const k of ['total_count', 'sent_count', 'failed_count', 'skipped_count', 'cancelled_count']) c[k] = Number(c[k]);
    const pipe = redis.pipeline();
    pipe.xlen(cfg.simKey);
    for (const k of Object.values(cfg.streams || {})) pipe.xlen(k);
    for (const k of Object.values(cfg.lists || {})) pipe.llen(k);
    if (cfg.publishedKey) pipe.get(cfg.publishedKey);
    const r = (await pipe.exec()).map(([e, v]) => (e ? null : Number(v || 0)));
    const s = {
      t: Number(t.toFixed(3)),
      status: c.status,
      inserted: c.total_count,
      sent_recorded: r[0],
      written: c.sent_count + c.failed_count + c.skipped_count + c.cancelled_count,
      sent_written: c.sent_count,
      failed: c.failed_count,
      skipped: c.skipped_count,
      backlog: {},
      cpu: {},
    };
    let i = 1;
    for (const k of Object.keys(cfg.streams || {})) s.backlog[k] = r[i++];
    for (const k of Object.keys(cfg.lists || {})) s.backlog[k] = r[i++];
    if (cfg.publishedKey) s.published = r[i++];
    const ms = await Promise.all((cfg.metrics || []).map((m) => getMetrics(m.url)));
    (cfg.metrics || []).forEach((m, k) => {
      for (const [field, name] of Object.entries(m.fields)) {
        const v = ms[k] ? ms[k][name] : undefined;
        if (v !== undefined) s[field] = (s[field] || 0) + v;
      }
    });
    for (const p of cfg.procs) {
      const now = readProc(p, samples % 10 === 0);
      if (!now && start[p.name]) died.push(p.name);
      if (!now || !start[p.name]) continue;
      s.cpu[p.name] = Number((now.cpu - start[p.name].cpu).toFixed(2));
      peak[p.name].rssKb = Math.max(peak[p.name].rssKb, now.rssKb || 0);
      peak[p.name].pssKb = Math.max(peak[p.name].pssKb, now.pssKb || 0);
      peak[p.name].hwmKb = Math.max(peak[p.name].hwmKb, now.hwmKb || 0);
      if (now.nproc) peak[p.name].nproc = Math.max(peak[p.name].nproc || 0, now.nproc);
    }
    out.write(JSON.stringify(s) + '\n');
    samples++;
    last = { s, c };
    const final = ['finished', 'failed', 'cancelled'].includes(c.status);
    if (final && c.total_count > 0 && s.written >= c.total_count) break;
    if (final && c.total_count === 0) break;
    if (died.length) {
      // A process of the pipeline is gone: it would only wait for the time-out.
      console.error(`phase ${cfg.name}: ${died.join(', ')} exited during the run; stopping`);
      break;
    }
    if (t > cfg.timeoutS) {
      timedOut = true;
      break;
    }
    const wait = cfg.intervalMs - (Date.now() - tick);
    if (wait > 0) await sleep(wait);
  }
  // CPU and memory before anything is stopped.
  const end = {};
  for (const p of cfg.procs) end[p.name] = readProc(p, true);
  const wall = (Date.now() - t0) / 1000;
  const selfCpu = process.cpuUsage(selfCpu0);
  const busy = machineBusy() - busy0;
  const wal1 = (await db.query(walSql)).rows[0];
  const db1 = (await db.query(dbSql)).rows[0];
  const delta = (a, b) => Object.fromEntries(Object.keys(a).map((k) => [k, Number(b[k]) - Number(a[k])]));
  let statements = [];
  try {
    statements = (
      await db.query(
        `SELECT calls, rows, round(total_exec_time::numeric, 1) AS total_ms, round(mean_exec_time::numeric, 2) AS mean_ms,
                round(total_plan_time::numeric, 1) AS plan_ms, jit_functions,
                round((jit_generation_time + jit_inlining_time + jit_optimization_time + jit_emission_time)::numeric, 1) AS jit_ms,
                round(wal_bytes::numeric / greatest(rows, 1)) AS wal_bytes_per_row,
                regexp_replace(query, '\\s+', ' ', 'g') AS query
         FROM pg_stat_statements WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
         ORDER BY total_exec_time DESC LIMIT 12`
      )
    ).rows;
  } catch (e) {
    statements = [{ error: e.message }];
  }
  const commands = [];
  for (const line of (await redis.info('commandstats')).split('\n')) {
    const m = line.match(/^cmdstat_([^:]+):calls=(\d+),usec=(\d+),usec_per_call=([\d.]+)/);
    if (m) commands.push({ cmd: m[1], calls: Number(m[2]), usec: Number(m[3]), usec_per_call: Number(m[4]) });
  }
  commands.sort((a, b) => b.usec - a.usec);
  const persistence = {};
  for (const line of (await redis.info('persistence')).split('\n')) {
    const m = line.match(/^(aof_rewrites|aof_current_size|rdb_bgsave_in_progress|aof_rewrite_in_progress):(\d+)/);
    if (m) persistence[m[1]] = Number(m[2]);
  }
  const c = last.c;
  const e2e = c.finished ? c.finished - dueEpoch : null;
  const procs = {};
  for (const p of cfg.procs) {
    const a = start[p.name],
      b = end[p.name];
    procs[p.name] = {
      pid: p.pid,
      cpu_s: a && b ? Number((b.cpu - a.cpu).toFixed(2)) : null,
      peak_rss_mb: b ? Number((Math.max(b.hwmKb, peak[p.name].hwmKb) / 1024).toFixed(1)) : null,
    };
    if (p.tree) {
      procs[p.name].peak_pss_total_mb = Number((peak[p.name].pssKb / 1024).toFixed(1));
      procs[p.name].processes = peak[p.name].nproc || null;
    }
  }
  const summary = {
    name: cfg.name,
    campaign: cfg.campaign,
    status: c.status,
    timed_out: timedOut,
    died,
    total: c.total_count,
    sent: c.sent_count,
    failed: c.failed_count,
    skipped: c.skipped_count,
    cancelled: c.cancelled_count,
    e2e_s: e2e,
    wall_s: wall,
    // Finished: every message over due -> finished_at. Cut short by the
    // time-out: the statuses written so far over the time spent.
    msgs_per_s: e2e && c.total_count ? c.total_count / e2e : last.s.written / wall,
    partial: !(e2e && c.total_count),
    written: last.s.written,
    samples,
    sampler_cpu_s: Number(((selfCpu.user + selfCpu.system) / 1e6).toFixed(2)),
    machine_busy_cpu_s: Number(busy.toFixed(2)),
    procs,
    postgres: { wal: delta(wal0, wal1), database: delta(db0, db1), statements },
    redis_commands: commands,
    redis_persistence: persistence,
  };
  fs.writeFileSync(cfg.summary, JSON.stringify(summary, null, 2));
  out.end();
  await db.end();
  redis.disconnect();
  console.log(
    `${cfg.name}: ${c.status} total=${c.total_count} sent=${c.sent_count} failed=${c.failed_count}` +
      ` skipped=${c.skipped_count} in ${e2e ? e2e.toFixed(2) : '?'} s` +
      (summary.msgs_per_s ? ` = ${Math.round(summary.msgs_per_s)} msg/s` : '') +
      (timedOut ? ' (TIMED OUT)' : '')
  );
  process.exit(died.length ? 5 : timedOut ? 3 : 0);
}

main().catch((e) => {
  console.error(`phase ${cfg.name}: ${e.stack || e}`);
  process.exit(1);
});
