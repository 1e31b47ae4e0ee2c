'use strict';
// Shared helpers for the rhea scenarios: promise wrappers over rhea's events,
// assertions that print expected vs observed, and a watchdog so that no
// scenario can hang.  A scenario calls run(name, async () => {...}); the
// process exits 0 only when that function finishes without a failed check.

const util = require('util');
const rhea = require('rhea');

const SLOW = process.env.HADRON_SANITIZE === '1' ? 3 : 1;
const LIMIT_MS = 15000 * SLOW;
const HOST = '127.0.0.1';

let scenario = 'rhea';
let lastStep = 'start';
const connections = [];

// Anything that ends the process early without going through run()'s
// success path is a failure.
process.exitCode = 1;

function log(...args) {
    console.log(`[${scenario}]`, ...args);
}

function fail(msg) {
    console.error(`[${scenario}] FAIL: ${msg}`);
    console.error(`[${scenario}] last step: ${lastStep}`);
    process.exit(1);
}

function step(text) {
    lastStep = text;
    log('--', text);
}

function show(v) {
    return util.inspect(v, {depth: 6, breakLength: Infinity});
}

class CheckError extends Error {}

function check(cond, msg) {
    if (!cond) throw new CheckError(msg);
}

function equal(actual, expected, what) {
    if (!util.isDeepStrictEqual(actual, expected)) {
        throw new CheckError(`${what}: expected ${show(expected)}, observed ${show(actual)}`);
    }
}

function port() {
    const p = Number(process.env.HADRON_PORT);
    if (!Number.isInteger(p) || p <= 0) fail('HADRON_PORT is not set to the broker port');
    return p;
}

function delay(ms) {
    return new Promise((resolve) => setTimeout(resolve, ms));
}

// Remote close/detach errors are fatal unless the caller expects them: every
// scenario here works on links the broker should accept.
function errorText(e) {
    if (!e) return 'no error';
    return `${e.condition || e.name || 'error'}: ${e.description || e.message || show(e)}`;
}

// Opens a connection (own container, so the container-id is fresh) and
// resolves with it once the broker's open frame has arrived.
function connect(options = {}) {
    const container = rhea.create_container({id: options.container_id || `rhea-${scenario}-${connections.length}`});
    const conn = container.connect(Object.assign({host: HOST, port: port(), reconnect: false}, options));
    conn.closing = false;
    connections.push(conn);
    return new Promise((resolve, reject) => {
        let open = false;
        conn.on('connection_open', () => { open = true; resolve(conn); });
        conn.on('connection_error', (ctx) => {
            const msg = `connection closed by broker with ${errorText(ctx.connection.error)}`;
            if (open) fail(msg); else reject(new CheckError(msg));
        });
        conn.on('connection_close', () => {
            if (!conn.closing) fail('connection closed by broker unexpectedly');
        });
        conn.on('disconnected', (ctx) => {
            if (conn.closing) return;
            const msg = `connection lost: ${ctx.error ? ctx.error.message || show(ctx.error) : 'socket closed'}`;
            if (open) fail(msg); else reject(new CheckError(msg));
        });
        conn.on('protocol_error', (ctx) => fail(`protocol error: ${show(ctx.error)}`));
        conn.on('error', (ctx) => fail(`connection error: ${show(ctx.error)}`));
    });
}

function closeConnection(conn) {
    if (conn.closing || !conn.is_open()) return Promise.resolve();
    conn.closing = true;
    return new Promise((resolve) => {
        conn.once('connection_close', resolve);
        conn.once('disconnected', resolve);
        conn.close();
    });
}

// Receiver with an inbox: every 'message' event is queued, next() takes the
// oldest.  autoaccept is off by default so each scenario settles explicitly.
function openReceiver(conn, options) {
    if (typeof options === 'string') options = {source: options};
    options = Object.assign({autoaccept: false}, options);
    const receiver = conn.open_receiver(options);
    receiver.inbox = [];
    receiver.waiters = [];
    receiver.on('message', (ctx) => {
        const w = receiver.waiters.shift();
        if (w) w(ctx); else receiver.inbox.push(ctx);
    });
    return new Promise((resolve) => {
        receiver.on('receiver_open', () => resolve(receiver));
        receiver.on('receiver_error', (ctx) =>
            fail(`receiver ${show(options.source)} detached by broker with ${errorText(ctx.receiver.error)}`));
    });
}

function next(receiver, what, ms = 5000 * SLOW) {
    if (receiver.inbox.length) return Promise.resolve(receiver.inbox.shift());
    return new Promise((resolve, reject) => {
        const waiter = (ctx) => { clearTimeout(timer); resolve(ctx); };
        const timer = setTimeout(() => {
            receiver.waiters.splice(receiver.waiters.indexOf(waiter), 1);
            reject(new CheckError(`no message arrived within ${ms / 1000}s: ${what}`));
        }, ms);
        receiver.waiters.push(waiter);
    });
}

// Passes if the receiver gets nothing for `ms`.  Only used to prove absence
// after the positive checks; a slow broker can only make it pass, never fail
// wrongly, because everything expected has already been received.
async function quiet(receiver, what, ms = 1000 * SLOW) {
    await delay(ms);
    if (receiver.inbox.length) {
        throw new CheckError(`${what}: unexpected message ${show(receiver.inbox[0].message)}`);
    }
}

// Resolves once the receivers' inboxes together hold `total` messages.
function gather(receivers, total, what, ms = 5000 * SLOW) {
    const count = () => receivers.reduce((n, r) => n + r.inbox.length, 0);
    return new Promise((resolve, reject) => {
        const timer = setTimeout(() => {
            reject(new CheckError(`${what}: ${count()} of ${total} messages arrived within ${ms / 1000}s`));
        }, ms);
        const test = () => {
            if (count() >= total) {
                clearTimeout(timer);
                receivers.forEach((r) => r.removeListener('message', test));
                resolve();
            }
        };
        receivers.forEach((r) => r.on('message', test));
        test();
    });
}

// A round trip on `conn` (begin and end a session): every frame sent on it
// before, such as a flow granting credit, has been processed by the broker
// when this resolves.  Needed when another connection acts next.
function roundTrip(conn) {
    return new Promise((resolve) => {
        const session = conn.create_session();
        session.on('session_open', () => { session.close(); resolve(); });
        session.begin();
    });
}

function openSender(conn, options) {
    if (typeof options === 'string') options = {target: options};
    const sender = conn.open_sender(options);
    sender.pending = new Map();
    for (const outcome of ['accepted', 'released', 'rejected', 'modified']) {
        sender.on(outcome, (ctx) => {
            const done = sender.pending.get(ctx.delivery);
            if (done) {
                sender.pending.delete(ctx.delivery);
                done({outcome, state: ctx.delivery.remote_state});
            }
        });
    }
    return new Promise((resolve) => {
        sender.on('sender_open', () => resolve(sender));
        sender.on('sender_error', (ctx) =>
            fail(`sender ${show(options.target)} detached by broker with ${errorText(ctx.sender.error)}`));
    });
}

// Sends one unsettled message; resolves with {outcome, state} when the broker
// settles it.
function send(sender, msg) {
    return new Promise((resolve) => {
        const delivery = sender.send(msg);
        sender.pending.set(delivery, resolve);
    });
}

// Sends and insists on `accepted`, which the broker gives after the enqueue.
async function sendAccepted(sender, msg) {
    const r = await send(sender, msg);
    equal(r.outcome, 'accepted', `outcome of sending ${show(msg.body)}`);
}

function run(name, body) {
    scenario = name;
    const watchdog = setTimeout(() => fail(`timed out after ${LIMIT_MS / 1000}s`), LIMIT_MS);
    log(`broker at ${HOST}:${port()}, rhea ${require('rhea/package.json').version}`);
    Promise.resolve()
        .then(body)
        .then(async () => {
            step('closing connections');
            await Promise.all(connections.map(closeConnection));
            clearTimeout(watchdog);
            log('PASS');
            process.exit(0);
        })
        .catch((e) => fail(e instanceof CheckError ? e.message : (e && e.stack) || show(e)));
}

module.exports = {
    rhea, SLOW, log, fail, step, show, check, equal, delay, connect, closeConnection,
    openReceiver, openSender, next, quiet, gather, roundTrip, send, sendAccepted, run,
};
