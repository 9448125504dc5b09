"""Webhook delivery against a real HTTP receiver on loopback (allow-listed: loopback is refused by default)."""

from __future__ import annotations

import pytest

from s3server import free_ports
from scarches_api.webhooks import deliver
from webhook_receiver import WebhookReceiver

LOOPBACK = ["127.0.0.1/32"]


@pytest.fixture
def receiver():
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


def test_posts_the_payload_as_json(receiver: WebhookReceiver) -> None:
    payload = {"job_id": "j1", "status": "done", "async": False}
    delivery = deliver(receiver.url("/hook/token-1"), payload, timeout=5, allow=LOOPBACK)
    assert delivery.ok and delivery.status_code == 200 and len(delivery.attempts) == 1 and delivery.error is None
    (call,) = receiver.wait_for("/hook/token-1", timeout=5)
    assert call.headers["content-type"] == "application/json"
    assert call.json == {"job_id": "j1", "status": "done", "async": False}


@pytest.mark.fault("webhook receiver down (nothing listens on the port)")
def test_receiver_down_is_recorded_not_raised(record_property) -> None:
    url = f"http://127.0.0.1:{free_ports(1)[0]}/hook"  # nothing listens there
    delivery = deliver(url, {"job_id": "j2"}, timeout=2, attempts=2, backoff=0.01, allow=LOOPBACK)
    assert not delivery.ok and delivery.status_code is None and len(delivery.attempts) == 2
    assert "Connect" in delivery.error
    record_property("observed", f"ok={delivery.ok}, status {delivery.status_code}, {len(delivery.attempts)} attempts; "
                                f"{delivery.error[:140]}")


@pytest.mark.fault("webhook receiver answers 503 (server error); answers 404 (client error)")
def test_server_errors_are_retried_client_errors_are_not(receiver: WebhookReceiver, record_property) -> None:
    receiver.status = 503
    delivery = deliver(receiver.url("/busy"), {"n": 1}, timeout=5, attempts=3, backoff=0.01, allow=LOOPBACK)
    assert (delivery.ok, delivery.status_code, len(delivery.attempts), delivery.error) == (False, 503, 3, "HTTP 503")
    assert len(receiver.calls_to("/busy")) == 3
    busy = f"503: ok={delivery.ok}, {len(delivery.attempts)} attempts, error {delivery.error}"
    receiver.status = 404
    delivery = deliver(receiver.url("/gone"), {"n": 1}, timeout=5, attempts=3, backoff=0.01, allow=LOOPBACK)
    assert (delivery.ok, delivery.status_code, len(delivery.attempts)) == (False, 404, 1)
    record_property("observed", f"{busy}; 404: ok={delivery.ok}, {len(delivery.attempts)} attempt, "
                                f"error {delivery.error}")


@pytest.mark.fault("webhook URL that is not a URL ('not a url')")
def test_invalid_url_is_recorded(record_property) -> None:
    delivery = deliver("not a url", {"n": 1}, timeout=1, attempts=3, backoff=0.01)
    assert not delivery.ok and len(delivery.attempts) == 1 and delivery.error
    record_property("observed", f"ok={delivery.ok}, {len(delivery.attempts)} attempt; {delivery.error[:160]}")
    assert set(delivery.to_dict()) == {
        "url", "ok", "status_code", "error", "attempts", "at", "duration_s", "refused_reason", "signed"
    }
