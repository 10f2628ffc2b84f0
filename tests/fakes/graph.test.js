'use strict';
// Self-test of the Graph API fake: schema rejection, auth, error injection,
// throughput, and signed status webhooks (order, duplicates, callback data).

const test = require('node:test');
const assert = require('node:assert/strict');
const { createGraphFake } = require('./graph');
const { startReceiver, expectedSignature, request, spawnFake, exitOf } = require('./testutil');

const PNID = '106540352242922';
const TOKEN = 'EAAtesttoken';
const AUTH = { authorization: `Bearer ${TOKEN}` };
const FAST = { sent: [1, 3], delivered: [6, 9], read: [12, 15], failed: [1, 3] };

function textMessage(over = {}) {
    return {
        messaging_product: 'whatsapp',
        recipient_type: 'individual',
        to: '+60123456789',
        type: 'text',
        text: { body: 'Hello' },
        ...over,
    };
}

async function withFake(cfg, fn) {
    const receiver = await startReceiver();
    const fake = createGraphFake({
        tokens: { [PNID]: TOKEN, 200000000000002: 'other-token' },
        webhook_url: receiver.url,
        app_secret: 'shh',
        status_delays_ms: FAST,
        ...cfg,
    });
    const port = await fake.listen(0);
    const base = `http://127.0.0.1:${port}`;
    const send = (body, headers = AUTH, pnid = PNID) =>
        request(base, 'POST', `/v23.0/${pnid}/messages`, { body, headers });
    try {
        await fn({ base, send, receiver, fake });
    } finally {
        await fake.close();
        await receiver.close();
    }
}

test('accepts a valid text message and answers like Meta', () =>
    withFake({}, async ({ base, send }) => {
        const r = await send(textMessage({ biz_opaque_callback_data: 'msg-42' }));
        assert.equal(r.status, 200);
        assert.equal(r.json.messaging_product, 'whatsapp');
        assert.deepEqual(r.json.contacts, [{ input: '+60123456789', wa_id: '60123456789' }]);
        assert.match(r.json.messages[0].id, /^wamid\.[A-Za-z0-9+/=]{20,}$/);
        const sent = await request(base, 'GET', '/_control/sent');
        assert.equal(sent.json.messages.length, 1);
        assert.equal(sent.json.messages[0].text, 'Hello');
        assert.equal(sent.json.messages[0].biz_opaque_callback_data, 'msg-42');
    }));

test('rejects bodies that break the OpenAPI request schema', () =>
    withFake({}, async ({ send }) => {
        const cases = [
            [{ recipient_type: undefined }, /recipient_type is required/],
            [{ text: { body: 5 } }, /text\.body must be string/],
            [{ surprise: true }, /Unexpected key "surprise"/],
            [{ type: 'carrier_pigeon' }, /type must be one of/],
            [{ biz_opaque_callback_data: 'x'.repeat(513) }, /biz_opaque_callback_data/],
            [{ messaging_product: 'sms' }, /messaging_product/],
            [
                { type: 'template', text: undefined, template: { name: 'promo', language: { code: 'en_US' } } },
                /template\.language\.policy is required/,
            ],
        ];
        for (const [over, want] of cases) {
            const r = await send(textMessage(over));
            assert.equal(r.status, 400, JSON.stringify(over));
            assert.equal(r.json.error.code, 100);
            assert.equal(r.json.error.type, 'OAuthException');
            assert.equal(r.json.error.error_data.messaging_product, 'whatsapp');
            assert.match(r.json.error.message, want);
            assert.ok(r.json.error.fbtrace_id);
        }
        const template = await send(
            textMessage({
                type: 'template',
                text: undefined,
                template: { name: 'promo', language: { policy: 'deterministic', code: 'en_US' } },
            }),
        );
        assert.equal(template.status, 200, template.text);
        const image = await send(
            textMessage({ type: 'image', text: undefined, image: { link: 'http://127.0.0.1/a.jpg' } }),
        );
        assert.equal(image.status, 200, image.text);
    }));

test('rejects a body that is not JSON', () =>
    withFake({}, async ({ base }) => {
        const r = await request(base, 'POST', `/v23.0/${PNID}/messages`, {
            raw: '{"messaging_product":',
            headers: { ...AUTH, 'content-type': 'application/json' },
        });
        assert.equal(r.status, 400);
        assert.equal(r.json.error.code, 100);
    }));

test('checks the bearer token per phone number id', () =>
    withFake({}, async ({ send }) => {
        const none = await send(textMessage(), {});
        assert.equal(none.status, 401);
        assert.equal(none.json.error.code, 190);
        const wrong = await send(textMessage(), { authorization: 'Bearer nope' });
        assert.equal(wrong.status, 401);
        assert.equal(wrong.json.error.code, 190);
        assert.equal(wrong.json.error.type, 'OAuthException');
        const otherNumbers = await send(textMessage(), { authorization: 'Bearer other-token' });
        assert.equal(otherNumbers.status, 400);
        assert.equal(otherNumbers.json.error.code, 100);
        assert.equal(otherNumbers.json.error.error_subcode, 33);
    }));

test('injects errors per recipient with the right HTTP status', () =>
    withFake({}, async ({ base, send }) => {
        const rule = (r) => request(base, 'POST', '/_control/rules', { body: r });
        assert.equal((await rule({ to: '60123456789', code: 131056, times: 2 })).status, 201);
        for (let i = 0; i < 2; i++) {
            const r = await send(textMessage());
            assert.equal(r.status, 400);
            assert.equal(r.json.error.code, 131056);
            assert.match(r.json.error.error_data.details, /same phone number/);
        }
        assert.equal((await send(textMessage())).status, 200, 'rule used up');
        // Another recipient is not affected by a rule for this one.
        await rule({ to: '60123456789', code: 131026 });
        assert.equal((await send(textMessage({ to: '60199999999' }))).status, 200);
        assert.equal((await send(textMessage())).json.error.code, 131026);

        const expect = [
            [{ to: '*', code: 130429 }, 429, 130429],
            [{ to: '*', code: 190 }, 401, 190],
            [{ to: '*', code: 131050 }, 400, 131050],
            [{ to: '*', code: 131048 }, 400, 131048],
            [{ to: '*', code: 368 }, 403, 368],
            [{ to: '*', status: 500 }, 500, 1],
            [{ to: '*', status: 503 }, 503, 2],
        ];
        for (const [r, http, code] of expect) {
            await rule(r);
            const got = await send(textMessage());
            assert.equal(got.status, http, JSON.stringify(r));
            assert.equal(got.json.error.code, code);
            assert.equal(got.json.error.type, 'OAuthException');
        }
    }));

test('answers 130429 over the configured messages per second', () =>
    withFake({ mps: 3 }, async ({ send }) => {
        const codes = [];
        for (let i = 0; i < 5; i++) codes.push((await send(textMessage({ to: `6012345678${i}` }))).status);
        assert.deepEqual(codes.slice(0, 3), [200, 200, 200]);
        assert.equal(codes[3], 429);
    }));

test('sends signed status webhooks with the callback data', () =>
    withFake({}, async ({ send, receiver }) => {
        const r = await send(textMessage({ biz_opaque_callback_data: 'cb-1' }));
        const wamid = r.json.messages[0].id;
        await receiver.waitFor((h) => h.length >= 3);
        const statuses = receiver.hits.map((h) => {
            assert.equal(h.headers['x-hub-signature-256'], expectedSignature('shh', h.raw));
            assert.equal(h.json.object, 'whatsapp_business_account');
            const change = h.json.entry[0].changes[0];
            assert.equal(change.field, 'messages');
            assert.equal(change.value.metadata.phone_number_id, PNID);
            return change.value.statuses[0];
        });
        assert.deepEqual(
            statuses.map((s) => s.status),
            ['sent', 'delivered', 'read'],
        );
        for (const s of statuses) {
            assert.equal(s.id, wamid);
            assert.equal(s.recipient_id, '60123456789');
            assert.equal(s.biz_opaque_callback_data, 'cb-1');
            assert.match(s.timestamp, /^\d{10}$/);
        }
    }));

test('can deliver statuses out of order and twice', () =>
    // Wide gaps between the statuses, so reversed arrival is unambiguous even on a busy machine.
    withFake(
        { out_of_order_prob: 1, duplicate_prob: 1, status_delays_ms: { sent: 1, delivered: 40, read: 80 } },
        async ({ send, receiver }) => {
            await send(textMessage());
            await receiver.waitFor((h) => h.length >= 6);
            const order = receiver.hits.map((h) => h.json.entry[0].changes[0].value.statuses[0].status);
            assert.equal(order[0], 'read', `arrival order ${order}`);
            for (const s of ['sent', 'delivered', 'read']) assert.equal(order.filter((x) => x === s).length, 2);
        },
    ));

test('reports webhook-mode failures as a failed status after a 200', () =>
    withFake({}, async ({ base, send, receiver }) => {
        await request(base, 'POST', '/_control/rules', { body: { to: '*', code: 131026, mode: 'webhook' } });
        const r = await send(textMessage({ biz_opaque_callback_data: 'cb-9' }));
        assert.equal(r.status, 200);
        const [hit] = await receiver.waitFor((h) => h.length >= 1);
        const st = hit.json.entry[0].changes[0].value.statuses[0];
        assert.equal(st.status, 'failed');
        assert.equal(st.biz_opaque_callback_data, 'cb-9');
        assert.equal(st.errors[0].code, 131026);
        assert.ok(st.errors[0].title && st.errors[0].error_data.details);
    }));

test('injects an inbound STOP and checks the verification handshake', () =>
    withFake({}, async ({ base, receiver }) => {
        const r = await request(base, 'POST', '/_control/inbound', { body: { from: '+60123456789', text: 'STOP' } });
        assert.equal(r.status, 202);
        const [hit] = await receiver.waitFor((h) => h.length >= 1);
        assert.equal(hit.headers['x-hub-signature-256'], expectedSignature('shh', hit.raw));
        const value = hit.json.entry[0].changes[0].value;
        assert.equal(value.messages[0].from, '60123456789');
        assert.equal(value.messages[0].text.body, 'STOP');
        assert.equal(value.contacts[0].wa_id, '60123456789');
        const ok = await request(base, 'POST', '/_control/verify', { body: { verify_token: 'vt' } });
        assert.equal(ok.json.ok, true);
        const bad = await request(base, 'POST', '/_control/verify', { body: { verify_token: 'nope' } });
        assert.equal(bad.json.status, 403);
        assert.equal(bad.json.ok, false);
    }));

test('uploads media as multipart and refuses what is not an image', () =>
    withFake({}, async ({ base }) => {
        const { makeQrPng } = require('./gowa');
        const upload = (bytes, type) => {
            const fd = new FormData();
            fd.set('messaging_product', 'whatsapp');
            fd.set('type', type);
            fd.set('file', new Blob([bytes], { type }), 'f');
            return fetch(`${base}/v23.0/${PNID}/media`, { method: 'POST', headers: AUTH, body: fd }).then(
                async (r) => ({
                    status: r.status,
                    json: await r.json(),
                }),
            );
        };
        const ok = await upload(makeQrPng(), 'image/png');
        assert.equal(ok.status, 200);
        assert.match(ok.json.id, /^\d+$/);
        const bad = await upload(Buffer.from('not a png'), 'image/png');
        assert.equal(bad.status, 400);
        assert.equal(bad.json.error.code, 131053);
    }));

test('an image id is known only on the number it was uploaded to, until it expires', () =>
    withFake({}, async ({ base, send }) => {
        const { makeQrPng } = require('./gowa');
        const fd = new FormData();
        fd.set('messaging_product', 'whatsapp');
        fd.set('type', 'image/png');
        fd.set('file', new Blob([makeQrPng()], { type: 'image/png' }), 'f');
        const up = await fetch(`${base}/v23.0/${PNID}/media`, { method: 'POST', headers: AUTH, body: fd });
        const { id } = await up.json();
        const image = (mediaId) => textMessage({ type: 'image', text: undefined, image: { id: mediaId } });
        const ok = await send(image(id));
        assert.equal(ok.status, 200, ok.text);
        const unknown = await send(image('1234567890123456'));
        assert.equal(unknown.status, 400);
        assert.equal(unknown.json.error.code, 100);
        assert.match(unknown.json.error.error_data.details, /not a valid whatsapp business account media/);
        const other = await send(image(id), { authorization: 'Bearer other-token' }, '200000000000002');
        assert.equal(other.status, 400);
        assert.equal(other.json.error.code, 100);
        const expired = await request(base, 'POST', '/_control/media/expire', { body: { id } });
        assert.equal(expired.json.expired, 1);
        const after = await send(image(id));
        assert.equal(after.status, 400);
        assert.equal(after.json.error.code, 100);
        const listed = await request(base, 'GET', '/_control/media');
        assert.equal(listed.json.media.length, 1);
        assert.equal(listed.json.media[0].phone_number_id, PNID);
    }));

test('runs as a program: prints the port first and exits 0 on SIGTERM', async () => {
    const { port, child, firstLine } = await spawnFake('graph.js', {
        GRAPH_FAKE_CONFIG_JSON: JSON.stringify({ tokens: { [PNID]: TOKEN } }),
    });
    assert.equal(firstLine, `listening ${port}`);
    const r = await request(`http://127.0.0.1:${port}`, 'GET', '/_control/health');
    assert.equal(r.json.ok, true);
    const exited = exitOf(child);
    child.kill('SIGTERM');
    assert.deepEqual(await exited, { code: 0, signal: null });
});
