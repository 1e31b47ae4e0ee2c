'use strict';
// Two rhea receivers (on separate connections) compete on one queue: each
// message goes to exactly one of them, both get some, together they get all,
// and each sees its share in queue order.
const {step, log, equal, check, connect, openSender, openReceiver, gather, quiet, roundTrip,
       sendAccepted, run} = require('./common');

const QUEUE = 'rhea.competing';
const N = 20;

run('competing_consumers', async () => {
    step('two receivers, each granting credit for every message');
    const receivers = [];
    for (const name of ['a', 'b']) {
        const conn = await connect({container_id: `rhea-consumer-${name}`});
        const r = await openReceiver(conn, {source: QUEUE, credit_window: 0, name: `consumer-${name}`});
        r.add_credit(N);
        // The broker must know about both consumers' credit before the first
        // message arrives, otherwise one of them could legitimately get all.
        await roundTrip(conn);
        receivers.push(r);
    }

    step(`sending ${N} messages`);
    const conn = await connect({container_id: 'rhea-producer'});
    const sender = await openSender(conn, QUEUE);
    for (let i = 0; i < N; i++) {
        await sendAccepted(sender, {message_id: `m-${i}`, body: `body ${i}`, application_properties: {i}});
    }

    step('collecting from both receivers');
    await gather(receivers, N, 'both receivers together');
    const shares = receivers.map((r) => r.inbox.map((ctx) => ctx.message.application_properties.i));
    log('receiver a got', JSON.stringify(shares[0]));
    log('receiver b got', JSON.stringify(shares[1]));

    const all = shares[0].concat(shares[1]);
    equal(new Set(all).size, all.length, `messages delivered twice (a=${shares[0]}, b=${shares[1]})`);
    equal(all.slice().sort((x, y) => x - y), [...Array(N).keys()], 'union of both shares');
    shares.forEach((share, k) => {
        check(share.length > 0, `receiver ${'ab'[k]} got no message at all`);
        equal(share, share.slice().sort((x, y) => x - y), `order of receiver ${'ab'[k]}'s share`);
    });
    for (const r of receivers) {
        for (const ctx of r.inbox) equal(ctx.message.body, `body ${ctx.message.application_properties.i}`, 'body');
    }

    step('accepting; nothing more arrives');
    for (const r of receivers) {
        r.inbox.splice(0).forEach((ctx) => ctx.delivery.accept());
    }
    await Promise.all(receivers.map((r) => quiet(r, 'after all messages were consumed')));
});
