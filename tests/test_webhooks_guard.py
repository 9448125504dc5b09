"""Webhooks done right: SSRF guard (after DNS, again on redirects), HMAC signatures, bounded retries with backoff,
every attempt recorded. A real loopback receiver; no test waits on a real backoff (``sleep`` is injected)."""

from __future__ import annotations

import json
import time

import pytest

from s3server import free_ports
from scarches_api.webhooks import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    Allowlist,
    backoff_delay,
    deliver,
    forbidden_reason,
    max_delivery_seconds,
    sign,
    verify_signature,
)
from webhook_receiver import WebhookReceiver

LOOPBACK = ["127.0.0.1/32"]
SECRET = "s3cr3t-for-tests"
ATTEMPT_KEYS = {"at", "url", "status_code", "error", "duration_s", "address", "redirects"}


@pytest.fixture
def receiver():
    receiver = WebhookReceiver().start()
    yield receiver
    receiver.stop()


class Sleeps(list):
    """Records the backoff delays instead of waiting them out; ``then`` runs on the first one."""

    def __init__(self, then=None) -> None:
        super().__init__()
        self.then = then

    def __call__(self, seconds: float) -> None:
        if not self and self.then:
            self.then()
        self.append(seconds)


def outcome(delivery) -> str:
    """One line for the fault table: what a delivery did, attempt by attempt."""
    statuses = ", ".join(str(a["status_code"] or a["error"]) for a in delivery.attempts)
    return f"ok={delivery.ok}, {len(delivery.attempts)} attempt(s): {statuses}"[:160]


@pytest.mark.fault("webhook receiver down, then up before the retry")
def test_receiver_down_then_up_is_delivered_after_retries(record_property) -> None:
    port = free_ports(1)[0]
    started: list[WebhookReceiver] = []
    sleeps = Sleeps(then=lambda: started.append(WebhookReceiver(port=port).start()))
    try:
        delivery = deliver(
            f"http://127.0.0.1:{port}/hook", {"job_id": "j"}, timeout=5, allow=LOOPBACK, backoff=0.2, sleep=sleeps
        )
        assert delivery.ok and delivery.status_code == 200 and len(sleeps) == 1
        first, second = delivery.attempts
        assert first["status_code"] is None and "Connect" in first["error"] and second["status_code"] == 200
        assert 0.1 <= sleeps[0] <= 0.3  # backoff 0.2 s, jittered to 50-150%
        assert len(started[0].calls_to("/hook")) == 1
        record_property("observed", f"{outcome(delivery)}; slept {sleeps[0]:.2f} s")
    finally:
        for r in started:
            r.stop()


@pytest.mark.fault("webhook receiver answers 500, then 502, then 200")
def test_500_then_200_is_retried_and_every_attempt_recorded(receiver: WebhookReceiver, record_property) -> None:
    receiver.plan(500, 502)
    sleeps = Sleeps()
    delivery = deliver(receiver.url("/flaky"), {"n": 1}, timeout=5, allow=LOOPBACK, backoff=1.0, sleep=sleeps)
    assert delivery.ok and delivery.error is None and delivery.refused_reason is None
    assert [a["status_code"] for a in delivery.attempts] == [500, 502, 200]
    assert [a["error"] for a in delivery.attempts] == ["HTTP 500", "HTTP 502", None]
    assert all(set(a) == ATTEMPT_KEYS and a["duration_s"] >= 0 and a["address"] == "127.0.0.1" for a in delivery.attempts)
    assert 0.5 <= sleeps[0] <= 1.5 and 1.0 <= sleeps[1] <= 3.0  # exponential, jittered
    assert len(receiver.calls_to("/flaky")) == 3
    json.dumps(delivery.to_dict())  # recorded on the job as JSON
    record_property("observed", f"{outcome(delivery)}; backoffs {sleeps[0]:.2f} s, {sleeps[1]:.2f} s")


@pytest.mark.fault("webhook receiver always answers 503 (retries bounded at 4 attempts)")
def test_retries_are_bounded(receiver: WebhookReceiver, record_property) -> None:
    receiver.status = 503
    sleeps = Sleeps()
    delivery = deliver(receiver.url("/down"), {}, timeout=5, allow=LOOPBACK, attempts=4, sleep=sleeps)
    assert not delivery.ok and len(delivery.attempts) == 4 and len(sleeps) == 3
    assert delivery.error == "HTTP 503" and len(receiver.calls_to("/down")) == 4
    record_property("observed", f"{outcome(delivery)}; {len(sleeps)} backoffs; error {delivery.error}")


@pytest.mark.fault("webhook redirect (302) to the cloud metadata address 169.254.169.254")
def test_redirect_to_the_metadata_address_is_refused(receiver: WebhookReceiver, record_property) -> None:
    receiver.plan((302, {"Location": "http://169.254.169.254/latest/meta-data/"}))
    # Even a broad link-local allowance doesn't open the metadata endpoint.
    delivery = deliver(receiver.url("/r"), {}, timeout=5, allow=LOOPBACK + ["169.254.0.0/16"], sleep=Sleeps())
    assert not delivery.ok and len(delivery.attempts) == 1  # a refusal is never retried
    assert "169.254.169.254" in delivery.refused_reason and "metadata" in delivery.refused_reason
    assert delivery.attempts[0]["redirects"] == ["http://169.254.169.254/latest/meta-data/"]
    assert delivery.error.startswith("refused:")
    record_property("observed", f"{len(delivery.attempts)} attempt(s); {delivery.error[:160]}")


@pytest.mark.fault("webhook redirect loop (302 to itself, 10 times)")
def test_redirects_are_followed_with_the_body_and_checked_each_time(receiver: WebhookReceiver, record_property) -> None:
    receiver.plan((307, {"Location": "/second"}), (302, {"Location": receiver.url("/third")}))
    delivery = deliver(receiver.url("/first"), {"x": 1}, timeout=5, allow=LOOPBACK, secret=SECRET)
    assert delivery.ok and delivery.attempts[0]["redirects"] == [receiver.url("/second"), receiver.url("/third")]
    (last,) = receiver.calls_to("/third")
    assert last.json == {"x": 1}
    assert verify_signature(SECRET, last.headers["x-scarches-timestamp"], last.body, last.headers["x-scarches-signature"])
    # A redirect loop ends after 3 redirects, refused, without retries.
    receiver.status = 302
    receiver.plan(*[(302, {"Location": "/loop"})] * 10)
    delivery = deliver(receiver.url("/loop"), {}, timeout=5, allow=LOOPBACK, sleep=Sleeps())
    assert not delivery.ok and "more than 3 redirects" in delivery.refused_reason and len(delivery.attempts) == 1
    record_property("observed", f"{len(delivery.attempts)} attempt(s); refused: {delivery.refused_reason[:160]}")


@pytest.mark.fault("webhook to loopback / private / CGNAT / IPv6 ULA / localhost addresses without an allowlist")
def test_private_addresses_are_refused_without_an_allowlist(receiver: WebhookReceiver, record_property) -> None:
    delivery = deliver(receiver.url("/hook"), {}, timeout=5, sleep=Sleeps())
    assert not delivery.ok and "loopback" in delivery.refused_reason and "SCARCHES_WEBHOOK_ALLOW" in delivery.refused_reason
    assert receiver.calls == []  # nothing was sent
    first = delivery.refused_reason
    refused = 0
    for url in ("http://10.1.2.3/h", "http://192.168.0.1/h", "http://[::1]/h", "http://[::ffff:127.0.0.1]/h",
                "http://0.0.0.0/h", "http://100.64.0.1/h", "http://[fd00:ec2::254]/h", "http://localhost/h"):
        delivery = deliver(url, {}, timeout=1, sleep=Sleeps())
        assert delivery.refused_reason and not delivery.ok and len(delivery.attempts) == 1, url
        refused += 1
    record_property("observed", f"loopback: {first[:110]}; {len(receiver.calls)} calls received; "
                                f"{refused} other private URLs refused, 1 attempt each")


@pytest.mark.fault("webhook host name that resolves (DNS) to a private address, alone or among public ones")
def test_the_check_is_after_dns_resolution_and_the_checked_address_is_called(
    receiver: WebhookReceiver, record_property
) -> None:
    # A public-looking name that resolves to a private address is refused...
    delivery = deliver("http://hooks.example.com/h", {}, timeout=1, resolver=lambda h, p: ["10.0.0.7"], sleep=Sleeps())
    assert "hooks.example.com (10.0.0.7) is a private address" in delivery.refused_reason
    private = delivery.refused_reason
    # ...and so is a name with any private address among public ones.
    delivery = deliver("http://x.example.com/h", {}, resolver=lambda h, p: ["93.184.216.34", "127.0.0.1"], sleep=Sleeps())
    assert delivery.refused_reason
    record_property("observed", f"refused: {private[:80]}; mixed: {delivery.refused_reason[:80]}")
    # An allow-listed name is called at the address it resolved to, with its own Host header.
    url = f"http://hooks.internal:{receiver.port}/named"
    delivery = deliver(url, {"a": 1}, timeout=5, allow=["hooks.internal"], resolver=lambda h, p: ["127.0.0.1"])
    assert delivery.ok
    (call,) = receiver.calls_to("/named")
    assert call.headers["host"] == f"hooks.internal:{receiver.port}"


@pytest.mark.fault("webhook host name that does not resolve")
def test_unresolvable_names_are_network_errors_and_retried(record_property) -> None:
    def resolver(host: str, port: int) -> list[str]:
        import socket

        raise socket.gaierror("Name or service not known")

    sleeps = Sleeps()
    delivery = deliver("http://nowhere.invalid/h", {}, attempts=2, resolver=resolver, sleep=sleeps)
    assert not delivery.ok and len(delivery.attempts) == 2 and "gaierror" in delivery.error and not delivery.refused_reason
    record_property("observed", f"ok={delivery.ok}, {len(delivery.attempts)} attempts, {len(sleeps)} backoff; "
                                f"{delivery.error[:140]}")


@pytest.mark.fault("tampered webhook signature: other secret, changed body, changed timestamp, replay, bad timestamp")
def test_signature_verifies_and_rejects_tampering(receiver: WebhookReceiver, record_property) -> None:
    delivery = deliver(receiver.url("/signed"), {"job_id": "j9"}, timeout=5, allow=LOOPBACK, secret=SECRET)
    assert delivery.ok and delivery.signed
    (call,) = receiver.calls_to("/signed")
    ts, sig = call.headers[TIMESTAMP_HEADER.lower()], call.headers[SIGNATURE_HEADER.lower()]
    assert sig.startswith("sha256=") and abs(int(ts) - time.time()) < 60
    assert verify_signature(SECRET, ts, call.body, sig)
    tampered = {
        "other secret": verify_signature("other-secret", ts, call.body, sig),
        "body +1 byte": verify_signature(SECRET, ts, call.body + b" ", sig),
        "timestamp +1": verify_signature(SECRET, str(int(ts) + 1), call.body, sig),
        "replay after 301 s": verify_signature(SECRET, ts, call.body, sig, now=int(ts) + 301),  # 5 minutes later
    }
    assert not any(tampered.values())
    assert verify_signature(SECRET, 1000, "{}", sign(SECRET, 1000, b"{}"), now=1100)
    tampered["non-numeric timestamp"] = verify_signature(SECRET, "not-a-number", b"{}", sig)
    assert not tampered["non-numeric timestamp"]
    record_property("observed", "verified: " + "; ".join(f"{k}: {v}" for k, v in tampered.items()))
    # Without a secret nothing is signed.
    deliver(receiver.url("/plain"), {}, timeout=5, allow=LOOPBACK)
    assert SIGNATURE_HEADER.lower() not in receiver.calls_to("/plain")[0].headers


@pytest.mark.fault("webhook URL with a non-HTTP scheme (ftp://)")
def test_guard_units(record_property) -> None:
    import ipaddress

    assert forbidden_reason(ipaddress.ip_address("8.8.8.8")) is None
    assert forbidden_reason(ipaddress.ip_address("169.254.169.254")) == "a cloud metadata address"
    allow = Allowlist("10.0.0.0/8, *.corp.internal ,192.168.1.5")
    assert allow.permits_ip(ipaddress.ip_address("10.9.9.9")) and allow.permits_ip(ipaddress.ip_address("192.168.1.5"))
    assert allow.permits_host("a.corp.internal") and not allow.permits_host("corp.internal.evil.com")
    assert all(0.25 <= backoff_delay(1, 0.5) <= 0.75 for _ in range(50))
    assert max_delivery_seconds(30, 4, 0.5) > 4 * 30
    delivery = deliver("ftp://example.com/x", {}, sleep=Sleeps())
    assert delivery.refused_reason and "http" in delivery.refused_reason
    record_property("observed", f"{len(delivery.attempts)} attempt(s); refused: {delivery.refused_reason[:160]}")
