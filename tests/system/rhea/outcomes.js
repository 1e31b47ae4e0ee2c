'use strict';
// The four delivery outcomes, settled by rhea, each on its own queue:
//   accepted  -> the message is gone
//   released  -> it comes back, delivery_count unchanged, first_acquirer false
//   modified  -> delivery_failed: back with delivery_count + 1 (and the
//                outcome's message annotations merged in);
//                undeliverable_here: never offered to that receiver again,
//                another receiver gets it
//   rejected  -> moved to "DLQ" with x-opt-dead-letter-reason = "rejected"
const {step, log, equal, check, show, connect, openSender, openReceiver, next, quiet,
       sendAccepted, run} = require('./common');

function count(m) {
    return m.delivery_count || 0; // absent means 0
}

// One receiver that asks for one message at a time.
async function oneAtATime(conn, address, name) {
    const r = await openReceiver(conn, {source: address, credit_window: 0, name});
    r.take = async (what) => {
        r.add_credit(1);
        return next(r, what);
    };
    return r;
}

async function firstDelivery(r, id, what) {
    const ctx = await r.take(what);
    equal(ctx.message.message_id, id, `${what}: message_id`);
    equal(count(ctx.message), 0, `${what}: delivery_count on the first delivery`);
    equal(ctx.message.first_acquirer, true, `${what}: first_acquirer on the first delivery`);
    return ctx;
}

run('outcomes', async () => {
    const conn = await connect();
    // A sender per queue (not the anonymous relay: relay.js covers that).
    const put = async (address, id) => {
        const sender = await openSender(conn, address);
        await sendAccepted(sender, {message_id: id, body: `body of ${id}`, application_properties: {id}});
        sender.close();
    };

    step('accept: the message is gone');
    await put('rhea.accept', 'acc-1');
    let r = await oneAtATime(conn, 'rhea.accept', 'accept-1');
    (await firstDelivery(r, 'acc-1', 'accept')).delivery.accept();
    r.close();
    r = await openReceiver(conn, {source: 'rhea.accept', credit_window: 10, name: 'accept-2'});
    await quiet(r, 'an accepted message must not be delivered again');

    step('release: comes back with delivery_count unchanged');
    await put('rhea.release', 'rel-1');
    r = await oneAtATime(conn, 'rhea.release', 'release');
    (await firstDelivery(r, 'rel-1', 'release')).delivery.release();
    let ctx = await r.take('the released message, again');
    log('after release:', show({id: ctx.message.message_id, delivery_count: ctx.message.delivery_count,
                                first_acquirer: ctx.message.first_acquirer}));
    equal(ctx.message.message_id, 'rel-1', 'release: redelivered message_id');
    equal(count(ctx.message), 0, 'release: delivery_count after released');
    equal(Boolean(ctx.message.first_acquirer), false, 'release: first_acquirer on the second delivery');
    equal(ctx.message.body, 'body of rel-1', 'release: body');
    ctx.delivery.accept();

    step('modified(delivery_failed): comes back with delivery_count + 1');
    await put('rhea.failed', 'fail-1');
    r = await oneAtATime(conn, 'rhea.failed', 'failed');
    (await firstDelivery(r, 'fail-1', 'delivery_failed')).delivery.modified({
        delivery_failed: true, message_annotations: {'x-opt-rhea-note': 'tried once'}});
    ctx = await r.take('the failed message, again');
    log('after modified(delivery_failed):', show({id: ctx.message.message_id,
        delivery_count: ctx.message.delivery_count, first_acquirer: ctx.message.first_acquirer,
        message_annotations: ctx.message.message_annotations}));
    equal(ctx.message.message_id, 'fail-1', 'delivery_failed: redelivered message_id');
    equal(count(ctx.message), 1, 'delivery_failed: delivery_count after modified(delivery_failed)');
    equal(Boolean(ctx.message.first_acquirer), false, 'delivery_failed: first_acquirer on the second delivery');
    equal((ctx.message.message_annotations || {})['x-opt-rhea-note'], 'tried once',
          'delivery_failed: annotation from the modified outcome');
    ctx.delivery.accept();

    step('modified(undeliverable_here): another receiver gets it, the refusing one never');
    await put('rhea.undeliverable', 'und-1');
    const refuser = await oneAtATime(conn, 'rhea.undeliverable', 'refuser');
    // The other consumer is on its own connection and has no credit until the
    // refusal is done, so the first delivery can only go to the refuser.
    const other = await oneAtATime(await connect({container_id: 'rhea-other'}), 'rhea.undeliverable', 'other');
    (await firstDelivery(refuser, 'und-1', 'undeliverable_here')).delivery.modified({undeliverable_here: true});
    refuser.add_credit(1);
    await quiet(refuser, 'undeliverable_here: the refusing receiver was offered the message again');
    ctx = await other.take('the message refused by the first receiver, at the other receiver');
    log('after modified(undeliverable_here):', show({id: ctx.message.message_id,
        delivery_count: ctx.message.delivery_count}));
    equal(ctx.message.message_id, 'und-1', 'undeliverable_here: message_id at the other receiver');
    equal(count(ctx.message), 0, 'undeliverable_here (delivery_failed not set): delivery_count');
    ctx.delivery.accept();
    await quiet(refuser, 'undeliverable_here: the refusing receiver got it after the other accepted it');

    step('rejected: moved to DLQ');
    await put('rhea.reject', 'rej-1');
    r = await oneAtATime(conn, 'rhea.reject', 'reject');
    (await firstDelivery(r, 'rej-1', 'reject')).delivery.reject(
        {condition: 'rhea:bad-message', description: 'rejected by the rhea test'});
    const dlq = await openReceiver(conn, {source: 'DLQ', credit_window: 10, name: 'dlq'});
    ctx = await next(dlq, 'the rejected message on DLQ');
    const ann = ctx.message.message_annotations || {};
    log('on DLQ:', show({id: ctx.message.message_id, message_annotations: ann,
                         delivery_count: ctx.message.delivery_count}));
    equal(ctx.message.message_id, 'rej-1', 'reject: message_id on DLQ');
    equal(ann['x-opt-dead-letter-reason'], 'rejected', 'reject: x-opt-dead-letter-reason');
    equal(ann['x-opt-original-address'], 'rhea.reject', 'reject: x-opt-original-address');
    check(String(ann['x-opt-dead-letter-description']).includes('rhea:bad-message'),
          `reject: x-opt-dead-letter-description should carry the condition, observed ` +
          show(ann['x-opt-dead-letter-description']));
    equal(ctx.message.body, 'body of rej-1', 'reject: body on DLQ');
    equal(ctx.message.application_properties, {id: 'rej-1'}, 'reject: application_properties on DLQ');
    equal(count(ctx.message), 0, 'reject: delivery_count of the dead-lettered copy');
    ctx.delivery.accept();
    r.add_credit(1);
    await quiet(r, 'reject: the rejected message came back to its queue');
    await quiet(dlq, 'reject: DLQ holds one message');
});
