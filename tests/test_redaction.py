"""Redaction (SPEC §9): secrets are gone from every text field of every event written.

* a table of secret formats: ``redact`` removes each from plain text and from JSON text
  (which stays valid JSON), and is idempotent;
* a table of look-alikes (ids, hashes, paths, words) that ``redact`` leaves alone;
* for every event type: each ``str`` field is either text (``_TEXT_FIELDS``, redacted) or
  an id (``_ID_FIELDS`` below, untouched). A new field in neither fails the test.

The fake secrets are assembled at run time, so secret scanners do not flag this file.
"""

from __future__ import annotations

import base64
import json
import random
import string
from types import UnionType
from typing import Any, ClassVar, Literal, get_args, get_origin

import msgspec
import pytest

from fleetlog.actors.safety import _TEXT_FIELDS, redact, redact_event
from fleetlog.events.schema import (
    EVENT_TYPES,
    BlobRef,
    EventBase,
    ModelCallRequested,
    ModelResponded,
    SessionCreated,
    SnapshotTaken,
    ToolCallCompleted,
    ToolCallProposed,
    UnknownEvent,
)

_rng = random.Random(20240917)
_ALNUM = string.ascii_letters + string.digits
_B64 = _ALNUM + "+/"
_HEX = "0123456789abcdef"


def _r(n: int, alphabet: str = _ALNUM) -> str:
    return "".join(_rng.choice(alphabet) for _ in range(n))


def _mixed(n: int) -> str:
    """Random alphanumerics that certainly hold a digit, an upper and a lower case letter."""
    return "7Qz" + _r(n - 3)


def _pem(kind: str, body: str, block: str = "KEY") -> str:
    return f"-----BEGIN {kind}PRIVATE {block}-----\n{body}\n-----END {kind}PRIVATE {block}-----\n"


# --- the secret formats: (name, text that carries it, the secret that must go) --------------

_S: dict[str, str] = {
    "rsa": "MIIEowIBAAKCAQEA" + _r(48, _B64),
    "pkcs8": "MIIEvQIBADANBgkqhkiG9w0BAQEFAASC" + _r(40, _B64),
    "ec": "MHcCAQEEI" + _r(40, _B64),
    "openssh": "b3BlbnNzaC1rZXktdjEAAAAA" + _r(40, _B64),
    "pgp": "lQdGBF" + _r(50, _B64),
    "jwt": (
        "eyJhbGciOiJSUzI1NiIsImtpZCI6IjEifQ"
        + ".eyJzdWIiOiJzeXN0ZW06c2VydmljZWFjY291bnQifQ."
        + _mixed(43)
    ),
    "uuid": "8d3f1a2b-4c5e-4f60-9a7b-1c2d3e4f5a6b",
}

SECRETS: list[tuple[str, str, str]] = [
    (name, text, secret)
    for name, text, secret in [
        ("anthropic", "{s}", "sk-" + "ant-api03-" + _mixed(80) + "-" + _r(6) + "AA"),
        ("anthropic_admin", "{s}", "sk-" + "ant-admin01-" + _mixed(80)),
        ("openai", "OPENAI_API_KEY: {s}", "sk-" + _mixed(48)),
        ("openai_project", "{s}", "sk-" + "proj-" + _mixed(60) + "_" + _r(20)),
        ("aws_access_key_id", "id {s} ok", "AKIA" + _r(16, string.ascii_uppercase + "234567")),
        ("aws_sts_key_id", "{s}", "ASIA" + _r(16, string.ascii_uppercase + "234567")),
        ("aws_secret_access_key", "aws_secret_access_key = {s}", _mixed(30) + "/K7MD+" + _r(4)),
        ("github_classic", "{s}", "ghp" + "_" + _mixed(36)),
        ("github_oauth", "{s}", "gho" + "_" + _mixed(36)),
        ("github_app", "{s}", "ghs" + "_" + _mixed(36)),
        ("github_user_to_server", "{s}", "ghu" + "_" + _mixed(36)),
        ("github_refresh", "{s}", "ghr" + "_" + _mixed(36)),
        ("github_fine_grained", "{s}", "github" + "_pat_" + _mixed(22) + "_" + _r(59)),
        ("gitlab", "{s}", "glpat" + "-" + _mixed(20)),
        ("slack_bot", "{s}", "xoxb" + "-" + _r(12, "0123456789") + "-" + _mixed(24)),
        ("slack_user", "{s}", "xoxp" + "-" + _r(11, "0123456789") + "-" + _mixed(32)),
        (
            "slack_webhook",
            "https://hooks.slack.com/services/T0123ABCD/B0456EFGH/{s}",
            _mixed(24),
        ),
        ("stripe_secret", "{s}", "sk_" + "live_" + _mixed(24)),
        ("stripe_restricted", "{s}", "rk_" + "live_" + _mixed(24)),
        ("stripe_test", "{s}", "sk_" + "test_" + _mixed(24)),
        ("google_api_key", "{s}", "AIza" + "Sy" + _mixed(33)),
        ("google_oauth_access", "{s}", "ya29" + "." + _mixed(60)),
        ("google_oauth_refresh", "{s}", "1//0" + _mixed(60)),
        (
            "gcp_service_account",
            json.dumps(
                {
                    "type": "service_account",
                    "private_key_id": "{hex}",
                    "private_key": _pem("", "{s}\n" + _r(64, _B64)),
                    "client_email": "bot@proj.iam.gserviceaccount.com",
                }
            ),
            _S["pkcs8"],
        ),
        ("pem_rsa", _pem("RSA ", "{s}\n" + _r(64, _B64)), _S["rsa"]),
        ("pem_ec", _pem("EC ", "{s}"), _S["ec"]),
        ("pem_openssh", _pem("OPENSSH ", "{s}"), _S["openssh"]),
        ("pem_encrypted", _pem("ENCRYPTED ", "{s}"), _S["pkcs8"][:40] + "Enc"),
        ("pem_truncated", "-----BEGIN RSA PRIVATE KEY-----\n{s}", _S["rsa"]),
        (
            "pgp_private_key",
            "-----BEGIN PGP PRIVATE KEY BLOCK-----\n\n{s}\n=Ab3d\n"
            "-----END PGP PRIVATE KEY BLOCK-----",
            _S["pgp"],
        ),
        ("jwt", "session={s}", _S["jwt"]),
        ("bearer_header", "curl -H 'Authorization: Bearer {s}' https://api.x.io", _mixed(40)),
        ("bearer_json_header", '{"Authorization": "Bearer {s}"}', _mixed(40)),
        ("bearer_bare", "use the Bearer {s} for it", _mixed(32)),
        (
            "basic_auth",
            "Authorization: Basic {s}",
            base64.b64encode(b"deploy:" + _mixed(16).encode()).decode(),
        ),
        ("url_password", "postgres://app:{s}@db.internal:5432/prod", "S3cr" + _mixed(12)),
        ("url_password_no_user", "redis://:{s}@cache:6379/0", _mixed(20)),
        ("huggingface", "{s}", "hf" + "_" + _mixed(34)),
        ("npm", "{s}", "npm" + "_" + _mixed(36)),
        ("pypi", "{s}", "pypi-" + "AgEIcHlwaS5vcmc" + "CJ" + _mixed(60)),
        ("twilio_auth_token", "curl -u AC{hex32}:{s} https://api.twilio.com", _r(32, _HEX)),
        ("twilio_api_key", "{s}", "SK" + _r(32, _HEX)),
        ("twilio_env", "TWILIO_AUTH_TOKEN={s}", _r(32, _HEX)),
        ("sendgrid", "{s}", "SG" + "." + _mixed(22) + "." + _mixed(43)),
        ("mailgun", "{s}", "key" + "-" + _r(32, _HEX)),
        ("digitalocean", "{s}", "dop" + "_v1_" + _r(64, _HEX)),
        ("heroku_env", "HEROKU_API_KEY={s}", _S["uuid"]),
        ("heroku_new", "{s}", "HRKU" + "-" + _mixed(60)),
        ("shopify", "{s}", "shpat" + "_" + _r(32, _HEX)),
        (
            "azure_storage_connection_string",
            "DefaultEndpointsProtocol=https;AccountName=acct;AccountKey={s};"
            "EndpointSuffix=core.windows.net",
            _mixed(86) + "==",
        ),
        (
            "azure_service_bus",
            "Endpoint=sb://ns.servicebus.windows.net/;SharedAccessKeyName=root;SharedAccessKey={s}",
            _mixed(43) + "=",
        ),
        (
            "azure_sas",
            "https://acct.blob.core.windows.net/c/b.txt?sv=2022-11-02&sp=r&sig={s}%3D",
            _mixed(40),
        ),
        ("vault", "VAULT_TOKEN is {s}", "hvs" + "." + _mixed(90)),
        ("terraform_cloud", "{s}", _mixed(14) + ".atlas" + "v1." + _mixed(67)),
        ("databricks", "{s}", "dapi" + _r(32, "abcdefgh0123456789")),
        ("doppler", "{s}", "dp" + ".st.prd." + _mixed(43)),
        ("discord_bot", "{s}", "MT" + _mixed(24) + "." + _mixed(6) + "." + _mixed(38)),
        (
            "discord_webhook",
            "https://discord.com/api/webhooks/123456789012345678/{s}",
            _mixed(68),
        ),
        ("telegram_bot", "{s}", "1234567890" + ":AA" + _mixed(33)),
        ("linear", "{s}", "lin" + "_api_" + _mixed(40)),
        ("age", "{s}", "AGE-SECRET-KEY-1" + _r(58, string.ascii_uppercase + "023456789")),
        ("password_assignment", "password={s} next", "hunter2" + _mixed(8)),
        ("json_api_key", '{"api_key": "{s}", "model": "m"}', _mixed(32)),
        ("export_secret_key", "export SECRET_KEY={s}\nrun", _mixed(50)),
        ("pgpassword", "PGPASSWORD={s} psql", _mixed(16)),
        (
            "kubeconfig_token",
            "users:\n- name: admin\n  user:\n    token: {s}\n",
            _mixed(40),
        ),
        ("kubeconfig_client_key", "    client-key-data: {s}\n", _mixed(60) + "=="),
        ("npmrc_auth_token", "//registry.npmjs.org/:_authToken={s}\n", _S["uuid"]),
        ("npmrc_auth", "_auth={s}\n", base64.b64encode(b"me:" + _mixed(12).encode()).decode()),
        ("pypirc_password", "[pypi]\nusername = __token__\npassword: {s}\n", _mixed(24)),
        ("yaml_client_secret", "client_secret: '{s}'", _mixed(32)),
    ]
    for text in [
        text.replace("{hex}", _r(40, _HEX)).replace("{hex32}", _r(32, _HEX)).replace("{s}", secret)
    ]
]

assert len(SECRETS) >= 30
assert len({name for name, _, _ in SECRETS}) == len(SECRETS)

_CONTEXTS = ["{}", "see: {} and more", "\n{}\t", '"{}"', "({})", "{}\n{}"]


@pytest.mark.parametrize(("name", "text", "secret"), SECRETS, ids=[s[0] for s in SECRETS])
def test_a_secret_is_redacted_from_text_and_json(name: str, text: str, secret: str) -> None:
    assert secret in text
    for context in _CONTEXTS:
        plain = context.format(text, text)
        clean = redact(plain)
        assert secret not in clean, (name, context)
        assert "[REDACTED]" in clean
        assert redact(clean) == clean, (name, context)  # idempotent

        for value in ({"k": plain}, [plain, {"nested": plain}]):
            encoded = json.dumps(value)
            clean = redact(encoded)
            json.loads(clean)  # still JSON
            assert secret not in clean, (name, context)
            assert redact(clean) == clean


# --- look-alikes that are not secrets --------------------------------------------------------

NOT_SECRETS = [
    "3f2b8c1e-9a4d-4e6b-8f1a-2c3d4e5f6a7b",  # a UUID
    "sha256 e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
    "toolu_01A09q90qw90lq917835lq9X",
    "tool_use id toolu_bdrk_01Hx8yK3pQ2vW7nR4sT6uZ9a",
    "s-01J9Z3K4M5N6P7Q8R9S0T1V2W3 and s-4f1c2d3e-5a6b",
    "msg_01XFDUDYJgAACzvnptvVoYEL",
    "req_011CSHoEeqs5C35K2UUqR7Fy",
    "src/token.py",
    "tests/test_tokenizer.py::test_secret_handling",
    "the tokenizer splits text into tokens",
    "max_tokens=1024 input_tokens: 50 output_tokens=7",
    "token_count: 5",
    "def get_token(self) -> str:",
    "idempotency_key=s-01J9Z3K4:toolu_01A09q",
    '"private_key_id": "k1"',
    "the bearer instrument was signed",
    "Authorization: Bearer $GITHUB_TOKEN",
    "the password reset flow sends an email",
    "passwords must be hashed with argon2",
    "ask-me-anything and risk-assessment-document-for-q3",
    "key-value stores such as redis",
    "-----BEGIN PUBLIC KEY-----\nMFkwEwYHKoZIzj0CAQYIKoZIzj0DAQcDQgAE\n-----END PUBLIC KEY-----",
    "-----BEGIN CERTIFICATE-----\nMIIBszCCAVmgAwIBAgIU\n-----END CERTIFICATE-----",
    "https://example.com:8443/path?q=1&page=2",
    "git@github.com:org/repo.git and ssh://git@github.com/org/repo",
    "mailto alice@example.com",
    "2024-01-01T12:00:00Z 12:34:56",
    "pk_" + "live_" + "51H8xYzAbCdEfGh1234567890",  # Stripe publishable: meant to be public
    "pk_" + "test_" + "TYooMQauvdEDq54NiTphI7jx",
    "hf_hub_download(repo_id='gpt2')",
    "npm_config_cache=/tmp/npm",
    "AKIA is the prefix of an AWS access key id",
    "SKIPPED 3 tests; ACME corp",
    "ModelCallRequested.request_id",
    "https://hooks.slack.com/services/",
    "a design=final &sig=short",
    "user:pass is the format",
    "C:\\Users\\me\\npm_cache",
    '{"type": "thinking", "thinking": "let me think", "signature": "EqQBCkgIARABGAIiQL"}',
]


@pytest.mark.parametrize("text", NOT_SECRETS)
def test_a_look_alike_is_not_redacted(text: str) -> None:
    assert redact(text) == text
    assert redact(json.dumps({"k": text})) == json.dumps({"k": text})


def test_redact_returns_the_same_string_when_clean() -> None:
    text = "nothing to see here " * 50
    assert redact(text) is text


# --- every event type ---------------------------------------------------------------------

#: Per event type, its ``str`` fields that are ids, names or codes and are never redacted.
_ID_FIELDS: dict[str, set[str]] = {
    "SessionCreated": {"task_id", "agent_type", "tenant", "model", "tools", "workspace"},
    "SessionClaimed": {"owner", "node", "sandbox"},  # sandbox: "on", "off", a probe line
    "CancelRequested": {"by"},
    "SessionCompleted": set(),
    "SessionFailed": set(),
    "SessionCancelled": set(),
    "SnapshotTaken": set(),
    "ModelCallRequested": {"request_id", "model", "purpose"},
    "ModelCallRetried": {"request_id"},
    "ModelResponded": {"request_id", "model", "stop_reason", "purpose"},
    "ModelCallFailed": {"request_id", "purpose"},
    "ToolCallProposed": {"call_id", "tool"},
    "ToolCallVetted": {"call_id", "verdict", "risk", "rule"},
    "ToolCallRejected": {"call_id"},
    "ReviewRequested": {"call_id", "call_hash"},
    "ReviewDecided": {"call_id", "reviewer", "call_hash"},
    "ToolCallStarted": {"call_id", "idempotency_key"},
    "ToolCallCompleted": {"call_id"},
    "ToolCallFailed": {"call_id"},
    "ContextCompacted": {"stage", "cleared", "request_id"},
    "ContextRepaired": {"problems"},
    "LimitExceeded": {"code"},
}
#: Text fields that hold JSON, and must still parse after redaction.
_JSON_FIELDS = {(ModelResponded, "content"), (ToolCallProposed, "input"), (SnapshotTaken, "state")}

_WRITTEN = [t for t in EVENT_TYPES if t is not UnknownEvent]
_ALL_TEXT = "\n".join(text for _, text, _ in SECRETS)


def _holds_str(tp: Any) -> bool:
    """Whether a field of type ``tp`` can hold a string (str, Payload, list[str], Literal...)."""
    if tp is str:
        return True
    if get_origin(tp) is Literal:
        return any(isinstance(a, str) for a in get_args(tp))
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        return any(_holds_str(f.type) for f in msgspec.structs.fields(tp))
    return any(_holds_str(a) for a in get_args(tp))


def _str_fields(cls: type[EventBase]) -> set[str]:
    return {f.name for f in msgspec.structs.fields(cls) if _holds_str(f.type)}


def _id_value(name: str, tp: Any) -> Any:
    if get_origin(tp) is Literal:
        return get_args(tp)[0]
    if get_origin(tp) is list:
        return [f"{name}-a", f"{name}-b"]
    return f"{name}-01J9Z3K4"


def _json_text() -> str:
    """Content blocks of every kind, each carrying every secret."""
    return json.dumps(
        [
            {"type": "text", "text": _ALL_TEXT},
            {"type": "thinking", "thinking": _ALL_TEXT, "signature": "EqQBCkgIARABGAIiQL"},
            {"type": "tool_use", "id": "toolu_01", "name": "run_shell", "input": {"c": _ALL_TEXT}},
            {"type": "server_tool_use", "id": "srvtoolu_01", "input": {"query": _ALL_TEXT}},
            {
                "type": "web_search_tool_result",
                "tool_use_id": "srvtoolu_01",
                "content": [{"type": "web_search_result", "title": _ALL_TEXT, "url": "u"}],
            },
            {"secrets": {name: text for name, text, _ in SECRETS}},
        ]
    )


def _build(cls: type[EventBase]) -> EventBase:
    """``cls`` with a secret in every text field, an id in every id field, and the rest filled."""
    text_fields = set(_TEXT_FIELDS[cls])
    kwargs: dict[str, Any] = {}
    for info in msgspec.structs.fields(cls):
        if info.name in text_fields:
            kwargs[info.name] = _json_text() if (cls, info.name) in _JSON_FIELDS else _ALL_TEXT
        elif _holds_str(info.type):
            kwargs[info.name] = _id_value(info.name, info.type)
        elif info.required:
            kinds = get_args(info.type) if isinstance(info.type, UnionType) else (info.type,)
            kwargs[info.name] = {int: 3, float: 1.5, bool: True, bytes: b"x"}[kinds[0]]
    return cls(**kwargs)


def test_every_event_type_is_in_the_text_table() -> None:
    assert set(_TEXT_FIELDS) == set(EVENT_TYPES)
    assert set(_ID_FIELDS) == {t.__name__ for t in _WRITTEN}


@pytest.mark.parametrize("cls", _WRITTEN, ids=lambda c: c.__name__)
def test_every_str_field_is_text_or_an_id(cls: type[EventBase]) -> None:
    """A new ``str`` field must be put in ``_TEXT_FIELDS`` or in ``_ID_FIELDS`` here."""
    text, ids, strs = set(_TEXT_FIELDS[cls]), _ID_FIELDS[cls.__name__], _str_fields(cls)
    assert not text & ids, f"{cls.__name__}: both text and id: {text & ids}"
    assert text <= strs, f"{cls.__name__}: not str fields: {text - strs}"
    assert ids <= strs, f"{cls.__name__}: not str fields: {ids - strs}"
    undecided = strs - text - ids
    assert not undecided, (
        f"{cls.__name__}.{undecided}: may it hold a secret? Add it to _TEXT_FIELDS "
        "(actors/safety.py) or to _ID_FIELDS (tests/test_redaction.py)"
    )


@pytest.mark.parametrize("cls", _WRITTEN, ids=lambda c: c.__name__)
def test_redact_event_removes_every_secret(cls: type[EventBase]) -> None:
    test_every_str_field_is_text_or_an_id(cls)
    event = _build(cls)
    clean = redact_event(event)
    assert type(clean) is cls
    encoded = msgspec.json.encode(clean).decode()
    leaked = [name for name, _, secret in SECRETS if secret in encoded]
    assert not leaked, f"{cls.__name__} leaks {leaked}"
    for name in _TEXT_FIELDS[cls]:
        assert getattr(clean, name) != getattr(event, name), name
        if (cls, name) in _JSON_FIELDS:
            json.loads(getattr(clean, name))
    for name in _ID_FIELDS[cls.__name__]:
        assert getattr(clean, name) == getattr(event, name), name
    assert redact_event(clean) is clean  # idempotent, and cheap the second time


@pytest.mark.parametrize("cls", _WRITTEN, ids=lambda c: c.__name__)
def test_a_clean_event_is_returned_as_is(cls: type[EventBase]) -> None:
    event = _build(cls)
    changes = dict.fromkeys(_TEXT_FIELDS[cls], "all clear")
    clean_event = msgspec.structs.replace(event, **changes)
    assert redact_event(clean_event) is clean_event


def test_a_blob_ref_is_left_alone() -> None:
    ref = BlobRef(sha256="e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855", size=9)
    event = ToolCallCompleted(call_id="toolu_01", output=ref)
    assert redact_event(event) is event
    created = SessionCreated(task_id="t", prompt=ref, system="key sk-" + "ant-" + _mixed(40))
    clean = redact_event(created)
    assert clean.prompt is ref
    assert clean.system == "key [REDACTED]"


def test_an_event_without_text_costs_nothing() -> None:
    event = ModelCallRequested(step=1, request_id="r", model="m")
    assert redact_event(event) is event


class _NewEvent(EventBase, frozen=True, kw_only=True):
    """A type the table has not heard of: every str field is redacted, to be safe."""

    blob_fields: ClassVar[tuple[str, ...]] = ()

    call_id: str
    text: str = ""
    count: int = 0


def test_a_type_missing_from_the_table_has_every_str_field_redacted() -> None:
    secret = "ghp" + "_" + _mixed(36)
    event = _NewEvent(call_id="toolu_01", text=f"token {secret}", count=2)
    try:
        clean = redact_event(event)
    finally:
        _TEXT_FIELDS.pop(_NewEvent, None)  # leave the module's table as it was
    assert clean == _NewEvent(call_id="toolu_01", text="token [REDACTED]", count=2)
