"""The plain config objects: carriers, LocalConfig, validators, Agent, Tool, Guardrail."""

from __future__ import annotations

import base64
import copy
import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from getpatter.agent import Agent, Guardrail, Tool, render_template
from getpatter.config import (
    PROVIDER_KEY_ENV,
    LocalConfig,
    Secret,
    Telnyx,
    Twilio,
    normalize_webhook_host,
    resolve_persist_root,
    validate_e164,
    validate_http_url,
    validate_port,
)
from getpatter.errors import PatterConfigError, PatterError

SID = "AC0123456789abcdef0123456789abcdef"
TOKEN = "tok-SECRET-7f3a9c"
TELNYX_KEY = "KEY-SECRET-0badc0de"
PUBLIC_KEY = base64.b64encode(bytes(range(32))).decode()
PHONE = "+15550001234"
ENV = ["TWILIO_ACCOUNT_SID", "TWILIO_AUTH_TOKEN", "TELNYX_API_KEY", "TELNYX_CONNECTION_ID"]
SCHEMA = {"type": "object", "properties": {"date": {"type": "string"}}, "required": ["date"]}


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No test may see the developer's real credentials."""
    for name in [*ENV, "TELNYX_PUBLIC_KEY", "PATTER_LOG_DIR", *PROVIDER_KEY_ENV.values()]:
        monkeypatch.delenv(name, raising=False)


def renderings(obj: object) -> list[str]:
    return [repr(obj), str(obj), f"{obj}", f"{obj!r}", "%s" % (obj,)]  # noqa: UP031


async def handler(args: dict[str, Any], ctx: dict[str, Any]) -> dict[str, Any]:
    return {"ok": True, **args}


class FakeRealtime:
    """Stands in for OpenAIRealtime: holds a key the Agent repr must not show."""

    api_key = "sk-SECRET-engine"

    def __repr__(self) -> str:
        return f"FakeRealtime(api_key={self.api_key!r})"


LEGAL = Guardrail(
    name="No legal advice",
    blocked_terms=["lawsuit", "sue", "legal action"],
    replacement="I'm not able to provide legal guidance.",
)


def tool(**kwargs: Any) -> Tool:
    return Tool(**{"name": "t", "handler": handler, **kwargs})


def params(**schema: Any) -> Tool:
    return tool(parameters={"type": "object", **schema})


def from_twilio(phone: str = PHONE, webhook: str = "", carrier: Any = None) -> LocalConfig:
    carrier = carrier or Twilio(SID, TOKEN)
    return LocalConfig.from_carrier(carrier, phone_number=phone, webhook_url=webhook)


host = normalize_webhook_host
RT = FakeRealtime

# Every config mistake: what the user wrote → what the error must tell them.
# fmt: off
MISTAKES: list[tuple[Callable[[], object], str]] = [
    (lambda: Twilio(), r"account SID is missing: pass Twilio\(account_sid=...\) or set TWILIO_ACC"),
    (lambda: Twilio(SID), r"auth token is missing: pass Twilio\(auth_token=...\) or set TWILIO_"),
    (lambda: Twilio(SID, " "), r"auth token is empty: .* leave it out to read TWILIO_AUTH_TOKEN"),
    (lambda: Twilio(123, TOKEN), "account SID must be a str, got int"),
    (lambda: Twilio(SID, TOKEN, base_url="api.twilio.com"), r"base_url=...\) must be an http://"),
    (lambda: Telnyx(connection_id="c"), r"API key is missing: .*api_key=...\) or set TELNYX_API_"),
    (lambda: Telnyx(TELNYX_KEY), r"connection ID .*missing.*connection_id=.*TELNYX_CONNECTION_ID"),
    (lambda: Telnyx(TELNYX_KEY, "c", "not base64!"), r"public_key must be the base64 Ed25519 key"),
    (lambda: Telnyx(TELNYX_KEY, "c", "c2hvcnQ="), r"Ed25519 key \(32 bytes\).*TELNYX_PUBLIC_KEY"),
    (lambda: Telnyx(TELNYX_KEY, "c", 42), "public_key must be a str"),
    (lambda: Secret(b"x"), "a secret must be a str, got bytes"),
    (lambda: LocalConfig(telephony_provider="vonage"), "'twilio' or 'telnyx', got 'vonage'"),
    (lambda: LocalConfig(require_signature="yes"), "require_signature must be bool, got str"),
    (lambda: LocalConfig(persist_root=Path("/tmp")), "persist_root must be str | None, got Posix"),
    (lambda: from_twilio(carrier="twilio"), "carrier must be Twilio.*or Telnyx.*got str"),
    (lambda: from_twilio(phone="555"), "phone_number '555' is not an E.164"),
    (lambda: from_twilio(webhook="https://a.io"), "pass the hostname only, e.g. 'a.io'"),
    (lambda: validate_e164("+1 555-000-1234", "to"), r"; write it as '\+15550001234'"),
    (lambda: validate_e164("15550001234", "to"), r"must start with '\+' and the country code"),
    (lambda: validate_e164("+05550001234", "to"), "is not an E.164 phone number"),
    (lambda: validate_e164("+1234567", "to"), "8–15 digits"),
    (lambda: validate_e164(15550001234, "from_number"), r"from_number must be a str in E.164"),
    (lambda: host("https://abc.ngrok.io"), "without a scheme: pass the hostname only, e.g. 'abc"),
    (lambda: host("http://abc.ngrok.io:8000/"), "e.g. 'abc.ngrok.io:8000'"),
    (lambda: host("abc.ngrok.io/hook"), "without a path: pass 'abc.ngrok.io', not 'abc.ngrok.io/"),
    (lambda: host("abc ngrok.io"), "'abc ngrok.io' is not a hostname"),
    (lambda: host("user:pw@abc.ngrok.io"), "is not a hostname"),
    (lambda: host("abc.ngrok.io:70000"), "port outside 1-65535"),
    (lambda: host("  "), "webhook_url is empty: pass the public hostname"),
    (lambda: host(None), "webhook_url must be a str hostname, got NoneType"),
    (lambda: validate_http_url(1, "base_url"), "base_url must be a str URL"),
    (lambda: validate_port(0), "between 1 and 65535, got 0"),
    (lambda: validate_port(65536), "between 1 and 65535, got 65536"),
    (lambda: validate_port(-1, allow_ephemeral=True), "between 0 and 65535"),
    (lambda: validate_port(True), "port must be an int.*got bool"),
    (lambda: validate_port("8000"), r"got str '8000'; convert it with int\(...\)"),
    (lambda: resolve_persist_root("  "), "persist is an empty path"),
    (lambda: resolve_persist_root(1), "persist must be a path, True, False or None, got int"),
    (lambda: tool(name=""), "Tool name '' is invalid: use 1-64 letters, digits, '_' or '-'"),
    (lambda: tool(name=7), "Tool name 7 is invalid"),
    (lambda: Tool("t"), r"Tool 't' needs exactly one of handler= .*or webhook_url="),
    (lambda: tool(webhook_url="https://x.io"), "needs exactly one of"),
    (lambda: Tool("t", webhook_url="ftp://x"), r"webhook_url must be an http\(s\) URL, got 'ftp"),
    (lambda: Tool("t", webhook_url=None), "webhook_url must be a str"),
    (lambda: tool(handler="no"), "handler must be callable, got str"),
    (lambda: tool(handler=lambda args: None), r"handler <lambda>\(args\) must accept two arg"),
    (lambda: tool(handler=lambda args: None), r"\(args: dict, ctx: dict\); add the missing para"),
    (lambda: tool(description=None), "description must be a str"),
    (lambda: tool(timeout=0), "timeout must be a positive number of seconds"),
    (lambda: tool(timeout=True), "timeout must be a number of seconds"),
    (lambda: tool(timeout="5"), "timeout must be a number of seconds"),
    (lambda: tool(parameters={"type": "string"}), "parameters must be a JSON-schema object, e.g."),
    (lambda: tool(parameters=[]), "must be a JSON-schema object"),
    (lambda: params(x=object()), "JSON-serializable"),
    (lambda: params(properties=[]), r"Tool 't': parameters\['properties'\] must be a dict"),
    (lambda: params(required="x"), r"\['required'\] must be a list of property names"),
    (lambda: params(required=["x"]), r"\['required'\] names \['x'\] which are not in"),
    (lambda: Guardrail("g"), r"Guardrail 'g' blocks nothing: pass blocked_terms=\[...\], check="),
    (lambda: Guardrail("g", blocked_terms="sue"), r"must be a list of terms, e.g. \['sue'\]"),
    (lambda: Guardrail("g", blocked_terms=["ok", ""]), "every blocked term must be a non-empty"),
    (lambda: Guardrail("g", check="yes"), "check must be a function text -> bool"),
    (lambda: Guardrail("g", check=handler), r"check must be a plain \(not async\) function"),
    (lambda: Guardrail(" ", blocked_terms=["x"]), "Guardrail name must be a non-empty str"),
    (lambda: Agent(engine=RT(), stt="deepgram"), r"either engine= \(a realtime speech-to-speech"),
    (lambda: Agent(engine=RT(), stt="deepgram"), r"or stt= \(the STT → LLM → TTS pipeline\)"),
    (lambda: Agent(engine=RT(), tts=object()), "or tts= .*not both: drop engine= or tts="),
    (lambda: Agent(engine=RT(), stt="a", llm="b"), "or stt/llm= .*not both"),
    (lambda: Agent(stt="deepgram").replace(engine=RT()), "not both"),
    (lambda: Agent().replace(prompt="x"), r"no field\(s\) \['prompt'\]; fields: name, system_"),
    (lambda: Agent(tools=[tool(), tool()]), r"tool names must be unique; \['t'\] appear"),
    (lambda: Agent(tools=tool()), r"tools= takes a list: tools=\[Tool\(...\)\]"),
    (lambda: Agent(tools=[{"name": "x"}]), r"tools\[0\] is a dict; wrap it in Tool\(...\)"),
    (lambda: Agent(guardrails=["sue"]), r"guardrails\[0\] is a str; wrap it in Guardrail\("),
    (lambda: Agent(variables={"bad key": "x"}), "variables key 'bad key' must be an identifier"),
    (lambda: Agent(variables={"x": None}), r"variables\['x'\] must be text \(or a number\)"),
    (lambda: Agent(variables={"x": b"raw"}), r"variables\['x'\] must be text"),
    (lambda: Agent(variables=[("x", "y")]), "variables= must be a dict"),
    (lambda: Agent(language="English (US)"), "language must be a language code like 'en'"),
    (lambda: Agent(system_prompt=None), "system_prompt must be a str"),
    (lambda: Agent(first_message=1), "first_message must be a str"),
    (lambda: Agent(name=""), "Agent name must be a non-empty str"),
]
# fmt: on


@pytest.mark.parametrize(("build", "message"), MISTAKES)
def test_config_mistakes_say_what_to_fix(build: Callable[[], object], message: str) -> None:
    with pytest.raises(PatterConfigError, match=message) as info:
        build()
    assert isinstance(info.value, ValueError) and isinstance(info.value, PatterError)


def test_carriers_read_arguments_then_env(monkeypatch: pytest.MonkeyPatch) -> None:
    twilio = Twilio(SID, TOKEN)
    assert (twilio.name, twilio.account_sid, twilio.auth_token.reveal()) == ("twilio", SID, TOKEN)
    assert twilio.base_url == "https://api.twilio.com"
    assert Twilio("SKapikey", "t").account_sid == "SKapikey"  # not pattern-checked
    assert Telnyx(TELNYX_KEY, "conn-1").public_key == ""  # optional
    monkeypatch.setenv("TWILIO_ACCOUNT_SID", f"  {SID}\n")  # .env files carry stray whitespace
    env = [*ENV[1:], "TELNYX_PUBLIC_KEY"]
    for name, value in zip(env, [TOKEN, TELNYX_KEY, "conn-1", PUBLIC_KEY], strict=True):
        monkeypatch.setenv(name, value)
    assert (Twilio().account_sid, Twilio().auth_token.reveal()) == (SID, TOKEN)
    with pytest.raises(PatterConfigError, match="is empty"):  # explicit "" does not read env
        Twilio(SID, "")
    fake = Twilio(base_url="http://127.0.0.1:8765/")  # pointing at a loopback fake
    assert fake.base_url == "http://127.0.0.1:8765" and "127.0.0.1:8765" in repr(fake)
    telnyx = Telnyx()
    assert (telnyx.name, telnyx.api_key.reveal(), telnyx.base_url) == (
        "telnyx", TELNYX_KEY, "https://api.telnyx.com/v2"
    )  # fmt: skip
    assert (telnyx.connection_id, telnyx.public_key) == ("conn-1", PUBLIC_KEY)


def test_no_secret_in_any_rendering() -> None:
    secret = Secret("hunter2")
    assert all("hunter2" not in text for text in [*renderings(secret), f"{secret:>9}"])
    assert (str(secret), repr(secret), secret.reveal()) == ("***", "Secret('***')", "hunter2")
    assert secret and not Secret("") and str(Secret("")) == ""
    twilio, telnyx = Twilio(SID, TOKEN), Telnyx(TELNYX_KEY, "conn-1", PUBLIC_KEY)
    keys = {name: f"SECRET-{name}-xyz" for name in PROVIDER_KEY_ENV}
    config = LocalConfig(twilio_sid=SID, twilio_token=TOKEN, telnyx_key=TELNYX_KEY, **keys)
    objects = [twilio, twilio.auth_token, telnyx, telnyx.api_key, config]
    texts = [text for obj in objects for text in renderings(obj)]
    assert not [v for v in [TOKEN, TELNYX_KEY, SID, *keys.values()] for t in texts if v in t]
    assert repr(twilio) == "Twilio(account_sid='AC01…', auth_token=<set>)"
    assert "api_key=<set>, connection_id='conn-1'" in repr(telnyx)
    assert "openai_key=<set>" in repr(config) and "twilio_token=<set>" in str(config)
    assert "twilio_token=<unset>" in repr(LocalConfig())
    with pytest.raises(PatterConfigError) as info:  # the error names the type, not the value
        LocalConfig(openai_key=b"sk-SECRET-bytes")  # type: ignore[arg-type]
    assert "openai_key must be str, got bytes" in str(info.value)
    assert "SECRET" not in str(info.value)


def test_local_config_has_exactly_the_spec_fields() -> None:
    names = """telephony_provider twilio_sid twilio_token telnyx_key telnyx_connection_id
        telnyx_public_key openai_key elevenlabs_key deepgram_key cartesia_key rime_key lmnt_key
        soniox_key speechmatics_key assemblyai_key anthropic_key phone_number webhook_url
        require_signature persist_root twilio_base_url telnyx_base_url"""
    beyond_the_spec = ["plivo_auth_id", "plivo_auth_token", "plivo_base_url"]  # a third carrier
    assert [f.name for f in dataclasses.fields(LocalConfig)] == names.split() + beyond_the_spec
    config = LocalConfig(telephony_provider="Telnyx")
    assert config.telephony_provider == "telnyx" and config.openai_key == config.webhook_url == ""
    assert config.require_signature is True and config.persist_root is None
    config.webhook_url = "x.trycloudflare.com"  # mutable: a tunnel fills it in later
    assert dataclasses.replace(config, openai_key="k").webhook_url == "x.trycloudflare.com"


def test_from_carrier_unpacks_carriers_and_backfills_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for field, env in PROVIDER_KEY_ENV.items():
        monkeypatch.setenv(env, f"{field}-value ")
    twilio = Twilio(SID, TOKEN, base_url="http://127.0.0.1:9/")
    options: dict[str, Any] = {"persist_root": "/tmp/calls", "require_signature": False}
    config = LocalConfig.from_carrier(twilio, phone_number=PHONE, webhook_url="a.io/", **options)
    assert (config.telephony_provider, config.twilio_sid, config.twilio_token) == (
        "twilio", SID, TOKEN
    )  # fmt: skip
    assert (config.twilio_base_url, config.telnyx_key) == ("http://127.0.0.1:9", "")
    assert (config.phone_number, config.webhook_url) == (PHONE, "a.io")
    assert (config.persist_root, config.require_signature) == ("/tmp/calls", False)
    assert all(getattr(config, field) == f"{field}-value" for field in PROVIDER_KEY_ENV)
    telnyx = Telnyx(TELNYX_KEY, "conn-1", PUBLIC_KEY, base_url="http://127.0.0.1:9/v2")
    config = from_twilio(webhook="ex.com:8443", carrier=telnyx)
    assert (config.telephony_provider, config.telnyx_key) == ("telnyx", TELNYX_KEY)
    assert (config.telnyx_connection_id, config.telnyx_public_key) == ("conn-1", PUBLIC_KEY)
    assert config.telnyx_base_url == "http://127.0.0.1:9/v2" and config.twilio_token == ""
    assert config.webhook_url == "ex.com:8443"


@pytest.mark.parametrize(("field", "env"), sorted(PROVIDER_KEY_ENV.items()))
def test_from_carrier_backfills_each_key_from_its_own_env_var(
    monkeypatch: pytest.MonkeyPatch, field: str, env: str
) -> None:
    monkeypatch.setenv(env, "k-123")
    config = from_twilio()
    assert [f for f in PROVIDER_KEY_ENV if getattr(config, f)] == [field]
    assert getattr(config, field) == "k-123"


def test_validators_accept(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for number in ["+15550001234", "+442071838750", "+49301234", "+" + "9" * 15]:
        assert validate_e164(number, "to") == number
    hosts = {"abc.ngrok.io/": "abc.ngrok.io", "  ABC.Ngrok.IO ": "abc.ngrok.io", "h:08": "h:8"}
    for value in ["ex.com:8443", "127.0.0.1:8000", "localhost", "my-app.trycloudflare.com"]:
        hosts[value] = value
    assert {value: host(value) for value in hosts} == hosts
    assert [validate_port(p) for p in (1, 8000, 65535)] == [1, 8000, 65535]
    assert validate_port(0, allow_ephemeral=True) == 0
    assert validate_http_url("https://x.example/v2/", "base_url") == "https://x.example/v2"
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_persist_root(None) == resolve_persist_root(True) == str(tmp_path / ".getpatter")
    assert resolve_persist_root(False) is None
    assert resolve_persist_root(tmp_path / "x") == str(tmp_path / "x")
    assert resolve_persist_root("~/y") == str(tmp_path / "y")
    monkeypatch.setenv("PATTER_LOG_DIR", "~/logs")
    assert resolve_persist_root(None) == str(tmp_path / "logs")
    monkeypatch.chdir(tmp_path)  # relative paths are fixed now, not at the first write
    assert resolve_persist_root("calls") == str(tmp_path / "calls")


def test_tool_schema_defaults_repr_and_copied_parameters() -> None:
    book = tool(name="schedule_appointment", description="Book.", parameters=SCHEMA)
    schema = {"name": "schedule_appointment", "description": "Book.", "parameters": SCHEMA}
    assert book.schema() == schema and book.handler is handler
    assert (book.timeout, book.webhook_url) == (10.0, "")
    assert repr(book) == "Tool(name='schedule_appointment', handler=handler, timeout=10)"
    assert tool().parameters == {"type": "object", "properties": {}}
    assert params().parameters["properties"] == {}
    assert tool(name="a-" * 32).name == "a-" * 32
    hook = Tool("t", webhook_url="https://x.example/hook?api_key=SECRET123", timeout=2)
    assert hook.handler is None and hook.timeout == 2.0 and "SECRET123" not in repr(hook)
    schema: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "string"}}}
    copied = tool(parameters=schema)
    schema["properties"]["b"] = {"type": "number"}
    copied.schema()["parameters"]["properties"].clear()
    assert list(copied.parameters["properties"]) == ["a"]


def test_tool_accepts_any_callable_taking_args_and_ctx_and_objects_are_immutable() -> None:
    class Handler:
        def __call__(self, args: dict[str, Any], ctx: dict[str, Any]) -> None: ...

    for fn in (handler, Handler(), lambda a, c: None, lambda *a, **k: None, print):
        assert tool(handler=fn).handler is fn
    for obj, field in ((tool(), "name"), (Agent(), "system_prompt"), (LEGAL, "replacement")):
        with pytest.raises(AttributeError, match="is immutable"):
            setattr(obj, field, "x")
        with pytest.raises(AttributeError, match="is immutable"):
            delattr(obj, field)
        assert copy.copy(obj) is obj and copy.deepcopy(obj) is obj


def test_guardrail_matches_whole_words_any_case_or_by_check() -> None:
    blocked = ["You should sue them.", "SUE!", "Sue's neighbour", "They filed a lawsuit",
               "Consider legal action.", "LEGAL   action", "legal\naction"]  # fmt: skip
    allowed = ["That's an issue we can fix.", "Pursue your dreams", "suede shoes", "lawsuits",
               "legal actions", "a legal matter, not an action", ""]  # fmt: skip
    assert [text for text in blocked if not LEGAL.violates(text)] == []
    assert [text for text in allowed if LEGAL.violates(text)] == []
    guard = Guardrail("g", blocked_terms=["c++", "$100", "a.b"])
    assert guard.violates("I love C++ a lot") and guard.violates("it costs $100.")
    assert not guard.violates("axb") and not guard.violates("$1000")
    guard = Guardrail("g", blocked_terms=("x",))
    assert guard.replacement == "I'm sorry, I can't help with that."
    assert guard.blocked_terms == ("x",) and guard.check is None
    assert LEGAL.replacement == "I'm not able to provide legal guidance."
    expected = "Guardrail(name='No legal advice', blocked_terms=['lawsuit', 'sue', 'legal action'])"
    assert repr(LEGAL) == expected
    digits = Guardrail("no digits", check=lambda text: any(c.isdigit() for c in text))
    assert digits.violates("call 555") and not digits.violates("hello")
    assert "check=" in repr(digits)
    both = Guardrail("both", blocked_terms=["refund"], check=lambda text: "!!" in text)
    assert both.violates("a refund") and both.violates("wow!!") and not both.violates("ok")


def test_agent_defaults_pipeline_and_the_spec_example() -> None:
    agent = Agent()
    assert (agent.name, agent.system_prompt, agent.first_message) == ("agent", "", "")
    assert agent.engine is agent.stt is agent.tts is agent.llm is None
    assert agent.tools == () and agent.guardrails == () and agent.variables == {}
    assert (agent.voice, agent.language, agent.mode) == ("", "en", "pipeline")
    stt = object()
    agent = Agent(stt=stt, tts=" elevenlabs ", llm="", voice="nova", language="en-US")
    assert (agent.stt, agent.tts, agent.llm, agent.mode) == (stt, "elevenlabs", None, "pipeline")
    assert "stt=<object>" in repr(agent) and "tts='elevenlabs'" in repr(agent)
    book = Tool(name="schedule_appointment", parameters=SCHEMA, handler=handler)
    agent = Agent(
        engine=FakeRealtime(),
        system_prompt="You are a friendly receptionist for Acme Corp.",
        first_message="Thank you for calling Acme Corp! How can I help you today?",
        tools=[book],
        guardrails=[LEGAL],
    )
    assert agent.mode == "realtime" and agent.tools == (book,) and agent.guardrails == (LEGAL,)
    assert agent.get_tool("schedule_appointment") is book and agent.get_tool("nope") is None
    text = repr(agent)
    assert "sk-SECRET" not in text and "engine=<FakeRealtime>" in text
    assert "tools=['schedule_appointment']" in text and "'No legal advice'" in text
    assert copy.deepcopy(agent) is agent


def test_render_fills_variables_and_leaves_json_braces_alone() -> None:
    agent = Agent(
        system_prompt="You work for {company}. The caller is {caller}. Ask about {unknown}.",
        first_message="Thanks for calling {company}!",
        variables={"company": "Acme", "caller": "someone"},
    )
    assert agent.render_prompt() == "You work for Acme. The caller is someone. Ask about {unknown}."
    rendered = agent.render_prompt({"caller": "Ada", "unknown": 42})
    assert rendered == "You work for Acme. The caller is Ada. Ask about 42."
    assert agent.render_first_message() == "Thanks for calling Acme!"
    assert agent.render("{company} / {caller}", {"caller": "Bob"}) == "Acme / Bob"
    assert agent.variables["caller"] == "someone"  # extra does not stick
    prompt = (
        'Reply as JSON: {"name": "x", "slots": {"date": "{date}"}}. '
        "Set {} and {0} and { spaced } and {{literal}} and {a-b} are kept. "
        "Close }} and open {{ and {company"
    )
    agent = Agent(system_prompt=prompt, variables={"date": "2025-01-02"})
    assert agent.render_prompt() == prompt.replace("{date}", "2025-01-02")
    agent = Agent(system_prompt="Hi {{name}} / {{ name }} / {name}", variables={"name": "Ada"})
    assert agent.render_prompt() == "Hi Ada / Ada / Ada"  # mustache style works too
    agent = Agent(system_prompt="Caller: {caller}", variables={"secret": "s3"})
    assert agent.render_prompt({"caller": "{secret}"}) == "Caller: {secret}"
    assert render_template("{a}{b}", {"a": "{b}", "b": "B"}) == "{b}B"
    agent = Agent(system_prompt="x" * 100, variables={"ssn": "123-45-6789"}, guardrails=[LEGAL])
    assert "123-45-6789" not in repr(agent) and "variables=['ssn']" in repr(agent)
    assert "x" * 41 not in repr(agent) and len(repr(agent)) < 200
    changed = agent.replace(first_message="SSN {ssn}")
    assert changed is not agent and changed.render_first_message() == "SSN 123-45-6789"
    assert changed.guardrails == (LEGAL,) and agent.first_message == ""
    assert Agent(variables={"n": 3, "vip": True}).variables == {"n": "3", "vip": "True"}


def test_plivo_credentials_from_arguments_or_env_and_never_shown(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from getpatter.config import Plivo

    monkeypatch.delenv("PLIVO_AUTH_ID", raising=False)
    monkeypatch.delenv("PLIVO_AUTH_TOKEN", raising=False)
    with pytest.raises(PatterConfigError, match=r"Plivo auth ID is missing: .*PLIVO_AUTH_ID"):
        Plivo()
    monkeypatch.setenv("PLIVO_AUTH_ID", "MAABCDEFGHIJKLMNOPQR ")
    monkeypatch.setenv("PLIVO_AUTH_TOKEN", TOKEN)
    plivo = Plivo()
    assert (plivo.auth_id, plivo.auth_token.reveal()) == ("MAABCDEFGHIJKLMNOPQR", TOKEN)
    config = LocalConfig.from_carrier(plivo, phone_number=PHONE, webhook_url="a.io")
    assert (config.telephony_provider, config.plivo_auth_id) == ("plivo", "MAABCDEFGHIJKLMNOPQR")
    assert config.plivo_auth_token == TOKEN and config.plivo_base_url == "https://api.plivo.com"
    for shown in (repr(plivo), str(plivo), repr(config)):
        assert "SECRET" not in shown and "MAABCDEFGHIJ" not in shown
    with pytest.raises(PatterConfigError, match=r"Plivo\(base_url=...\) must be an http"):
        Plivo("MA1", "t", base_url="api.plivo.com")
