'use strict';
// Credit with rhea managing it by hand (credit_window 0): no credit, no
// message; add_credit(1) gives exactly one; add_credit(2) exactly two more;
// drain with surplus credit gives what is left and a drained flow.
const {step, log, equal, check, connect, openSender, openReceiver, next, quiet,
       sendAccepted, delay, SLOW, run} = require('./common');

const QUEUE = 'rhea.credit';
const N = 5;

function ids(ctxs) {
    return ctxs.map((ctx) => ctx.message.application_properties.i);
}

run('credit', async () => {
    const conn = await connect();
    step(`queueing ${N} messages`);
    const sender = await openSender(conn, QUEUE);
    for (let i = 0; i < N; i++) await sendAccepted(sender, {body: `m${i}`, application_properties: {i}});

    const r = await openReceiver(conn, {source: QUEUE, credit_window: 0});
    step('no credit: nothing arrives');
    await quiet(r, 'a receiver that granted no credit got a message');

    step('add_credit(1): exactly one message');
    r.add_credit(1);
    const first = await next(r, 'the one message for credit 1');
    await quiet(r, 'credit 1 brought more than one message');
    equal(ids([first]), [0], 'the message for credit 1');
    equal(r.credit, 0, 'credit left after one message');
    first.delivery.accept();

    step('add_credit(2): exactly two more');
    r.add_credit(2);
    const two = [await next(r, 'first of two'), await next(r, 'second of two')];
    await quiet(r, 'credit 2 brought more than two messages');
    equal(ids(two), [1, 2], 'the messages for credit 2');
    two.forEach((ctx) => ctx.delivery.accept());

    step('drain with credit 10: the remaining two, then drained');
    const drained = new Promise((resolve) => r.once('receiver_drained', resolve));
    r.add_credit(10);
    r.drain_credit();
    const timeout = delay(5000 * SLOW).then(() => 'timeout');
    check(await Promise.race([drained.then(() => 'drained'), timeout]) === 'drained',
          'the broker never answered the drain with a drained flow');
    const rest = r.inbox.splice(0);
    log('drained after', JSON.stringify(ids(rest)));
    equal(ids(rest), [3, 4], 'messages delivered before the drained flow');
    equal(r.credit, 0, 'credit after the drain');
    rest.forEach((ctx) => ctx.delivery.accept());
});
