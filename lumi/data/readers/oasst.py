"""OpenAssistant (oasst1, oasst2): message trees turned into threads, root to leaf, following the best-ranked reply
at each turn.

Two layouts: the hub's flat messages (one record per message: ``message_id``, ``parent_id``, ``message_tree_id``,
``role`` "prompter"/"assistant", ``text``, ``lang``, ``rank``, ``deleted``, ``review_result`` ...), whose trees are
rebuilt from the parent links, and the export trees (``{"message_tree_id", "prompt": message with "replies"}``).
Deleted messages and messages that failed review are dropped with everything below them; among the remaining
replies the lowest ``rank`` wins (unranked ones after ranked, then the first). A thread that ends with the prompter
loses that last turn. The thread's language is its root's ``lang``.
"""

from __future__ import annotations

from typing import Any, Iterable, Iterator

from lumi.data.readers.base import Conversation, ReadStats, RecordError, text_field

NAME = "oasst"
ROLES = {"prompter": "user", "assistant": "assistant"}


def looks_like(record: dict) -> bool:
    return "message_tree_id" in record or ("message_id" in record and "role" in record)


def _usable(message: dict) -> bool:
    return not message.get("deleted") and message.get("review_result") is not False


def _best(replies: list[dict]) -> dict | None:
    usable = [reply for reply in replies if _usable(reply)]
    if not usable:
        return None
    return min(usable, key=lambda r: (r.get("rank") is None, r.get("rank") if r.get("rank") is not None else 0))


def thread(root: dict, replies_of) -> list[dict[str, str]]:
    """The best-ranked path from ``root``; ``replies_of(message)`` lists a message's replies."""
    turns, message = [], root if _usable(root) else None
    while message is not None:
        role = text_field(message, "role")
        if role not in ROLES:
            raise RecordError("unknown_role", f"role {role!r} (expected prompter or assistant)")
        turns.append({"role": ROLES[role], "content": text_field(message, "text")})
        message = _best(replies_of(message))
    if turns and turns[-1]["role"] == "user":
        turns.pop()
    return turns


def _from_tree(record: Any, stats: ReadStats, index: int) -> Conversation | None:
    root = record.get("prompt")
    if not isinstance(root, dict):
        raise RecordError("missing_field", "export tree without a 'prompt' message")

    def replies_of(message: dict) -> list[dict]:
        replies = message.get("replies") or []
        if not isinstance(replies, list):
            raise RecordError("wrong_type", "'replies' is not a list")
        return replies

    return Conversation(thread(root, replies_of), f"{NAME}:{record.get('message_tree_id', index)}",
                        root.get("lang"))


def read(records: Iterable[Any], stats: ReadStats) -> Iterator[Conversation]:
    """Export trees are converted one by one; flat messages are collected first (a tree's messages may be spread
    over the file) and their trees rebuilt."""
    children: dict[str, list[dict]] = {}
    roots: list[dict] = []
    for index, record in enumerate(records):
        stats.read += 1
        try:
            if not isinstance(record, dict):
                raise RecordError("not_an_object", f"expected a JSON object, got {type(record).__name__}")
            if "prompt" in record and "message_id" not in record:
                yield _from_tree(record, stats, index)
                continue
            message_id = text_field(record, "message_id")
            text_field(record, "text")
            parent = record.get("parent_id")
            if parent is None:
                roots.append(record)
            elif isinstance(parent, str):
                children.setdefault(parent, []).append(record)
            else:
                raise RecordError("wrong_type", f"message {message_id}: parent_id is {type(parent).__name__}")
        except RecordError as exc:
            stats.drop(exc.reason, f"record {index}: {exc}")
    for root in roots:
        try:
            yield Conversation(thread(root, lambda m: children.get(m["message_id"], [])),
                               f"{NAME}:{root.get('message_tree_id') or root['message_id']}", root.get("lang"))
        except RecordError as exc:
            stats.drop(exc.reason, f"tree {root['message_id']}: {exc}")
