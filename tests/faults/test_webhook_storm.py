"""A webhook storm: SendGrid batches and Twilio callbacks replayed, duplicated and out of order,
interleaved at random. Afterwards: no provider event stored twice, message statuses never move
backwards, and SMS consent is what the last genuine STOP/START said.
"""

from __future__ import annotations

import random
import time
from urllib.parse import urlencode

import orjson
from sqlalchemy import func, select
from twilio.request_validator import RequestValidator  # type: ignore[import-untyped]

from tests.web.conftest import (
    PUBLIC_URL,
    TWILIO_TOKEN,
    client,
    module_store,
    module_store_url,
    seeded,
    settings,
    signer,
    store,
    store_url,
)
from tidings.crm.models import Consent, Message, MessageEvent

__all__ = [
    "client",
    "module_store",
    "module_store_url",
    "seeded",
    "settings",
    "signer",
    "store",
    "store_url",
]


def twilio(client, path: str, form: dict[str, str]):
    signature = RequestValidator(TWILIO_TOKEN).compute_signature(PUBLIC_URL + path, form)
    headers = {"X-Twilio-Signature": signature, "Content-Type": "application/x-www-form-urlencoded"}
    return client.post(path, content=urlencode(form), headers=headers)


def test_duplicates_replays_and_disorder_change_nothing_twice(client, store, seeded, signer):
    rng = random.Random(20261130)
    now = int(time.time())
    ann, bob = str(seeded["ann_email"]), str(seeded["bob_email"])
    sendgrid = [
        {
            "event": kind,
            "sg_event_id": f"{mid}-{kind}",
            "timestamp": now + n,
            "email": "x@example.com",
            "tidings_message_id": mid,
        }
        for mid in (ann, bob)
        for n, kind in enumerate(("processed", "delivered", "open", "click"))
    ]
    for event in sendgrid:
        if event["event"] == "click":
            event["url"] = "https://shop.example.com/"
    batches = [sendgrid[i : i + 3] for i in range(0, len(sendgrid), 3)]
    requests: list[tuple[str, object]] = []
    for batch in batches:  # each batch posted 3 times, and once more in another order
        body = orjson.dumps(batch)
        requests += [("sg", body)] * 3
        requests.append(("sg", orjson.dumps(list(reversed(batch)))))
    statuses = ["queued", "sent", "delivered"]
    for status in statuses:  # every status twice, then a late "sent" after "delivered"
        form = {"MessageSid": "SMbobsms", "MessageStatus": status, "To": "+14155550001"}
        requests += [("status", form)] * 2
    late = {"MessageSid": "SMbobsms", "MessageStatus": "sent", "To": "+14155550001"}
    genuine = [("STOP", "SM1"), ("START", "SM2"), ("STOP", "SM3")]
    inbound = [
        {"From": "+14155550001", "To": "+15005550006", "Body": word, "MessageSid": sid}
        for word, sid in genuine
    ]
    rng.shuffle(requests)
    for kind, payload in requests:
        if kind == "sg":
            assert isinstance(payload, bytes)
            reply = client.post(
                "/webhooks/sendgrid", content=payload, headers=signer.headers(payload)
            )
        else:
            assert isinstance(payload, dict)
            reply = twilio(client, "/webhooks/twilio/status", payload)
        assert reply.status_code in {200, 204}, reply.text
    assert twilio(client, "/webhooks/twilio/status", late).status_code in {200, 204}
    for form in inbound:  # the genuine order ...
        assert twilio(client, "/webhooks/twilio/inbound", form).status_code == 200
    replays = inbound[:2] * 3  # ... then old STOP and START replayed, again and again
    rng.shuffle(replays)
    for form in replays:
        assert twilio(client, "/webhooks/twilio/inbound", form).status_code == 200

    with store.connect() as conn:
        stored = conn.execute(
            select(MessageEvent.provider, MessageEvent.provider_event_id, func.count())
            .group_by(MessageEvent.provider, MessageEvent.provider_event_id)
            .having(func.count() > 1)
        ).all()
        sendgrid_events = conn.execute(
            select(func.count()).where(MessageEvent.provider == "sendgrid")
        ).scalar_one()
        message_status = dict(conn.execute(select(Message.id, Message.status)).tuples().all())
        sms = dict(
            conn.execute(
                select(Consent.purpose, Consent.status).where(
                    Consent.contact_id == seeded["bob"], Consent.channel == "sms"
                )
            )
            .tuples()
            .all()
        )
    assert stored == []  # no provider event stored twice
    assert sendgrid_events == len(sendgrid)
    assert message_status[seeded["ann_email"]] == message_status[seeded["bob_email"]] == "delivered"
    assert message_status[seeded["bob_sms"]] == "delivered"  # the late "sent" moved nothing back
    assert sms == {"marketing": "revoked", "transactional": "revoked"}  # the last genuine: STOP
