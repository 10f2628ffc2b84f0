// Shared helpers for the bench tools: the npm modules installed in
// bench/baseline (pg, ioredis), /proc readings, and small utilities.
'use strict';
const fs = require('fs');
const path = require('path');
const { createRequire } = require('module');

const baselineRequire = createRequire(path.join(__dirname, '..', 'baseline', 'package.json'));
const pg = baselineRequire('pg');
const Redis = baselineRequire('ioredis');

// bigint (int8) and numeric come back as JS numbers: every count here fits.
pg.types.setTypeParser(20, (v) => Number(v));
pg.types.setTypeParser(1700, (v) => Number(v));

const CLK_TCK = 100; // sysconf(_SC_CLK_TCK) on Linux x86-64 and arm64
const PAGE_KB = 4;

// utime, stime, cutime, cstime (seconds) of a process, or null when it is gone.
function procCpu(pid) {
  let s;
  try {
    s = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  } catch {
    return null;
  }
  // The command name (field 2) may hold spaces: split after its closing ')'.
  const f = s.slice(s.lastIndexOf(')') + 2).split(' ');
  // f[0] is field 3 (state); utime is field 14 => f[11].
  return {
    utime: Number(f[11]) / CLK_TCK,
    stime: Number(f[12]) / CLK_TCK,
    cutime: Number(f[13]) / CLK_TCK,
    cstime: Number(f[14]) / CLK_TCK,
    ppid: Number(f[1]),
    rssKb: Number(f[21]) * PAGE_KB,
  };
}

// VmHWM and VmRSS in kB, or null.
function procMem(pid) {
  let s;
  try {
    s = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return null;
  }
  const get = (k) => {
    const m = s.match(new RegExp(`^${k}:\\s+(\\d+) kB`, 'm'));
    return m ? Number(m[1]) : 0;
  };
  return { hwmKb: get('VmHWM'), rssKb: get('VmRSS') };
}

// Proportional set size in kB (shared pages split between their users), or 0.
function procPss(pid) {
  try {
    const s = fs.readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
    const m = s.match(/^Pss:\s+(\d+) kB/m);
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
}

function childrenOf(ppid) {
  try {
    // CONFIG_PROC_CHILDREN: the kernel keeps the list; no /proc scan needed.
    const s = fs.readFileSync(`/proc/${ppid}/task/${ppid}/children`, 'utf8').trim();
    return s ? s.split(' ').map(Number) : [];
  } catch {}
  const out = [];
  for (const d of fs.readdirSync('/proc')) {
    if (!/^\d+$/.test(d)) continue;
    const c = procCpu(d);
    if (c && c.ppid === ppid) out.push(Number(d));
  }
  return out;
}

// CPU seconds the whole machine spent busy (all cores), from /proc/stat.
function machineBusy() {
  const f = fs.readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/).slice(1).map(Number);
  // user nice system idle iowait irq softirq steal
  return (f[0] + f[1] + f[2] + f[5] + f[6] + (f[7] || 0)) / CLK_TCK;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

function readJson(file) {
  return JSON.parse(fs.readFileSync(file, 'utf8'));
}

module.exports = { pg, Redis, machineBusy, procCpu, procMem, procPss, childrenOf, sleep, readJson, baselineRequire };
