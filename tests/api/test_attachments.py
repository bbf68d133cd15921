"""Attachments in turns: the caller's files reach the model in the form its provider
takes (a real OpenAI-format server receives them), are refused as the model and the
limits require, and are listed on the user message in the tree.

One server for the module, with the demo model, a vision model and a model without
vision (both on a real local OpenAI-format server), and a small-input model.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.api.test_turn_stream import frames_of
from tests.support.fake_openai import FakeOpenAI
from tests.support.files import png
from tests.support.inprocess import InProcessServer
from tests.support.server import Frame
from tests.support.shared_server import count_events, served


@pytest.fixture(scope="module")
def fake() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture(scope="module")
def server(
    database_url: str,
    nats_url: str,
    tmp_path_factory: pytest.TempPathFactory,
    fake: FakeOpenAI,
) -> Iterator[InProcessServer]:
    data_dir = tmp_path_factory.mktemp("attachments")
    models = data_dir / "models.toml"
    models.write_text(
        f'[[models]]\nid = "eyes"\nprovider = "openai"\nbase_url = "{fake.base_url}"\n'
        'context_window = 8192\nsupports = ["chat", "streaming", "vision"]\n\n'
        f'[[models]]\nid = "blind"\nprovider = "openai"\nbase_url = "{fake.base_url}"\n'
        "context_window = 8192\n\n"
        f'[[models]]\nid = "small"\nprovider = "openai"\nbase_url = "{fake.base_url}"\n'
        "context_window = 8192\nmax_input_tokens = 300\n"
    )
    env = {
        "TURNSTREAM_MODELS": str(models),
        "TURNSTREAM_DEMO_TOKENS": "8",
        "TURNSTREAM_DEMO_TOKENS_PER_S": "0",
        "TURNSTREAM_LIMIT_FILES_PER_MESSAGE": "3",
    }
    with served(database_url, nats_url, data_dir / "node", **env) as server:
        yield server


def client(server: InProcessServer, user: str = "alice", tenant: str = "acme") -> httpx.Client:
    return httpx.Client(
        base_url=server.base_url + "/v1", headers=server.headers(tenant, user), timeout=60
    )


def upload(c: httpx.Client, content: bytes, name: str) -> str:
    r = c.post("/files", files={"file": (name, content, "application/octet-stream")})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def conversation(c: httpx.Client, model: str = "demo") -> str:
    r = c.post("/conversations", json={"model": model})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def turn(c: httpx.Client, cid: str, **body: Any) -> list[Frame]:
    with c.stream("POST", f"/conversations/{cid}/turns", json=body) as r:
        assert r.status_code == 200, r.read()
        frames = frames_of(r)
    assert frames[-1].event == "final", frames[-1]
    return frames


def refused(c: httpx.Client, cid: str, status: int, code: str, **body: Any) -> None:
    r = c.post(f"/conversations/{cid}/turns", json=body)
    assert r.status_code == status, r.text
    assert r.json()["code"] == code


NOTES = "Quarterly notes\nrevenue went up\n"


def test_the_demo_model_describes_the_attachments_and_the_tree_lists_them(
    server: InProcessServer,
) -> None:
    image = png(64, 48)
    with client(server) as c:
        ids = [upload(c, image, "chart.png"), upload(c, NOTES.encode(), "notes.md")]
        cid = conversation(c)
        frames = turn(c, cid, content="What are these?", attachments=ids)
        assert [a["id"] for a in frames[0].data["attachments"]] == ids
        text = frames[-1].data["text"]
        assert "You attached 2 files." in text
        assert f"chart.png: image/png, {len(image)} bytes, 64x48 pixels" in text
        assert "notes.md: text/markdown" in text
        assert '"Quarterly notes"' in text
        view = c.get(f"/conversations/{cid}").json()
    user = next(m for m in view["messages"] if m["role"] == "user")
    assert [a["id"] for a in user["attachments"]] == ids
    assert [(a["name"], a["media_type"]) for a in user["attachments"]] == [
        ("chart.png", "image/png"),
        ("notes.md", "text/markdown"),
    ]


def test_an_openai_server_receives_image_and_text_parts_as_openai_documents_them(
    server: InProcessServer, fake: FakeOpenAI
) -> None:
    image = png(20, 10, (0, 0, 255))
    url = "data:image/png;base64," + base64.b64encode(image).decode()
    notes = "Attached file notes.txt (text/plain):\n\n" + NOTES
    with client(server) as c:
        ids = [upload(c, image, "pic.png"), upload(c, NOTES.encode(), "notes.txt")]
        cid = conversation(c, "eyes")
        fake.script(chunks=["A blue box."])
        turn(c, cid, content="Describe.", attachments=ids)
        first = fake.requests[-1]["messages"]
        assert first[-1] == {
            "role": "user",
            "content": [
                {"type": "text", "text": "Describe."},
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": notes},
            ],
        }
        # The next turn gives the model the earlier files again, and a message of only
        # files has no text part.
        fake.script(chunks=["Same."])
        turn(c, cid, attachments=[ids[0]])
        second = fake.requests[-1]["messages"]
        assert second[0] == first[-1]
        assert second[-1] == {
            "role": "user",
            "content": [{"type": "image_url", "image_url": {"url": url}}],
        }


def test_a_model_without_vision_refuses_images_and_takes_text(
    server: InProcessServer, fake: FakeOpenAI
) -> None:
    with client(server) as c:
        image, text = upload(c, png(), "p.png"), upload(c, b"plain words\n", "w.txt")
        cid = conversation(c, "blind")
        before = count_events(server.database_url, server.schema)
        refused(c, cid, 422, "unsupported_attachment", content="See", attachments=[image])
        assert count_events(server.database_url, server.schema) == before
        fake.script(chunks=["Words."])
        turn(c, cid, content="Read", attachments=[text])
        assert fake.requests[-1]["messages"][-1]["content"][1]["text"].endswith("plain words\n")


def test_attachments_count_toward_the_models_input(server: InProcessServer) -> None:
    with client(server) as c:
        big = upload(c, ("many words here " * 200).encode(), "long.txt")
        cid = conversation(c, "small")
        refused(c, cid, 422, "input_too_long", content="Summarise", attachments=[big])


def test_only_the_callers_own_live_files_attach_and_within_the_limit(
    server: InProcessServer,
) -> None:
    with client(server) as c, client(server, "bob") as bob, client(server, "alice", "t2") as t2:
        mine = [upload(c, f"file {i}\n".encode(), f"{i}.txt") for i in range(4)]
        gone = upload(c, b"deleted soon\n", "gone.txt")
        assert c.delete(f"/files/{gone}").status_code == 204
        for them in (bob, t2):
            refused(
                them, conversation(them), 404, "file_not_found", content="x", attachments=mine[:1]
            )
        cid = conversation(c)
        refused(c, cid, 404, "file_not_found", content="x", attachments=[gone])
        missing = "01900000-0000-7000-8000-000000000000"
        refused(c, cid, 404, "file_not_found", content="x", attachments=[missing])
        refused(c, cid, 400, "too_many_attachments", content="x", attachments=mine)
        final = turn(c, cid, content="ok", attachments=mine[:3])[-1]
        assert "You attached 3 files." in final.data["text"]
        answer = c.get(f"/conversations/{cid}").json()["messages"][-1]["id"]
        refused(
            c, cid, 400, "invalid_request", mode="retry", message_id=answer, attachments=mine[:1]
        )
