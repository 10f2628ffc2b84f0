// A stand-in for the web servers campaign images are linked from (any CDN,
// bucket or site): it serves what the test put there, and misbehaves the ways
// real hosts do, so the scheduler's fetcher meets each on real HTTP.
//   PUT  /_control/file/<name>  body = bytes, header X-Serve-Type = the
//                               Content-Type to serve them with
//   GET  /f/<name>              the bytes, 200, with that type
//   GET  /hang                  never answers
//   GET  /loop                  302 to itself, forever
//   GET  /gigabyte              200 image/jpeg, 1 GB of zeros, written as the
//                               socket drains, until the client hangs up
//   GET  /_control/stats        {"gets": {<path>: n}, "streamed": bytes}
// Run: node images.js [--port N]; the first line on stdout is "listening <port>".
'use strict';
const http = require('node:http');

const files = new Map();
const gets = {};
let streamed = 0;
const GIGABYTE = 1024 * 1024 * 1024;
const CHUNK = Buffer.alloc(64 * 1024);

function readBody(req) {
    return new Promise((resolve, reject) => {
        const parts = [];
        req.on('data', (c) => parts.push(c));
        req.on('end', () => resolve(Buffer.concat(parts)));
        req.on('error', reject);
    });
}

function stream(res) {
    res.writeHead(200, { 'Content-Type': 'image/jpeg' });
    const more = () => {
        while (streamed < GIGABYTE && !res.destroyed) {
            streamed += CHUNK.length;
            if (!res.write(CHUNK)) return res.once('drain', more);
        }
        if (!res.destroyed) res.end();
    };
    more();
}

const server = http.createServer(async (req, res) => {
    const path = req.url.split('?')[0];
    if (req.method === 'GET') gets[path] = (gets[path] || 0) + 1;
    try {
        if (req.method === 'PUT' && path.startsWith('/_control/file/')) {
            const body = await readBody(req);
            files.set(path.slice('/_control/file/'.length), {
                type: req.headers['x-serve-type'] || 'image/jpeg',
                body,
            });
            res.writeHead(204).end();
        } else if (req.method === 'GET' && path === '/_control/stats') {
            res.writeHead(200, { 'Content-Type': 'application/json' });
            res.end(JSON.stringify({ gets, streamed }));
        } else if (req.method === 'GET' && path.startsWith('/f/')) {
            const f = files.get(path.slice(3));
            if (!f) return res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found');
            res.writeHead(200, { 'Content-Type': f.type, 'Content-Length': f.body.length });
            res.end(f.body);
        } else if (req.method === 'GET' && path === '/hang') {
            // never answered; the connection closes when the client gives up
        } else if (req.method === 'GET' && path === '/loop') {
            res.writeHead(302, { Location: '/loop' }).end();
        } else if (req.method === 'GET' && path === '/gigabyte') {
            stream(res);
        } else {
            res.writeHead(404, { 'Content-Type': 'text/plain' }).end('not found');
        }
    } catch (e) {
        res.writeHead(500).end(String(e));
    }
});

const portArg = process.argv.indexOf('--port');
const port = portArg > 0 ? Number(process.argv[portArg + 1]) : 0;
server.listen(port, '127.0.0.1', () => {
    process.stdout.write(`listening ${server.address().port}\n`);
});
const stop = () => {
    server.closeAllConnections();
    server.close(() => process.exit(0));
};
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
