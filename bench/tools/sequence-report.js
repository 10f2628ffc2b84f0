#!/usr/bin/env node
// The report of bench/run.sh --sequence: the rate of step messages end to
// end (sequence set active -> the last contact completed), the scheduler's
// CPU per 100k steps and every process's, next to the newest campaign run of
// the same size in the results folder. Writes <stamp>-sequence.json and .md.
// Usage: node sequence-report.js PHASE.json OUTDIR STAMP MESSAGES DEVICES
//        SENT_ROWS LEADS_SENT RECORDED GIT
'use strict';
const fs = require('fs');
const path = require('path');

const [phaseFile, outdir, stamp, messages, devices, sentRows, leadsSent, recorded, git] = process.argv.slice(2);
const phase = JSON.parse(fs.readFileSync(phaseFile, 'utf8'));
const n = Number(messages);
const per100k = (cpu) => (cpu == null ? null : (cpu * 100000) / n);

// The newest campaign run with as many messages (the campaign figure).
let campaign = null;
for (const f of fs.readdirSync(outdir).filter((f) => /^\d{8}T\d{6}Z\.json$/.test(f)).sort().reverse()) {
  try {
    const d = JSON.parse(fs.readFileSync(path.join(outdir, f), 'utf8'));
    const p = d.wacast && d.wacast.phase;
    if (p && p.total === n && !p.partial) {
      campaign = { file: f, msgs_per_s: p.msgs_per_s, procs: p.procs, cpu_s_per_100k: d.headline.wacast_cpu_s_per_100k };
      break;
    }
  } catch (e) {
    // not a run report
  }
}

const total = Object.entries(phase.procs).reduce((a, [, p]) => a + (p.cpu_s || 0), 0);
const result = {
  stamp,
  git,
  messages: n,
  devices: Number(devices),
  sent_rows: Number(sentRows),
  leads_sent: Number(leadsSent),
  recorded: Number(recorded),
  e2e_s: phase.e2e_s,
  steps_per_s: phase.msgs_per_s,
  partial: phase.partial,
  scheduler_cpu_s: phase.procs.scheduler ? phase.procs.scheduler.cpu_s : null,
  scheduler_cpu_s_per_100k: per100k(phase.procs.scheduler && phase.procs.scheduler.cpu_s),
  all_cpu_s_per_100k: per100k(total),
  procs: phase.procs,
  statements: phase.postgres.statements,
  campaign,
};
fs.writeFileSync(path.join(outdir, `${stamp}-sequence.json`), JSON.stringify(result, null, 2));

const f1 = (v) => (v == null ? '–' : Number(v).toLocaleString('en-US', { maximumFractionDigits: 1 }));
const f2 = (v) => (v == null ? '–' : Number(v).toFixed(2));
const lines = [];
lines.push(`# Drip sequence benchmark ${stamp}`, '');
lines.push(
  `One active sequence with one step, ${n.toLocaleString('en-US')} enrolled contacts (every lead tagged), ` +
    `zero pacing, ${devices} simulated devices; wacast ${git}. The clock starts when the sequence is set ` +
    'active (the scheduler accepts it and enrols the tagged leads page by page while the first steps go out) and stops when the last ' +
    'contact is completed (its step sent and written).',
  ''
);
lines.push('| | sequence (this run) | campaign (' + (campaign ? campaign.file : 'none of this size') + ') |');
lines.push('| --- | ---: | ---: |');
lines.push(`| messages end to end | ${f1(result.sent_rows)} | ${campaign ? f1(n) : '–'} |`);
lines.push(`| time (s) | ${f2(result.e2e_s)} | ${campaign ? f2(n / campaign.msgs_per_s) : '–'} |`);
lines.push(`| msg/s end to end | **${f1(result.steps_per_s)}** | ${campaign ? f1(campaign.msgs_per_s) : '–'} |`);
lines.push(
  `| scheduler CPU s per 100k | **${f2(result.scheduler_cpu_s_per_100k)}** | ` +
    `${campaign && campaign.procs.scheduler ? f2(per100k(campaign.procs.scheduler.cpu_s)) : '–'} |`
);
lines.push(
  `| all processes CPU s per 100k | ${f2(result.all_cpu_s_per_100k)} | ${campaign ? f2(campaign.cpu_s_per_100k) : '–'} |`
);
lines.push('');
lines.push(
  `Exactly once: ${f1(result.sent_rows)} step messages sent in PostgreSQL, to ${f1(result.leads_sent)} distinct ` +
    `leads; ${f1(result.recorded)} sends in the simulated provider's record.`,
  ''
);
lines.push('## Processes', '', '| process | CPU s | CPU s per 100k | peak RSS (MiB) |', '| --- | ---: | ---: | ---: |');
for (const [name, p] of Object.entries(phase.procs))
  lines.push(`| ${name} | ${f2(p.cpu_s)} | ${f2(per100k(p.cpu_s))} | ${f1(p.peak_rss_mb)} |`);
lines.push('', '## PostgreSQL statements (by total time)', '', '| calls | rows | total ms | mean ms | statement |', '| ---: | ---: | ---: | ---: | --- |');
for (const s of (phase.postgres.statements || []).slice(0, 8))
  lines.push(`| ${s.calls} | ${s.rows} | ${s.total_ms} | ${s.mean_ms} | ${String(s.query || s.error).slice(0, 160).replace(/\|/g, '\\|')} |`);
lines.push('');
fs.writeFileSync(path.join(outdir, `${stamp}-sequence.md`), lines.join('\n'));
console.log(lines.slice(0, 12).join('\n'));
