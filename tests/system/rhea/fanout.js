'use strict';
// Topics with rhea: three subscribers, each on its own connection, each get
// every message sent after they attached, in order, and nothing sent before.
// Done twice: for an address typed by the `topic.` prefix, and for a plain
// address typed by the "topic" terminus capability.
const {step, log, equal, check, connect, openSender, openReceiver, gather, quiet, roundTrip,
       send, sendAccepted, run} = require('./common');

const N = 10;

function capabilities(terminus) {
    const caps = terminus && terminus.capabilities;
    return caps === undefined ? [] : [].concat(caps);
}

async function fanout(address, caps) {
    const label = caps ? `${address} (capability topic)` : address;
    const source = caps ? {address, capabilities: caps} : address;
    const target = caps ? {address, capabilities: caps} : address;

    const producer = await connect({container_id: `rhea-producer-${address}`});
    const sender = await openSender(producer, {target});
    step(`${label}: a message sent before anyone subscribed`);
    const early = await send(sender, {body: 'before', application_properties: {i: -1}});
    log(`outcome for the message sent before the subscriptions: ${early.outcome}`);

    step(`${label}: three subscribers`);
    const receivers = [];
    for (let k = 0; k < 3; k++) {
        const conn = await connect({container_id: `rhea-sub-${address}-${k}`});
        const r = await openReceiver(conn, {source, credit_window: 2 * N, name: `sub-${k}`});
        check(capabilities(r.remote.attach.source).includes('topic'),
              `${label}: the attach reply should say the node is a topic, its source capabilities are ` +
              JSON.stringify(capabilities(r.remote.attach.source)));
        // The subscription and its credit must exist before the first message.
        await roundTrip(conn);
        receivers.push(r);
    }

    step(`${label}: sending ${N} messages`);
    for (let i = 0; i < N; i++) {
        await sendAccepted(sender, {body: `${address} ${i}`, application_properties: {i}});
    }

    await gather(receivers, 3 * N, `${label}: three subscribers, ${N} messages each`);
    receivers.forEach((r, k) => {
        const got = r.inbox.map((ctx) => ctx.message.application_properties.i);
        log(`subscriber ${k} got ${JSON.stringify(got)}`);
        equal(got, [...Array(N).keys()], `${label}: messages of subscriber ${k}`);
        r.inbox.forEach((ctx) => equal(ctx.message.body, `${address} ${ctx.message.application_properties.i}`,
                                       `${label}: body at subscriber ${k}`));
        r.inbox.splice(0).forEach((ctx) => ctx.delivery.accept());
    });
    await Promise.all(receivers.map((r) => quiet(r, `${label}: each subscriber gets each message once`)));
}

run('fanout', async () => {
    await fanout('topic.rhea.fanout');
    await fanout('rhea.news', ['topic']);
});
