"""``actors.client.redaction``: secrets are hidden in every form, secret shapes are hidden unknown,
ordinary text is left alone, and the process-wide redaction (installed into the runtime's
scrubbers: logs, ``ErrorFrame``s) knows every registered secret for as long as its owner
lives."""

from __future__ import annotations

import base64
import gc
import io
import json
import logging
import traceback

import pytest
import trio

from actors import TextFrame
from actors.client.redaction import (
    REDACTED,
    RedactingFilter,
    Redactor,
    header_secrets,
    is_secret_name,
    redact,
    safe_url,
    url_secrets,
)
from runtime import Actor, ErrorFrame, Frame, FrameDirection
from runtime import logging as rlog
from runtime.testing import run_frames

KEY = "azure-9f3c7e1a5b2d4f6081a3c5e7"


class TestRedactor:
    def test_a_secret_is_hidden_in_every_form_it_travels_in(self) -> None:
        """As given, percent-encoded, percent-decoded, and without the whitespace a key read
        from a file carries."""
        password = "p@ss:w0rd/with+signs"
        redactor = Redactor((password, f"{KEY}\n"))
        for form in (password, "p%40ss%3Aw0rd%2Fwith%2Bsigns", KEY):
            assert redactor.text(f"<{form}>") == f"<{REDACTED}>"

    def test_short_secrets_are_not_searched_for(self) -> None:
        """Hiding every ``test`` would mangle ordinary text; the shapes still apply."""
        redactor = Redactor(("test", "EMPTY"))
        assert redactor.secrets == ()
        assert redactor.text("latest test, EMPTY") == "latest test, EMPTY"

    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("Authorization: Bearer abc.def", f"Authorization: {REDACTED}"),
            ("key sk-proj-abcdefghijklmnopqrstu end", f"key {REDACTED} end"),
            ("sk-ant-api03-abcdefghijklmnopqrstuvwx", REDACTED),
            (
                "token eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4In0.c2lnbmF0dXJl here",
                f"token {REDACTED} here",
            ),
            ("cut eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ4", f"cut {REDACTED}"),
            ("AIzaSyD-9tSrke72PouQMnMX-a7eZSW0jkFMBWY", REDACTED),
            ("ghp_abcdefghijklmnopqrstuvwxyz0123456789", REDACTED),
            ("hf_abcdefghijklmnopqrstuvwxyz01234567", REDACTED),
            ("xoxb-1234567890-abcdefghij", REDACTED),
            ("AKIAABCDEFGHIJKLMNOP", REDACTED),
            ("at http://bob:hunter2@host:8080/v1", f"at http://{REDACTED}@host:8080/v1"),
            ("https://TOKEN123@host/v1", f"https://{REDACTED}@host/v1"),
            (
                "GET /v1/models?key=K1&api-version=2024-06-01&access_token=T2",
                f"GET /v1/models?key={REDACTED}&api-version=2024-06-01&access_token={REDACTED}",
            ),
            ("api-key: 0123abcd", f"api-key: {REDACTED}"),
            ('{"x-api-key": "0123abcd"}', f'{{"x-api-key": "{REDACTED}"}}'),
            ("Authorization: Basic Ym9iOmh1bnRlcjI=", f"Authorization: Basic {REDACTED}"),
        ],
    )
    def test_secret_shapes_are_hidden_without_being_known(self, text: str, expected: str) -> None:
        assert Redactor().text(text) == expected

    @pytest.mark.parametrize(
        "text",
        [
            "HTTP 404 Not Found: model gpt-4o-mini does not exist",
            "POST http://127.0.0.1:8080/v1/chat/completions?api-version=2024-06-01",
            "max_tokens=12&temperature=0.2",
            "session=chat actor=OpenAILLMService#1 turn=3",
            "task-abcdefghijklmnopqrstuvwxyz finished",
            "ssh user@host",
        ],
    )
    def test_ordinary_text_is_left_alone(self, text: str) -> None:
        assert Redactor().text(text) == text

    def test_structures_keep_their_kinds_and_hide_values_named_like_secrets(self) -> None:
        value = {
            "error": {"message": f"bad {KEY}", "param": None, "code": 401},
            "api_key": "anything",
            "Authorization": "whatever",
            "max_tokens": "12",
            "pair": ("a", KEY),
            "items": [KEY, 3],
        }
        assert Redactor((KEY,)).value(value) == {
            "error": {"message": f"bad {REDACTED}", "param": None, "code": 401},
            "api_key": REDACTED,
            "Authorization": REDACTED,
            "max_tokens": "12",
            "pair": ("a", REDACTED),
            "items": [REDACTED, 3],
        }

    def test_an_exception_is_redacted_in_place_with_its_whole_chain(self) -> None:
        """``args``, notes, attributes, cause, context and exception-group members."""

        class WithDetail(Exception):
            def __init__(self, message: str, detail: str) -> None:
                super().__init__(message)
                self.detail = detail

        inner = WithDetail(f"inner {KEY}", detail=f"detail {KEY}")
        member = ValueError(f"member {KEY}")
        context = KeyError(KEY)
        group = ExceptionGroup(f"group {KEY}", [member])
        outer = RuntimeError(f"outer {KEY}")
        outer.__cause__ = inner
        outer.__context__ = context
        inner.__cause__ = group
        outer.add_note(f"note {KEY}")
        assert Redactor((KEY,)).exception(outer) is outer
        assert outer.__cause__ is inner
        assert outer.__context__ is context
        new_group = inner.__cause__
        # A group's message is fixed when it is built: the chain now holds a redacted copy.
        assert isinstance(new_group, ExceptionGroup)
        assert new_group is not group
        assert new_group.exceptions == (member,)
        texts = [
            str(outer),
            repr(outer),
            *outer.__notes__,
            str(inner),
            inner.detail,
            repr(context),
            str(new_group),
            str(member),
            "".join(traceback.format_exception(outer)),
        ]
        assert all(KEY not in text for text in texts), texts
        assert outer.__notes__ == [f"note {REDACTED}"]
        assert inner.detail == f"detail {REDACTED}"

    def test_a_group_whose_message_holds_a_secret_is_returned_as_a_redacted_copy(self) -> None:
        group = ExceptionGroup(f"failed with {KEY}", [ValueError("plain")])
        redacted = Redactor((KEY,)).exception(group)
        assert str(redacted) == f"failed with {REDACTED} (1 sub-exception)"
        plain = ExceptionGroup("plain", [ValueError("plain")])
        assert Redactor((KEY,)).exception(plain) is plain


class TestNamesAndUrls:
    @pytest.mark.parametrize(
        ("name", "secret"),
        [
            ("api-key", True),
            ("x-api-key", True),
            ("Authorization", True),
            ("access_token", True),
            ("client_secret", True),
            ("key", True),
            ("sig", True),
            ("max_tokens", False),
            ("api-version", False),
            ("OpenAI-Organization", False),
            ("monkey", False),
        ],
    )
    def test_secret_names(self, name: str, secret: bool) -> None:
        assert is_secret_name(name) is secret

    def test_url_secrets_are_the_password_the_basic_credential_and_secret_parameters(
        self,
    ) -> None:
        url = "https://bob:p%40ss-word@host/v1?key=K-0123456789&api-version=2024-06-01"
        basic = base64.b64encode(b"bob:p@ss-word").decode()
        assert url_secrets(url) == (
            "p%40ss-word",
            "bob:p%40ss-word",
            "bob:p@ss-word",
            basic,
            "K-0123456789",
        )
        assert url_secrets("https://TOKEN-0123456789@host/v1") == ("TOKEN-0123456789",)
        assert url_secrets("http://127.0.0.1:8080/v1") == ()

    def test_safe_url_masks_the_credentials_and_keeps_the_rest(self) -> None:
        assert safe_url("https://bob:pw@host:8443/v1?key=K&api-version=2024-06-01") == (
            f"https://{REDACTED}@host:8443/v1?key={REDACTED}&api-version=2024-06-01"
        )
        assert safe_url("http://127.0.0.1:8080/v1") == "http://127.0.0.1:8080/v1"

    def test_header_secrets(self) -> None:
        headers = {
            "Authorization": "Bearer tok-0123456789",
            "api-key": KEY,
            "OpenAI-Project": "proj_visible",
        }
        assert header_secrets(headers) == ("Bearer tok-0123456789", "tok-0123456789", KEY)


class TestProcessRedaction:
    def test_registered_secrets_are_known_while_their_owner_lives(self) -> None:
        secret = "registered-0123456789-secret"
        assert redact(f"x {secret}") == f"x {secret}"
        owner = Redactor((secret,)).register()
        assert redact(f"x {secret}") == f"x {REDACTED}"
        assert redact({"a": [f"x {secret}"]}) == {"a": [f"x {REDACTED}"]}
        del owner
        gc.collect()
        assert redact(f"x {secret}") == f"x {secret}"

    @pytest.mark.parametrize("json_lines", [False, True], ids=["console", "JSON"])
    def test_configured_logs_hide_secrets_in_fields_reprs_and_tracebacks(
        self, json_lines: bool, structlog_restored: None
    ) -> None:
        """Whatever carries the secret (a field, an object whose repr holds it, an
        exception), the line written has none, and tracebacks show no local variables."""

        class Holder:
            def __repr__(self) -> str:
                return f"Holder(token={KEY!r})"

        owner = Redactor((KEY,)).register()
        out = io.StringIO()
        rlog.configure(json=json_lines, level="debug", file=out, colors=False)
        log = rlog.get_logger("test")
        log.info("with a field", detail=f"key {KEY}", holder=Holder())
        try:
            local_value = f"local {KEY}"  # noqa: F841 -- must not be rendered
            raise RuntimeError(f"failed with {KEY}")
        except RuntimeError:
            log.exception("with a traceback")
        del owner
        written = out.getvalue()
        assert KEY not in written
        assert written.count(REDACTED) >= 3
        assert "local_value" not in written
        if json_lines:
            lines = [json.loads(line) for line in written.splitlines()]
            assert lines[1]["exception"][0]["exc_value"] == f"failed with {REDACTED}"
        else:
            assert f"RuntimeError: failed with {REDACTED}" in written

    def test_the_processor_and_the_renderer_wrapper_can_be_installed_by_hand(self) -> None:
        owner = Redactor((KEY,)).register()
        event = rlog.scrub_event(None, "info", {"event": "e", "detail": KEY, "exc_info": (1, 2)})
        assert event == {"event": "e", "detail": REDACTED, "exc_info": (1, 2)}
        renderer = rlog.ScrubbingRenderer(lambda _l, _m, e: f"{e!r}")
        assert renderer(None, "info", {"x": KEY}) == f"{{'x': '{REDACTED}'}}"
        del owner

    def test_the_standard_library_filter_redacts_formatted_records(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        owner = Redactor((KEY,)).register()
        logger = logging.getLogger("tests.redaction")
        redacting = RedactingFilter()
        logger.addFilter(redacting)
        try:
            with caplog.at_level(logging.INFO, logger="tests.redaction"):
                logger.info("request to %s with %s", "https://bob:pw@host/v1", KEY)
        finally:
            logger.removeFilter(redacting)
        del owner
        assert caplog.messages == [f"request to https://{REDACTED}@host/v1 with {REDACTED}"]

    async def test_push_error_redacts_the_frame_and_its_exception(self) -> None:
        owner = Redactor((KEY,)).register()

        class Fails(Actor[TextFrame]):
            accepts = (TextFrame,)

            async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
                error = ValueError(f"rejected {KEY}")
                await self.push_error(f"cannot use {KEY}: {error}", exception=error)

        result = await run_frames([Fails()], [TextFrame("hi")])
        [frame] = result.errors
        assert isinstance(frame, ErrorFrame)
        assert frame.error == f"cannot use {REDACTED}: rejected {REDACTED}"
        assert str(frame.exception) == f"rejected {REDACTED}"
        del owner


async def test_an_actor_task_failure_logged_beside_its_handlers_crash_hides_the_secret(
    structlog_restored: None, autojump_clock: object
) -> None:
    """The line that keeps a task's failure when its actor's handler fails too ('actor task
    failed') passes the redaction like every other: the secret in its error is hidden."""
    owner = Redactor((KEY,)).register()
    out = io.StringIO()
    rlog.configure(json=True, level="debug", file=out, colors=False)

    class Both(Actor[TextFrame]):
        accepts = (TextFrame,)

        async def failing(self) -> None:
            await trio.sleep(0.5)
            raise LookupError(f"the task failed with {KEY}")

        async def process_frame(self, frame: Frame, direction: FrameDirection) -> None:
            self.create_task(self.failing)
            with trio.CancelScope(shield=True):
                await trio.sleep(1)
            raise ValueError("the handler failed")

    with pytest.raises(ValueError, match="the handler failed"):
        await run_frames([Both(name="both")], [TextFrame("hi")])
    del owner
    written = out.getvalue()
    [line] = [json.loads(x) for x in written.splitlines() if "actor task failed" in x]
    assert line["error"] == f"LookupError: the task failed with {REDACTED}"
    assert KEY not in written
