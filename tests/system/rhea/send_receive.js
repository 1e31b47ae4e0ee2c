'use strict';
// A queue delivers what rhea sent, in order, with bodies of several AMQP types
// and application properties intact; accepted messages are gone.
const {rhea, step, log, equal, check, connect, openSender, openReceiver, next, quiet,
       sendAccepted, run} = require('./common');

const QUEUE = 'rhea.send_receive';
const N = 20;

function body(i) {
    // Different body encodings: amqp-value string / map / list, and a data section.
    switch (i % 4) {
    case 0: return `message ${i}`;
    case 1: return {index: i, text: `map ${i}`, nested: {ok: true}};
    case 2: return [i, `list ${i}`, false];
    default: return rhea.message.data_section(Buffer.from(`bytes ${i} \u00ff`, 'utf8'));
    }
}

function properties(i) {
    return {index: i, origin: 'rhea', even: i % 2 === 0, ratio: i / 4};
}

run('send_receive', async () => {
    const conn = await connect();

    step(`sending ${N} messages to ${QUEUE}`);
    const sender = await openSender(conn, QUEUE);
    for (let i = 0; i < N; i++) {
        await sendAccepted(sender, {
            message_id: `id-${i}`, subject: 'rhea-test', body: body(i),
            application_properties: properties(i),
        });
    }

    step('receiving them');
    const receiver = await openReceiver(conn, {source: QUEUE, credit_window: N});
    for (let i = 0; i < N; i++) {
        const ctx = await next(receiver, `message ${i} of ${N}`);
        const m = ctx.message;
        equal(m.message_id, `id-${i}`, `message_id of message ${i} (order)`);
        equal(m.subject, 'rhea-test', `subject of message ${i}`);
        equal(m.application_properties, properties(i), `application_properties of message ${i}`);
        const expected = body(i);
        if (i % 4 === 3) {
            check(m.body && m.body.typecode === 0x75,
                  `message ${i}: body should be a data section, observed ${JSON.stringify(m.body)}`);
            equal(Buffer.from(m.body.content).toString('utf8'), expected.content.toString('utf8'),
                  `data section of message ${i}`);
        } else {
            equal(m.body, expected, `body of message ${i}`);
        }
        equal(m.first_acquirer, true, `first_acquirer of message ${i}`);
        equal(m.delivery_count || 0, 0, `delivery_count of message ${i}`);
        ctx.delivery.accept();
    }
    log(`received ${N} messages in order, intact`);

    step('accepted messages are gone: a new receiver gets nothing');
    receiver.close();
    const again = await openReceiver(conn, {source: QUEUE, credit_window: 10});
    await quiet(again, 'after accepting every message the queue should be empty');
});
