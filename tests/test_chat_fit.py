"""fit_messages: the policy that keeps a conversation within n_ctx, against a brute-force reference."""
from __future__ import annotations

import random

import pytest

from pygguf_diffusion.chat import fit_messages


def count(msgs: list[dict]) -> int:
    """A stand-in for 'render the template and tokenize': a fixed overhead per message plus its length."""
    return 1 + sum(3 + len(m["content"]) for m in msgs)


def reference(msgs: list[dict], budget: int) -> tuple[list[dict], int] | None:
    """Linear search over every whole-turn cut, oldest first (None: nothing fits)."""
    head = 0
    while head < len(msgs) and msgs[head]["role"] in ("system", "developer"):
        head += 1
    users = [i for i in range(head, len(msgs)) if msgs[i]["role"] == "user"]
    last = users[-1] if users else max(len(msgs) - 1, head)
    for cut in [head, *(i for i in users if head < i <= last)]:
        kept = msgs[:head] + msgs[cut:]
        if count(kept) <= budget:
            return kept, cut - head
    return None


def u(text: str) -> dict:
    return {"role": "user", "content": text}


def a(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYS = {"role": "system", "content": "be brief"}


def test_nothing_dropped_when_it_fits():
    msgs = [SYS, u("hi"), a("hello"), u("again")]
    kept, dropped = fit_messages(msgs, count, 1000)
    assert kept == msgs and dropped == 0


def test_drops_whole_turns_keeping_the_system_prompt():
    msgs = [SYS, u("a" * 10), a("b" * 10), u("c" * 10), a("d" * 10), u("e" * 10)]
    kept, dropped = fit_messages(msgs, count, count([SYS, u("c" * 10), a("d" * 10), u("e" * 10)]))
    assert kept == [SYS, u("c" * 10), a("d" * 10), u("e" * 10)] and dropped == 2
    kept, dropped = fit_messages(msgs, count, count([SYS, u("e" * 10)]))
    assert kept == [SYS, u("e" * 10)] and dropped == 4


def test_the_newest_user_message_always_stays_or_it_is_an_error():
    msgs = [SYS, u("a"), a("b"), u("x" * 100)]
    with pytest.raises(ValueError, match="newest message does not fit"):
        fit_messages(msgs, count, 50)
    kept, _ = fit_messages([u("a" * 40), a("b"), u("c")], count, 10)  # no system prompt
    assert kept == [u("c")]


def test_input_is_not_modified():
    msgs = [SYS, u("a" * 30), a("b"), u("c")]
    before = [dict(m) for m in msgs]
    fit_messages(msgs, count, 20)
    assert msgs == before


@pytest.mark.parametrize("seed", range(20))
def test_a_long_random_conversation_matches_the_reference(seed):
    """Many turns, each fitted before it is 'answered', as the chat session does: the kept history is always
    the reference's, within budget, and ends with the newest user message."""
    rng = random.Random(seed)
    budget = rng.randint(40, 200)
    history: list[dict] = [SYS] if rng.random() < 0.7 else []
    calls = 0

    def counting(msgs: list[dict]) -> int:
        nonlocal calls
        calls += 1
        return count(msgs)

    for turn in range(60):
        history.append(u("q" * rng.randint(0, 40)))
        expected = reference(history, budget)
        if expected is None:
            with pytest.raises(ValueError):
                fit_messages(history, counting, budget)
            history.pop()
            continue
        calls = 0
        kept, dropped = fit_messages(history, counting, budget)
        assert (kept, dropped) == expected
        assert count(kept) <= budget and kept[-1] == history[-1]
        assert calls <= 2 + len(history).bit_length()  # binary search, not one render per turn
        history = kept + [a("r" * rng.randint(0, 40))]


def test_fit_prompt_tokenizes_each_candidate_once_and_returns_the_kept_tokens():
    from pygguf_diffusion.chat import fit_prompt

    calls: list[int] = []

    def tokenize(msgs: list[dict]) -> list[int]:
        calls.append(len(msgs))
        return [0] * count(msgs)

    msgs = [SYS] + [m for i in range(30) for m in (u("q" * 20), a("r" * 20))] + [u("last")]
    tokens, kept, dropped = fit_prompt(msgs, tokenize, 200)
    assert (kept, dropped) == reference(msgs, 200) and len(tokens) == count(kept)
    assert len(calls) == len(set(calls))  # no candidate rendered twice, the kept one included
