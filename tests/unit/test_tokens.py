"""Push tokens: the file format, its checks, and the constant-time match over every token."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from ingest.sources.tokens import (
    MAX_TOKENS,
    Credential,
    SecretsFile,
    Tokens,
    TokensError,
    parse_tokens,
    read_tokens,
    world_readable,
)

A, B = "0123456789abcdef-a", "0123456789abcdef-b"


def test_a_file_of_producers_and_tokens() -> None:
    tokens = parse_tokens(f"# studio tokens\n\nstudio-a {A}\n  studio.b_2\t{B}  \n")
    assert [c.producer for c in tokens.credentials] == ["studio-a", "studio.b_2"]
    assert tokens.match(A.encode()) == Credential.of("studio-a", A)
    assert tokens.match(B.encode()) == Credential.of("studio.b_2", B)
    for wrong in (b"", A[:-1].encode(), (A + "x").encode(), b"studio-a", A.upper().encode()):
        assert tokens.match(wrong) is None


def test_the_token_itself_is_never_kept_nor_shown() -> None:
    credential = Credential.of("studio-a", A)
    assert credential.digest == hashlib.sha256(A.encode()).digest()
    assert A not in repr(credential)
    assert A not in repr(parse_tokens(f"studio-a {A}").credentials)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (f"studio-a {A} extra", "line 1: expected '<producer> <token>'"),
        ("studio-a", "line 1: expected '<producer> <token>'"),
        ("studio-a 0123456789abcde", "line 1: token shorter than 16 bytes"),
        (f"studio-a {'x' * 4097}", "line 1: token longer than 4096 bytes"),
        ("studio-a 0123456789abcdéf", "line 1: token must be visible ASCII characters"),
        (f"Studio {A}", "line 1: producer name must match [a-z0-9][a-z0-9_.-]{0,63}"),
        (f"{'p' * 65} {A}", "line 1: producer name must match [a-z0-9][a-z0-9_.-]{0,63}"),
        (f"a {A}\na {B}", "line 2: producer 'a' is already on line 1"),
        (f"a {A}\nb {A}", "line 2: the same token is already on line 1"),
        ("# nothing\n\n", "no token: every producer would be refused"),
    ],
)
def test_every_line_is_checked(text: str, error: str) -> None:
    with pytest.raises(TokensError) as refused:
        parse_tokens(text)
    assert refused.value.errors == [error]


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(TokensError) as refused:
        parse_tokens(f"a short\nb {A}\nB {A}\nb {B}\n")
    assert refused.value.errors == [
        "line 1: token shorter than 16 bytes",
        "line 3: producer name must match [a-z0-9][a-z0-9_.-]{0,63}",
        "line 3: the same token is already on line 2",
        "line 4: producer 'b' is already on line 2",
    ]


def test_the_number_of_producers_is_bounded() -> None:
    lines = [f"p{n} token-{n:012d}" for n in range(MAX_TOKENS + 1)]
    assert len(parse_tokens("\n".join(lines[:-1]))) == MAX_TOKENS
    with pytest.raises(TokensError) as refused:
        parse_tokens("\n".join(lines))
    assert refused.value.errors == [f"more than {MAX_TOKENS} producers"]


def test_read_refuses_what_is_not_a_text_file(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    with pytest.raises(TokensError, match="cannot read"):
        read_tokens(path)
    path.write_bytes(b"a \xff" + b"x" * 20)
    with pytest.raises(TokensError, match="not UTF-8 at byte 2"):
        read_tokens(path)
    path.write_bytes(b"#" * (1024 * 1024 + 1))
    with pytest.raises(TokensError, match="larger than"):
        read_tokens(path)
    path.write_text(f"a {A}\n")
    assert len(read_tokens(path)) == 1


def test_world_readable(tmp_path: Path) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"a {A}\n")
    path.chmod(0o640)
    assert not world_readable(path)
    path.chmod(0o644)
    assert world_readable(path)


def test_match_compares_with_every_token_even_after_a_match(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No early exit: how long a check takes does not tell which token matched."""
    tokens = parse_tokens("\n".join(f"p{n} token-{n:012d}" for n in range(10)))
    compared: list[bytes] = []
    compare = hmac.compare_digest

    def counting(a: bytes, b: bytes) -> bool:
        compared.append(b)
        return compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", counting)  # what the module calls
    for n in (0, 9):
        compared.clear()
        credential = tokens.match(f"token-{n:012d}".encode())
        assert credential is not None
        assert credential.producer == f"p{n}"
        assert len(compared) == 10


@pytest.mark.asyncio
async def test_the_watch_reads_a_file_once_per_change_and_when_asked(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "tokens"
    path.write_text(f"a {A}\n")
    path.chmod(0o600)
    used: list[list[str]] = []
    outcomes: list[bool] = []

    async def use(tokens: Tokens) -> None:
        used.append([credential.producer for credential in tokens.credentials])

    watch = SecretsFile(
        path, read_tokens, kind="tokens", interval=3600, on_change=use, on_reload=outcomes.append
    )
    assert await watch.poll() is None  # unchanged since the source read it
    path.write_text(f"a {A}\nb {B}\n")
    with caplog.at_level("WARNING", logger="ingest.sources.tokens"):
        assert await watch.poll() is True
    assert not [r for r in caplog.records if r.levelname == "WARNING"]
    assert await watch.poll() is None  # read once per change
    path.write_text(f"a {A}\nb short\n")
    assert await watch.poll() is False
    assert await watch.poll() is None  # a refused version is not read (nor logged) again
    watch.request_reload()  # SIGHUP: read even though unchanged
    assert await watch.poll() is False
    path.unlink()
    assert await watch.poll() is False
    path.write_text(f"b {B}\n")
    path.chmod(0o644)
    with caplog.at_level("WARNING", logger="ingest.sources.tokens"):
        assert await watch.poll() is True  # taken, with a warning
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [f"tokens file {path} is readable by every user (chmod o-r)"]
    assert used == [["a", "b"], ["b"]]
    assert outcomes == [True, False, False, False, True]
