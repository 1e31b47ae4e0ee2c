'use strict';
// Anonymous relay with rhea: the broker offers ANONYMOUS-RELAY in its open
// frame, a sender with a null target address routes each message by its
// `to` (queues and topics alike), a message without `to` is rejected with
// amqp:precondition-failed, and rhea's connection.send() (its own anonymous
// sender) works too.
const {step, log, equal, check, show, connect, openSender, openReceiver, gather, next, quiet,
       send, sendAccepted, run} = require('./common');

const A = 'rhea.relay.a';
const B = 'rhea.relay.b';
const T = 'topic.rhea.relay';

run('relay', async () => {
    const conn = await connect();
    const caps = [].concat(conn.remote.open.offered_capabilities || []);
    log('open frame: offered_capabilities', show(caps), 'properties', show(conn.remote.open.properties));
    check(caps.includes('ANONYMOUS-RELAY'),
          `the broker's open frame should offer ANONYMOUS-RELAY, it offers ${show(caps)}`);

    const ra = await openReceiver(conn, {source: A, credit_window: 10, name: 'ra'});
    const rb = await openReceiver(conn, {source: B, credit_window: 10, name: 'rb'});
    const rt = await openReceiver(conn, {source: T, credit_window: 10, name: 'rt'});

    step('anonymous sender (target address null)');
    const sender = await openSender(conn, {target: {}, name: 'anonymous'});
    const target = sender.remote.attach.target;
    check(!target || target.address === undefined || target.address === null,
          `the attach reply should keep the null target address, observed ${show(target)}`);

    const plan = [[A, 0], [B, 1], [T, 2], [A, 3], [B, 4], [A, 5]];
    for (const [to, i] of plan) {
        await sendAccepted(sender, {to, body: `to ${to} #${i}`, application_properties: {i}});
    }
    await gather([ra, rb, rt], plan.length, 'messages routed by `to`');
    for (const [r, addr] of [[ra, A], [rb, B], [rt, T]]) {
        const got = r.inbox.splice(0);
        const expected = plan.filter(([to]) => to === addr).map(([, i]) => i);
        log(`${addr} got`, JSON.stringify(got.map((c) => c.message.application_properties.i)));
        equal(got.map((c) => c.message.application_properties.i), expected, `messages at ${addr}`);
        got.forEach((c) => {
            equal(c.message.to, addr, `the 'to' of a message at ${addr}`);
            equal(c.message.body, `to ${addr} #${c.message.application_properties.i}`, `body at ${addr}`);
            c.delivery.accept();
        });
    }

    step('a message without `to` is rejected');
    const r = await send(sender, {body: 'nowhere'});
    const err = (r.state && r.state.error) || {};
    log('outcome without to:', r.outcome, show({condition: err.condition, description: err.description}));
    equal(r.outcome, 'rejected', 'outcome of an anonymous message without to');
    equal(err.condition, 'amqp:precondition-failed',
          'rejection condition for a message without to');

    step("rhea's connection.send() (default anonymous sender)");
    conn.send({to: B, body: 'via connection.send', application_properties: {i: 99}});
    const c = await next(rb, 'the message sent with connection.send()');
    equal(c.message.body, 'via connection.send', 'body of the connection.send() message');
    c.delivery.accept();

    await Promise.all([ra, rb, rt].map((x) => quiet(x, 'each routed message arrives once, where it was sent')));
});
