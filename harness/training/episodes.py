"""Training episodes for δ-mem: chat conversations split into a write history and a read turn.

A :class:`Conversation` is what a data source yields: chat ``messages`` plus the document it came from
(``group``, the unit of the held-out split). :func:`make_episode` applies the reference recipe
(deltamem.md §7.2, ``--episode-recent-messages 1``):

* target = the last assistant message;
* write = the leading system messages + every non-system message before the target except the last;
* read = the leading system messages + the last non-system message before the target + the target.

:func:`tokenize_episode` renders both with the backbone's chat template. Write tokens carry per-token
message ids (system and template-injected text: -1, as SSW never writes them) and are left-truncated to a
write length; read tokens carry labels on the target's template span only (role header, content, end
tokens; -100 elsewhere) and are left-truncated to a read length.
"""
from __future__ import annotations

import json
import warnings
from collections import Counter
from dataclasses import dataclass, field, replace
from typing import Any, Iterable, Mapping, Sequence

IGNORE = -100
ROLES = ("system", "user", "assistant")

Message = Mapping[str, str]


@dataclass(frozen=True)
class Conversation:
    """One chat as a data source produced it."""

    id: str
    source: str
    group: str  # the document / dialogue it belongs to: the held-out split never separates a group
    messages: tuple[Message, ...]
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Episode:
    """A history-removed training example (text level)."""

    id: str
    source: str
    group: str
    write: tuple[Message, ...]  # leading system + history
    read: tuple[Message, ...]   # leading system + last non-system message + target (last)
    metadata: dict[str, Any] = field(default_factory=dict, compare=False)

    @property
    def target(self) -> str:
        return self.read[-1]["content"]

    @property
    def question(self) -> str:
        return self.read[-2]["content"]

    @property
    def system(self) -> tuple[Message, ...]:
        return self.read[:-2]


@dataclass(frozen=True)
class TokenizedEpisode:
    id: str
    source: str
    write_ids: tuple[int, ...]
    write_message_ids: tuple[int, ...]  # one per write token; -1 = system / template text (never SSW-written)
    read_ids: tuple[int, ...]
    labels: tuple[int, ...]             # IGNORE except on the target span
    write_dropped: int = 0              # tokens removed by left truncation
    read_dropped: int = 0
    distill: bool = False               # loss: KL to the bare backbone on the labelled positions, not CE
    online: bool = False                # no write pass: the read runs with writes on, as the context protocol

    @property
    def num_target_tokens(self) -> int:
        return sum(1 for x in self.labels if x != IGNORE)

    @property
    def num_tokens(self) -> int:
        return len(self.write_ids) + len(self.read_ids)


SKIP_REASONS = ("no_target", "no_history", "duplicate")


def make_episode(conv: Conversation) -> tuple[Episode | None, str | None]:
    """§7.2 on one conversation: ``(episode, None)`` or ``(None, reason)`` with reason in SKIP_REASONS."""
    msgs = list(conv.messages)
    target_at = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
    if target_at is None:
        return None, "no_target"
    n_lead = 0
    while n_lead < len(msgs) and msgs[n_lead]["role"] == "system":
        n_lead += 1
    leading = msgs[:n_lead]
    before = [m for m in msgs[n_lead:target_at] if m["role"] != "system"]
    if len(before) < 2:  # the last one goes to the read pass: nothing would be written
        return None, "no_history"
    write = tuple(leading + before[:-1])
    read = tuple(leading + [before[-1], msgs[target_at]])
    return Episode(id=conv.id, source=conv.source, group=conv.group, write=write, read=read,
                   metadata=dict(conv.metadata)), None


@dataclass
class EpisodeStats:
    """What became of the conversations of one source."""

    conversations: int = 0
    episodes: int = 0
    skipped: Counter = field(default_factory=Counter)

    def as_dict(self) -> dict[str, Any]:
        return {"conversations": self.conversations, "episodes": self.episodes, "skipped": dict(self.skipped)}


def make_episodes(conversations: Iterable[Conversation], *, source: str = "") -> tuple[list[Episode], EpisodeStats]:
    """All episodes of ``conversations``; skipped ones (no target, no history, an exact duplicate of an earlier
    conversation) are counted and reported in one warning. Repeated ids of different conversations get a
    ``#n`` suffix so every episode id is unique."""
    stats = EpisodeStats()
    out: list[Episode] = []
    seen: set[tuple[str, str]] = set()
    ids: Counter = Counter()
    for conv in conversations:
        stats.conversations += 1
        key = (conv.group, json.dumps([[m["role"], m["content"]] for m in conv.messages]))
        if key in seen:
            stats.skipped["duplicate"] += 1
            continue
        seen.add(key)
        ep, reason = make_episode(conv)
        if ep is None:
            stats.skipped[reason] += 1
            continue
        ids[ep.id] += 1
        if ids[ep.id] > 1:
            ep = replace(ep, id=f"{ep.id}#{ids[ep.id]}")
        out.append(ep)
    stats.episodes = len(out)
    if stats.skipped:
        detail = ", ".join(f"{n} {r.replace('_', ' ') + 's' if r == 'duplicate' else 'with ' + r.replace('_', ' ')}"
                           for r, n in sorted(stats.skipped.items()))
        warnings.warn(f"training data{f' {source}' if source else ''}: skipped {sum(stats.skipped.values())} of "
                      f"{stats.conversations} conversations ({detail})", stacklevel=2)
    return out, stats


# ------------------------------------------------------------------------------------------ rendering
class TemplateNotPrefixStable(ValueError):
    """The chat template renders a conversation's prefix differently from the start of the whole."""


class ChatRenderer:
    """Chat-template rendering with the message that owns each token.

    Renders exactly what :meth:`harness.backbone.Backbone.chat_ids` renders (same template, same
    ``chat_kwargs``, same fallback layout for template-less base models), then finds message boundaries
    from the rendered prefixes, so a token's owner is the message whose text produced it. Text a template
    adds before the first message (SmolLM2's default system prompt) is owned by nobody (-1).
    """

    def __init__(self, tokenizer: Any, chat_kwargs: Mapping[str, Any] | None = None) -> None:
        self.tokenizer = tokenizer
        self.chat_kwargs = dict(chat_kwargs or {})
        self.has_template = bool(getattr(tokenizer, "chat_template", None))

    @classmethod
    def for_backbone(cls, backbone: Any) -> "ChatRenderer":
        return cls(backbone.tokenizer, backbone.chat_kwargs)

    def text(self, messages: Sequence[Message], add_generation_prompt: bool = False) -> str:
        if not messages:
            return ""
        if not self.has_template:  # Backbone.chat_ids's layout for base models
            text = "".join(f"{m['role'].capitalize()}: {m['content']}\n\n" for m in messages)
            return text + ("Assistant:" if add_generation_prompt else "")
        return self.tokenizer.apply_chat_template([dict(m) for m in messages], tokenize=False,
                                                  add_generation_prompt=add_generation_prompt, **self.chat_kwargs)

    def _boundaries(self, messages: Sequence[Message]) -> tuple[str, list[int], list[int]]:
        full = self.text(messages)
        ends = []
        for j in range(1, len(messages) + 1):
            prefix = self.text(messages[:j])
            if not full.startswith(prefix):
                raise TemplateNotPrefixStable(
                    f"the chat template renders the first {j} message(s) differently from the start of the whole "
                    "conversation; per-message token spans cannot be derived from it")
            ends.append(len(prefix))
        starts = [0] + ends[:-1]
        starts[0] = self._injected_prefix(messages[0], ends[0])
        return full, starts, ends

    def _injected_prefix(self, first: Message, first_end: int) -> int:
        """Length of template text rendered before the first message (e.g. a default system prompt)."""
        if first["role"] == "system":
            return 0
        try:  # the first message's own rendering, seen as a later message of a conversation
            alone = self.text([first])
            pure = self.text([first, first])[len(alone):]
        except Exception:  # templates that refuse repeated roles: keep the whole span
            return 0
        if pure and alone.endswith(pure) and len(alone) > len(pure) and first_end == len(alone):
            return len(alone) - len(pure)
        return 0

    def encode(self, messages: Sequence[Message]) -> tuple[list[int], list[int]]:
        """``(ids, owner)``: the rendered conversation and, per token, the index of its message (-1: none)."""
        full, starts, ends = self._boundaries(messages)
        add_special = not self.has_template
        try:
            enc = self.tokenizer(full, add_special_tokens=add_special, return_offsets_mapping=True)
            offsets = enc["offset_mapping"]
        except (NotImplementedError, ValueError, TypeError):  # slow tokenizers: token-level prefix lengths
            return self._encode_by_prefixes(messages, starts, ends, add_special)
        ids = list(enc["input_ids"])
        owner = []
        j = 0
        for a, _ in offsets:
            while j < len(ends) - 1 and a >= ends[j]:
                j += 1
            owner.append(j if starts[j] <= a < ends[j] else -1)
        return ids, owner

    def content_start(self, messages: Sequence[Message], ids: Sequence[int]) -> int:
        """Index in ``ids`` (``messages`` encoded) of the last message's first content token: the length of the
        earlier messages rendered with the generation prompt, which is what an evaluation prompt ends with.
        Raises :class:`TemplateNotPrefixStable` when that rendering is not a token prefix of ``ids``."""
        prompt = self.text(messages[:-1], add_generation_prompt=True)
        head = list(self.tokenizer(prompt, add_special_tokens=not self.has_template)["input_ids"])
        if not self.text(messages).startswith(prompt) or list(ids[:len(head)]) != head:
            raise TemplateNotPrefixStable(
                "the prompt with the generation header is not a token prefix of the whole conversation; the "
                "start of the last message's content cannot be located")
        return len(head)

    def _encode_by_prefixes(self, messages, starts, ends, add_special) -> tuple[list[int], list[int]]:
        full = self.text(messages)
        ids = list(self.tokenizer(full, add_special_tokens=add_special)["input_ids"])
        owner = [-1] * len(ids)
        prev = len(self.tokenizer(full[:starts[0]], add_special_tokens=add_special)["input_ids"]) if starts[0] else 0
        for j, end in enumerate(ends):
            n = len(self.tokenizer(full[:end], add_special_tokens=add_special)["input_ids"])
            for i in range(prev, min(n, len(ids))):
                owner[i] = j
            prev = n
        return ids, owner


def tokenize_episode(ep: Episode, renderer: ChatRenderer, *, write_length: int, read_length: int) -> TokenizedEpisode:
    """Write ids with message ids (left-truncated to ``write_length``), read ids with target labels
    (left-truncated to ``read_length``)."""
    if write_length < 1 or read_length < 2:
        raise ValueError(f"write_length must be >= 1 and read_length >= 2, got {write_length}, {read_length}")
    w_ids, w_owner = renderer.encode(ep.write)
    w_msg = [o if o >= 0 and ep.write[o]["role"] != "system" else -1 for o in w_owner]
    w_drop = max(0, len(w_ids) - write_length)
    r_ids, r_owner = renderer.encode(ep.read)
    target = len(ep.read) - 1
    labels = [t if o == target else IGNORE for t, o in zip(r_ids, r_owner)]
    if ep.metadata.get("open_end"):  # a target cut at a token limit: its end-of-turn tokens are not the truth
        full = renderer.text(ep.read)
        content_end = full.rfind(ep.target) + len(ep.target)
        keep = len(renderer.tokenizer(full[:content_end], add_special_tokens=not renderer.has_template)["input_ids"])
        labels[keep:] = [IGNORE] * (len(labels) - keep)
    r_drop = max(0, len(r_ids) - read_length)
    return TokenizedEpisode(id=ep.id, source=ep.source, write_ids=tuple(w_ids[w_drop:]),
                            write_message_ids=tuple(w_msg[w_drop:]), read_ids=tuple(r_ids[r_drop:]),
                            labels=tuple(labels[r_drop:]), write_dropped=w_drop, read_dropped=r_drop,
                            distill=bool(ep.metadata.get("distill")), online=bool(ep.metadata.get("online")))
