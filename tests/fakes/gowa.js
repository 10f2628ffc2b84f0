'use strict';
// A fake go-whatsapp-web-multidevice ("gowa") REST gateway for wacast's tests.
// It mirrors what the real gateway does at its edges: basic auth, device
// selection by X-Device-Id, the {code,message,results} reply shape and its
// error codes, QR login with a real PNG, and signed webhooks (message.ack
// receipts, inbound messages) that arrive late, sometimes out of order or
// twice. Tests log devices out, inject errors and inbound messages through
// /_control/* (see README.md).
//
// Run: node gowa.js [--port N] [--host H] [--config file.json]
// The first line on stdout is "listening <port>".

const {
    HttpError,
    Ring,
    Router,
    TimerSet,
    WebhookSender,
    addControlRoutes,
    createFakeServer,
    deepMerge,
    digitsOf,
    fakeStats,
    installSignalHandlers,
    makeRng,
    parseJson,
    parseMultipart,
    readBody,
    readJson,
    runMain,
    sendJson,
    sniffImage,
} = require('./common');
// Before the slow requires below: SIGTERM during start-up still exits 0.
if (require.main === module) installSignalHandlers();

const crypto = require('node:crypto');
const zlib = require('node:zlib');

const DEFAULTS = {
    port: 0,
    host: '127.0.0.1',
    // "user:pass" entries; empty means no auth (as the gateway without --basic-auth).
    basic_auth: ['admin:admin'],
    // device id (X-Device-Id) -> { jid, name, state: logged_in | logged_out | disconnected }
    devices: { default: { jid: '60300000001@s.whatsapp.net', name: 'wacast fake', state: 'logged_in' } },
    webhook_url: null,
    webhook_secret: 'secret', // the gateway's own default
    webhook_retries: 4, // the gateway tries 5 times in all
    webhook_retry_base_ms: 200, // the gateway waits 1 s, doubling; tests want less
    webhook_timeout_ms: 5000,
    receipts: ['delivered', 'read'],
    receipt_delays_ms: { delivered: [20, 60], read: [80, 150] },
    out_of_order_prob: 0,
    duplicate_prob: 0,
    duplicate_delay_ms: [5, 50],
    seed: 1,
    qr_duration: 30,
    qr_link_base: null, // null: the gateway's own URL; tests set another origin to play a hostile gateway
    max_body_bytes: 1 << 20,
    max_image_bytes: 16 << 20,
    max_records: 10000,
    max_rules: 1000,
};

const RECEIPT_TEXT = {
    delivered: 'means the message was delivered to the device (but the user might not have noticed).',
    read: 'the user opened the chat and saw the message.',
};

// Ready-made failures, worded as the gateway words them.
const PRESETS = {
    not_registered: (jid) => ({ status: 400, code: 'INVALID_JID', message: `Phone ${jid} is not on whatsapp` }),
    reachout_timelock: () => ({
        status: 429,
        code: 'WA_REACHOUT_TIMELOCK',
        message: 'WhatsApp rejected this send with error 463 (reach-out timelock).',
    }),
    timeout: () => ({
        status: 504,
        code: 'GATEWAY_TIMEOUT',
        message: 'Request timed out waiting for WhatsApp server response',
    }),
    internal: () => ({ status: 500, code: 'INTERNAL_SERVER_ERROR', message: 'failed to send message' }),
    not_logged_in: () => NOT_LOGGED_IN,
};

// What the gateway answers when the device is not usable: its MustLogin check
// panics with an auth error that the recovery middleware turns into 401.
const NOT_LOGGED_IN = { status: 401, code: 'AUTHENTICATION_ERROR', message: 'you are not logged in' };
const NOT_CONNECTED = {
    status: 401,
    code: 'AUTHENTICATION_ERROR',
    message: 'you are not connect to services server, please reconnect',
};

function reply(res, status, code, message, results = null, headers) {
    sendJson(res, status, { code, message, results }, headers);
}

// A valid PNG (a 29x29 black-and-white checkerboard, QR-sized) built with
// zlib, so a client can decode what /app/login points at.
function makeQrPng() {
    const size = 29;
    const crcTable = Array.from({ length: 256 }, (_, n) => {
        let c = n;
        for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
        return c >>> 0;
    });
    const crc32 = (buf) => {
        let c = 0xffffffff;
        for (const b of buf) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
        return (c ^ 0xffffffff) >>> 0;
    };
    const chunk = (type, data) => {
        const len = Buffer.alloc(4);
        len.writeUInt32BE(data.length);
        const td = Buffer.concat([Buffer.from(type, 'latin1'), data]);
        const crc = Buffer.alloc(4);
        crc.writeUInt32BE(crc32(td));
        return Buffer.concat([len, td, crc]);
    };
    const ihdr = Buffer.alloc(13);
    ihdr.writeUInt32BE(size, 0);
    ihdr.writeUInt32BE(size, 4);
    ihdr[8] = 8; // bit depth
    ihdr[9] = 0; // greyscale
    const rows = [];
    for (let y = 0; y < size; y++) {
        const row = Buffer.alloc(size + 1); // filter byte 0, then pixels
        for (let x = 0; x < size; x++) row[x + 1] = (x + y) % 2 ? 0xff : 0x00;
        rows.push(row);
    }
    return Buffer.concat([
        Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
        chunk('IHDR', ihdr),
        chunk('IDAT', zlib.deflateSync(Buffer.concat(rows))),
        chunk('IEND', Buffer.alloc(0)),
    ]);
}

const QR_PNG = makeQrPng();

// whatsmeow's message ids: "3EB0" and 18 upper-case hex digits.
function newMessageId() {
    return '3EB0' + crypto.randomBytes(9).toString('hex').toUpperCase();
}

// The gateway accepts "<digits>", "+<digits>" or a full JID; anything else is
// an invalid JID. Returns the user JID or null.
function toJid(phone) {
    const p = String(phone).trim().replace(/^\+/, '');
    let m = /^(\d{5,15})(?:@s\.whatsapp\.net)?$/.exec(p);
    if (m) return `${m[1]}@s.whatsapp.net`;
    m = /^(\d{10,30}(?:-\d+)?)@g\.us$/.exec(p);
    if (m) return `${m[1]}@g.us`;
    return null;
}

function createGowaFake(userConfig = {}) {
    // Devices are replaced, not merged, so a config can name exactly its own.
    let config = deepMerge(DEFAULTS, { ...userConfig, devices: undefined });
    config.devices = structuredClone(userConfig.devices ?? DEFAULTS.devices);
    let rng = makeRng(config.seed);
    const timers = new TimerSet();
    const webhooks = new WebhookSender({
        getUrl: () => config.webhook_url,
        getSecret: () => config.webhook_secret,
        retries: config.webhook_retries,
        retryBaseMs: config.webhook_retry_base_ms,
        timeoutMs: config.webhook_timeout_ms,
        userAgent: 'Go-http-client/1.1',
        logCap: 1000,
    });
    const byId = new Map();
    const sent = new Ring(config.max_records, (rec) => byId.delete(rec.message_id));
    let rules = [];
    let ruleSeq = 0;
    const counters = { accepted: 0, rejected: 0, inbound: 0 };
    let selfUrl = null;

    function checkAuth(req, res) {
        if (!config.basic_auth || config.basic_auth.length === 0) return true;
        const m = /^Basic\s+(\S+)$/i.exec(req.headers.authorization || '');
        const cred = m ? Buffer.from(m[1], 'base64').toString('utf8') : null;
        if (cred !== null && config.basic_auth.includes(cred)) return true;
        // The gateway's basic-auth middleware answers with a bare 401.
        res.writeHead(401, {
            'content-type': 'text/plain; charset=utf-8',
            'www-authenticate': 'Basic realm="Restricted"',
        });
        res.end('Unauthorized');
        return false;
    }

    // Device selection as the gateway's middleware does it: X-Device-Id, then
    // ?device_id=, then the only device when there is exactly one.
    function resolveDevice(req, res, url) {
        const wanted = String(req.headers['x-device-id'] || url.searchParams.get('device_id') || '').trim();
        const ids = Object.keys(config.devices);
        if (!wanted) {
            if (ids.length === 1) return { id: ids[0], device: config.devices[ids[0]] };
            reply(res, 400, 'DEVICE_ID_REQUIRED', 'device_id is required via X-Device-Id header or device_id query');
            return null;
        }
        if (!config.devices[wanted]) {
            reply(
                res,
                404,
                'DEVICE_NOT_FOUND',
                'device not found; create a device first from /api/devices or provide a valid X-Device-Id',
                {
                    device_id: wanted,
                },
            );
            return null;
        }
        return { id: wanted, device: config.devices[wanted] };
    }

    function mustLogin(res, device) {
        const e =
            device.state === 'logged_out' ? NOT_LOGGED_IN : device.state === 'disconnected' ? NOT_CONNECTED : null;
        if (!e) return true;
        counters.rejected++;
        reply(res, e.status, e.code, e.message);
        return false;
    }

    function takeRule(deviceId, digits) {
        const i = rules.findIndex(
            (r) => (r.phone === '*' || r.phone === digits) && (r.device_id === undefined || r.device_id === deviceId),
        );
        if (i < 0) return null;
        const r = rules[i];
        r.hits++;
        if (r.times > 0 && --r.remaining <= 0) rules.splice(i, 1);
        return r;
    }

    // Applies an injected failure, if one matches. Returns true when it answered.
    async function applyRule(res, deviceId, jid) {
        const rule = takeRule(deviceId, digitsOf(jid.split('@')[0]));
        if (!rule) return false;
        if (rule.delay_ms) await timers.sleep(rule.delay_ms);
        if (rule.drop) {
            res.destroy();
            return true;
        }
        const e = rule.error ? PRESETS[rule.error](jid) : rule.status ? rule : null;
        if (!e) return false;
        counters.rejected++;
        reply(res, e.status, e.code ?? 'INTERNAL_SERVER_ERROR', e.message ?? 'injected error');
        return true;
    }

    function accept(res, dev, jid, kind, extra) {
        const now = Date.now();
        const rec = {
            message_id: newMessageId(),
            device_id: dev.id,
            device_jid: dev.device.jid,
            phone: jid,
            kind,
            ...extra,
            sent_at: new Date(now).toISOString(),
            receipts: [],
        };
        sent.push(rec);
        byId.set(rec.message_id, rec);
        counters.accepted++;
        const what = kind === 'image' ? 'Image' : 'Message';
        reply(res, 200, 'SUCCESS', 'Success', {
            message_id: rec.message_id,
            status: `${what} sent to ${jid} (server timestamp: ${new Date(now).toISOString()})`,
        });
        scheduleReceipts(rec, now);
    }

    function receiptPayload(rec, type, atMs) {
        return {
            event: 'message.ack',
            device_id: rec.device_jid,
            timestamp: new Date(atMs).toISOString().replace(/\.\d{3}Z$/, 'Z'),
            payload: {
                ids: [rec.message_id],
                chat_id: rec.phone,
                from: rec.phone,
                receipt_type: type,
                receipt_type_description: RECEIPT_TEXT[type] ?? type,
            },
        };
    }

    function emitReceipt(rec, type, delayMs, atMs) {
        rec.receipts.push(type);
        webhooks.schedule(receiptPayload(rec, type, atMs), delayMs, { kind: 'message.ack', id: rec.message_id, type });
    }

    // Receipt timestamps keep the logical order even when arrival is reversed.
    function scheduleReceipts(rec, now) {
        const delays = config.receipt_delays_ms || {};
        const plan = config.receipts.map((type) => ({ type, delay: rng.between(delays[type] ?? [20, 80]) }));
        plan.sort((a, b) => a.delay - b.delay);
        plan.forEach((p) => (p.at = now + p.delay));
        if (plan.length > 1 && rng.chance(config.out_of_order_prob)) {
            const arrival = plan.map((p) => p.delay).reverse();
            plan.forEach((p, i) => (p.delay = arrival[i]));
        }
        for (const p of plan) {
            emitReceipt(rec, p.type, p.delay, p.at);
            if (rng.chance(config.duplicate_prob))
                emitReceipt(rec, p.type, p.delay + rng.between(config.duplicate_delay_ms), p.at);
        }
    }

    // Shared start of every device-scoped API call.
    function begin(req, res, url) {
        if (!checkAuth(req, res)) return null;
        return resolveDevice(req, res, url);
    }

    function validation(res, message) {
        counters.rejected++;
        reply(res, 400, 'VALIDATION_ERROR', message);
    }

    async function sendMessage(req, res, { url }) {
        const dev = begin(req, res, url);
        if (!dev) return;
        const parsed = parseJson(await readBody(req, config.max_body_bytes));
        if (parsed.error || typeof parsed.value !== 'object' || parsed.value === null)
            return validation(res, 'invalid request body');
        const b = parsed.value;
        if (typeof b.phone !== 'string' || b.phone.trim() === '') return validation(res, 'phone: cannot be blank.');
        if (typeof b.message !== 'string' || b.message.trim() === '')
            return validation(res, 'message: cannot be blank.');
        if (!mustLogin(res, dev.device)) return;
        const jid = toJid(b.phone);
        if (!jid) {
            counters.rejected++;
            return reply(res, 400, 'INVALID_JID', 'your JID is invalid');
        }
        if (await applyRule(res, dev.id, jid)) return;
        accept(res, dev, jid, 'text', {
            message: b.message,
            ...(b.reply_message_id ? { reply_message_id: b.reply_message_id } : {}),
        });
    }

    async function sendImage(req, res, { url }) {
        const dev = begin(req, res, url);
        if (!dev) return;
        const ct = req.headers['content-type'] || '';
        if (!ct.startsWith('multipart/form-data')) return validation(res, 'request must be multipart/form-data');
        let form;
        try {
            form = await parseMultipart(await readBody(req, config.max_image_bytes), ct);
        } catch (e) {
            if (e instanceof HttpError) throw e;
            return validation(res, `malformed multipart body: ${e.message}`);
        }
        const { fields, files } = form;
        if (!fields.phone || !fields.phone.trim()) return validation(res, 'phone: cannot be blank.');
        const image = files.image;
        const imageUrl = fields.image_url;
        if (!image && !imageUrl) return validation(res, 'image or image_url must be provided');
        if (image && imageUrl) return validation(res, 'provide either image or image_url, not both');
        let mime = null;
        if (image) {
            mime = sniffImage(image.data);
            if (!mime || mime === 'image/webp')
                return validation(res, 'your image is not allowed. please use jpg/jpeg/png');
        } else {
            try {
                const u = new URL(imageUrl);
                if (u.protocol !== 'http:' && u.protocol !== 'https:') throw new Error('scheme');
            } catch {
                return validation(res, 'image_url: must be a valid URL.');
            }
        }
        if (!mustLogin(res, dev.device)) return;
        const jid = toJid(fields.phone);
        if (!jid) {
            counters.rejected++;
            return reply(res, 400, 'INVALID_JID', 'your JID is invalid');
        }
        if (await applyRule(res, dev.id, jid)) return;
        accept(res, dev, jid, 'image', {
            caption: fields.caption ?? '',
            ...(image
                ? {
                      image: {
                          filename: image.filename,
                          mime_type: mime,
                          size: image.data.length,
                          sha256: crypto.createHash('sha256').update(image.data).digest('hex'),
                      },
                  }
                : { image_url: imageUrl }),
            view_once: fields.view_once === 'true',
        });
    }

    function appLogin(req, res, { url }) {
        const dev = begin(req, res, url);
        if (!dev) return;
        if (dev.device.state === 'logged_in') return reply(res, 400, 'ALREADY_LOGGED_IN', 'You already logged in :)');
        const base = config.qr_link_base || selfUrl || `http://${req.headers.host}`;
        reply(res, 200, 'SUCCESS', 'Success', {
            qr_link: `${base}/statics/qrcode/scan-qr-${crypto.randomUUID()}.png`,
            qr_duration: config.qr_duration,
        });
    }

    function appLogout(req, res, { url }) {
        const dev = begin(req, res, url);
        if (!dev) return;
        dev.device.state = 'logged_out';
        reply(res, 200, 'SUCCESS', 'Success logout');
    }

    function appReconnect(req, res, { url }) {
        const dev = begin(req, res, url);
        if (!dev) return;
        if (dev.device.state === 'logged_out')
            return reply(res, NOT_LOGGED_IN.status, NOT_LOGGED_IN.code, NOT_LOGGED_IN.message);
        dev.device.state = 'logged_in';
        reply(res, 200, 'SUCCESS', 'Reconnect success');
    }

    function appDevices(req, res) {
        if (!checkAuth(req, res)) return;
        const results = Object.values(config.devices)
            .filter((d) => d.state !== 'logged_out')
            .map((d) => ({ name: d.name ?? '', device: d.jid.replace('@', ':1@') }));
        reply(res, 200, 'SUCCESS', 'Fetch device success', results);
    }

    // --- control API ---

    const jsonBody = (req) => readJson(req, config.max_body_bytes);

    async function addRule(req, res) {
        const b = await jsonBody(req);
        if (b.phone === undefined) throw new HttpError(400, 'rule needs "phone" (digits or "*")');
        if (b.error !== undefined && !PRESETS[b.error])
            throw new HttpError(400, `unknown error preset; use one of ${Object.keys(PRESETS).join(', ')}`);
        if (b.error === undefined && b.status === undefined && !b.delay_ms && !b.drop)
            throw new HttpError(400, 'rule needs "error", "status", "delay_ms" or "drop"');
        if (rules.length >= config.max_rules) throw new HttpError(409, 'too many rules');
        const times = b.times === undefined ? 1 : Number(b.times);
        const rule = {
            id: ++ruleSeq,
            phone: b.phone === '*' ? '*' : digitsOf(b.phone),
            device_id: b.device_id,
            error: b.error,
            status: b.status,
            code: b.code,
            message: b.message,
            delay_ms: b.delay_ms,
            drop: !!b.drop,
            times,
            remaining: times,
            hits: 0,
        };
        rules.push(rule);
        sendJson(res, 201, rule);
    }

    async function setDevice(req, res, { params }) {
        const b = await jsonBody(req);
        const d = config.devices[params.id] ?? {
            jid: `${60300000000 + Object.keys(config.devices).length + 1}@s.whatsapp.net`,
            state: 'logged_in',
        };
        if (b.state !== undefined && !['logged_in', 'logged_out', 'disconnected'].includes(b.state))
            throw new HttpError(400, 'state must be logged_in, logged_out or disconnected');
        config.devices[params.id] = { ...d, ...b };
        sendJson(res, 200, { id: params.id, ...config.devices[params.id] });
    }

    async function injectInbound(req, res) {
        const b = await jsonBody(req);
        const ids = Object.keys(config.devices);
        const devId = b.device_id ?? (ids.length === 1 ? ids[0] : undefined);
        const device = config.devices[devId];
        if (!device) throw new HttpError(400, 'unknown or missing device_id');
        const from = digitsOf(b.from);
        if (!from) throw new HttpError(400, '"from" (digits) is required');
        const id = newMessageId();
        const at = new Date(b.timestamp_ms ?? Date.now()).toISOString().replace(/\.\d{3}Z$/, 'Z');
        const payload = {
            event: 'message',
            device_id: device.jid,
            payload: {
                id,
                chat_id: `${from}@s.whatsapp.net`,
                from: `${from}@s.whatsapp.net`,
                from_name: b.name ?? 'Test User',
                timestamp: at,
                is_from_me: false,
                body: String(b.text ?? ''),
            },
        };
        counters.inbound++;
        webhooks.schedule(payload, b.delay_ms ?? 0, { kind: 'message', id });
        sendJson(res, 202, { id, payload });
    }

    async function injectReceipt(req, res) {
        const b = await jsonBody(req);
        const rec = byId.get(b.id);
        if (!rec) throw new HttpError(404, 'unknown message id');
        const type = b.receipt_type ?? 'delivered';
        emitReceipt(rec, type, b.delay_ms ?? 0, b.timestamp_ms ?? Date.now());
        sendJson(res, 202, { id: rec.message_id, receipt_type: type });
    }

    async function setConfig(req, res) {
        const b = await jsonBody(req);
        const devices = b.devices;
        delete b.devices;
        config = deepMerge(config, b);
        if (devices) config.devices = structuredClone(devices);
        if (b.seed !== undefined) rng = makeRng(b.seed);
        sendJson(res, 200, publicConfig());
    }

    function publicConfig() {
        const { basic_auth, webhook_secret, ...rest } = config;
        return rest;
    }

    function listSent(req, res, { url }) {
        const phone = url.searchParams.get('phone');
        const deviceId = url.searchParams.get('device_id');
        const limit = Number(url.searchParams.get('limit') || 0);
        let list = sent.items;
        if (phone) list = list.filter((r) => r.phone.startsWith(digitsOf(phone) + '@'));
        if (deviceId) list = list.filter((r) => r.device_id === deviceId);
        if (limit > 0) list = list.slice(-limit);
        sendJson(res, 200, { total_accepted: counters.accepted, dropped: sent.dropped, messages: list });
    }

    function reset(req, res) {
        sent.clear();
        rules = [];
        webhooks.cancelAll();
        webhooks.log.clear();
        Object.keys(counters).forEach((k) => (counters[k] = 0));
        rng = makeRng(config.seed);
        sendJson(res, 200, { ok: true });
    }

    const stats = () => fakeStats(counters, sent, rules, webhooks);

    const router = new Router()
        .add('POST', '/send/message', sendMessage)
        .add('POST', '/send/image', sendImage)
        .add('GET', '/app/login', appLogin)
        .add('GET', '/app/logout', appLogout)
        .add('GET', '/app/reconnect', appReconnect)
        .add('GET', '/app/devices', appDevices)
        // Served without auth so a dashboard's <img> can show it.
        .add('GET', '/statics/qrcode/:file', (req, res) => {
            res.writeHead(200, { 'content-type': 'image/png', 'content-length': QR_PNG.length });
            res.end(QR_PNG);
        })
        .add('GET', '/statics/qr.png', (req, res) => {
            res.writeHead(200, { 'content-type': 'image/png', 'content-length': QR_PNG.length });
            res.end(QR_PNG);
        })
        .add('GET', '/_control/devices', (req, res) => sendJson(res, 200, { devices: config.devices }))
        .add('POST', '/_control/devices/:id', setDevice)
        .add('POST', '/_control/devices/:id/scan', (req, res, { params }) => {
            const d = config.devices[params.id];
            if (!d) throw new HttpError(404, 'unknown device');
            d.state = 'logged_in';
            sendJson(res, 200, { id: params.id, ...d });
        })
        .add('DELETE', '/_control/devices/:id', (req, res, { params }) => {
            delete config.devices[params.id];
            sendJson(res, 200, { devices: config.devices });
        })
        .add('POST', '/_control/inbound', injectInbound)
        .add('POST', '/_control/receipt', injectReceipt);
    addControlRoutes(router, {
        stats,
        publicConfig,
        setConfig,
        getRules: () => rules,
        setRules: (list) => (rules = list),
        addRule,
        listSent,
        reset,
        webhooks,
    });

    const http = createFakeServer(router, 'gowa', {
        notFound(req, res, url, pathMatched) {
            reply(
                res,
                pathMatched ? 405 : 404,
                pathMatched ? 'METHOD_NOT_ALLOWED' : 'NOT_FOUND',
                `Cannot ${req.method} ${url.pathname}`,
            );
        },
        error(req, res, status, err) {
            reply(res, status, status === 500 ? 'INTERNAL_SERVER_ERROR' : 'VALIDATION_ERROR', err.message);
        },
    });

    return {
        get config() {
            return config;
        },
        sent,
        webhooks,
        stats,
        async listen(port = config.port, host = config.host) {
            const p = await http.listen(port, host);
            selfUrl = `http://${host.includes(':') ? `[${host}]` : host}:${p}`;
            return p;
        },
        async close() {
            timers.clear();
            webhooks.close();
            await http.close();
        },
    };
}

module.exports = { createGowaFake, makeQrPng, DEFAULTS };

if (require.main === module) runMain(createGowaFake, DEFAULTS, 'GOWA_FAKE');
