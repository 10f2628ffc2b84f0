#!/usr/bin/env node
// The raw PostgreSQL limits: how many rows per second this server takes in
// the two statement shapes wacast lives on, with nothing else running.
//   insert: INSERT ... SELECT FROM unnest($1..$n) in batches (default 2,000
//           rows), each batch its own transaction, into a table made with
//           CREATE TABLE ... (LIKE broadcast_messages INCLUDING ALL): the same
//           bigint identity, uuid and text columns, the two UNIQUE
//           constraints and the partial indexes;
//   update: UPDATE ... FROM unnest($1..$n) setting what a 'sent' status
//           sets (status, sent_at, device_id, provider_message_id, attempts,
//           updated_at), guarded by the current status, same batches.
// Each is run over 1 connection and over 2 (one per core), on N rows.
// Batch parameters are built before the clock starts: this measures the
// server, not the client. Usage: node rawpg.js CONFIG.json (db, rows, batch,
// conns: [1, 2], out).
'use strict';
const crypto = require('crypto');
const fs = require('fs');
const { pg, readJson } = require('./lib');

const cfg = readJson(process.argv[2]);
const rows = cfg.rows;
const batch = Math.min(cfg.batch || 2000, Math.max(1, Math.floor(rows / 4)));
const batches0 = batch; // the untimed first batch

const INSERT = `
  INSERT INTO raw_messages (campaign_id, user_id, lead_id, recipient_phone, recipient_name, content, status, scheduled_at)
  SELECT $1, $2, lead_id, phone, name, content, 'pending', now()
  FROM unnest($3::uuid[], $4::text[], $5::text[], $6::text[]) AS t(lead_id, phone, name, content)`;

const UPDATE = `
  UPDATE raw_messages m SET status = 'sent', sent_at = to_timestamp(i.at_us / 1e6),
         device_id = i.device_id::uuid, provider_message_id = i.provider_id,
         attempts = GREATEST(m.attempts, 1), updated_at = now()
  FROM unnest($1::bigint[], $2::bigint[], $3::text[], $4::text[]) AS i(id, at_us, device_id, provider_id)
  WHERE m.id = i.id AND m.status IN ('pending', 'queued')`;

const lit = (a) => '{' + a.map((v) => '"' + String(v).replace(/(["\\])/g, '\\$1') + '"').join(',') + '}';

// Batch 0 runs untimed (it also prepares the statement); the others are
// shared out to the connections, each taking the next batch when free.
// WAL written, from the insert position (pg_stat_wal lags: backends flush it at most once a second).
const WAL = 'SELECT pg_current_wal_insert_lsn() AS lsn';
const walDiff = (a, b) => `SELECT pg_wal_lsn_diff('${b}', '${a}')::bigint AS n`;

async function run(conns, batches, sql) {
  const clients = [];
  for (let k = 0; k < conns; k++) {
    const c = new pg.Client({ connectionString: cfg.db, application_name: 'bench-raw' });
    await c.connect();
    clients.push(c);
  }
  await clients[0].query({ name: 's', text: sql, values: batches[0] });
  let next = 1;
  const w0 = (await clients[0].query(WAL)).rows[0];
  const t0 = process.hrtime.bigint();
  await Promise.all(
    clients.map(async (c) => {
      while (next < batches.length) {
        const b = batches[next++];
        await c.query({ name: 's', text: sql, values: b });
      }
    })
  );
  const s = Number(process.hrtime.bigint() - t0) / 1e9;
  const w1 = (await clients[0].query(WAL)).rows[0];
  const wal = (await clients[0].query(walDiff(w0.lsn, w1.lsn))).rows[0].n;
  for (const c of clients) await c.end();
  const n = batches.slice(1).reduce((a, b) => a + b[b.length === 6 ? 2 : 0].split(',').length, 0);
  return { s, walBytesPerRow: wal / n };
}

async function main() {
  const db = new pg.Client({ connectionString: cfg.db });
  await db.connect();
  await db.query('DROP TABLE IF EXISTS raw_messages');
  await db.query('CREATE TABLE raw_messages (LIKE broadcast_messages INCLUDING ALL)');
  const ids = (await db.query('SELECT id, user_id FROM campaigns LIMIT 1')).rows[0];
  const devs = (await db.query('SELECT id FROM user_devices LIMIT 1000')).rows.map((r) => r.id);
  const insertBatches = [];
  for (let b = 0; b * batch < rows; b++) {
    const n = Math.min(batch, rows - b * batch);
    const lead = [],
      phone = [],
      name = [],
      content = [];
    for (let k = 0; k < n; k++) {
      const g = b * batch + k + 1;
      lead.push(crypto.randomUUID());
      phone.push('+6012' + String(g).padStart(7, '0'));
      name.push('Lead ' + g);
      content.push(`Hello Lead ${g}, Good afternoon! This is a wacast benchmark.`);
    }
    insertBatches.push([ids.id, ids.user_id, lit(lead), lit(phone), lit(name), lit(content)]);
  }
  const now = Date.now() * 1000;
  const updateBatches = [];
  for (let b = 0; b * batch < rows; b++) {
    const n = Math.min(batch, rows - b * batch);
    const id = [],
      at = [],
      dev = [],
      prov = [];
    for (let k = 0; k < n; k++) {
      const g = b * batch + k + 1;
      id.push(g);
      at.push(now + g);
      dev.push(devs[g % devs.length]);
      prov.push(`sim-${g}-${(g * 2654435761) >>> 0}`);
    }
    updateBatches.push(['{' + id.join(',') + '}', '{' + at.join(',') + '}', lit(dev), lit(prov)]);
  }
  const result = { rows, batch, runs: [] };
  for (const conns of cfg.conns || [1, 2]) {
    await db.query('TRUNCATE raw_messages RESTART IDENTITY');
    await db.query('CHECKPOINT');
    const insR = await run(conns, insertBatches, INSERT);
    const ins = insR.s;
    await db.query('VACUUM ANALYZE raw_messages');
    await db.query('CHECKPOINT');
    const updR = await run(conns, updateBatches, UPDATE);
    const upd = updR.s;
    const check = (await db.query("SELECT count(*) FILTER (WHERE status = 'sent') AS sent, count(*) AS n FROM raw_messages")).rows[0];
    if (check.sent !== rows || check.n !== rows) throw new Error(`raw table: ${check.n} rows, ${check.sent} sent; expected ${rows}`);
    const r = {
      conns,
      insert_s: Number(ins.toFixed(3)),
      insert_rows_per_s: Math.round((rows - batches0) / ins),
      update_s: Number(upd.toFixed(3)),
      update_rows_per_s: Math.round((rows - batches0) / upd),
      insert_wal_bytes_per_row: Math.round(insR.walBytesPerRow),
      update_wal_bytes_per_row: Math.round(updR.walBytesPerRow),
    };
    result.runs.push(r);
    console.log(
      `raw postgres (${conns} connection${conns > 1 ? 's' : ''}, batches of ${batch}): ` +
        `insert ${r.insert_rows_per_s} rows/s, update ${r.update_rows_per_s} rows/s`
    );
  }
  await db.query('DROP TABLE raw_messages');
  await db.end();
  result.best_insert_rows_per_s = Math.max(...result.runs.map((r) => r.insert_rows_per_s));
  result.best_update_rows_per_s = Math.max(...result.runs.map((r) => r.update_rows_per_s));
  fs.writeFileSync(cfg.out, JSON.stringify(result, null, 2));
}

main().catch((e) => {
  console.error(`rawpg: ${e.stack || e}`);
  process.exit(1);
});
