'use strict';
// Self-test of the gowa fake: auth and device selection, validation, login
// state, error injection, and signed receipt/inbound webhooks.

const test = require('node:test');
const assert = require('node:assert/strict');
const { createGowaFake, makeQrPng } = require('./gowa');
const { startReceiver, expectedSignature, request, spawnFake, exitOf } = require('./testutil');

const AUTH = { authorization: 'Basic ' + Buffer.from('wacast:pw').toString('base64') };
const DEVICES = {
    dev1: { jid: '60300000001@s.whatsapp.net', name: 'One', state: 'logged_in' },
    dev2: { jid: '60300000002@s.whatsapp.net', name: 'Two', state: 'logged_in' },
};

async function withFake(cfg, fn) {
    const receiver = await startReceiver();
    const fake = createGowaFake({
        basic_auth: ['wacast:pw'],
        devices: DEVICES,
        webhook_url: receiver.url,
        webhook_secret: 'gowa-secret',
        receipt_delays_ms: { delivered: [1, 3], read: [6, 9] },
        ...cfg,
    });
    const port = await fake.listen(0);
    const base = `http://127.0.0.1:${port}`;
    const send = (body, device = 'dev1', headers = AUTH) =>
        request(base, 'POST', '/send/message', {
            body,
            headers: { ...headers, ...(device ? { 'x-device-id': device } : {}) },
        });
    try {
        await fn({ base, send, receiver, fake });
    } finally {
        await fake.close();
        await receiver.close();
    }
}

test('sends a text message and answers like the gateway', () =>
    withFake({}, async ({ base, send }) => {
        const r = await send({ phone: '60123456789@s.whatsapp.net', message: 'Hai' });
        assert.equal(r.status, 200);
        assert.equal(r.json.code, 'SUCCESS');
        assert.equal(r.json.message, 'Success');
        assert.match(r.json.results.message_id, /^3EB0[0-9A-F]{18}$/);
        assert.match(r.json.results.status, /60123456789@s\.whatsapp\.net/);
        const sent = await request(base, 'GET', '/_control/sent?device_id=dev1');
        assert.equal(sent.json.messages[0].message, 'Hai');
        assert.equal(sent.json.messages[0].phone, '60123456789@s.whatsapp.net');
    }));

test('checks auth, device and fields', () =>
    withFake({}, async ({ send }) => {
        assert.equal((await send({ phone: '60123456789', message: 'x' }, 'dev1', {})).status, 401);
        const noDevice = await send({ phone: '60123456789', message: 'x' }, null);
        assert.equal(noDevice.status, 400);
        assert.equal(noDevice.json.code, 'DEVICE_ID_REQUIRED');
        const unknown = await send({ phone: '60123456789', message: 'x' }, 'nope');
        assert.equal(unknown.status, 404);
        assert.equal(unknown.json.code, 'DEVICE_NOT_FOUND');
        const blank = await send({ phone: '', message: 'x' });
        assert.equal(blank.status, 400);
        assert.equal(blank.json.code, 'VALIDATION_ERROR');
        const bad = await send({ phone: '60-abc@s.whatsapp.net', message: 'x' });
        assert.equal(bad.status, 400);
        assert.equal(bad.json.code, 'INVALID_JID');
        assert.equal(bad.json.results, null);
    }));

test('refuses to send from a logged-out device and offers a QR', () =>
    withFake({}, async ({ base, send }) => {
        await request(base, 'POST', '/_control/devices/dev1', { body: { state: 'logged_out' } });
        const r = await send({ phone: '60123456789', message: 'x' });
        assert.equal(r.status, 401);
        assert.equal(r.json.code, 'AUTHENTICATION_ERROR');
        assert.match(r.json.message, /not logged in/);
        const login = await request(base, 'GET', '/app/login', { headers: { ...AUTH, 'x-device-id': 'dev1' } });
        assert.equal(login.json.code, 'SUCCESS');
        assert.equal(login.json.results.qr_duration, 30);
        const png = Buffer.from(await (await fetch(login.json.results.qr_link)).arrayBuffer());
        assert.deepEqual(png, makeQrPng());
        assert.equal(png.subarray(1, 4).toString(), 'PNG');
        await request(base, 'POST', '/_control/devices/dev1/scan');
        assert.equal((await send({ phone: '60123456789', message: 'x' })).status, 200);
        const devices = await request(base, 'GET', '/app/devices', { headers: AUTH });
        assert.equal(devices.json.results.length, 2);
    }));

test('injects errors per phone', () =>
    withFake({}, async ({ base, send }) => {
        const rule = (r) => request(base, 'POST', '/_control/rules', { body: r });
        await rule({ phone: '60123456789', error: 'not_registered' });
        const r1 = await send({ phone: '60123456789', message: 'x' });
        assert.equal(r1.status, 400);
        assert.equal(r1.json.code, 'INVALID_JID');
        assert.equal((await send({ phone: '60123456789', message: 'x' })).status, 200);
        await rule({ phone: '*', status: 500, code: 'INTERNAL_SERVER_ERROR', message: 'boom', times: 2 });
        assert.equal((await send({ phone: '60111111111', message: 'x' })).status, 500);
        assert.equal((await send({ phone: '60111111112', message: 'x' })).json.message, 'boom');
        assert.equal((await send({ phone: '60111111113', message: 'x' })).status, 200);
    }));

test('sends an image from a multipart upload', () =>
    withFake({}, async ({ base }) => {
        const fd = new FormData();
        fd.set('phone', '60123456789@s.whatsapp.net');
        fd.set('caption', 'Promo');
        fd.set('image', new Blob([makeQrPng()], { type: 'image/png' }), 'promo.png');
        const r = await fetch(`${base}/send/image`, {
            method: 'POST',
            headers: { ...AUTH, 'x-device-id': 'dev2' },
            body: fd,
        });
        assert.equal(r.status, 200);
        const bad = new FormData();
        bad.set('phone', '60123456789');
        bad.set('image', new Blob([Buffer.from('plain text')]), 'x.png');
        const r2 = await fetch(`${base}/send/image`, {
            method: 'POST',
            headers: { ...AUTH, 'x-device-id': 'dev2' },
            body: bad,
        });
        assert.equal(r2.status, 400);
        assert.equal((await r2.json()).code, 'VALIDATION_ERROR');
    }));

test('sends signed receipts, out of order and twice when asked', () =>
    // Wide gaps between the receipts, so reversed arrival is unambiguous even on a busy machine.
    withFake(
        { out_of_order_prob: 1, duplicate_prob: 1, receipt_delays_ms: { delivered: 1, read: 60 } },
        async ({ send, receiver }) => {
            const id = (await send({ phone: '60123456789', message: 'x' })).json.results.message_id;
            await receiver.waitFor((h) => h.length >= 4);
            for (const h of receiver.hits) {
                assert.equal(h.headers['x-hub-signature-256'], expectedSignature('gowa-secret', h.raw));
                assert.equal(h.json.event, 'message.ack');
                assert.equal(h.json.device_id, '60300000001@s.whatsapp.net');
                assert.deepEqual(h.json.payload.ids, [id]);
            }
            const types = receiver.hits.map((h) => h.json.payload.receipt_type);
            assert.equal(types[0], 'read', `arrival order ${types}`);
            assert.equal(types.filter((t) => t === 'delivered').length, 2);
        },
    ));

test('injects an inbound message event', () =>
    withFake({}, async ({ base, receiver }) => {
        await request(base, 'POST', '/_control/inbound', {
            body: { device_id: 'dev2', from: '60123456789', text: 'berhenti' },
        });
        const [h] = await receiver.waitFor((x) => x.length >= 1);
        assert.equal(h.headers['x-hub-signature-256'], expectedSignature('gowa-secret', h.raw));
        assert.equal(h.json.event, 'message');
        assert.equal(h.json.device_id, '60300000002@s.whatsapp.net');
        assert.equal(h.json.payload.body, 'berhenti');
        assert.equal(h.json.payload.from, '60123456789@s.whatsapp.net');
        assert.equal(h.json.payload.is_from_me, false);
    }));

test('retries a webhook the receiver refused', async () => {
    const receiver = await startReceiver({ status: (hit, n) => (n === 1 ? 500 : 200) });
    const fake = createGowaFake({
        basic_auth: [],
        webhook_url: receiver.url,
        receipts: ['delivered'],
        receipt_delays_ms: { delivered: 1 },
        webhook_retry_base_ms: 5,
    });
    const base = `http://127.0.0.1:${await fake.listen(0)}`;
    try {
        await request(base, 'POST', '/send/message', { body: { phone: '60123456789', message: 'x' } });
        await receiver.waitFor((h) => h.length >= 2);
        assert.equal(receiver.hits[0].raw.toString(), receiver.hits[1].raw.toString());
        const drained = await request(base, 'POST', '/_control/drain?timeout_ms=1000');
        assert.equal(drained.json.pending, 0);
    } finally {
        await fake.close();
        await receiver.close();
    }
});

test('runs as a program: prints the port first and exits 0 on SIGTERM', async () => {
    const { port, child } = await spawnFake('gowa.js', { GOWA_FAKE_CONFIG_JSON: '{"basic_auth":[]}' });
    const r = await request(`http://127.0.0.1:${port}`, 'GET', '/app/devices');
    assert.equal(r.json.code, 'SUCCESS');
    const exited = exitOf(child);
    child.kill('SIGTERM');
    assert.deepEqual(await exited, { code: 0, signal: null });
});
