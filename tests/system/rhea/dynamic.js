'use strict';
// Request/reply with rhea over dynamic receivers: each of two clients gets a
// temporary queue ("$tmp.<hex>.<n>", named in the attach reply), sends
// requests with reply_to set to it, and gets back exactly its own replies
// from a service that answers through an anonymous sender.  Once a client's
// dynamic receiver is closed its temporary queue is gone: a late reply to it
// is rejected with amqp:not-found instead of re-creating it.
const {step, log, equal, check, show, connect, openSender, openReceiver, next, quiet,
       send, sendAccepted, run} = require('./common');

const SERVICE = 'rhea.service';
const N = 3;

run('dynamic', async () => {
    step('service: consumes requests, answers to reply_to');
    const serviceConn = await connect({container_id: 'rhea-service'});
    const replier = await openSender(serviceConn, {target: {}, name: 'replies'});
    const requests = await openReceiver(serviceConn, {source: SERVICE, credit_window: 10, name: 'requests'});
    const served = [];
    requests.on('message', async (ctx) => {
        requests.inbox.splice(requests.inbox.indexOf(ctx), 1);
        const m = ctx.message;
        served.push(m.message_id);
        const r = await send(replier, {to: m.reply_to, correlation_id: m.message_id,
                                       body: String(m.body).toUpperCase()});
        if (r.outcome !== 'accepted') {
            // Not thrown: this runs outside the scenario's promise chain.
            log(`reply to ${m.reply_to} was ${r.outcome}`);
            ctx.delivery.reject({condition: 'rhea:reply-failed', description: r.outcome});
        } else {
            ctx.delivery.accept();
        }
    });

    const clients = [];
    for (const name of ['one', 'two']) {
        step(`client ${name}: dynamic receiver`);
        const conn = await connect({container_id: `rhea-client-${name}`});
        const inbox = await openReceiver(conn, {source: {dynamic: true}, credit_window: 10, name: `replies-${name}`});
        const addr = inbox.remote.attach.source && inbox.remote.attach.source.address;
        log(`client ${name}: temporary queue ${show(addr)}`);
        check(/^\$tmp\.[0-9a-f]+\.[0-9]+$/.test(addr || ''),
              `client ${name}: the attach reply should name the temporary queue $tmp.<hex>.<n>, observed ${show(addr)}`);
        clients.push({name, conn, inbox, addr, sender: await openSender(conn, SERVICE)});
    }
    check(clients[0].addr !== clients[1].addr, `both clients got the same temporary queue ${clients[0].addr}`);

    step('requests from both clients, interleaved');
    for (let i = 0; i < N; i++) {
        for (const c of clients) {
            await sendAccepted(c.sender, {message_id: `${c.name}-${i}`, reply_to: c.addr, body: `hello ${c.name} ${i}`});
        }
    }
    for (const c of clients) {
        for (let i = 0; i < N; i++) {
            const ctx = await next(c.inbox, `reply ${i} for client ${c.name}`);
            const m = ctx.message;
            equal(m.correlation_id, `${c.name}-${i}`, `client ${c.name}: correlation_id of reply ${i}`);
            equal(m.body, `HELLO ${c.name.toUpperCase()} ${i}`, `client ${c.name}: body of reply ${i}`);
            equal(m.to, c.addr, `client ${c.name}: to of reply ${i}`);
            ctx.delivery.accept();
        }
        log(`client ${c.name}: got its ${N} replies`);
    }
    await Promise.all(clients.map((c) => quiet(c.inbox, `client ${c.name} got a reply meant for the other one`)));
    equal(served.length, 2 * N, 'requests the service saw');

    step('closing client one\'s dynamic receiver: its temporary queue goes away');
    const one = clients[0];
    await new Promise((resolve) => { one.inbox.once('receiver_close', resolve); one.inbox.close(); });
    const late = await send(replier, {to: one.addr, body: 'too late'});
    const err = (late.state && late.state.error) || {};
    log(`late reply to ${one.addr}: ${late.outcome}`, show({condition: err.condition, description: err.description}));
    equal(late.outcome, 'rejected', 'outcome of a reply to a closed temporary queue');
    equal(err.condition, 'amqp:not-found', 'rejection condition for a reply to a closed temporary queue');

    step('client two still works');
    const two = clients[1];
    await sendAccepted(two.sender, {message_id: 'two-last', reply_to: two.addr, body: 'still there'});
    const ctx = await next(two.inbox, 'the last reply for client two');
    equal(ctx.message.correlation_id, 'two-last', 'correlation_id of the last reply');
    ctx.delivery.accept();
});
