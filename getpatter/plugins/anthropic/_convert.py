"""Chat Completions-shaped history → an Anthropic Messages request (`system`, `messages`, `tools`).

getpatter keeps one history shape for every LLM; this is the only place that knows Anthropic's.
The Messages API is stricter than Chat Completions, and a phone call produces histories it
would refuse, so the conversion also repairs them:

- system (and developer) messages become the `system` string, joined in order;
- consecutive turns of one role are merged (a barge-in leaves two user turns in a row);
- assistant `tool_calls` become `tool_use` blocks; `role: tool` messages become `tool_result`
  blocks, first in the next user turn;
- a `tool_use` the history never answered (the caller interrupted the tool) gets an error
  `tool_result`, and a `tool_result` with no matching `tool_use` becomes plain text: the API
  rejects both;
- blank text is dropped (the API rejects empty text blocks); a history that does not start with
  the user (the agent's greeting comes first) gets a short user turn in front, and one that ends
  with the assistant gets one behind, because current models refuse assistant prefill.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from typing import Any, Final

log = logging.getLogger(__name__)

#: Stands in front of a history that opens with the agent's own greeting.
CALL_START: Final = "(The call has connected.)"
#: Stands behind a history that ends with the assistant (nothing new from the caller).
CONTINUE: Final = "(Please continue.)"
#: The result of a tool call the history never finished.
UNANSWERED: Final = "No result: the tool call was interrupted before it finished."


def _text(content: Any) -> str:
    """The text of a Chat Completions content value (a string or a list of parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(str(part.get("text", "")) for part in content if isinstance(part, dict))
    return str(content)


def _image(part: dict[str, Any]) -> dict[str, Any] | None:
    url = str((part.get("image_url") or {}).get("url", ""))
    if url.startswith("data:") and ";base64," in url:
        media_type, data = url[5:].split(";base64,", 1)
        return {
            "type": "image",
            "source": {"type": "base64", "media_type": media_type, "data": data},
        }
    if url.startswith(("http://", "https://")):
        return {"type": "image", "source": {"type": "url", "url": url}}
    return None


def _content_blocks(content: Any) -> list[dict[str, Any]]:
    """Text (and image) blocks, without blank text: the API refuses whitespace-only blocks."""
    if isinstance(content, list):
        blocks: list[dict[str, Any]] = []
        for part in content:
            if not isinstance(part, dict):
                continue
            if part.get("type") == "image_url" and (image := _image(part)) is not None:
                blocks.append(image)
            elif str(part.get("text", "")).strip():
                blocks.append({"type": "text", "text": str(part["text"])})
        return blocks
    text = _text(content)
    return [{"type": "text", "text": text}] if text.strip() else []


def _tool_input(arguments: Any) -> dict[str, Any]:
    """A tool call's arguments as the JSON object `tool_use.input` must be."""
    if isinstance(arguments, dict):
        return arguments
    try:
        value = json.loads(arguments) if isinstance(arguments, str) and arguments else {}
    except json.JSONDecodeError:
        return {"_unparsed_arguments": str(arguments)}
    return value if isinstance(value, dict) else {"value": value}


def _tool_uses(tool_calls: Any) -> list[dict[str, Any]]:
    blocks = []
    for call in tool_calls or ():
        function = call.get("function") or {}
        blocks.append(
            {
                "type": "tool_use",
                "id": str(call.get("id") or ""),
                "name": str(function.get("name") or ""),
                "input": _tool_input(function.get("arguments")),
            }
        )
    return blocks


def _tool_use_ids(turn: dict[str, Any] | None) -> list[str]:
    if turn is None or turn["role"] != "assistant":
        return []
    return [b["id"] for b in turn["content"] if b.get("type") == "tool_use"]


def _unanswered(ids: Sequence[str]) -> list[dict[str, Any]]:
    return [
        {"type": "tool_result", "tool_use_id": i, "content": UNANSWERED, "is_error": True}
        for i in ids
    ]


def _pair_tool_blocks(turns: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Answer every tool_use in the very next turn; turn stray tool_results into text."""
    fixed: list[dict[str, Any]] = []
    for turn in turns:
        asked = _tool_use_ids(fixed[-1] if fixed else None)
        if turn["role"] == "assistant":
            if asked:
                fixed.append({"role": "user", "content": _unanswered(asked)})
            fixed.append(turn)
            continue
        content = []
        for block in turn["content"]:
            if block.get("type") == "tool_result" and block["tool_use_id"] not in asked:
                log.debug("tool_result %s answers no tool_use: sent as text", block["tool_use_id"])
                block = {"type": "text", "text": f"(tool result) {_text(block['content'])}"}
            content.append(block)
        answered = {b["tool_use_id"] for b in content if b.get("type") == "tool_result"}
        content = _unanswered([i for i in asked if i not in answered]) + content
        content.sort(key=lambda b: b.get("type") != "tool_result")  # tool results go first
        fixed.append({"role": "user", "content": content})
    if asked := _tool_use_ids(fixed[-1] if fixed else None):
        fixed.append({"role": "user", "content": _unanswered(asked)})
    return fixed


def to_anthropic(messages: Sequence[dict[str, Any]]) -> tuple[str, list[dict[str, Any]]]:
    """`(system, messages)` for the Messages API from a Chat Completions-shaped history."""
    system: list[str] = []
    turns: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        content = message.get("content")
        if role in ("system", "developer"):
            if (text := _text(content)).strip():
                system.append(text)
            continue
        if role == "tool":
            role, blocks = (
                "user",
                [
                    {
                        "type": "tool_result",
                        "tool_use_id": str(message.get("tool_call_id") or ""),
                        "content": _text(content) or "(no output)",
                    }
                ],
            )
        elif role == "assistant":
            blocks = _content_blocks(content) + _tool_uses(message.get("tool_calls"))
        elif role == "user":
            blocks = _content_blocks(content)
        else:
            log.debug("message with role %r has no Anthropic equivalent: skipped", role)
            continue
        if not blocks:
            continue
        if turns and turns[-1]["role"] == role:
            turns[-1]["content"].extend(blocks)
        else:
            turns.append({"role": role, "content": blocks})
    turns = _pair_tool_blocks(turns)
    if not turns or turns[0]["role"] != "user":
        turns.insert(0, {"role": "user", "content": [{"type": "text", "text": CALL_START}]})
    if turns[-1]["role"] == "assistant":
        turns.append({"role": "user", "content": [{"type": "text", "text": CONTINUE}]})
    return "\n\n".join(system), turns


def tool_to_anthropic(tool: dict[str, Any]) -> dict[str, Any]:
    """`{name, description, parameters}` (or an OpenAI `{"type": "function", ...}`) → a tool."""
    spec = tool.get("function", tool) if tool.get("type") == "function" else tool
    schema = dict(spec.get("parameters") or spec.get("input_schema") or {})
    schema.setdefault("type", "object")
    if schema["type"] == "object":
        schema.setdefault("properties", {})
    out = {"name": str(spec["name"]), "input_schema": schema}
    if spec.get("description"):
        out["description"] = str(spec["description"])
    return out
