"""The HTTP/1.1 status line carries the broker's reason (Uppy 6 shows only the status text)."""
from __future__ import annotations

import json

import pytest

from broker.adapters.wsgi import reason_phrase
from broker.web import HttpResponse


@pytest.mark.parametrize("status, body, phrase", [
    pytest.param(403, {"error": "denied", "message": "content type text/plain is not allowed for avatars"},
                 "content type text/plain is not allowed for avatars", id="denial"),
    pytest.param(413, {"message": "too large: 12 MB, the limit\r\nfor avatars is 5 MiB ✓"},
                 "too large: 12 MB, the limit??for avatars is 5 MiB ?", id="control_and_non_ascii"),
    pytest.param(403, {"message": "x" * 900}, "x" * 400, id="long"),
    pytest.param(200, {"message": "fine"}, "OK", id="success_keeps_its_phrase"),
    pytest.param(404, {"error": "not_found"}, "Not Found", id="no_message"),
    pytest.param(400, {"message": "  "}, "Bad Request", id="blank_message"),
])
def test_an_error_with_a_message_puts_it_in_the_status_line(status: int, body: dict, phrase: str) -> None:
    assert reason_phrase(HttpResponse.json(status, body)) == phrase


def test_a_body_that_is_not_a_json_object_keeps_the_standard_phrase() -> None:
    assert reason_phrase(HttpResponse(500, b"oops")) == "Internal Server Error"
    assert reason_phrase(HttpResponse(400, b"{not json")) == "Bad Request"
    assert reason_phrase(HttpResponse(403, json.dumps(["a"]).encode())) == "Forbidden"
