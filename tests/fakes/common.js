'use strict';
// Plumbing shared by the fake providers (graph.js, gowa.js): bounded request
// bodies, JSON replies, a seeded RNG so "random" webhook reordering is
// reproducible, bounded record stores, and a webhook sender that signs bodies
// like Meta and gowa do and can deliver them late, out of order or twice.
// Nothing here knows about either provider's payloads.

const crypto = require('node:crypto');
const fs = require('node:fs');
const http = require('node:http');
const https = require('node:https');

// mulberry32: tiny, fast and good enough to make test runs repeatable.
function makeRng(seed) {
    let a = Number(seed) >>> 0 || 0x9e3779b9;
    const next = () => {
        a = (a + 0x6d2b79f5) >>> 0;
        let t = a;
        t = Math.imul(t ^ (t >>> 15), t | 1);
        t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
        return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
    };
    return {
        next,
        chance: (p) => p > 0 && next() < p,
        // [min, max] inclusive; a bare number is a fixed value.
        between: (range) => {
            if (typeof range === 'number') return range;
            const [min, max] = range;
            return Math.round(min + next() * (max - min));
        },
    };
}

function hmacHex(secret, buf) {
    return crypto.createHmac('sha256', String(secret)).update(buf).digest('hex');
}

function signature(secret, buf) {
    return 'sha256=' + hmacHex(secret, buf);
}

// An append-only list that forgets its oldest entries past `cap`, so a fake
// left running through a long benchmark does not grow without bound.
class Ring {
    constructor(cap, onEvict) {
        this.cap = Math.max(1, cap | 0);
        this.items = [];
        this.dropped = 0;
        this.onEvict = onEvict;
    }
    push(item) {
        this.items.push(item);
        while (this.items.length > this.cap) {
            const old = this.items.shift();
            this.dropped++;
            if (this.onEvict) this.onEvict(old);
        }
        return item;
    }
    clear() {
        if (this.onEvict) this.items.forEach(this.onEvict);
        this.items = [];
        this.dropped = 0;
    }
}

// setTimeout with bookkeeping: every timer is unref'd (a fake never stays
// alive just for a pending timer) and clear() cancels them all on close.
class TimerSet {
    constructor() {
        this.timers = new Set();
    }
    after(ms, fn) {
        const t = setTimeout(
            () => {
                this.timers.delete(t);
                fn();
            },
            Math.max(0, ms),
        );
        t.unref();
        this.timers.add(t);
        return t;
    }
    sleep(ms) {
        return new Promise((resolve) => this.after(ms, resolve));
    }
    clear() {
        for (const t of this.timers) clearTimeout(t);
        this.timers.clear();
    }
}

class HttpError extends Error {
    constructor(status, message) {
        super(message);
        this.status = status;
    }
}

// Reads the whole body, refusing more than `limit` bytes (413) so a broken
// client cannot make the fake eat the machine's memory.
function readBody(req, limit) {
    return new Promise((resolve, reject) => {
        const chunks = [];
        let size = 0;
        let failed = false;
        req.on('data', (c) => {
            if (failed) return;
            size += c.length;
            if (size > limit) {
                failed = true;
                reject(new HttpError(413, `request body larger than ${limit} bytes`));
                return;
            }
            chunks.push(c);
        });
        req.on('end', () => !failed && resolve(Buffer.concat(chunks)));
        req.on('error', (e) => !failed && reject(e));
    });
}

function sendJson(res, status, obj, headers = {}) {
    const body = Buffer.from(JSON.stringify(obj));
    res.writeHead(status, {
        'content-type': 'application/json; charset=utf-8',
        'content-length': body.length,
        ...headers,
    });
    res.end(body);
}

function parseJson(buf) {
    try {
        return { value: JSON.parse(buf.toString('utf8')) };
    } catch (e) {
        return { error: e.message };
    }
}

// Multipart bodies are parsed by the platform's own fetch implementation
// (undici), which avoids a dependency and a hand-written parser.
async function parseMultipart(buf, contentType) {
    const form = await new Response(buf, { headers: { 'content-type': contentType } }).formData();
    const fields = {};
    const files = {};
    for (const [name, value] of form.entries()) {
        if (typeof value === 'string') {
            fields[name] = value;
        } else {
            files[name] = {
                filename: value.name,
                type: value.type,
                data: Buffer.from(await value.arrayBuffer()),
            };
        }
    }
    return { fields, files };
}

// Which image a buffer holds, by its magic bytes; null when none we know.
function sniffImage(buf) {
    if (buf.length >= 3 && buf[0] === 0xff && buf[1] === 0xd8 && buf[2] === 0xff) return 'image/jpeg';
    if (buf.length >= 8 && buf.subarray(0, 8).equals(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])))
        return 'image/png';
    if (buf.length >= 12 && buf.toString('latin1', 0, 4) === 'RIFF' && buf.toString('latin1', 8, 12) === 'WEBP')
        return 'image/webp';
    return null;
}

function digitsOf(s) {
    return String(s ?? '').replace(/\D/g, '');
}

// A tiny router: exact methods, path patterns with :params.
class Router {
    constructor() {
        this.routes = [];
    }
    add(method, pattern, handler) {
        const names = [];
        const re = new RegExp(
            '^' +
                pattern.replace(/:([A-Za-z_]+)/g, (_, n) => {
                    names.push(n);
                    return '([^/]+)';
                }) +
                '/?$',
        );
        this.routes.push({ method, re, names, handler });
        return this;
    }
    match(method, path) {
        let pathMatched = false;
        for (const r of this.routes) {
            const m = r.re.exec(path);
            if (!m) continue;
            pathMatched = true;
            if (r.method !== method) continue;
            const params = {};
            r.names.forEach((n, i) => (params[n] = decodeURIComponent(m[i + 1])));
            return { handler: r.handler, params };
        }
        return { pathMatched };
    }
}

// Delivers signed webhooks. Every timer is tracked (and unref'd) so close()
// leaves nothing behind; deliveries that fail are retried with exponential
// back-off, as both providers do, up to `retries` more times.
class WebhookSender {
    constructor(opts) {
        this.opts = opts; // { getUrl(), getSecret(), retries, retryBaseMs, timeoutMs, logCap }
        this.timers = new TimerSet();
        this.pending = 0;
        this.delivered = 0;
        this.failed = 0;
        this.log = new Ring(opts.logCap || 1000);
        this.agents = new Map();
        this.closed = false;
        this.generation = 0; // bumped by cancelAll(): late answers to old sends are not counted
    }

    _agentFor(url) {
        const mod = url.protocol === 'https:' ? https : http;
        if (!this.agents.has(mod)) this.agents.set(mod, new mod.Agent({ keepAlive: true, maxSockets: 16 }));
        return { mod, agent: this.agents.get(mod) };
    }

    _timer(ms, fn) {
        this.timers.after(ms, fn);
    }

    // Queues `payload` (an object, serialised once so retries and duplicates
    // carry byte-identical bodies and signatures) for delivery after delayMs.
    schedule(payload, delayMs, meta = {}) {
        if (this.closed) return;
        const body = Buffer.from(JSON.stringify(payload));
        const generation = this.generation;
        this.pending++;
        this._timer(delayMs, () => this._attempt(body, meta, 0, generation));
    }

    _attempt(body, meta, attempt, generation) {
        if (this.closed || generation !== this.generation) return;
        const target = this.opts.getUrl();
        const entry = { at: new Date().toISOString(), ...meta, attempt: attempt + 1 };
        if (!target) {
            // Nowhere to send: count it as delivered to nobody so drains finish.
            this._done(entry, false, 'no webhook url configured');
            return;
        }
        let url;
        try {
            url = new URL(target);
        } catch (e) {
            this._done(entry, false, 'bad webhook url: ' + e.message);
            return;
        }
        const { mod, agent } = this._agentFor(url);
        const req = mod.request(url, {
            method: 'POST',
            agent,
            headers: {
                'content-type': 'application/json',
                'content-length': body.length,
                'x-hub-signature-256': signature(this.opts.getSecret(), body),
                'user-agent': this.opts.userAgent || 'wacast-fake',
            },
        });
        let settled = false;
        const finish = (ok, status, err) => {
            if (settled || generation !== this.generation) return;
            settled = true;
            entry.status = status;
            if (ok) return this._done(entry, true);
            if (attempt < (this.opts.retries ?? 3) && !this.closed) {
                this.log.push({ ...entry, ok: false, error: err, retrying: true });
                const backoff = (this.opts.retryBaseMs ?? 200) * 2 ** attempt;
                this._timer(backoff, () => this._attempt(body, meta, attempt + 1, generation));
                return;
            }
            this._done(entry, false, err);
        };
        req.setTimeout(this.opts.timeoutMs ?? 5000, () => req.destroy(new Error('timeout')));
        req.on('response', (res) => {
            res.resume();
            res.on('end', () =>
                finish(res.statusCode >= 200 && res.statusCode < 300, res.statusCode, `HTTP ${res.statusCode}`),
            );
            res.on('error', (e) => finish(false, res.statusCode, e.message));
        });
        req.on('error', (e) => finish(false, 0, e.message));
        req.end(body);
    }

    _done(entry, ok, error) {
        this.pending--;
        if (ok) this.delivered++;
        else this.failed++;
        this.log.push({ ...entry, ok, ...(error ? { error } : {}) });
    }

    // Resolves once nothing is pending, or after timeoutMs with what is left.
    drain(timeoutMs) {
        return new Promise((resolve) => {
            const deadline = Date.now() + timeoutMs;
            const poll = () => {
                if (this.pending <= 0 || Date.now() >= deadline || this.closed) return resolve(this.pending);
                // Not in this.timers: cancelAll() must not strand a waiting drain.
                setTimeout(poll, 10).unref();
            };
            poll();
        });
    }

    // Forgets everything queued (used by /_control/reset and close()).
    cancelAll() {
        this.timers.clear();
        this.generation++;
        this.pending = 0;
    }

    close() {
        this.closed = true;
        this.cancelAll();
        for (const a of this.agents.values()) a.destroy();
    }
}

// An HTTP server around a Router: errors become JSON 500s (or the fake's own
// error shape through onError), and close() also drops idle keep-alive
// connections so SIGTERM exits at once.
function createServer(router, { onError, onNotFound }) {
    const server = http.createServer(async (req, res) => {
        const url = new URL(req.url, 'http://fake');
        const { handler, params, pathMatched } = router.match(req.method, url.pathname);
        try {
            if (!handler) return onNotFound(req, res, url, pathMatched);
            await handler(req, res, { params, url });
        } catch (e) {
            if (res.headersSent) return res.destroy();
            onError(req, res, e);
        }
    });
    server.keepAliveTimeout = 5000;
    return {
        server,
        listen(port, host) {
            return new Promise((resolve, reject) => {
                server.once('error', reject);
                server.listen(port, host, () => resolve(server.address().port));
            });
        },
        close() {
            return new Promise((resolve) => {
                server.close(() => resolve());
                if (server.closeAllConnections) server.closeAllConnections();
            });
        },
    };
}

// The HTTP server of a fake (createServer) with what both fakes do for
// their /_control/ API: an unknown control endpoint is a JSON 404 (405 for a
// known path), a control error is JSON { error }, and a 500 is logged as
// "<name> fake: ...". Everything else goes to the provider-shaped handlers:
// notFound(req, res, url, pathMatched) and error(req, res, status, err).
function createFakeServer(router, name, { notFound, error }) {
    return createServer(router, {
        onNotFound(req, res, url, pathMatched) {
            if (url.pathname.startsWith('/_control/'))
                return sendJson(res, pathMatched ? 405 : 404, {
                    error: `no control endpoint ${req.method} ${url.pathname}`,
                });
            notFound(req, res, url, pathMatched);
        },
        onError(req, res, err) {
            const status = err instanceof HttpError ? err.status : 500;
            if (status === 500) process.stderr.write(`${name} fake: ${err.stack || err}\n`);
            if (new URL(req.url, 'http://x').pathname.startsWith('/_control/'))
                return sendJson(res, status, { error: err.message });
            error(req, res, status, err);
        },
    });
}

// A control request's JSON body ({} when empty); a 400 when it is not JSON.
async function readJson(req, limit) {
    const parsed = parseJson(await readBody(req, limit));
    if (parsed.error) throw new HttpError(400, `invalid JSON: ${parsed.error}`);
    return parsed.value ?? {};
}

// The counters a fake reports on /_control/stats and /_control/health.
function fakeStats(counters, sent, rules, webhooks) {
    return {
        ...counters,
        stored: sent.items.length,
        dropped: sent.dropped,
        rules: rules.length,
        webhooks_pending: webhooks.pending,
        webhooks_delivered: webhooks.delivered,
        webhooks_failed: webhooks.failed,
    };
}

// The /_control/ endpoints every fake has, added to router. fake gives
// stats(), publicConfig(), setConfig, the rules (getRules(), setRules(list),
// addRule), listSent, reset and its WebhookSender (webhooks).
function addControlRoutes(router, fake) {
    return router
        .add('GET', '/_control/health', (req, res) => sendJson(res, 200, { ok: true, ...fake.stats() }))
        .add('GET', '/_control/stats', (req, res) => sendJson(res, 200, fake.stats()))
        .add('GET', '/_control/config', (req, res) => sendJson(res, 200, fake.publicConfig()))
        .add('POST', '/_control/config', fake.setConfig)
        .add('GET', '/_control/rules', (req, res) => sendJson(res, 200, { rules: fake.getRules() }))
        .add('POST', '/_control/rules', fake.addRule)
        .add('DELETE', '/_control/rules', (req, res) => {
            fake.setRules([]);
            sendJson(res, 200, { rules: fake.getRules() });
        })
        .add('DELETE', '/_control/rules/:id', (req, res, { params }) => {
            fake.setRules(fake.getRules().filter((r) => String(r.id) !== params.id));
            sendJson(res, 200, { rules: fake.getRules() });
        })
        .add('GET', '/_control/sent', fake.listSent)
        .add('GET', '/_control/webhooks', (req, res) =>
            sendJson(res, 200, { pending: fake.webhooks.pending, deliveries: fake.webhooks.log.items }),
        )
        .add('POST', '/_control/drain', async (req, res, { url }) => {
            const left = await fake.webhooks.drain(Number(url.searchParams.get('timeout_ms') || 5000));
            sendJson(res, left ? 504 : 200, { pending: left });
        })
        .add('POST', '/_control/reset', fake.reset);
}

// A plain GET, used by the Graph fake to exercise the receiver's hub.challenge
// handshake. Resolves with { status, body }; never rejects.
function httpGet(target, timeoutMs = 5000) {
    return new Promise((resolve) => {
        let url;
        try {
            url = new URL(target);
        } catch (e) {
            return resolve({ status: 0, body: '', error: e.message });
        }
        const mod = url.protocol === 'https:' ? https : http;
        const req = mod.get(url, { agent: false }, (res) => {
            const chunks = [];
            let size = 0;
            res.on('data', (c) => {
                size += c.length;
                if (size <= 65536) chunks.push(c);
            });
            res.on('end', () => resolve({ status: res.statusCode, body: Buffer.concat(chunks).toString('utf8') }));
        });
        req.setTimeout(timeoutMs, () => req.destroy(new Error('timeout')));
        req.on('error', (e) => resolve({ status: 0, body: '', error: e.message }));
    });
}

// Config = defaults <- JSON file (--config or <ENV>_CONFIG) <- JSON string in
// <ENV>_CONFIG_JSON <- a few single env vars. Later wins; objects merge.
function deepMerge(base, over) {
    if (over === null || typeof over !== 'object' || Array.isArray(over)) return over;
    const out = { ...(base && typeof base === 'object' && !Array.isArray(base) ? base : {}) };
    for (const [k, v] of Object.entries(over)) {
        out[k] = v !== null && typeof v === 'object' && !Array.isArray(v) ? deepMerge(out[k], v) : v;
    }
    return out;
}

function parseArgs(argv) {
    const args = {};
    for (let i = 0; i < argv.length; i++) {
        const a = argv[i];
        const m = /^--([a-z-]+)(?:=(.*))?$/.exec(a);
        if (!m) throw new Error(`unexpected argument: ${a}`);
        args[m[1]] = m[2] !== undefined ? m[2] : argv[++i];
        if (args[m[1]] === undefined) throw new Error(`--${m[1]} needs a value`);
    }
    return args;
}

function loadConfig(defaults, { args, env, prefix }) {
    let cfg = { ...defaults };
    const file = args.config || env[`${prefix}_CONFIG`];
    if (file) cfg = deepMerge(cfg, JSON.parse(fs.readFileSync(file, 'utf8')));
    if (env[`${prefix}_CONFIG_JSON`]) cfg = deepMerge(cfg, JSON.parse(env[`${prefix}_CONFIG_JSON`]));
    const port = args.port ?? env[`${prefix}_PORT`] ?? env.PORT;
    if (port !== undefined) cfg.port = Number(port);
    const host = args.host ?? env[`${prefix}_HOST`];
    if (host !== undefined) cfg.host = host;
    return cfg;
}

// What SIGTERM/SIGINT do: exit at once until runMain has a fake to close.
// One handler for the process's life; removing and re-adding handlers could
// lose a signal that arrived in between.
let onStopSignal = () => process.exit(0);

function installSignalHandlers() {
    for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => onStopSignal());
}

// Runs a fake as a program: listen, announce the port as the first stdout line
// (the C harness reads it), exit 0 on SIGTERM/SIGINT after closing everything.
async function runMain(createFake, defaults, prefix) {
    let cfg;
    try {
        cfg = loadConfig(defaults, { args: parseArgs(process.argv.slice(2)), env: process.env, prefix });
    } catch (e) {
        process.stderr.write(`config error: ${e.message}\n`);
        process.exit(2);
    }
    // graph.js and gowa.js install the handlers before their slow requires,
    // so a harness that gives up during start-up still gets a clean exit.
    let fake = null;
    let stopping = false;
    onStopSignal = async () => {
        if (stopping) return;
        stopping = true;
        if (fake) await fake.close();
        process.exit(0);
    };
    try {
        fake = createFake(cfg);
        const port = await fake.listen(cfg.port ?? 0, cfg.host ?? '127.0.0.1');
        if (stopping) return;
        process.stdout.write(`listening ${port}\n`);
    } catch (e) {
        process.stderr.write(`cannot start: ${e.message}\n`);
        process.exit(1);
    }
}

module.exports = {
    HttpError,
    Ring,
    Router,
    TimerSet,
    WebhookSender,
    addControlRoutes,
    createFakeServer,
    createServer,
    deepMerge,
    fakeStats,
    digitsOf,
    hmacHex,
    httpGet,
    installSignalHandlers,
    loadConfig,
    makeRng,
    parseArgs,
    parseJson,
    parseMultipart,
    readBody,
    readJson,
    runMain,
    sendJson,
    signature,
    sniffImage,
};
