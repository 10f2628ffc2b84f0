'use strict';
// A fake of Meta's Graph API for the WhatsApp Cloud API, for wacast's
// transport and integration tests. It behaves like the real service where
// wacast can tell the difference: bearer tokens per phone number id, request
// bodies validated against the request schema of Meta's own OpenAPI
// description (loaded at start-up, not copied), Meta's error bodies and HTTP
// statuses, a per-number throughput limit, and status webhooks signed with
// X-Hub-Signature-256 that arrive late, sometimes out of order or twice.
// Tests steer it through /_control/* (see README.md).
//
// Run: node graph.js [--port N] [--host H] [--config file.json]
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
    httpGet,
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
const fs = require('node:fs');
const path = require('node:path');
const yaml = require('js-yaml');
const Ajv2020 = require('ajv/dist/2020').default;
const addFormats = require('ajv-formats');

const DEFAULT_SPEC = path.resolve(__dirname, '../../../shared/reference/whatsapp-business-messaging-api_v23.0.yaml');

const DEFAULTS = {
    port: 0,
    host: '127.0.0.1',
    spec: process.env.WACAST_OPENAPI_SPEC || DEFAULT_SPEC,
    // phone_number_id -> token, or list of tokens; "*" applies to any id.
    tokens: {},
    waba_id: '100000000000001',
    // phone_number_id -> display number in webhook metadata (default: the id).
    display_numbers: {},
    app_secret: 'fake-app-secret',
    webhook_url: null,
    webhook_retries: 3,
    webhook_retry_base_ms: 200,
    webhook_timeout_ms: 5000,
    // Which statuses follow an accepted send, and when (ms after the send;
    // a number or [min, max]).
    statuses: ['sent', 'delivered', 'read'],
    status_delays_ms: { sent: [10, 30], delivered: [40, 80], read: [100, 160], failed: [10, 30] },
    out_of_order_prob: 0,
    duplicate_prob: 0,
    duplicate_delay_ms: [5, 50],
    seed: 1,
    // Throughput: messages per second per phone number id before 130429.
    mps: 80,
    mps_by_number: {},
    // Minimum gap between two sends to the same recipient from one number
    // before 131056; 0 turns the check off (Meta's own is about 6000).
    pair_min_interval_ms: 0,
    max_body_bytes: 1 << 20,
    max_media_bytes: 16 << 20,
    max_records: 10000,
    max_rules: 1000,
};

// Meta's error codes wacast handles, with the HTTP status, title and details
// the Cloud API answers with. Handling keys on `code`, never on text.
const ERRORS = {
    1: { http: 500, title: 'API Unknown', message: 'An unknown error has occurred.' },
    2: { http: 503, title: 'API Service', message: 'Service temporarily unavailable' },
    4: { http: 429, title: 'API Too Many Calls', message: 'Application request limit reached' },
    100: { http: 400, title: 'Invalid parameter', message: 'Invalid parameter' },
    190: {
        http: 401,
        title: 'Access token has expired',
        message: 'Error validating access token: Session has expired.',
        subcode: 463,
    },
    368: {
        http: 403,
        title: 'Temporarily blocked for policies violations',
        message: 'Temporarily blocked for policies violations',
        details:
            'The WhatsApp Business Account associated with the app has been restricted or disabled for violating a platform policy.',
    },
    80007: { http: 429, title: 'Rate limit issues', message: 'Rate limit issues' },
    130429: {
        http: 429,
        title: 'Rate limit hit',
        message: 'Rate limit hit',
        details: 'Cloud API message throughput has been reached.',
    },
    131000: { http: 500, title: 'Something went wrong', message: 'Something went wrong' },
    131005: { http: 403, title: 'Access denied', message: 'Access denied' },
    131008: { http: 400, title: 'Required parameter is missing', message: 'Required parameter is missing' },
    131009: { http: 400, title: 'Parameter value is not valid', message: 'Parameter value is not valid' },
    131026: {
        http: 400,
        title: 'Message Undeliverable',
        message: 'Message Undeliverable',
        details:
            'Message failed to send because the recipient is not a WhatsApp user or has not accepted the latest terms.',
    },
    131047: {
        http: 400,
        title: 'Re-engagement message',
        message: 'Re-engagement message',
        details:
            'Message failed to send because more than 24 hours have passed since the customer last replied to this number.',
    },
    131048: {
        http: 400,
        title: 'Spam rate limit hit',
        message: 'Spam rate limit hit',
        details:
            'Message failed to send because there are restrictions on how many messages can be sent from this phone number.',
    },
    131049: {
        http: 400,
        title: 'This message was not delivered to maintain healthy ecosystem engagement.',
        message: 'This message was not delivered to maintain healthy ecosystem engagement.',
        details: 'In order to maintain a healthy ecosystem engagement, the message failed to be delivered.',
    },
    131050: {
        http: 400,
        title: 'Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business.',
        message:
            'Unable to deliver the message. This recipient has chosen to stop receiving marketing messages on WhatsApp from your business.',
        details: 'The user has stopped marketing messages from this business.',
    },
    131053: { http: 400, title: 'Media upload error', message: 'Media upload error' },
    131056: {
        http: 400,
        title: '(Business Account, Consumer Account) pair rate limit hit',
        message: '(Business Account, Consumer Account) pair rate limit hit',
        details:
            'Message failed to send because there were too many messages sent from this phone number to the same phone number in a short period of time.',
    },
    133010: { http: 400, title: 'Phone number not registered', message: 'Account not registered' },
};

function fbtraceId() {
    return 'A' + crypto.randomBytes(8).toString('base64').replace(/[+/=]/g, 'x');
}

// Builds Meta's error reply: {"error":{message,type,code,error_data,fbtrace_id}}.
function metaError(code, over = {}) {
    const known = ERRORS[code] || { http: 400, title: 'Error', message: 'Error' };
    const status = over.status ?? known.http;
    const error = {
        message: over.message ?? `(#${code}) ${known.message}`,
        type: 'OAuthException',
        code,
    };
    // over.subcode === null means "no subcode" even where the code has one.
    const subcode = over.subcode === undefined ? known.subcode : over.subcode;
    if (subcode !== undefined && subcode !== null) error.error_subcode = subcode;
    error.error_data = { messaging_product: 'whatsapp', details: over.details ?? known.details ?? known.title };
    error.fbtrace_id = fbtraceId();
    return { status, body: { error }, title: known.title };
}

function newWamid(waId) {
    // Real ids are base64 of a small binary record holding the recipient; the
    // shape (prefix, alphabet, ~60 chars) is what matters to a client.
    const raw = Buffer.concat([Buffer.from([0x1c, 0x18, 0x0b]), Buffer.from(waId), crypto.randomBytes(18)]);
    return 'wamid.' + raw.toString('base64');
}

function isHttpUrl(s) {
    try {
        const u = new URL(s);
        return u.protocol === 'http:' || u.protocol === 'https:';
    } catch {
        return false;
    }
}

// --- request schema, from Meta's OpenAPI description -----------------------

const schemaCache = new Map();

// Loads the send operation's request schema from the spec and compiles one
// validator per message type (the discriminator's mapping). Two repairs, both
// documented in shared/reference/README.md and tests/fakes/README.md:
//  - Each message type is allOf(BaseMessageProperties, {closed object}), and
//    JSON Schema's additionalProperties only sees its own branch, so taken
//    literally the spec rejects every message ("to" is not a property of the
//    closed branch). The closed branches become unevaluatedProperties:false on
//    the allOf, which is what the authors meant.
//  - biz_opaque_callback_data (<= 512 chars) is allowed on every type.
function loadSendSchema(specPath) {
    if (schemaCache.has(specPath)) return schemaCache.get(specPath);
    // CORE_SCHEMA: JSON-like scalars only (no YAML timestamps), and faster.
    const doc = yaml.load(fs.readFileSync(specPath, 'utf8'), { schema: yaml.CORE_SCHEMA });
    const op = doc?.paths?.['/{Version}/{Phone-Number-ID}/messages']?.post;
    let root = op?.requestBody?.content?.['application/json']?.schema;
    if (!root) throw new Error(`${specPath}: no requestBody schema for POST /{Version}/{Phone-Number-ID}/messages`);
    const all = doc.components?.schemas || {};
    const PREFIX = '#/components/schemas/';
    const picked = {};
    const visit = (node) => {
        if (Array.isArray(node)) return node.forEach(visit);
        if (!node || typeof node !== 'object') return;
        if (typeof node.$ref === 'string' && node.$ref.startsWith(PREFIX)) {
            const name = node.$ref.slice(PREFIX.length);
            if (!picked[name]) {
                if (!all[name]) throw new Error(`${specPath}: dangling $ref ${node.$ref}`);
                picked[name] = structuredClone(all[name]);
                visit(picked[name]);
            }
        }
        Object.values(node).forEach(visit);
    };
    visit(root);

    const closeAllOf = (node) => {
        if (Array.isArray(node)) return node.forEach(closeAllOf);
        if (!node || typeof node !== 'object') return;
        if (Array.isArray(node.allOf)) {
            for (const branch of node.allOf) {
                if (branch && branch.additionalProperties === false) {
                    delete branch.additionalProperties;
                    node.unevaluatedProperties = false;
                }
            }
        }
        Object.values(node).forEach(closeAllOf);
    };
    closeAllOf(picked);

    const rootSchema = root.$ref ? picked[root.$ref.slice(PREFIX.length)] : root;
    const mapping = rootSchema?.discriminator?.mapping || {};
    const types = {};
    for (const [type, ref] of Object.entries(mapping)) {
        const name = ref.slice(PREFIX.length);
        if (!picked[name]) throw new Error(`${specPath}: discriminator maps ${type} to unknown ${ref}`);
        picked[name].properties = {
            ...(picked[name].properties || {}),
            biz_opaque_callback_data: { type: 'string', maxLength: 512 },
        };
        types[type] = name;
    }
    if (Object.keys(types).length === 0) throw new Error(`${specPath}: Message schema has no discriminator mapping`);

    // strict:false because OpenAPI schemas carry keywords JSON Schema does not
    // know (example, discriminator); they are annotations, not constraints.
    const ajv = new Ajv2020({ strict: false, allErrors: true });
    addFormats(ajv);
    // ajv-formats' "url" refuses private and loopback hosts; tests serve media
    // from 127.0.0.1, and the spec only says "HTTP/HTTPS only".
    ajv.addFormat('url', { type: 'string', validate: isHttpUrl });
    const id = 'https://wacast.invalid/whatsapp-send.json';
    ajv.addSchema({ $id: id, components: { schemas: picked } });
    const validators = {};
    const result = {
        types: Object.keys(types),
        validatorFor(type) {
            if (!types[type]) return null;
            if (!validators[type]) validators[type] = ajv.getSchema(`${id}${PREFIX}${types[type]}`);
            return validators[type];
        },
    };
    schemaCache.set(specPath, result);
    return result;
}

// Turns ajv's findings into Meta's wording: the first problem in the message,
// up to five in error_data.details.
function describeSchemaErrors(errors) {
    const one = (e) => {
        const where = e.instancePath ? e.instancePath.slice(1).replace(/\//g, '.') : '';
        switch (e.keyword) {
            case 'required':
                return `The parameter ${where ? where + '.' : ''}${e.params.missingProperty} is required.`;
            case 'additionalProperties':
                return `Unexpected key "${e.params.additionalProperty}" on param "${where || 'message'}".`;
            case 'unevaluatedProperties':
                return `Unexpected key "${e.params.unevaluatedProperty}" on param "${where || 'message'}".`;
            case 'enum':
                return `Param ${where} must be one of {${e.params.allowedValues.join(', ')}}.`;
            default:
                return `Param ${where || 'message'} ${e.message}.`;
        }
    };
    // oneOf/anyOf summaries repeat what their branches said; skip them.
    const useful = (errors || []).filter((e) => e.keyword !== 'oneOf' && e.keyword !== 'anyOf');
    const list = (useful.length ? useful : errors || []).map(one);
    const uniq = [...new Set(list)];
    return { message: `(#100) ${uniq[0] || 'Invalid parameter'}`, details: uniq.slice(0, 5).join(' ') };
}

// Checks a send body; returns null when acceptable, else a metaError.
function checkSendBody(schema, body) {
    if (!body || typeof body !== 'object' || Array.isArray(body))
        return metaError(100, { details: 'The request body must be a JSON object.' });
    if (typeof body.type !== 'string')
        return metaError(100, {
            message: '(#100) The parameter type is required.',
            details: 'The parameter type is required.',
        });
    const validate = schema.validatorFor(body.type);
    if (!validate)
        return metaError(100, {
            message: `(#100) Param type must be one of {${schema.types.join(', ')}}.`,
            details: `Unsupported message type "${body.type}".`,
        });
    if (!validate(body)) return metaError(100, describeSchemaErrors(validate.errors));
    // The schema only says "string"; the real API insists on this value.
    if (body.messaging_product !== 'whatsapp')
        return metaError(100, {
            message: '(#100) Param messaging_product must be "whatsapp".',
            details: `messaging_product is "${body.messaging_product}".`,
        });
    if (body.recipient_type !== 'group') {
        const digits = digitsOf(body.to);
        if (digits.length < 8 || digits.length > 15 || /[^\d+\s().-]/.test(body.to))
            return metaError(131009, { details: `Recipient phone number "${body.to}" is not a valid phone number.` });
    }
    return null;
}

// --- the fake ----------------------------------------------------------------

function createGraphFake(userConfig = {}) {
    let config = deepMerge(DEFAULTS, userConfig);
    const schema = loadSendSchema(config.spec);
    let rng = makeRng(config.seed);
    const timers = new TimerSet();
    const webhooks = new WebhookSender({
        getUrl: () => config.webhook_url,
        getSecret: () => config.app_secret,
        retries: config.webhook_retries,
        retryBaseMs: config.webhook_retry_base_ms,
        timeoutMs: config.webhook_timeout_ms,
        userAgent: 'facebookexternalua',
        logCap: 1000,
    });

    const byId = new Map();
    const sent = new Ring(config.max_records, (rec) => byId.delete(rec.id));
    const media = new Ring(1000, (m) => mediaById.delete(m.id));
    const mediaById = new Map();
    let rules = [];
    let ruleSeq = 0;
    const windowByNumber = new Map(); // phone_number_id -> accepted send times (ms), last second only
    const lastPairSend = new Map(); // "pnid|wa_id" -> ms
    const expiredTokens = new Set();
    const counters = { accepted: 0, rejected: 0, inbound: 0 };

    const tokensFor = (pnid) => {
        const t = config.tokens[pnid] ?? config.tokens['*'];
        if (t === undefined || t === null) return [];
        return Array.isArray(t) ? t : [t];
    };
    const allTokens = () =>
        new Set(
            Object.values(config.tokens)
                .flat()
                .filter((t) => t !== null),
        );
    const numbers = () => Object.keys(config.tokens).filter((k) => k !== '*');
    const metadataFor = (pnid) => ({
        display_phone_number: config.display_numbers[pnid] ?? pnid,
        phone_number_id: pnid,
    });
    const envelope = (pnid, value) => ({
        object: 'whatsapp_business_account',
        entry: [
            {
                id: config.waba_id,
                changes: [
                    {
                        value: { messaging_product: 'whatsapp', metadata: metadataFor(pnid), ...value },
                        field: 'messages',
                    },
                ],
            },
        ],
    });

    function statusPayload(rec, status, timestampSec, failure) {
        const st = { id: rec.id, status, timestamp: String(timestampSec), recipient_id: rec.wa_id };
        if (rec.biz_opaque_callback_data !== undefined) st.biz_opaque_callback_data = rec.biz_opaque_callback_data;
        if (status === 'sent' || status === 'delivered') {
            const category = rec.type === 'template' ? 'marketing' : 'service';
            st.conversation = {
                id: crypto
                    .createHash('md5')
                    .update(rec.phone_number_id + rec.wa_id)
                    .digest('hex'),
                origin: { type: category },
            };
            st.pricing = { billable: category !== 'service', pricing_model: 'PMP', category };
        }
        if (status === 'failed') {
            const e = metaError(failure.code, failure);
            st.errors = [
                {
                    code: failure.code,
                    title: failure.title ?? e.title,
                    message: failure.message ?? e.title,
                    error_data: { details: e.body.error.error_data.details },
                    href: 'https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/',
                },
            ];
        }
        return envelope(rec.phone_number_id, { statuses: [st] });
    }

    function emitStatus(rec, status, delayMs, timestampSec, failure) {
        rec.statuses.push(status);
        webhooks.schedule(statusPayload(rec, status, timestampSec, failure), delayMs, {
            kind: 'status',
            id: rec.id,
            status,
        });
    }

    // Plans the statuses of one accepted message. Timestamps follow the
    // logical order (sent <= delivered <= read) even when arrival does not,
    // as with Meta.
    function scheduleStatuses(rec, statuses, failure) {
        const delays = config.status_delays_ms || {};
        const plan = statuses.map((status) => ({ status, delay: rng.between(delays[status] ?? [10, 50]) }));
        plan.sort((a, b) => a.delay - b.delay);
        const base = rec.accepted_ms;
        plan.forEach((p) => (p.ts = Math.floor((base + p.delay) / 1000)));
        if (plan.length > 1 && rng.chance(config.out_of_order_prob)) {
            const arrival = plan.map((p) => p.delay).reverse();
            plan.forEach((p, i) => (p.delay = arrival[i]));
        }
        for (const p of plan) {
            emitStatus(rec, p.status, p.delay, p.ts, failure);
            if (rng.chance(config.duplicate_prob))
                emitStatus(rec, p.status, p.delay + rng.between(config.duplicate_delay_ms), p.ts, failure);
        }
    }

    function takeRule(pnid, waId) {
        const i = rules.findIndex(
            (r) => (r.to === '*' || r.to === waId) && (r.phone_number_id === undefined || r.phone_number_id === pnid),
        );
        if (i < 0) return null;
        const r = rules[i];
        r.hits++;
        if (r.times > 0 && --r.remaining <= 0) rules.splice(i, 1);
        return r;
    }

    // Sliding one-second window of accepted sends per number.
    function overThroughput(pnid, now) {
        const limit = config.mps_by_number[pnid] ?? config.mps;
        if (!(limit > 0)) return false;
        let w = windowByNumber.get(pnid);
        if (!w) windowByNumber.set(pnid, (w = []));
        while (w.length && w[0] <= now - 1000) w.shift();
        return w.length >= limit;
    }

    function overPairLimit(pnid, waId, now) {
        const gap = config.pair_min_interval_ms;
        if (!(gap > 0)) return false;
        const key = pnid + '|' + waId;
        const last = lastPairSend.get(key);
        if (lastPairSend.size > 100000) {
            for (const [k, t] of lastPairSend) if (t <= now - gap) lastPairSend.delete(k);
        }
        return last !== undefined && now - last < gap;
    }

    // Returns the token, or replies 401/400 as Graph does and returns null.
    function authorize(req, res, url, pnid) {
        const header = req.headers.authorization || '';
        const m = /^Bearer\s+(\S+)\s*$/i.exec(header);
        const token = m ? m[1] : url.searchParams.get('access_token');
        if (!token || !allTokens().has(token)) {
            reject(
                res,
                metaError(190, {
                    message: token
                        ? 'Invalid OAuth access token - Cannot parse access token'
                        : 'An active access token must be used to query information about the current user.',
                    subcode: null,
                    details: 'The access token is missing, malformed or unknown.',
                }),
            );
            return null;
        }
        if (expiredTokens.has(token)) {
            reject(res, metaError(190));
            return null;
        }
        if (!tokensFor(pnid).includes(token)) {
            reject(
                res,
                metaError(100, {
                    message: `Unsupported post request. Object with ID '${pnid}' does not exist, cannot be loaded due to missing permissions, or does not support this operation.`,
                    subcode: 33,
                    details: 'The access token is not valid for this phone number id.',
                }),
            );
            return null;
        }
        return token;
    }

    function reject(res, e) {
        counters.rejected++;
        const headers = e.status === 401 ? { 'www-authenticate': 'OAuth "Facebook Platform" "invalid_token"' } : {};
        sendJson(res, e.status, e.body, headers);
    }

    function checkVersion(version) {
        return /^v\d+\.\d+$/.test(version);
    }

    async function sendMessage(req, res, { params, url }) {
        const { version, pnid } = params;
        if (!checkVersion(version))
            return reject(
                res,
                metaError(100, { message: `(#100) Unknown API version ${version}`, details: 'Use vNN.N.' }),
            );
        if (!authorize(req, res, url, pnid)) return;
        const raw = await readBody(req, config.max_body_bytes);
        const parsed = parseJson(raw);
        if (parsed.error)
            return reject(res, metaError(100, { details: `The request body is not valid JSON: ${parsed.error}` }));
        const body = parsed.value;
        const bad = checkSendBody(schema, body);
        if (bad) return reject(res, bad);
        // An uploaded image is known only on the number it was uploaded to,
        // and only until it expires (30 days at Meta; /_control/media/expire
        // here): anything else is Meta's invalid-parameter answer.
        const mediaId = body.type === 'image' ? body.image?.id : undefined;
        if (mediaId !== undefined && mediaById.get(String(mediaId))?.phone_number_id !== pnid)
            return reject(
                res,
                metaError(100, {
                    details: `Param image['id'] is not a valid whatsapp business account media attachment ID`,
                }),
            );

        const waId = body.recipient_type === 'group' ? String(body.to) : digitsOf(body.to);
        const rule = takeRule(pnid, waId);
        if (rule) {
            if (rule.delay_ms) await timers.sleep(rule.delay_ms);
            // drop: true resets before the message is taken; "after_accept"
            // takes it (record, status webhooks) and resets instead of answering,
            // as when a connection breaks after Meta accepted a send.
            if (rule.drop === true) return res.destroy();
            if (rule.mode !== 'webhook' && (rule.code !== undefined || rule.status !== undefined)) {
                const code = rule.code ?? (rule.status === 503 ? 2 : 1);
                return reject(res, metaError(code, rule));
            }
        }

        const now = Date.now();
        if (overThroughput(pnid, now)) return reject(res, metaError(130429));
        if (overPairLimit(pnid, waId, now)) return reject(res, metaError(131056));
        windowByNumber.get(pnid)?.push(now);
        if (config.pair_min_interval_ms > 0) lastPairSend.set(pnid + '|' + waId, now);

        const rec = {
            id: newWamid(waId),
            phone_number_id: pnid,
            to: body.to,
            wa_id: waId,
            type: body.type,
            text: body.text?.body,
            biz_opaque_callback_data: body.biz_opaque_callback_data,
            // Bodies are kept for assertions, but never a huge one.
            request: raw.length <= 65536 ? body : { truncated: raw.length },
            accepted_at: new Date(now).toISOString(),
            accepted_ms: now,
            statuses: [],
        };
        sent.push(rec);
        byId.set(rec.id, rec);
        counters.accepted++;
        if (rule && rule.drop === 'after_accept') res.destroy();
        else
            sendJson(res, 200, {
                messaging_product: 'whatsapp',
                contacts: [{ input: body.to, wa_id: waId }],
                messages: [{ id: rec.id, ...(body.type === 'template' ? { message_status: 'accepted' } : {}) }],
            });
        if (rule && rule.mode === 'webhook') {
            // Meta reports some failures only later, as a "failed" status.
            const code = rule.code ?? 131026;
            scheduleStatuses(rec, ['failed'], {
                code,
                message: rule.message,
                details: rule.details,
                title: rule.title,
            });
        } else {
            scheduleStatuses(rec, config.statuses);
        }
    }

    async function uploadMedia(req, res, { params, url }) {
        const { version, pnid } = params;
        if (!checkVersion(version))
            return reject(res, metaError(100, { message: `(#100) Unknown API version ${version}` }));
        if (!authorize(req, res, url, pnid)) return;
        const ct = req.headers['content-type'] || '';
        if (!ct.startsWith('multipart/form-data'))
            return reject(res, metaError(100, { details: 'Media must be uploaded as multipart/form-data.' }));
        const raw = await readBody(req, config.max_media_bytes);
        let form;
        try {
            form = await parseMultipart(raw, ct);
        } catch (e) {
            return reject(res, metaError(100, { details: `Malformed multipart body: ${e.message}` }));
        }
        if (form.fields.messaging_product !== 'whatsapp')
            return reject(res, metaError(100, { message: '(#100) The parameter messaging_product is required.' }));
        const file = form.files.file;
        if (!file || file.data.length === 0)
            return reject(res, metaError(100, { message: '(#100) The parameter file is required.' }));
        const declared = (form.fields.type || file.type || '').split(';')[0].trim();
        const limits = { 'image/jpeg': 5 << 20, 'image/png': 5 << 20, 'image/webp': 500 << 10 };
        if (declared.startsWith('image/')) {
            if (!limits[declared])
                return reject(res, metaError(131053, { details: `Unsupported image type ${declared}.` }));
            if (sniffImage(file.data) !== declared)
                return reject(res, metaError(131053, { details: `The file is not a valid ${declared}.` }));
            if (file.data.length > limits[declared])
                return reject(res, metaError(131053, { details: `Image larger than ${limits[declared]} bytes.` }));
        } else if (!declared) {
            return reject(res, metaError(100, { message: '(#100) The parameter type is required.' }));
        }
        const id = String(1e15 + crypto.randomInt(1e9) * 1e5 + crypto.randomInt(1e5));
        const m = {
            id,
            phone_number_id: pnid,
            mime_type: declared,
            file_size: file.data.length,
            sha256: crypto.createHash('sha256').update(file.data).digest('hex'),
        };
        media.push(m);
        mediaById.set(id, m);
        sendJson(res, 200, { id });
    }

    // --- control API ---

    // Forgets uploaded media as Meta does after 30 days: {"id": "..."} or all.
    async function expireMedia(req, res) {
        const b = await readJson(req, config.max_body_bytes);
        const ids = b && b.id !== undefined ? [String(b.id)] : [...mediaById.keys()];
        for (const id of ids) mediaById.delete(id);
        sendJson(res, 200, { expired: ids.length });
    }

    const jsonBody = (req) => readJson(req, config.max_body_bytes);

    async function addRule(req, res) {
        const b = await jsonBody(req);
        if (b.to === undefined) throw new HttpError(400, 'rule needs "to" (a number or "*")');
        if (b.code === undefined && b.status === undefined && !b.delay_ms && !b.drop)
            throw new HttpError(400, 'rule needs "code", "status", "delay_ms" or "drop"');
        if (b.status !== undefined && !(b.status >= 400 && b.status <= 599))
            throw new HttpError(400, '"status" must be an HTTP error status');
        if (rules.length >= config.max_rules) throw new HttpError(409, 'too many rules');
        const times = b.times === undefined ? 1 : Number(b.times);
        const rule = {
            id: ++ruleSeq,
            to: b.to === '*' ? '*' : digitsOf(b.to),
            phone_number_id: b.phone_number_id,
            code: b.code,
            status: b.status,
            message: b.message,
            details: b.details,
            title: b.title,
            mode: b.mode === 'webhook' ? 'webhook' : 'response',
            delay_ms: b.delay_ms,
            drop: b.drop === 'after_accept' ? 'after_accept' : !!b.drop,
            times,
            remaining: times,
            hits: 0,
        };
        rules.push(rule);
        sendJson(res, 201, rule);
    }

    async function setTokens(req, res) {
        const b = await jsonBody(req);
        const tokens = b.tokens ?? b;
        for (const [k, v] of Object.entries(tokens)) {
            if (k === 'expired') continue;
            if (v === null) delete config.tokens[k];
            else config.tokens[k] = v;
        }
        for (const t of b.expired || []) expiredTokens.add(t);
        for (const t of b.revived || []) expiredTokens.delete(t);
        sendJson(res, 200, { tokens: Object.keys(config.tokens), expired: expiredTokens.size });
    }

    async function setConfig(req, res) {
        const b = await jsonBody(req);
        delete b.spec; // the schema is loaded once
        config = deepMerge(config, b);
        if (b.seed !== undefined) rng = makeRng(b.seed);
        sendJson(res, 200, publicConfig());
    }

    function publicConfig() {
        const { tokens, app_secret, ...rest } = config;
        return { ...rest, phone_number_ids: Object.keys(tokens) };
    }

    async function injectInbound(req, res) {
        const b = await jsonBody(req);
        const pnid = b.phone_number_id ?? numbers()[0];
        if (!pnid) throw new HttpError(400, 'no phone_number_id given or configured');
        const from = digitsOf(b.from);
        if (!from) throw new HttpError(400, '"from" (digits) is required');
        const ts = Math.floor((b.timestamp_ms ?? Date.now()) / 1000);
        const id = newWamid(from);
        const message = { from, id, timestamp: String(ts), type: 'text', text: { body: String(b.text ?? '') } };
        if (b.context_id) message.context = { from: metadataFor(pnid).display_phone_number, id: b.context_id };
        const payload = envelope(pnid, {
            contacts: [{ profile: { name: b.name ?? 'Test User' }, wa_id: from }],
            messages: [message],
        });
        counters.inbound++;
        webhooks.schedule(payload, b.delay_ms ?? 0, { kind: 'inbound', id });
        sendJson(res, 202, { id, payload });
    }

    async function injectStatus(req, res) {
        const b = await jsonBody(req);
        let rec = byId.get(b.id);
        if (!rec) {
            if (!b.id || !b.recipient_id)
                throw new HttpError(404, 'unknown message id (give recipient_id to invent one)');
            rec = {
                id: b.id,
                wa_id: digitsOf(b.recipient_id),
                phone_number_id: b.phone_number_id ?? numbers()[0],
                statuses: [],
            };
        }
        const status = b.status;
        if (!['sent', 'delivered', 'read', 'failed'].includes(status))
            throw new HttpError(400, 'status must be sent, delivered, read or failed');
        const failure =
            status === 'failed'
                ? { code: b.code ?? 131026, message: b.message, title: b.title, details: b.details }
                : undefined;
        const ts = Math.floor((b.timestamp_ms ?? Date.now()) / 1000);
        emitStatus(rec, status, b.delay_ms ?? 0, ts, failure);
        sendJson(res, 202, { id: rec.id, status });
    }

    async function verifyWebhook(req, res) {
        const b = await jsonBody(req);
        if (!config.webhook_url) throw new HttpError(409, 'no webhook_url configured');
        const challenge = String(b.challenge ?? crypto.randomInt(1e9));
        const u = new URL(config.webhook_url);
        u.searchParams.set('hub.mode', 'subscribe');
        u.searchParams.set('hub.verify_token', String(b.verify_token ?? ''));
        u.searchParams.set('hub.challenge', challenge);
        const r = await httpGet(u.toString(), config.webhook_timeout_ms);
        sendJson(res, 200, { ...r, challenge, ok: r.status === 200 && r.body === challenge });
    }

    function listSent(req, res, { url }) {
        const to = url.searchParams.get('to');
        const pnid = url.searchParams.get('phone_number_id');
        const limit = Number(url.searchParams.get('limit') || 0);
        let list = sent.items;
        if (to) list = list.filter((r) => r.wa_id === digitsOf(to));
        if (pnid) list = list.filter((r) => r.phone_number_id === pnid);
        if (limit > 0) list = list.slice(-limit);
        sendJson(res, 200, {
            total_accepted: counters.accepted,
            dropped: sent.dropped,
            messages: list.map(({ accepted_ms, ...r }) => r),
        });
    }

    function reset(req, res) {
        sent.clear();
        media.clear();
        rules = [];
        windowByNumber.clear();
        lastPairSend.clear();
        expiredTokens.clear();
        webhooks.cancelAll();
        webhooks.log.clear();
        Object.keys(counters).forEach((k) => (counters[k] = 0));
        rng = makeRng(config.seed);
        sendJson(res, 200, { ok: true });
    }

    const stats = () => fakeStats(counters, sent, rules, webhooks);

    const router = new Router()
        .add('POST', '/:version/:pnid/messages', sendMessage)
        .add('POST', '/:version/:pnid/media', uploadMedia)
        .add('POST', '/_control/tokens', setTokens)
        .add('GET', '/_control/media', (req, res) => sendJson(res, 200, { media: media.items }))
        .add('POST', '/_control/media/expire', expireMedia)
        .add('POST', '/_control/inbound', injectInbound)
        .add('POST', '/_control/status', injectStatus)
        .add('POST', '/_control/verify', verifyWebhook);
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

    const http = createFakeServer(router, 'graph', {
        notFound(req, res, url, pathMatched) {
            // Graph answers unknown paths and methods with code 100 or 2500.
            const e = metaError(100, {
                message: `Unsupported ${req.method.toLowerCase()} request. Object does not exist or does not support this operation.`,
                details: `${req.method} ${url.pathname} is not part of this fake.`,
            });
            sendJson(res, pathMatched ? 405 : 400, e.body);
        },
        error(req, res, status, err) {
            const e =
                status === 413
                    ? metaError(100, { details: err.message })
                    : metaError(status === 500 ? 1 : 100, { details: err.message });
            sendJson(res, status, e.body);
        },
    });

    return {
        get config() {
            return config;
        },
        sent,
        webhooks,
        stats,
        listen: (port = config.port, host = config.host) => http.listen(port, host),
        async close() {
            timers.clear();
            webhooks.close();
            await http.close();
        },
    };
}

module.exports = { createGraphFake, loadSendSchema, metaError, ERRORS, DEFAULTS };

if (require.main === module) runMain(createGraphFake, DEFAULTS, 'GRAPH_FAKE');
