"""The demo model describes the files of the latest user message, deterministically."""

from __future__ import annotations

from tests.support.attachments import file_ref
from turnstream.domain.tools import FunctionSpec, ToolSpec
from turnstream.providers import ChatMessage, Chunk, DemoProvider, TextDelta
from turnstream.providers.base import Attachment, ToolCallBegun, ToolCallRequest
from turnstream.providers.demo import attachments_text, count_prompt_tokens
from turnstream.settings import DEMO_MODEL

PNG = Attachment(
    ref=file_ref("cat.png", "image/png", b"p" * 2048, width=640, height=480), data=b"p" * 2048
)
NOTES = Attachment(
    ref=file_ref("notes.txt", "text/plain", b"x" * 37), text="\n  \n  Shopping   list:\teggs\nmilk"
)
LONG = "A title that goes on and on " * 5
REPORT = Attachment(ref=file_ref("r.pdf", "application/pdf", size=9000), text=LONG + "\nmore")
EMPTY = Attachment(ref=file_ref("blank.pdf", "application/pdf", size=500), text="  \n")


async def collect(messages: list[ChatMessage], tools: tuple[ToolSpec, ...] = ()) -> list[Chunk]:
    provider = DemoProvider(tokens_per_s=0, tokens=20)
    return [chunk async for chunk in provider.stream(DEMO_MODEL, messages, tools)]


def answer_of(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks if isinstance(c, TextDelta))


def test_each_attachment_is_described_by_name_type_size_and_content() -> None:
    messages = [ChatMessage("user", "Look", attachments=(PNG, NOTES, REPORT, EMPTY))]

    assert attachments_text(messages) == (
        "You attached 4 files.\n"
        "- cat.png: image/png, 2048 bytes, 640x480 pixels.\n"
        '- notes.txt: text/plain, 37 bytes, first line: "Shopping list: eggs".\n'
        f'- r.pdf: application/pdf, 9000 bytes, first line: "{LONG[:79].rstrip()}…".\n'
        "- blank.pdf: application/pdf, 500 bytes, no text.\n\n"
    )


def test_only_the_latest_user_messages_files_are_described() -> None:
    earlier = ChatMessage("user", "First", attachments=(PNG,))
    one = ChatMessage("user", "Again", attachments=(NOTES,))

    assert attachments_text([earlier, ChatMessage("assistant", "Ok"), one]).startswith(
        "You attached 1 file.\n- notes.txt:"
    )
    assert attachments_text([earlier, ChatMessage("assistant", "Ok")]) == (
        "You attached 1 file.\n- cat.png: image/png, 2048 bytes, 640x480 pixels.\n\n"
    )
    assert attachments_text([earlier, ChatMessage("user", "No files")]) == ""


async def test_the_answer_opens_with_the_description_then_the_usual_text() -> None:
    messages = [ChatMessage("user", "What is this?", attachments=(PNG,))]

    first = answer_of(await collect(messages))

    assert first.startswith(attachments_text(messages) + "This is the turnstream demo model.")
    assert answer_of(await collect(list(messages))) == first


async def test_the_answer_without_attachments_is_unchanged() -> None:
    plain = [ChatMessage("user", "What is this?")]

    assert answer_of(await collect(plain)).startswith("This is the turnstream demo model.")


async def test_a_turn_with_tools_and_files_calls_first_then_describes() -> None:
    tool = ToolSpec(function=FunctionSpec(name="lookup", parameters={"type": "object"}))
    messages = [ChatMessage("user", "lookup this", attachments=(NOTES,))]

    chunks = await collect(messages, (tool,))
    [call] = [c for c in chunks if isinstance(c, ToolCallBegun)]
    asked = ToolCallRequest(call.call_id, call.name, "{}")
    messages += [
        ChatMessage("assistant", "", tool_calls=(asked,)),
        ChatMessage("tool", "found", tool_call_id=call.call_id),
    ]
    answer = answer_of(await collect(messages, (tool,)))

    assert call.name == "lookup"
    assert answer_of(chunks) == ""
    assert answer.startswith(attachments_text(messages) + "The tool lookup answered: found.")


def test_prompt_tokens_count_the_attachments() -> None:
    plain = ChatMessage("user", "Look")
    with_files = ChatMessage("user", "Look", attachments=(PNG, NOTES))

    added = count_prompt_tokens([with_files]) - count_prompt_tokens([plain])

    # The image by OpenAI's formula (640x480: 2x1 tiles); the text, as it is sent, by
    # its words and marks: Attached file notes . txt ( text / plain ) : Shopping list :
    # eggs milk.
    assert added == 2 * 170 + 85 + 16
