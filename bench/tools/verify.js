#!/usr/bin/env node
// Proves a run sent every lead exactly once, from the outside:
//   - PostgreSQL: one message row per eligible lead, distinct recipients,
//     every row 'sent' (and no other final state), campaign counters agree;
//   - the simulated provider's record (a Redis stream): one entry per
//     message row, the right campaign, recipient and non-empty text, no
//     duplicates, nothing unknown.
// Also computes the queued -> sent latency percentiles (queued_at -> sent_at)
// and due -> sent. Usage: node verify.js CONFIG.json (db, campaign, redis,
// simKey, expected, out). Exit 0 when correct, 4 when not.
'use strict';
const fs = require('fs');
const { pg, Redis, readJson } = require('./lib');

const cfg = readJson(process.argv[2]);

async function main() {
  const db = new pg.Client({ connectionString: cfg.db, application_name: 'bench-verify' });
  await db.connect();
  const errors = [];
  const camp = (
    await db.query(
      'SELECT status, user_id, total_count, sent_count, failed_count, skipped_count, due_at FROM campaigns WHERE id = $1',
      [cfg.campaign]
    )
  ).rows[0];
  const eligible = (
    await db.query('SELECT count(*) AS n FROM leads WHERE user_id = $1 AND opted_out_at IS NULL', [camp.user_id])
  ).rows[0].n;
  const pgc = (
    await db.query(
      `SELECT count(*) AS rows, count(DISTINCT recipient_phone) AS phones, count(DISTINCT lead_id) AS leads,
              count(*) FILTER (WHERE status = 'sent') AS sent,
              count(*) FILTER (WHERE status <> 'sent') AS not_sent,
              count(*) FILTER (WHERE sent_at IS NULL) AS no_sent_at,
              count(*) FILTER (WHERE queued_at IS NULL) AS no_queued_at,
              count(*) FILTER (WHERE content = '') AS empty_content
       FROM broadcast_messages WHERE campaign_id = $1`,
      [cfg.campaign]
    )
  ).rows[0];
  const expected = cfg.expected ?? eligible;
  // A run stopped by its time-out: only what it did is checked (nothing sent
  // twice, nothing unknown, every send matches its row and its status).
  const partial = !!cfg.partial;
  if (partial) {
    /* counts of a run cut short are not expected to match */
  } else if (eligible !== expected) errors.push(`eligible leads ${eligible} != expected ${expected}`);
  if (!partial) {
    if (pgc.rows !== expected) errors.push(`message rows ${pgc.rows} != ${expected}`);
    if (pgc.phones !== expected) errors.push(`distinct recipients in PostgreSQL ${pgc.phones} != ${expected}`);
    if (pgc.leads !== expected) errors.push(`distinct leads in PostgreSQL ${pgc.leads} != ${expected}`);
    if (pgc.sent !== expected) errors.push(`rows with status sent ${pgc.sent} != ${expected}`);
    if (pgc.not_sent) errors.push(`${pgc.not_sent} row(s) not in status sent`);
    if (pgc.no_sent_at) errors.push(`${pgc.no_sent_at} row(s) without sent_at`);
    if (camp.status !== 'finished') errors.push(`campaign status ${camp.status}, not finished`);
    if (camp.total_count !== expected || camp.sent_count !== expected)
      errors.push(`campaign counters total=${camp.total_count} sent=${camp.sent_count}, expected ${expected}`);
  } else if (pgc.phones !== pgc.rows) errors.push(`${pgc.rows - pgc.phones} duplicate recipient row(s) in PostgreSQL`);

  // Message id -> recipient, to check every provider record against. Ids
  // and E.164 numbers (at most 15 digits) fit in typed arrays: no million
  // strings in a Map for the garbage collector to walk.
  const span = (
    await db.query('SELECT coalesce(min(id), 0) AS lo, coalesce(max(id), -1) AS hi FROM broadcast_messages WHERE campaign_id = $1', [cfg.campaign])
  ).rows[0];
  const lo = span.lo,
    size = Math.max(0, span.hi - span.lo + 1);
  const phoneOf = new Float64Array(size).fill(-1); // recipient digits; -1: no row
  const seen = new Uint8Array(size);
  const r = await db.query({
    text: 'SELECT id, recipient_phone FROM broadcast_messages WHERE campaign_id = $1',
    values: [cfg.campaign],
    rowMode: 'array',
  });
  const e164 = (p) => (/^\+[1-9][0-9]{0,14}$/.test(p) ? Number(p.slice(1)) : -2);
  for (const [id, phone] of r.rows) phoneOf[id - lo] = e164(phone);
  r.rows.length = 0;

  const redis = new Redis(cfg.redis);
  const rec = { entries: 0, other_campaign: 0, unknown_msg: 0, duplicates: 0, wrong_recipient: 0, empty_text: 0, not_ok: 0 };
  let distinct = 0;
  let from = '-';
  const PAGE = 20000;
  for (;;) {
    const page = await redis.xrange(cfg.simKey, from, '+', 'COUNT', PAGE);
    for (const [, f] of page) {
      let msg, campaign, to, ok, text;
      for (let j = 0; j + 1 < f.length; j += 2) {
        switch (f[j]) {
          case 'msg': msg = f[j + 1]; break;
          case 'campaign': campaign = f[j + 1]; break;
          case 'to': to = f[j + 1]; break;
          case 'ok': ok = f[j + 1]; break;
          case 'text': text = f[j + 1]; break;
        }
      }
      if (campaign !== cfg.campaign) {
        rec.other_campaign++;
        continue;
      }
      rec.entries++;
      if (ok !== '1') rec.not_ok++;
      if (!text) rec.empty_text++;
      const k = Number(msg) - lo;
      if (!(k >= 0 && k < size) || phoneOf[k] === -1) {
        rec.unknown_msg++;
        continue;
      }
      if (phoneOf[k] !== e164(to)) rec.wrong_recipient++;
      if (seen[k]) rec.duplicates++;
      else {
        seen[k] = 1;
        distinct++;
      }
    }
    if (page.length < PAGE) break;
    from = '(' + page[page.length - 1][0];
  }
  redis.disconnect();
  rec.distinct_messages = distinct;
  if (!partial) {
    if (rec.entries !== expected) errors.push(`provider record holds ${rec.entries} send(s) for the campaign, expected ${expected}`);
    if (rec.distinct_messages !== expected) errors.push(`provider record: ${rec.distinct_messages} distinct messages, expected ${expected}`);
  }
  for (const k of ['unknown_msg', 'duplicates', 'wrong_recipient', 'empty_text', 'not_ok'])
    if (rec[k]) errors.push(`provider record: ${rec[k]} ${k.replace('_', ' ')}`);

  const lat = (
    await db.query(
      `WITH l AS (
         SELECT extract(epoch FROM sent_at - queued_at) * 1000 AS q_ms,
                extract(epoch FROM sent_at - $2::timestamptz) * 1000 AS d_ms
         FROM broadcast_messages WHERE campaign_id = $1 AND sent_at IS NOT NULL)
       SELECT count(q_ms) AS n,
              count(*) FILTER (WHERE q_ms < 0) AS negative,
              percentile_cont(ARRAY[0.5, 0.9, 0.99, 0.999]) WITHIN GROUP (ORDER BY q_ms) AS q,
              max(q_ms) AS q_max, avg(q_ms) AS q_avg,
              percentile_cont(ARRAY[0.5, 0.9, 0.99]) WITHIN GROUP (ORDER BY d_ms) AS d,
              max(d_ms) AS d_max
       FROM l`,
      [cfg.campaign, camp.due_at]
    )
  ).rows[0];
  await db.end();
  const round = (x) => (x === null || x === undefined ? null : Number(Number(x).toFixed(1)));
  const result = {
    ok: errors.length === 0,
    partial,
    errors,
    expected,
    postgres: pgc,
    record: rec,
    latency_ms: {
      queued_to_sent: {
        n: lat.n,
        negative: lat.negative,
        p50: round(lat.q && lat.q[0]),
        p90: round(lat.q && lat.q[1]),
        p99: round(lat.q && lat.q[2]),
        p999: round(lat.q && lat.q[3]),
        max: round(lat.q_max),
        avg: round(lat.q_avg),
      },
      due_to_sent: { p50: round(lat.d && lat.d[0]), p90: round(lat.d && lat.d[1]), p99: round(lat.d && lat.d[2]), max: round(lat.d_max) },
    },
  };
  fs.writeFileSync(cfg.out, JSON.stringify(result, null, 2));
  console.log(
    `verify ${cfg.name}: ${result.ok ? (partial ? 'OK so far (run cut short)' : 'OK') : 'WRONG'}: ${pgc.rows} rows, ${pgc.sent} sent, ${pgc.phones} distinct recipients;` +
      ` record ${rec.entries} sends, ${rec.distinct_messages} distinct, ${rec.duplicates} duplicates` +
      (errors.length ? '\n  ' + errors.join('\n  ') : '')
  );
  process.exit(result.ok ? 0 : 4);
}

main().catch((e) => {
  console.error(`verify ${cfg.name}: ${e.stack || e}`);
  process.exit(1);
});
