"""``build_bpe_tokenizer``'s number handling: digit runs cut as GPT-4/Llama 3 tokenizers cut them."""

import random

import pytest

from rewardhub.tiny_model import build_bpe_tokenizer


def corpus(n=2000, seed=0):
    rng = random.Random(seed)
    return [f"<r-{rng.getrandbits(64):016x}>\n{rng.randrange(20, 199)}\n</r> the reference {rng.randrange(20, 199)}"
            for _ in range(n)]


def pieces(tok, text):
    return [tok.decode([i]) for i in tok(text, add_special_tokens=False)["input_ids"]]


def test_numbers_become_whole_tokens_with_runs_of_three():
    tok = build_bpe_tokenizer(corpus(), vocab_size=700, digits_per_token=3)
    assert pieces(tok, "\n147\n") == ["\n", "147", "\n"]  # a common number is one token ...
    assert pieces(tok, "\n47\n") == ["\n", "47", "\n"]
    assert all(len(p) <= 3 for p in pieces(tok, "1234567"))  # ... and no token spans more than three digits
    assert "".join(pieces(tok, "1234567")) == "1234567"
    for text in corpus(50, seed=1):
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # lossless


def test_one_digit_per_token_is_the_default():
    tok = build_bpe_tokenizer(corpus(300), vocab_size=400)
    assert pieces(tok, "\n147\n") == ["\n", "1", "4", "7", "\n"]
    with pytest.raises(ValueError, match="digits_per_token"):
        build_bpe_tokenizer(corpus(10), vocab_size=300, digits_per_token=0)


def test_a_number_can_keep_the_whitespace_before_it():
    """``"\\n147"`` is one token, and differs from the same digits inside a hex string: answers on their own line
    are told apart from a nonce's digits by token alone."""
    tok = build_bpe_tokenizer(corpus(3000), vocab_size=900, digits_per_token=3, number_takes_space=True)
    assert pieces(tok, "\n147\n") == ["\n147", "\n"]
    assert "147" not in pieces(tok, "\n147\n") and pieces(tok, " 47") == [" 47"]
    assert all(not p.startswith(("\n", " ")) for p in pieces(tok, "e147f62a")[1:])  # inside a word: bare digits
    for text in [*corpus(50, seed=2), "a  47\t\t1234567 \n\n 9"]:
        assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text  # lossless
