'use strict';
// Helpers for the fakes' own self-tests: a webhook receiver that keeps raw
// bodies (signatures are over raw bytes), tiny HTTP helpers, and a way to run
// a fake as a child process the way the C harness does.

const http = require('node:http');
const crypto = require('node:crypto');
const path = require('node:path');
const { spawn } = require('node:child_process');

async function startReceiver({ status = 200 } = {}) {
    const hits = [];
    const waiters = [];
    const server = http.createServer((req, res) => {
        const chunks = [];
        req.on('data', (c) => chunks.push(c));
        req.on('end', () => {
            const raw = Buffer.concat(chunks);
            const url = new URL(req.url, 'http://r');
            if (req.method === 'GET') {
                // A receiver's verification handshake, as wacast must implement it.
                const ok = url.searchParams.get('hub.verify_token') === 'vt';
                res.writeHead(ok ? 200 : 403);
                return res.end(ok ? url.searchParams.get('hub.challenge') : 'forbidden');
            }
            const hit = { headers: req.headers, raw, json: JSON.parse(raw.toString('utf8')) };
            hits.push(hit);
            res.writeHead(typeof status === 'function' ? status(hit, hits.length) : status);
            res.end();
            for (const w of [...waiters]) w();
        });
    });
    await new Promise((r) => server.listen(0, '127.0.0.1', r));
    return {
        url: `http://127.0.0.1:${server.address().port}/webhook`,
        hits,
        // Resolves with hits once pred(hits) holds; rejects after timeoutMs.
        waitFor(pred, timeoutMs = 3000) {
            return new Promise((resolve, reject) => {
                const check = () => {
                    if (pred(hits)) {
                        cleanup();
                        resolve(hits);
                    }
                };
                const timer = setTimeout(() => {
                    cleanup();
                    reject(new Error(`timed out; got ${hits.length} webhooks: ${hits.map((h) => h.raw).join('\n')}`));
                }, timeoutMs);
                const cleanup = () => {
                    clearTimeout(timer);
                    waiters.splice(waiters.indexOf(check), 1);
                };
                waiters.push(check);
                check();
            });
        },
        close: () =>
            new Promise((r) => {
                server.close(r);
                server.closeAllConnections();
            }),
    };
}

function expectedSignature(secret, raw) {
    return 'sha256=' + crypto.createHmac('sha256', secret).update(raw).digest('hex');
}

async function request(base, method, p, { body, headers = {}, raw } = {}) {
    const init = { method, headers: { ...headers } };
    if (raw !== undefined) init.body = raw;
    else if (body !== undefined) {
        init.body = JSON.stringify(body);
        init.headers['content-type'] = 'application/json';
    }
    const res = await fetch(base + p, init);
    const text = await res.text();
    let json;
    try {
        json = JSON.parse(text);
    } catch {
        json = undefined;
    }
    return { status: res.status, json, text, headers: res.headers };
}

// Starts `node <script> --port 0`, resolves with { port, child } once the
// first stdout line says "listening <port>".
function spawnFake(script, env = {}) {
    return new Promise((resolve, reject) => {
        const child = spawn(process.execPath, [path.join(__dirname, script), '--port', '0'], {
            env: { ...process.env, ...env },
            stdio: ['ignore', 'pipe', 'pipe'],
        });
        let out = '';
        let err = '';
        child.stderr.on('data', (c) => (err += c));
        child.stdout.on('data', (c) => {
            out += c;
            const m = /^listening (\d+)\n/.exec(out);
            if (m) resolve({ port: Number(m[1]), child, firstLine: out.split('\n')[0] });
        });
        child.on('exit', (code) => reject(new Error(`${script} exited ${code}: ${err}`)));
    });
}

function exitOf(child) {
    return new Promise((resolve) => child.on('exit', (code, signal) => resolve({ code, signal })));
}

module.exports = { startReceiver, expectedSignature, request, spawnFake, exitOf };
