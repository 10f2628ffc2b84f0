#!/usr/bin/env node
// The BullMQ baseline, worker side: a BullMQ Worker (concurrency 100 by
// default) whose processor does what a wacast 'sim' device does for a send:
// record it in a Redis stream (XADD with message id, campaign, device,
// recipient, text, time; no sleep, as the benchmark campaign has zero
// delays). Statuses go back to PostgreSQL in batches, not per job: each
// processed job appends to a buffer that is written with one
// UPDATE ... FROM unnest(...) (message rows and the campaign's counters in
// one statement) every 2,000 jobs or every 100 ms, one write in flight at a
// time. After a write that completes the campaign, it is finished.
'use strict';
const { Worker } = require('bullmq');
const { Redis } = require('ioredis');
const { Pool } = require('pg');
const fs = require('fs');
const { settings, bullConnection } = require('./common');

const pool = new Pool({ connectionString: settings.databaseUrl, max: 2, application_name: 'baseline-worker' });
// The "provider": its own connection, auto-pipelined so concurrent sends share round trips.
const provider = new Redis(settings.redisUrl, { enableAutoPipelining: true });

const STATUS = `
  WITH input AS (
    SELECT * FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[], $5::int[])
      AS t(id, at_us, device_id, provider_id, attempt)),
  upd AS (
    UPDATE broadcast_messages m SET status = 'sent',
           device_id = COALESCE(NULLIF(i.device_id, '')::uuid, m.device_id),
           provider_message_id = i.provider_id,
           attempts = GREATEST(m.attempts, i.attempt),
           sent_at = COALESCE(m.sent_at, to_timestamp(i.at_us / 1e6)),
           updated_at = now()
    FROM input i WHERE m.id = i.id AND m.status IN ('pending', 'queued')
    RETURNING m.campaign_id),
  delta AS (SELECT campaign_id, count(*) AS n FROM upd GROUP BY campaign_id ORDER BY campaign_id)
  UPDATE campaigns c SET sent_count = c.sent_count + d.n FROM delta d WHERE c.id = d.campaign_id
  RETURNING c.id, c.status = 'processing'
    AND c.sent_count + c.failed_count + c.skipped_count + c.cancelled_count >= c.total_count AS complete`;

const FINISH = `
  UPDATE campaigns SET status = 'finished', finished_at = now()
  WHERE id = $1 AND status = 'processing'
    AND sent_count + failed_count + skipped_count + cancelled_count >= total_count`;

let buf = [];
let flushing = null;

async function writeStatuses(rows) {
  rows.sort((a, b) => a[0] - b[0]); // lock rows in id order, as the producer's mark does
  const cols = [[], [], [], [], []];
  for (const r of rows) for (let k = 0; k < 5; k++) cols[k].push(r[k]);
  const { rows: camps } = await pool.query(STATUS, cols);
  for (const c of camps) if (c.complete) await pool.query(FINISH, [c.id]);
}

function flush() {
  if (flushing || buf.length === 0) return flushing;
  const rows = buf.splice(0, settings.flushRows);
  flushing = writeStatuses(rows)
    .catch((e) => {
      if (e.code !== '40P01') console.error(`baseline-worker: writing statuses: ${e.message}; retrying`);
      buf.unshift(...rows);
    })
    .finally(() => {
      flushing = null;
      if (buf.length >= settings.flushRows) flush();
    });
  return flushing;
}
const timer = setInterval(flush, settings.flushMs);

const worker = new Worker(
  settings.queue,
  async (job) => {
    const d = job.data;
    const now = Date.now();
    const providerId = `sim-${d.id}-${(Math.random() * 0xffffffff) >>> 0}`;
    await provider.xadd(
      settings.simKey, 'MAXLEN', '~', settings.simMaxLen, '*',
      'msg', d.id, 'campaign', d.c, 'device', d.dev, 'to', d.to, 'text', d.text,
      'sender', settings.instance, 'ts_us', now * 1000, 'ok', '1'
    );
    buf.push([d.id, now * 1000, d.dev, providerId, job.attemptsMade + 1]);
    if (buf.length >= settings.flushRows) flush();
    return providerId;
  },
  {
    connection: bullConnection(),
    concurrency: settings.concurrency,
    removeOnComplete: { count: 0 },
    removeOnFail: { count: 5000 },
  }
);
worker.on('error', (e) => console.error(`baseline-worker: ${e.message}`));

async function stop() {
  const t = Date.now();
  clearInterval(timer);
  await worker.close();
  console.log(`baseline-worker: closed in ${Date.now() - t} ms`);
  while (buf.length || flushing) await (flushing || flush());
  await pool.end();
  provider.disconnect();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);

worker.waitUntilReady().then(() => {
  if (settings.readyFile) fs.writeFileSync(settings.readyFile, 'ready\n');
});
