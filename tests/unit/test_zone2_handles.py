from __future__ import annotations

import random
import string

import pytest

from fleetd.zone2.handles import BadHandle, Redactor, handles_in, request_handles, substitute


def test_handles() -> None:
    assert handles_in("Bearer $CRED{openai}") == {"openai"}
    assert handles_in("no handle") == set()
    assert request_handles([("x-api-key", "$CRED{a}"), ("x", "$CRED{b}")], "key=%24CRED%7Bc%7D") == {"a", "b", "c"}
    for bad in ("$CRED{", "$CRED{}", "$CRED{a b}", "Bearer $CRED{openai"):
        with pytest.raises(BadHandle):
            handles_in(bad)


def test_substitute() -> None:
    assert substitute("Bearer $CRED{a}", {"a": "sk-1"}) == "Bearer sk-1"


def test_redactor_across_chunks() -> None:
    redactor = Redactor(["sk-SECRET"])
    chunks = (b"error: key sk-SE", b"CRET is invalid; sk-", b"SECRET!")
    out = b"".join(redactor.feed(c) for c in chunks) + redactor.flush()
    assert out == b"error: key [REDACTED] is invalid; [REDACTED]!"


def test_redactor_passes_ordinary_bytes_at_once() -> None:
    redactor = Redactor(["sk-SECRET"])
    assert redactor.feed(b"data: hello\n\n") == b"data: hello\n\n"  # nothing held back: streaming stays live
    assert redactor.feed(b"ends with sk") == b"ends with "
    assert redactor.flush() == b"sk"


# --- Redactor: properties against a whole-stream reference -------------------------------------------

MASK = Redactor.MASK


def coverage(stream: bytes, secrets: list[bytes]) -> tuple[list[bool], list[bool]]:
    """covered[i]: byte i lies in an occurrence of a secret; linked[i]: one occurrence covers both i and i+1."""
    covered, linked = [False] * len(stream), [False] * len(stream)
    for secret in secrets:
        for i in range(len(stream) - len(secret) + 1):
            if stream[i:i + len(secret)] == secret:
                covered[i:i + len(secret)] = [True] * len(secret)
                linked[i:i + len(secret) - 1] = [True] * (len(secret) - 1)
    return covered, linked


def whole_stream(stream: bytes, secrets: list[bytes]) -> bytes:
    """The reference, one byte at a time: every covered byte masked, one MASK per run of overlapping occurrences."""
    covered, linked = coverage(stream, secrets)
    out, i = bytearray(), 0
    while i < len(stream):
        if covered[i]:
            out += MASK
            while linked[i]:
                i += 1
        else:
            out.append(stream[i])
        i += 1
    return bytes(out)


def replaced(stream: bytes, secrets: list[bytes]) -> bytes:
    """What the redactor always did on a whole stream: bytes.replace from the longest secret to the shortest."""
    for secret in sorted(set(secrets), key=len, reverse=True):
        stream = stream.replace(secret, MASK)
    return stream


def overlap_partially(stream: bytes, secrets: list[bytes]) -> bool:
    spans = [(i, i + len(s)) for s in secrets for i in range(len(stream)) if stream.startswith(s, i)]
    return any(a < c < b < d for a, b in spans for c, d in spans)


def pending(prefix: bytes, secrets: list[bytes]) -> int:
    """The length of the longest end of ``prefix`` that is a proper prefix of a secret: what must be held."""
    return next((m for m in range(len(prefix), 0, -1)
                 if any(len(s) > m and s.startswith(prefix[-m:]) for s in secrets)), 0)


def redact_checked(secrets: list[bytes], stream: bytes, cuts: list[int]) -> bytes:
    """Feed ``stream`` cut at ``cuts``; after every feed check that exactly the necessary bytes are held back."""
    redactor = Redactor(s.decode() for s in secrets)
    out, prev = b"", 0
    for cut in [*cuts, len(stream)]:
        out += redactor.feed(stream[prev:cut])
        prev = cut
        released = cut - pending(stream[:cut], secrets)  # every byte before this is out (or inside a MASK)
        covered, linked = coverage(stream[:cut], secrets)
        start = released
        while start > 0 and linked[start - 1]:  # a run of overlapping occurrences still open: one MASK later
            start -= 1
        assert out == whole_stream(stream[:start], secrets), (secrets, stream, cuts, cut)
        assert start == released or covered[start]
    return out + redactor.flush()


def random_stream(rng: random.Random, alphabet: bytes, secrets: list[bytes], size: int) -> bytes:
    stream = bytearray()
    while len(stream) < size:
        if secrets and rng.random() < 0.25:
            secret = rng.choice(secrets)
            stream += secret[rng.randint(0, len(secret) // 2):] if rng.random() < 0.2 else secret
        else:
            stream.append(rng.choice(alphabet))
    return bytes(stream)


def random_cuts(rng: random.Random, size: int) -> list[int]:
    return sorted(rng.randint(0, size) for _ in range(rng.randint(0, 12)))


def test_redactor_random_streams_match_the_whole_stream_replace() -> None:
    """Realistic keys at random places in random streams, cut at random points (also mid-key)."""
    rng = random.Random(20240611)
    alphabet = (string.ascii_letters + string.digits + "-_ \n{}\":,").encode()
    key_bytes = (string.ascii_letters + string.digits + "-_").encode()
    compared = 0
    for _ in range(300):
        secrets = [bytes(rng.choice(key_bytes) for _ in range(rng.randint(20, 60))) for _ in range(rng.randint(1, 3))]
        if rng.random() < 0.3:  # prefixes in common, as keys of one provider have
            secrets = [b"sk-proj-" + s for s in secrets]
        stream = random_stream(rng, alphabet, secrets, rng.randint(0, 600))
        out = redact_checked(secrets, stream, random_cuts(rng, len(stream)))
        assert out == whole_stream(stream, secrets)
        if not overlap_partially(stream, secrets):
            assert out == replaced(stream, secrets)
            compared += 1
        assert not any(s in out for s in secrets)
    assert compared > 250


@pytest.mark.parametrize("alphabet", [b"ab", b"abc", b"xy-\n", b"ab[]DE"])
def test_redactor_random_overlapping_secrets(alphabet: bytes) -> None:
    """Short secrets over a tiny alphabet: prefixes, substrings and overlaps of each other and of themselves."""
    rng = random.Random(7)
    for _ in range(1500):
        secrets = [bytes(rng.choice(alphabet) for _ in range(rng.randint(1, 6))) for _ in range(rng.randint(1, 3))]
        base = rng.choice(secrets)
        derived = (base[:rng.randint(1, len(base))], base[rng.randint(0, len(base) - 1):], base + base[:1], base * 2)
        secrets.append(rng.choice(derived))
        stream = random_stream(rng, alphabet, secrets, rng.randint(0, 40))
        out = redact_checked(secrets, stream, random_cuts(rng, len(stream)))
        assert out == whole_stream(stream, secrets), (secrets, stream)
        assert Redactor(s.decode() for s in secrets).scrub(stream) == out
        if not overlap_partially(stream, secrets) and b"[" not in alphabet:
            assert out == replaced(stream, secrets)
        if b"[" not in alphabet:  # (a secret that is part of the MASK cannot but appear)
            assert not any(s in out for s in secrets), (secrets, stream, out)


@pytest.mark.parametrize(
    ("secrets", "stream", "expected", "before"),
    [
        (["xab", "abcd"], b"<xabcd>", b"<[REDACTED]>", b"<x[REDACTED]>"),  # the x of xab survived
        (["aa"], b"aaa", b"[REDACTED]", b"[REDACTED]a"),
        (["abc", "abcdef"], b"abcdef!abc!", b"[REDACTED]![REDACTED]!", None),
        (["bcd", "abcde"], b"abcde abcdx", b"[REDACTED] a[REDACTED]x", None),
        (["ab", "ab"], b"abab", b"[REDACTED][REDACTED]", None),  # side by side: two MASKs
    ],
)
def test_redactor_overlapping_secrets(secrets: list[str], stream: bytes, expected: bytes, before: bytes | None) -> None:
    assert replaced(stream, [s.encode() for s in secrets]) == (before or expected)
    for cut in range(len(stream) + 1):
        redactor = Redactor(secrets)
        assert redactor.feed(stream[:cut]) + redactor.feed(stream[cut:]) + redactor.flush() == expected
    redactor = Redactor(secrets)
    assert b"".join(redactor.feed(stream[i:i + 1]) for i in range(len(stream))) + redactor.flush() == expected


def test_redactor_keys_that_overlap_by_a_byte() -> None:
    """One key ends in the byte the other begins with: where the two meet, both are masked entirely."""
    first, second = "sk-proj-" + "A" * 42 + "s", "sk-ant-api03-" + "B" * 38
    stream = ("echo " + first + second[1:] + " end").encode()
    for cut in range(0, len(stream) + 1, 7):
        redactor = Redactor([first, second])
        out = redactor.feed(stream[:cut]) + redactor.feed(stream[cut:]) + redactor.flush()
        assert out == b"echo [REDACTED] end"
    before = replaced(stream, [first.encode(), second.encode()])  # which one first depended on set order
    assert first[:-1].encode() in before or second[1:].encode() in before  # 50 bytes of a key got out


def test_redactor_a_long_run_of_overlaps_holds_little() -> None:
    redactor = Redactor(["aa"])
    for _ in range(1000):
        assert redactor.feed(b"a") == b""
        assert len(redactor.tail) <= redactor.keep
    assert redactor.feed(b"b") == b"[REDACTED]b"
    assert redactor.feed(b"aa") == b""
    assert redactor.flush() == b"[REDACTED]"


def test_redactor_holds_back_only_what_could_begin_a_secret() -> None:
    secret = "sk-proj-" + "x1" * 21
    redactor = Redactor([secret, "AIza" + "y" * 35])
    event = b'data: {"choices":[{"delta":{"content":"hi"},"finish_reason":null}]}\n\n'
    assert redactor.feed(event) == event
    assert redactor.feed(b"ends in a byte no secret begins with: k-p") == b"ends in a byte no secret begins with: k-p"
    assert redactor.feed(b"the key sk-pro") == b"the key "
    assert redactor.feed(b"file") == b"sk-profile"  # no longer a possible secret: released at once
    assert redactor.feed(b"tasks") == b"task"
    assert redactor.feed(b"AI") == b"s"
    assert redactor.feed(b"za") == b""
    assert redactor.flush() == b"AIza"
    assert redactor.feed(b"key " + secret.encode()[:-1]) == b"key "
    assert redactor.feed(secret.encode()[-1:] + b"!") == b"[REDACTED]!"


def test_redactor_state_is_per_instance() -> None:
    one, two = Redactor(["sk-SECRET"]), Redactor(["sk-SECRET"])
    assert one.feed(b"a sk-SE") == b"a "
    assert two.feed(b"b sk-") == b"b "
    assert two.feed(b"SECRET") == b"[REDACTED]"
    assert one.feed(b"CRET") == b"[REDACTED]"
    assert one.flush() == two.flush() == b""


def test_redactor_without_secrets_and_other_chunk_types() -> None:
    for none in ([], [""]):
        redactor = Redactor(none)
        assert redactor.feed(b"anything") == b"anything"
        assert redactor.flush() == b""
    redactor = Redactor(["sk-SECRET"])
    out = redactor.feed(bytearray(b"x sk-SECRET y"))  # type: ignore[arg-type]
    assert type(out) is bytes and out == b"x [REDACTED] y"
    assert redactor.feed(memoryview(b"sk-SE")) == b""  # type: ignore[arg-type]
    assert redactor.feed(memoryview(b"CRET")) == b"[REDACTED]"  # type: ignore[arg-type]


def test_scrub_and_scrub_text() -> None:
    redactor = Redactor(["sk-SECRET", "tok-é"])
    assert redactor.feed(b"held sk-SEC") == b"held "
    assert redactor.scrub(b"a sk-SECRET b tok-\xc3\xa9") == b"a [REDACTED] b [REDACTED]"
    assert redactor._scrub(b"sk-SECRETsk-SECRET") == b"[REDACTED][REDACTED]"  # the old name still works
    assert redactor.feed(b"RET") == b"[REDACTED]"  # scrub() left the stream alone
    assert redactor.scrub_text("Bearer sk-SECRET, tok-é") == "Bearer [REDACTED], [REDACTED]"
    assert redactor.scrub_text("raw \udcff sk-SECRET") == "raw \udcff [REDACTED]"  # surrogate-escaped bytes
    assert Redactor([]).scrub_text("sk-SECRET") == "sk-SECRET"
    assert Redactor(["aa"]).scrub(b"aaa aa") == b"[REDACTED] [REDACTED]"
