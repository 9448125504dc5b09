"""API tokens: a small FastAPI app with the ``require_token`` dependency, as create_app wires it."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from fastapi.testclient import TestClient

from scarches_api.api.security import (
    AuthError,
    binds_loopback_only,
    load_tokens,
    require_token,
    startup_warning,
    token_matches,
)
from scarches_api.errors import ConfigError, ScarchesError


def settings(**kw: object) -> SimpleNamespace:
    base = {"api_tokens": None, "api_tokens_file": None, "host": "127.0.0.1", "port": 8080}
    return SimpleNamespace(**{**base, **kw})


def make_app(config: SimpleNamespace) -> FastAPI:
    app = FastAPI(dependencies=[Depends(require_token)])
    app.state.settings = config

    @app.exception_handler(ScarchesError)
    async def domain_error(request: Request, exc: ScarchesError) -> JSONResponse:
        return JSONResponse(exc.to_dict(), status_code=exc.status_code, headers=getattr(exc, "headers", None))

    @app.get("/liveness", response_class=PlainTextResponse)
    async def liveness() -> str:
        return "up"

    @app.get("/jobs")
    async def jobs() -> dict:
        return {"data": []}

    @app.post("/query")
    async def query(request: Request) -> dict:
        return {"got": len(await request.body())}

    return app


@pytest.fixture
def client() -> TestClient:
    return TestClient(make_app(settings(api_tokens="alpha-token, beta-token")))


def test_liveness_stays_open(client: TestClient) -> None:
    assert client.get("/liveness").text == "up"


@pytest.mark.fault("missing token: no Authorization header, Basic credentials, empty Bearer; POST without a token")
def test_missing_token_is_401_with_www_authenticate(client: TestClient, record_property) -> None:
    seen: list[str] = []
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, {"Authorization": "Bearer"}):
        answer = client.get("/jobs", headers=headers)
        assert answer.status_code == 401, headers
        assert answer.headers["www-authenticate"] == "Bearer"
        body = answer.json()
        assert body["kind"] == "auth" and "Authorization: Bearer <token>" in body["error"]
        seen.append(str(answer.status_code))
    posted = client.post("/query", content=b"{}")
    assert posted.status_code == 401
    record_property("observed", f"GET /jobs: {', '.join(seen)} (WWW-Authenticate: "
                                f"{answer.headers['www-authenticate']}), {body['error'][:100]}; "
                                f"POST /query: {posted.status_code}")


@pytest.mark.fault("wrong bearer token (a valid token's prefix plus more)")
def test_wrong_token_is_403_and_right_tokens_pass(client: TestClient, record_property) -> None:
    wrong = client.get("/jobs", headers={"Authorization": "Bearer alpha-token-but-longer"})
    assert wrong.status_code == 403 and "not valid" in wrong.json()["error"] and "www-authenticate" not in wrong.headers
    record_property("observed", f"{wrong.status_code}: {wrong.json()['error'][:160]}")
    for token in ("alpha-token", "beta-token"):
        assert client.get("/jobs", headers={"Authorization": f"Bearer {token}"}).json() == {"data": []}
    assert client.post("/query", content=b"{}", headers={"Authorization": "bearer beta-token"}).json() == {"got": 2}


def test_no_tokens_means_open() -> None:
    client = TestClient(make_app(settings()))
    assert client.get("/jobs").status_code == 200


@pytest.mark.fault("a tokens file's comment line sent as the token")
def test_tokens_file_and_env_together(tmp_path: Path, record_property) -> None:
    file = tmp_path / "tokens"
    file.write_text("# rotated 2024-05\nfile-token-1\n\n  file-token-2  \n")
    config = settings(api_tokens="env-token", api_tokens_file=file)
    assert load_tokens(config) == ["env-token", "file-token-1", "file-token-2"]
    client = TestClient(make_app(config))
    assert client.get("/jobs", headers={"Authorization": "Bearer file-token-2"}).status_code == 200
    comment = client.get("/jobs", headers={"Authorization": "Bearer # rotated 2024-05"})
    assert comment.status_code == 403
    record_property("observed", f"{comment.status_code}: {comment.json()['error'][:160]}")


@pytest.mark.fault("tokens file missing; tokens file with only a comment; SCARCHES_API_TOKENS of blanks")
def test_an_unusable_token_setting_fails_closed(tmp_path: Path, record_property) -> None:
    with pytest.raises(ConfigError, match="can't be read") as missing:
        load_tokens(settings(api_tokens_file=tmp_path / "missing"))
    (tmp_path / "empty").write_text("# nothing yet\n")
    with pytest.raises(ConfigError, match="holds no token") as empty:
        load_tokens(settings(api_tokens_file=tmp_path / "empty"))
    with pytest.raises(ConfigError, match="holds no token") as blank:
        load_tokens(settings(api_tokens=" , "))
    errors = [e.value for e in (missing, empty, blank)]
    texts = [f"{type(e).__name__}: {str(e).replace(f'{tmp_path}/', '')[:50]}" for e in errors]
    record_property("observed", "; ".join(texts))


def test_secret_str_tokens_are_read() -> None:
    from pydantic import SecretStr

    assert load_tokens(settings(api_tokens=SecretStr("a,b"))) == ["a", "b"]


def test_token_matching() -> None:
    assert token_matches("b", ["a", "b"]) and not token_matches("", ["a"]) and not token_matches("a", [])
    assert isinstance(AuthError("x"), ScarchesError)


def test_startup_warning_says_who_can_reach_an_open_api() -> None:
    assert startup_warning(settings(api_tokens="t")) is None
    local = startup_warning(settings(host="127.0.0.1"))
    assert "open" in local and "loopback" in local and "this machine only" in local
    public = startup_warning(settings(host="0.0.0.0"))
    assert "beyond loopback" in public and "SCARCHES_API_TOKENS" in public
    assert binds_loopback_only("localhost") and binds_loopback_only("::1") and binds_loopback_only("[::1]")
    assert not binds_loopback_only("0.0.0.0") and not binds_loopback_only("10.0.0.1")


def test_openapi_declares_the_bearer_scheme(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    assert schema["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
