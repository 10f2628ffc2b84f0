#!/usr/bin/env node
// The BullMQ baseline, producer side: does what wacast's scheduler does, the
// way a Node.js team would with BullMQ. Polls for a due campaign, claims it
// (FOR UPDATE SKIP LOCKED), pages through the eligible leads (keyset, 2,000 a
// page), normalises phones and renders the template, inserts the messages in
// one statement per page (unnest; the UNIQUE constraints make a re-run
// harmless), adds one BullMQ job per message with queue.addBulk (chunks of
// 1,000), marks the page queued, and finally moves the campaign to
// processing (or straight to finished when the workers are already done).
'use strict';
const { Queue } = require('bullmq');
const { Pool } = require('pg');
const fs = require('fs');
const { settings, bullConnection, compile, render, normalizePhone } = require('./common');

const pool = new Pool({ connectionString: settings.databaseUrl, max: 2, application_name: 'baseline-producer' });
const queue = new Queue(settings.queue, {
  connection: bullConnection(),
  // Bounded memory: completed jobs are deleted at once, a few failed ones kept.
  defaultJobOptions: { removeOnComplete: true, removeOnFail: 5000, attempts: 5, backoff: { type: 'exponential', delay: 1000 } },
});

let stopping = false;
process.on('SIGTERM', () => (stopping = true));
process.on('SIGINT', () => (stopping = true));

const CLAIM = `
  UPDATE campaigns c SET status = 'triggered', triggered_at = coalesce(c.triggered_at, now()),
         claimed_by = $1, claimed_at = now()
  WHERE c.id = (SELECT id FROM campaigns WHERE status = 'pending' AND due_at <= now()
                ORDER BY due_at, id LIMIT 1 FOR UPDATE SKIP LOCKED)
  RETURNING c.id, c.user_id, c.message, coalesce(c.media_url, '') AS media_url, c.target_status, c.niche,
            extract(hour FROM now() AT TIME ZONE c.time_zone)::int AS hour`;

const LEADS = `
  SELECT l.id, l.name, l.phone, coalesce(l.device_id::text, '') AS device_id, coalesce(l.niche, '') AS niche,
         l.target_status::text AS target_status, l.attributes
  FROM leads l
  WHERE l.user_id = $1 AND l.opted_out_at IS NULL
    AND ($2 = 'all' OR l.target_status::text = $2)
    AND ($3::text IS NULL OR lower(l.niche) = lower($3))
    AND l.id > $4::uuid
  ORDER BY l.id LIMIT $5::int`;

const INSERT = `
  WITH input AS (
    SELECT * FROM unnest($2::uuid[], $3::text[], $4::text[], $5::text[], $6::message_status[], $7::text[], $8::text[])
      AS t(lead_id, phone, name, content, status, error_code, error_message)),
  ins AS (
    INSERT INTO broadcast_messages (campaign_id, user_id, lead_id, recipient_phone, recipient_name, content,
                                    media_url, status, error_code, error_message, scheduled_at)
    SELECT $1, $9, lead_id, phone, name, content, NULLIF($10, ''), status, error_code, error_message, now()
    FROM input ON CONFLICT DO NOTHING RETURNING id, lead_id, status),
  cnt AS (
    UPDATE campaigns SET total_count = total_count + (SELECT count(*) FROM ins),
           skipped_count = skipped_count + (SELECT count(*) FROM ins WHERE status = 'skipped'),
           claimed_at = now()
    WHERE id = $1 RETURNING 1)
  SELECT id, lead_id, status::text AS status, (SELECT count(*) FROM cnt) AS claimed FROM ins`;

const MARK = `
  UPDATE broadcast_messages SET status = 'queued', queued_at = now(), updated_at = now()
  WHERE id = ANY($1::bigint[]) AND status = 'pending'`;

const FINISH = `
  UPDATE campaigns SET
    status = CASE WHEN sent_count + failed_count + skipped_count + cancelled_count >= total_count
                  THEN 'finished'::campaign_status ELSE 'processing'::campaign_status END,
    finished_at = CASE WHEN sent_count + failed_count + skipped_count + cancelled_count >= total_count
                  THEN now() ELSE finished_at END
  WHERE id = $1 AND status = 'triggered' RETURNING status, total_count`;

// Deadlocks and serialization failures are retried, as any production code
// must: marking a page queued races the workers' status writes on the same rows.
async function query(sql, params) {
  for (let attempt = 1; ; attempt++) {
    try {
      return await pool.query(sql, params);
    } catch (e) {
      if (attempt >= 5 || !['40P01', '40001'].includes(e.code)) throw e;
      await new Promise((r) => setTimeout(r, 10 * attempt));
    }
  }
}

async function expand(c) {
  const tpl = compile(c.message);
  let cursor = '00000000-0000-0000-0000-000000000000';
  const seen = new Set();
  let total = 0;
  for (;;) {
    const { rows: leads } = await query(LEADS, [c.user_id, c.target_status, c.niche, cursor, settings.batch]);
    if (leads.length === 0) break;
    cursor = leads[leads.length - 1].id;
    const cols = [[], [], [], [], [], [], []];
    const byLead = new Map();
    for (const l of leads) {
      const phone = normalizePhone(l.phone, settings.defaultCountry);
      let status = 'pending',
        code = null,
        msg = null,
        content = '';
      if (!phone) {
        status = 'skipped';
        code = 'invalid_phone';
        msg = `invalid phone number '${l.phone}'`;
      } else if (seen.has(phone)) {
        continue; // the same person under another spelling of the number
      } else {
        seen.add(phone);
        const vars = { ...l.attributes, name: l.name, phone, niche: l.niche, target_status: l.target_status };
        content = render(tpl, vars, c.hour);
      }
      cols[0].push(l.id);
      cols[1].push(phone || l.phone);
      cols[2].push(l.name);
      cols[3].push(content);
      cols[4].push(status);
      cols[5].push(code);
      cols[6].push(msg);
      byLead.set(l.id, { to: phone, name: l.name, text: content, dev: l.device_id });
    }
    const { rows: created } = await query(INSERT, [c.id, ...cols, c.user_id, c.media_url]);
    const jobs = [];
    const ids = [];
    for (const r of created) {
      if (r.status !== 'pending') continue;
      const m = byLead.get(r.lead_id);
      ids.push(r.id);
      jobs.push({ name: 'send', data: { id: r.id, c: c.id, to: m.to, text: m.text, dev: m.dev, media: c.media_url } });
    }
    const adds = [];
    for (let k = 0; k < jobs.length; k += settings.bulk) adds.push(queue.addBulk(jobs.slice(k, k + settings.bulk)));
    await Promise.all(adds);
    // Rows are locked in id order by both this and the workers' writes.
    if (ids.length) await query(MARK, [ids.sort((a, b) => a - b)]);
    total += created.length;
    if (leads.length < settings.batch) break;
    if (stopping) return; // SIGTERM mid-campaign: the claim goes stale; nothing half-done

  }
  const { rows } = await query(FINISH, [c.id]);
  console.log(`baseline-producer: campaign ${c.id} expanded: ${total} message(s); now ${rows[0] ? rows[0].status : '?'}`);
}


async function main() {
  await queue.waitUntilReady();
  await pool.query('SELECT 1');
  if (settings.readyFile) fs.writeFileSync(settings.readyFile, 'ready\n');
  while (!stopping) {
    const { rows } = await pool.query(CLAIM, [settings.instance]);
    if (rows.length) await expand(rows[0]);
    else await new Promise((r) => setTimeout(r, settings.pollMs));
  }
  setTimeout(() => {
    console.error('baseline-producer: close timed out');
    process.exit(1);
  }, 5000).unref();
  let t = Date.now();
  await queue.close();
  console.log(`baseline-producer: queue closed in ${Date.now() - t} ms`);
  t = Date.now();
  await pool.end();
  console.log(`baseline-producer: pool closed in ${Date.now() - t} ms`);
  process.exit(0);
}

main().catch((e) => {
  console.error(`baseline-producer: ${e.stack || e}`);
  process.exit(1);
});
