"""dca.thinking: the one parser of think blocks, as trace import, teachers, samples and grading use it."""

from __future__ import annotations

import pytest

from dca.thinking import split_thinking, strip_thinking


@pytest.mark.parametrize("text,kwargs,expected", [
    ("<think>a</think>b", {}, ("a", "b", True)),
    ("<think>a</think>\nb", {"finish": "stop"}, ("a", "b", True)),
    ("a</think>b", {}, ("a", "b", True)),  # the opening tag was in the prompt
    ("<think>a", {}, ("a", "", False)),  # truncated
    ("<think>still going", {"finish": "length"}, ("still going", "", False)),
    ("plain", {}, ("", "plain", True)),
    ("just an answer 4", {"finish": "stop"}, ("", "just an answer 4", True)),
    ("cut off answer", {"finish": "length"}, ("", "cut off answer", False)),  # untagged, stopped by the limit
    ("Hmm. <think>a</think> b", {}, ("a", "Hmm.\n\nb", True)),  # text before the block is kept
    ("Hmm. <think>a", {}, ("a", "Hmm.", False)),
    ("<think>a</think>b<think>c</think> d", {}, ("a</think>b<think>c", "d", True)),  # answer after the last block
    ("reasoning, never closed", {"started": True}, ("reasoning, never closed", "", False)),
    ("r</think> 42", {"started": True}, ("r", "42", True)),
])
def test_split_thinking(text, kwargs, expected):
    assert split_thinking(text, **kwargs) == expected


def test_split_thinking_with_a_scaffolds_markers():
    tags = ("Let's think step by step.", "Final answer:")
    assert split_thinking("3 + 4 = 7.\n\nFinal answer: 7", tags=tags) == ("3 + 4 = 7.", "7", True)
    assert split_thinking("The answer is 7.", tags=tags) == ("", "The answer is 7.", True)  # answered in its reasoning


def test_strip_thinking_gives_a_grader_the_text_after_the_last_block():
    assert strip_thinking("<think>a</think>b<think>c</think> d") == "d"
    assert strip_thinking("<think>unfinished") == ""
    assert strip_thinking("Hmm, 5. <think>unfinished") == ""  # truncated: no answer, whatever came before
    assert strip_thinking("Hmm, 5. <think>a</think> 7") == "7"  # the answer follows the thinking
    assert strip_thinking("a</think> 7") == "7"
    assert strip_thinking("plain") == "plain"
