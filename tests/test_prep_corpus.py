"""Reading the corpus (prep/sources.py, prep/sniff.py, prep/sniff_json.py, prep/corpus.py): sources,
incremental UTF-8, JSONL, and every error naming the file and the line or byte offset."""

from __future__ import annotations

import bz2
import gzip
import io
import json
import lzma
import os
import re
import threading

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from _data import INT_DIGITS_LIMIT
from prep.corpus import ERRORS, Piece, read_pieces
from prep.sniff import CorpusError, not_utf8
from prep.sources import resolve_sources


def documents(pieces: list[Piece]) -> list[str]:
    """Join pieces back into documents (what the tokenizer sees)."""
    docs: list[str] = []
    for piece in pieces:
        if piece.new_document:
            docs.append("")
        if docs:
            docs[-1] += piece.text
    return docs


def read_all(sources, **kwargs) -> tuple[list[str], int]:
    pieces = list(read_pieces(sources, **kwargs))
    return documents(pieces), sum(p.nbytes for p in pieces)


def test_resolve_files_directories_and_stdin(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "b.txt").write_text("B")
    (tmp_path / "d" / "a.txt").write_text("AA")
    (tmp_path / "d" / "sub" / "c.txt").write_text("C")
    (tmp_path / "d" / "skip.md").write_text("not text")
    (tmp_path / "x.jsonl").write_text('{"text": "J"}\n')
    sources = resolve_sources([str(tmp_path / "d"), str(tmp_path / "x.jsonl"), "-"])
    assert [s.kind for s in sources] == ["directory", "jsonl", "stdin"]
    assert [f.name for f in sources[0].files] == ["a.txt", "b.txt", "c.txt"]  # sorted, recursive
    assert [f.name for f in sources[0].left_out] == ["skip.md"] and sources[1].note() is None
    assert sources[0].note() == f"{tmp_path / 'd'}: 1 left out, not *.txt, not regular files or hidden: skip.md"
    assert sources[0].bytes == 4 and sources[2].bytes is None
    assert [s.stem for s in sources] == ["d", "x", "stdin"]
    for one in (str(tmp_path / "x.jsonl"), tmp_path / "x.jsonl"):  # one path as it is: not its letters
        assert [s.kind for s in resolve_sources(one)] == ["jsonl"]
    docs, nbytes = read_all(sources, stdin=io.BytesIO("stdin text é".encode()))
    assert docs == ["AA", "B", "C", "J", "stdin text é"]
    assert nbytes == 4 + len('{"text": "J"}\n') + len("stdin text é".encode())


def test_a_directory_reads_txt_in_any_case_and_names_what_it_leaves_out(tmp_path):
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    for name in ("a.txt", "B.TXT", "sub/c.Txt", "notes.md", "sub/x.jsonl", "y.jsonl", "z.txt~", "w.csv"):
        (d / name).write_text(name)
    if hasattr(os, "mkfifo"):
        os.mkfifo(d / "pipe.txt")  # reading it would wait for a writer: not a text file
    [source] = resolve_sources([str(d)])
    assert [f.relative_to(d).as_posix() for f in source.files] == ["B.TXT", "a.txt", "sub/c.Txt"]
    left = ["notes.md", *(["pipe.txt"] if hasattr(os, "mkfifo") else []), "sub/x.jsonl", "w.csv", "y.jsonl", "z.txt~"]
    assert [f.relative_to(d).as_posix() for f in source.left_out] == left
    assert source.note() == (f"{d}: {len(left)} left out, not *.txt, not regular files or hidden: "
                             f"{', '.join(left[:3])} and {len(left) - 3} more (a .jsonl file is read when "
                             f"given by name, e.g. dir/*.jsonl)")


def test_a_directory_leaves_hidden_entries_unread_and_names_them(tmp_path):
    """Hidden entries below the directory given are not read: Jupyter's .ipynb_checkpoints/ holds
    a second copy of each file (its text would be trained on twice), macOS's ._a.txt is binary.
    A hidden directory given by name is read like any other."""
    d = tmp_path / ".corpus"
    (d / ".ipynb_checkpoints").mkdir(parents=True)
    (d / ".git" / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("A")
    (d / ".ipynb_checkpoints" / "a-checkpoint.txt").write_text("A")
    (d / ".git" / "sub" / "x.txt").write_text("X")
    (d / "._a.txt").write_bytes(b"\x00\x05\x16\x07\xff")  # AppleDouble: not UTF-8
    [source] = resolve_sources([str(d)])
    assert [f.relative_to(d).as_posix() for f in source.files] == ["a.txt"]
    assert [f.relative_to(d).as_posix() for f in source.left_out] == ["._a.txt", ".git", ".ipynb_checkpoints"]
    assert source.note() == f"{d}: 3 left out, not *.txt, not regular files or hidden: ._a.txt, .git/, .ipynb_checkpoints/"
    assert read_all([source])[0] == ["A"]
    (d / "a.txt").unlink()
    with pytest.raises(CorpusError, match=r"\.corpus: directory has no \.txt files \(hidden ones are not read\), "
                                          r"only 3 other entries, e.g. \._a\.txt$"):
        resolve_sources([str(d)])


@pytest.mark.parametrize("head", [b"a\x00b", b"\x00\x00\x00\x00\x00\x00", b"ab\x00c\x00d\x00e\x00",
                                  "a\x00 é\x00z".encode(), b"\x00", b"\x00" * 10, b"a\x00\x00\x00",
                                  b"a\x00\x00\x00b\x00c\x00", b"a\x00\x00\x00b\x00\x00c\x00\x00"])
def test_text_with_some_nul_bytes_is_not_taken_for_utf16_or_utf32(head):
    """Only letters alternating with NULs from the first byte on (6 bytes at least) mean UTF-16;
    two NULs beside two bytes not both NUL, in each of 2 characters at least, UTF-32."""
    assert not_utf8(head, "x") is None


@pytest.mark.parametrize("make, message", [
    (lambda p: [str(p / "missing.txt")], "missing.txt: no such file or directory"),
    (lambda p: [str(p)], "directory has no .txt files, only 1 other entry"),
    (lambda p: ["-", "-"], "only once"),
    (lambda p: [], "no input"),
])
def test_resolve_errors(tmp_path, make, message):
    (tmp_path / "notes.md").write_text("x")
    with pytest.raises(CorpusError, match=message):
        resolve_sources(make(tmp_path))


@pytest.mark.skipif(os.name != "posix", reason="needs symlinks and hard links")
@pytest.mark.parametrize("inputs, first, second", [
    (["a.txt", "a.txt"], "a.txt", "a.txt"),
    (["a.txt", "./a.txt"], "a.txt", "./a.txt"),
    (["a.txt", "d/../a.txt"], "a.txt", "d/../a.txt"),
    (["a.txt", "link.txt"], "a.txt", "link.txt"),  # a symbolic link
    (["hard.txt", "a.txt"], "hard.txt", "a.txt"),  # a hard link
    (["d", "d/b.txt"], "d/b.txt (in d)", "d/b.txt"),  # reached through the directory, then named
    (["d/sub/c.txt", "d"], "d/sub/c.txt", "d/sub/c.txt (in d)"),
    (["d", "d/sub/"], "d/sub/c.txt (in d)", "d/sub/c.txt (in d/sub/)"),  # a directory inside another one given
    (["e"], "e/a-link.txt (in e)", "e/z.txt (in e)"),  # a link inside a directory to a file beside it
])
def test_a_file_given_twice_is_refused_naming_both_spellings(tmp_path, monkeypatch, inputs, first, second):
    """`prep tokenize a.txt a.txt` tokenized it twice without a word: two documents, trained on
    twice per epoch. Refused by device and inode, however the two spellings reach the file."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "e").mkdir()
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "d" / "b.txt").write_text("B")
    (tmp_path / "d" / "sub" / "c.txt").write_text("C")
    (tmp_path / "e" / "z.txt").write_text("Z")
    (tmp_path / "e" / "a-link.txt").symlink_to("z.txt")
    (tmp_path / "link.txt").symlink_to("a.txt")
    os.link(tmp_path / "a.txt", tmp_path / "hard.txt")
    with pytest.raises(CorpusError, match=rf"^{re.escape(first)} and {re.escape(second)} are the same file; "
                                          rf"give each file once"):
        resolve_sources(inputs)


def test_the_file_piped_into_stdin_given_again_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("A")
    (tmp_path / "copy.txt").write_text("A")  # the same text in another file: two documents, as asked
    with open(tmp_path / "a.txt", "rb") as stdin:  # `prep tokenize a.txt - < a.txt`
        with pytest.raises(CorpusError, match=r"a\.txt and '-' \(stdin\) are the same file"):
            resolve_sources([str(tmp_path / "a.txt"), "-"], stdin=stdin)
        sources = resolve_sources([str(tmp_path / "copy.txt"), "-"], stdin=stdin)
    assert read_all(sources, stdin=io.BytesIO(b"A"))[0] == ["A", "A"]
    assert len(resolve_sources([str(tmp_path / "a.txt"), "-"], stdin=io.BytesIO(b"A"))) == 2


def test_bytes_are_decoded_exactly(tmp_path):
    """No newline translation: the document is exactly the file's UTF-8 text."""
    raw = "line one\r\nline two\rthree\n\n\ufeff".encode()
    (tmp_path / "f.txt").write_bytes(raw)
    docs, _ = read_all(resolve_sources([str(tmp_path / "f.txt")]))
    assert docs == [raw.decode("utf-8")]


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 4, 5, 1 << 20])
@pytest.mark.parametrize("raw, text", [
    (b"\xef\xbb\xbfhello \xef\xbb\xbf world", "hello \ufeff world"),  # only the one at byte 0 goes
    (b"\xef\xbb\xbf\xef\xbb\xbftwice", "\ufefftwice"),  # the second one is text
    (b"no mark \xef\xbb\xbf", "no mark \ufeff"),
    (b" \xef\xbb\xbf", " \ufeff"),
    (b"\xef\xbb\xbf", ""),  # a file holding only the mark is an empty document
    (b"\xef\xbb\xbf\xe6\x97\xa5 \xe6\x97\xa5", "\u65e5 \u65e5"),
])
def test_a_text_files_byte_order_mark_is_not_text(tmp_path, raw, text, block_bytes):
    """A UTF-8 BOM at the very start of a text file or of stdin marks the encoding (as a JSONL
    file's does): it was tokenized as three byte tokens. Dropped whatever the read blocks
    cut it into; its bytes still count as read, and nothing later in the file is touched."""
    (tmp_path / "f.txt").write_bytes(raw)
    for inputs, stdin in (([str(tmp_path / "f.txt")], None), (["-"], io.BytesIO(raw))):
        for errors in ERRORS:
            docs, nbytes = read_all(resolve_sources(inputs), stdin=stdin, block_bytes=block_bytes, errors=errors)
            assert docs == [text] and nbytes == len(raw)
            if stdin is not None:
                stdin.seek(0)


@pytest.mark.parametrize("block_bytes", [1, 2, 4, 1 << 20])
def test_invalid_utf8_after_a_byte_order_mark_counts_from_the_files_first_byte(tmp_path, block_bytes):
    (tmp_path / "bad.txt").write_bytes(b"\xef\xbb\xbfab\xffcd")
    with pytest.raises(CorpusError, match=r"bad\.txt: invalid UTF-8 at byte 5 "):
        read_all(resolve_sources([str(tmp_path / "bad.txt")]), block_bytes=block_bytes)
    (tmp_path / "half.txt").write_bytes(b"\xef\xbbab")  # half a mark: invalid, not a mark
    with pytest.raises(CorpusError, match=r"half\.txt: invalid UTF-8 at byte 0 "):
        read_all(resolve_sources([str(tmp_path / "half.txt")]), block_bytes=block_bytes)
    docs, _ = read_all(resolve_sources([str(tmp_path / "half.txt")]), block_bytes=block_bytes, errors="replace")
    assert docs == ["\ufffdab"]


@settings(max_examples=100, deadline=None)
@given(st.text(min_size=1, max_size=50), st.integers(min_value=1, max_value=7))
@example("\ufeff\ufeffé", 1)  # a leading mark, split over three reads, and a second one kept
def test_multibyte_characters_across_blocks(text, block_bytes):
    stream = io.BytesIO(text.encode("utf-8", "surrogatepass"))
    if any(0xD800 <= ord(c) <= 0xDFFF for c in text):
        return  # not valid UTF-8 to begin with
    docs, nbytes = read_all(resolve_sources(["-"]), stdin=stream, block_bytes=block_bytes)
    # a byte-order mark is dropped at the very start only (hypothesis does draw U+FEFF first)
    assert docs == [text.removeprefix("\ufeff")] and nbytes == len(text.encode())


@pytest.mark.parametrize("block_bytes", [1, 2, 3, 5, 1 << 20])
@pytest.mark.parametrize("raw, offset", [
    (b"abc\xffdef", 3),
    (b"\xe6\x97\xa5\xe6\x97 x", 3),  # a character cut short by a space
    (b"ok\xe6\x97", 2),  # truncated at the end of the file
    (b"\x80", 0),
])
def test_invalid_utf8_names_file_and_byte(tmp_path, raw, offset, block_bytes):
    path = tmp_path / "bad.txt"
    path.write_bytes(raw)
    with pytest.raises(CorpusError, match=rf"bad\.txt: invalid UTF-8 at byte {offset} "):
        read_all(resolve_sources([str(path)]), block_bytes=block_bytes)
    docs, _ = read_all(resolve_sources([str(path)]), errors="replace", block_bytes=block_bytes)
    assert docs == [raw.decode("utf-8", "replace")]


def test_jsonl_documents_field_and_blank_lines(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"body": "first\n doc", "id": 1}), "", "  ", " \t\r", json.dumps({"body": "é"})]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    docs, nbytes = read_all(resolve_sources([str(path)]), field="body")
    assert docs == ["first\n doc", "é"]
    assert nbytes == path.stat().st_size


@pytest.mark.parametrize("line, message", [
    ('{"text": "a"', r"c\.jsonl:2: not valid JSON"),
    pytest.param('{"text": "a", "n": ' + "9" * 5000 + "}", r"c\.jsonl:2: not valid JSON \(Exceeds the limit",
                 marks=INT_DIGITS_LIMIT),
    ('{"text": "a", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", r"c\.jsonl:2: not valid JSON \(nested too deeply\)"),
    ('["a"]', r"c\.jsonl:2: expected a JSON object, got an array"),
    ("\x0c", r"c\.jsonl:2: not valid JSON \(Expecting value"),  # whitespace to str.strip(), not to JSON
    ("\xa0 \u3000", r"c\.jsonl:2: not valid JSON \(Expecting value"),
    ('{"text": "a\tb"}', r"c\.jsonl:2: not valid JSON \(Invalid control character, column 12\)$"),  # a raw tab
    ('{"body": "a"}', r"c\.jsonl:2: no 'text' field \(keys: 'body'"),
    ('{"text": 3}', r"c\.jsonl:2: field 'text' is a number, not a string"),
    ('{"text": null}', r"c\.jsonl:2: field 'text' is null, not a string"),
])
def test_malformed_jsonl_names_file_and_line(tmp_path, line, message):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n' + line + "\n")
    with pytest.raises(CorpusError, match=message):
        read_all(resolve_sources([str(path)]))


def test_jsonl_invalid_utf8_names_line_and_byte(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "ok"}\n{"text": "\xff"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: invalid UTF-8 at byte 25 "):
        read_all(resolve_sources([str(path)]))
    docs, _ = read_all(resolve_sources([str(path)]), errors="replace")
    assert docs == ["ok", "\ufffd"]


def test_jsonl_lone_surrogate_escape_is_refused_under_strict_and_kept_under_replace(tmp_path):
    """A JSON escape of half a UTF-16 pair (\\ud800, \\udc00) without the other half decodes to a
    lone surrogate, no character, which was tokenized as U+FFFD under --errors strict without a
    word. Strict names the file and line; replace keeps it (encode_ordinary's U+FFFD); a pair, or
    a lone surrogate in another key, is no mistake."""
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok \\ud83d\\ude00", "id": "\\ud800"}\n{"text": "a\\ud800b"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: field 'text' holds a lone surrogate, the JSON escape "
                                          r"\\ud800 without its pair, no character \(pass --errors replace "
                                          r"to substitute U\+FFFD\)$"):
        read_all(resolve_sources([str(path)]))
    path.write_text('{"text": "\\uDC00 first"}\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:1: .* the JSON escape \\udc00 without its pair"):
        read_all(resolve_sources([str(path)]))
    path.write_text('{"text": "ok \\ud83d\\ude00", "id": "\\ud800"}\n{"text": "a\\ud800b"}\n')
    docs, _ = read_all(resolve_sources([str(path)]), errors="replace")
    assert docs == ["ok \U0001f600", "a\ud800b"]


def test_jsonl_byte_order_mark_is_not_part_of_the_first_record(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"text": "first"}\r\n{"text": "\xef\xbb\xbfsecond"}\n')
    docs, nbytes = read_all(resolve_sources([str(path)]))
    assert docs == ["first", "\ufeffsecond"]  # only the file's BOM goes; text keeps its own
    assert nbytes == path.stat().st_size


def test_jsonl_byte_order_mark_on_a_later_line_is_refused_naming_it(tmp_path):
    """`cat a.jsonl b.jsonl`, b with a BOM of its own: its mark starts a line within the stream.
    It is no JSON and no text of the record: refused, naming the line (json.loads's own words
    were "decode using utf-8-sig"), not taken for text or dropped."""
    path = tmp_path / "c.jsonl"
    path.write_bytes(b'{"text": "first"}\n\xef\xbb\xbf{"text": "second"}\n')
    with pytest.raises(CorpusError, match=r"^\S*c\.jsonl:2: starts with a byte-order mark \(U\+FEFF\), which only "
                                          r"a file's first line may have \(files joined with cat, each with its own\?\): "
                                          r"remove it$"):
        read_all(resolve_sources([str(path)]))


def test_malformed_jsonl_column_ignores_the_line_end(tmp_path):
    path = tmp_path / "c.jsonl"
    path.write_text('{"text": "ok"}\n{"text": "a"\r\n')
    with pytest.raises(CorpusError, match=r"c\.jsonl:2: not valid JSON \(.*column 13\)"):
        read_all(resolve_sources([str(path)]))


@pytest.mark.skipif(os.name != "posix" or os.geteuid() == 0, reason="root ignores directory permissions")
def test_unreadable_subdirectory_is_an_error_not_skipped(tmp_path):
    (tmp_path / "d" / "locked").mkdir(parents=True)
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "locked" / "b.txt").write_text("b")
    (tmp_path / "d" / "locked").chmod(0o000)
    try:
        with pytest.raises(CorpusError, match=r"locked: cannot read"):
            resolve_sources([str(tmp_path / "d")])
    finally:
        (tmp_path / "d" / "locked").chmod(0o755)


def test_a_broken_link_in_a_directory_is_an_error_not_skipped(tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "b.txt").symlink_to("moved.txt")
    with pytest.raises(CorpusError, match=r"b\.txt: a broken symbolic link \(to moved\.txt\)"):
        resolve_sources([str(tmp_path / "d")])


@pytest.mark.skipif(os.name != "posix", reason="needs symlinks")
def test_a_linked_directory_inside_a_directory_is_read_not_skipped(tmp_path):
    """`corpus/wiki -> /big/disk/wiki`: os.walk does not follow it by default, so its files were
    left out without a word (a linked file beside them was read)."""
    (tmp_path / "d" / "real").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "d" / "real" / "a.txt").write_text("a")
    (tmp_path / "elsewhere" / "b.txt").write_text("b")
    (tmp_path / "d" / "linked").symlink_to(tmp_path / "elsewhere")
    (source,) = resolve_sources([str(tmp_path / "d")])
    assert [p.relative_to(tmp_path / "d").as_posix() for p in source.files] == ["linked/b.txt", "real/a.txt"]
    assert read_all([source])[0] == ["b", "a"]


@pytest.mark.skipif(os.name != "posix", reason="needs symlinks")
def test_a_directory_link_loop_is_an_error_naming_the_link(tmp_path):
    (tmp_path / "d" / "sub").mkdir(parents=True)
    (tmp_path / "d" / "sub" / "a.txt").write_text("a")
    (tmp_path / "d" / "sub" / "up").symlink_to("..")
    with pytest.raises(CorpusError, match=r"sub/up: a symbolic link loop \(it leads back to .*d\)"):
        resolve_sources([str(tmp_path / "d")])


@pytest.mark.skipif(os.name != "posix", reason="needs symlinks")
def test_a_loop_of_links_between_sibling_directories_is_an_error_naming_the_link(tmp_path):
    """a/to_b -> ../b and b/to_a -> ../a: neither leads above the directory given, and only the
    directories on the way down (by device and inode) tell the loop, before the path grows to
    the OS's limit on links."""
    for name in ("a", "b"):
        (tmp_path / "d" / name).mkdir(parents=True)
        (tmp_path / "d" / name / "x.txt").write_text(name)
    (tmp_path / "d" / "a" / "to_b").symlink_to("../b")
    (tmp_path / "d" / "b" / "to_a").symlink_to("../a")
    with pytest.raises(CorpusError, match=r"d/a/to_b/to_a: a symbolic link loop \(it leads back to .*d/a\)"):
        resolve_sources([str(tmp_path / "d")])


def test_a_link_above_the_directory_given_is_a_loop_said_before_walking_its_target(tmp_path, monkeypatch):
    """corpus/up -> / led back to the corpus only after walking the whole filesystem."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("a")
    (tmp_path / "d" / "up").symlink_to(tmp_path.parent)  # above tmp_path: a big tree elsewhere
    walked = []
    real_walk = os.walk

    def walk(*args, **kwargs):
        for entry in real_walk(*args, **kwargs):
            walked.append(entry[0])
            yield entry

    monkeypatch.setattr(os, "walk", walk)
    with pytest.raises(CorpusError, match=r"d/up: a symbolic link loop"):
        resolve_sources([str(tmp_path / "d")])
    assert walked == [str(tmp_path / "d")]


def test_a_compressed_file_s_pipe_is_one_a_shell_runs_as_shown(tmp_path, monkeypatch):
    """The pipe spelled out for a compressed file quotes its name, and one starting with '-'
    (given after --) is ./-name: `zcat -x.txt` would take it for zcat's options."""
    monkeypatch.chdir(tmp_path)
    for name, pipe in (("-x.txt", "zcat ./-x.txt | prep tokenize -"),
                       ("it's x.txt", "zcat 'it'\"'\"'s x.txt' | prep tokenize -"),
                       ("-y.jsonl.gz", "zcat ./-y.jsonl.gz | prep tokenize --stdin-format jsonl -"),
                       ("data.jsonl/z.gz", "zcat data.jsonl/z.gz | prep tokenize -"),  # the file's name decides
                       ("n.jsonl.txt.gz", "zcat n.jsonl.txt.gz | prep tokenize -"),  # its suffixes: text
                       ("N.NDJSON.ZST", "zcat N.NDJSON.ZST | prep tokenize --stdin-format jsonl -")):
        (tmp_path / name).parent.mkdir(exist_ok=True)
        (tmp_path / name).write_bytes(gzip.compress(b"text " * 20))
        with pytest.raises(CorpusError) as e:
            resolve_sources([name])
        assert str(e.value) == (f"{name}: gzip-compressed; decompress it first, or stream it (adding your other "
                                f"inputs and options, --out among them): {pipe}")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes")
def test_a_compressed_pipe_given_by_name_is_not_told_to_read_it_again(tmp_path):
    """A pipe given by name (bash's <(cat x.gz) is /dev/fd/63) is gone once read: the pipe
    spelled out for it is the one for stdin (decompress on the way in), not `zcat /dev/fd/63`,
    which fails as printed."""
    fifo = tmp_path / "p"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_bytes(gzip.compress(b"text " * 20)))
    writer.start()
    try:
        with pytest.raises(CorpusError) as e:
            list(read_pieces(resolve_sources([str(fifo)])))
    finally:
        writer.join()
    assert str(e.value) == f"{fifo}: gzip-compressed; decompress it on its way in, e.g. prep tokenize <(zcat FILE)"


def test_a_compressed_file_in_a_directory_is_not_told_to_be_streamed_alone(tmp_path):
    """A directory's compressed .txt was told `zcat d/b.txt | prep tokenize -`: the directory's
    other files would be left out. A file found in a directory is decompressed where it is."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.txt").write_text("text")
    (tmp_path / "d" / "b.txt").write_bytes(gzip.compress(b"text " * 20))
    with pytest.raises(CorpusError) as e:
        list(read_pieces(resolve_sources([str(tmp_path / "d")])))
    assert str(e.value) == (f"{tmp_path / 'd' / 'b.txt'}: gzip-compressed; decompress it first (a directory's "
                            f"files are read as they are)")


class Trickle(io.RawIOBase):
    """A pipe that hands over 3 bytes a read (read1 too), as a slow writer's may."""

    def __init__(self, data: bytes):
        self.data = io.BytesIO(data)

    def readable(self):
        return True

    def read(self, n=-1):
        return self.data.read(min(3, n if n >= 0 else 3))

    read1 = read


def test_json_lines_on_stdin_are_told_from_text_whatever_the_pipe_hands_over_at_a_time():
    """The first line is read whole before it is judged, however few bytes each read brings; a
    stdin format said (text or jsonl) is read as said, unjudged."""
    data = b'\xef\xbb\xbf{"text": "a doc"}\n{"text": "b"}'  # a byte-order mark, no final newline
    with pytest.raises(CorpusError, match=r"^<stdin>: read as text, but its first lines are JSON objects"):
        list(read_pieces(resolve_sources(["-"], stdin=Trickle(data)), stdin=Trickle(data)))
    with pytest.raises(CorpusError, match=r"^<stdin>: read as text, but its first lines are JSON objects"):
        list(read_pieces(resolve_sources(["-"]), stdin=Trickle(b'{"text": "a doc"}')))  # one line, no newline
    pretty = json.dumps([{"text": "a doc"}], indent=12).encode()  # "[", then spaces past the first 10 bytes
    with pytest.raises(CorpusError, match=r"^<stdin>: read as text, but it opens as a JSON array of objects"):
        list(read_pieces(resolve_sources(["-"]), stdin=Trickle(pretty)))
    said = resolve_sources(["-"], stdin_format="text")
    assert "".join(p.text for p in read_pieces(said, stdin=Trickle(data))) == data.decode()[1:]
    docs = [p.text for p in read_pieces(resolve_sources(["-"], stdin_format="jsonl"), stdin=Trickle(data))]
    assert docs == ["a doc", "b"]



@pytest.mark.parametrize("kind, compress", [("xz", lzma.compress), ("bzip2", bz2.compress)])
def test_compressed_stdin_is_told_whatever_the_pipe_hands_over_at_a_time(kind, compress):
    """xz's magic is 6 bytes, bzip2's 10: the first bytes are read on to 10 before they are
    judged, or a pipe's short first read (3 bytes) left them to be decoded as text."""
    data = compress(b"some text " * 20)
    with pytest.raises(CorpusError, match=rf"^<stdin>: {kind}-compressed; decompress it on its way in"):
        list(read_pieces(resolve_sources(["-"], stdin_format="text"), stdin=Trickle(data)))


def test_json_lines_on_stdin_after_blank_lines_are_told_from_text():
    """`(echo; cat docs.jsonl) | prep tokenize -`: the first line is the first one holding more
    than JSON's whitespace. A blank first line was judged alone (nothing to judge) wherever the
    pipe's first read ended inside the next line, and the JSON was tokenized as text; text after
    blank lines is still read, exactly."""
    data = b'\xef\xbb\xbf\n \r\n\t\n{"text": "a doc"}\n{"text": "b"}\n'
    for stdin in (Trickle(data), io.BytesIO(data)):
        with pytest.raises(CorpusError, match=r"^<stdin>: read as text, but its first lines are JSON objects"):
            list(read_pieces(resolve_sources(["-"]), stdin=stdin))
    text = "\n\n{ a brace, then text\nand more\n"
    assert "".join(p.text for p in read_pieces(resolve_sources(["-"]), stdin=Trickle(text.encode()))) == text
    blank = "\n" * 5
    assert "".join(p.text for p in read_pieces(resolve_sources(["-"]), stdin=Trickle(blank.encode()))) == blank


def test_json_lines_on_stdin_whose_first_record_is_longer_than_a_block_are_told_from_text():
    """`zstdcat books.jsonl.zst | prep tokenize -`: a first record over a block (1 MiB) left no
    whole line to judge, and the JSON was tokenized as text without a word. Where the stream opens
    as a JSON object the first line is read whole (as a .json file's is), and as a JSON array its
    first object; text that opens with a brace or a bracket is still read, exactly."""
    books = (json.dumps({"text": "word " * 300_000}) + "\n" + json.dumps({"text": "b"}) + "\n").encode()
    assert len(books) > (1 << 20)  # BLOCK_BYTES
    with pytest.raises(CorpusError, match=r"^<stdin>: read as text, but its first lines are JSON objects"):
        list(read_pieces(resolve_sources(["-"]), stdin=io.BytesIO(books)))
    docs = [p.text for p in read_pieces(resolve_sources(["-"], stdin_format="jsonl"), stdin=io.BytesIO(books))]
    assert docs == ["word " * 300_000, "b"]
    brace = "{ not JSON " + "x" * (3 << 20) + "\nmore text"
    assert "".join(p.text for p in read_pieces(resolve_sources(["-"]), stdin=io.BytesIO(brace.encode()))) == brace
    for indent in (None, 2):  # a JSON array of them (jq's output), on one line or pretty-printed
        array = json.dumps([{"text": "word " * 300_000}, {"text": "b"}], indent=indent).encode()
        with pytest.raises(CorpusError, match=r"^<stdin>: read as text, but it opens as a JSON array of objects"):
            list(read_pieces(resolve_sources(["-"]), stdin=io.BytesIO(array)))
    bracket = "[{ not JSON " + "x" * (3 << 20)
    assert "".join(p.text for p in read_pieces(resolve_sources(["-"]), stdin=io.BytesIO(bracket.encode()))) == bracket


def test_a_json_file_s_first_line_is_read_whole_to_tell_json_lines(tmp_path):
    """A record longer than a block (a book) is still seen as JSON lines: the fix named reads them."""
    path = tmp_path / "books.json"
    path.write_text(json.dumps({"text": "word " * 300_000}) + "\n" + json.dumps({"text": "b"}) + "\n")
    assert path.stat().st_size > (1 << 20)  # BLOCK_BYTES
    with pytest.raises(CorpusError, match=r"named \.json, and its first lines are JSON objects \(JSON lines\); "
                                          r"pass --stdin-format jsonl to read each line's 'text'"):
        resolve_sources([str(path)])
    docs, _ = read_all(resolve_sources([str(path)], stdin_format="jsonl"))
    assert docs == ["word " * 300_000, "b"]


def test_a_directory_s_files_are_read_in_the_order_of_their_relative_paths_as_strings(tmp_path):
    """The order is that of each file's path below the directory as a string ('-' < '.' < '/',
    as `find d -name '*.txt' | LC_ALL=C sort` lists them), not pathlib's part by part (which
    puts a/x.txt before a-b.txt and a.txt): a change of order is a different token stream
    for the same tree, so a dataset rebuilt from it would no longer match its meta.json."""
    d = tmp_path / "d"
    (d / "a").mkdir(parents=True)
    for name in ("a/x.txt", "a.txt", "a-b.txt", "a0.txt", "A.txt"):
        (d / name).write_text(name)
    [source] = resolve_sources([str(d)])
    order = ["A.txt", "a-b.txt", "a.txt", "a/x.txt", "a0.txt"]
    assert [f.relative_to(d).as_posix() for f in source.files] == order
    assert read_all([source])[0] == order


@pytest.mark.parametrize("block_bytes", [1, 3, 1 << 20])
def test_invalid_utf8_in_a_directory_s_file_names_the_file_and_byte(tmp_path, block_bytes):
    """--errors is the same for a directory's files as for a file named: strict refuses the
    bad bytes naming the file inside the directory and the offset, replace substitutes U+FFFD
    (decoded as replace without being asked, a directory's bad bytes were tokenized unseen)."""
    d = tmp_path / "d"
    (d / "sub").mkdir(parents=True)
    (d / "a.txt").write_text("fine")
    (d / "sub" / "bad.txt").write_bytes(b"ok \xe6\x97\xa5 \xff end")
    [source] = resolve_sources([str(d)])
    with pytest.raises(CorpusError, match=r"sub/bad\.txt: invalid UTF-8 at byte 7 "):
        read_all([source], block_bytes=block_bytes)
    assert read_all([source], block_bytes=block_bytes, errors="replace")[0] == ["fine", "ok \u65e5 \ufffd end"]


@pytest.mark.parametrize("text", ["BZh9 is how a file written by bzip2 -9 starts", "BZh1AY&S is not its magic"])
def test_text_starting_with_bzip2_s_letters_and_a_digit_is_text(tmp_path, text):
    """bzip2's "BZh" and a block-size digit are printable: only with the block magic after them
    ("1AY&SY") is a file taken for bzip2; text that merely starts "BZh9" is read as it is."""
    (tmp_path / "b.txt").write_text(text)
    assert not_utf8(text.encode()[:10], "b.txt") is None
    assert read_all(resolve_sources([str(tmp_path / "b.txt")]))[0] == [text]


def _first_piece_then(path, change, block_bytes=4):
    """read_pieces over `path`, with `change(path)` done once the first piece is read."""
    pieces = read_pieces(resolve_sources([str(path)]), block_bytes=block_bytes)
    next(pieces)
    change(path)
    return list(pieces)


@pytest.mark.parametrize("kind, text", [("txt", "one document, read a block at a time\n"),
                                        ("jsonl", '{"text": "one"}\n{"text": "two"}\n{"text": "three"}\n')])
@pytest.mark.parametrize("cut", [True, False], ids=["cut short", "appended to"])
def test_a_file_that_changes_while_it_is_read_is_refused(tmp_path, kind, text, cut):
    """A file cut short or appended to mid-run was tokenized as read, exit 0, a document of
    neither version, and meta.json's sources gave its size from before."""
    path = tmp_path / f"in.{kind}"
    path.write_text(text)
    more = '{"text": "four"}\n' if kind == "jsonl" else "more words\n"
    with pytest.raises(CorpusError) as refused:
        _first_piece_then(path, (lambda p: p.write_bytes(b"")) if cut else (lambda p: p.open("a").write(more)))
    now = 0 if cut else len(text) + len(more)
    assert re.fullmatch(rf"{re.escape(str(path))}: changed while it was read \({len(text)} bytes when it was opened, "
                        rf"{now} at the end, \d+ read\): tokenize a copy that nothing writes to", str(refused.value))


def test_a_file_rewritten_to_the_same_size_while_it_is_read_is_refused(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("the first version\n")
    opened = path.stat().st_mtime_ns

    def rewrite(p):
        p.write_text("the other version\n")
        os.utime(p, ns=(opened + 10**9, opened + 10**9))  # (a coarse clock: the time said to differ)
    with pytest.raises(CorpusError, match="changed while it was read .18 bytes when it was opened, 18 at the end, "
                                          "written meanwhile, 18 read"):
        _first_piece_then(path, rewrite)


def test_a_file_whose_size_is_not_known_up_front_is_read_as_it_comes(tmp_path):
    """/proc's files say 0 bytes and read as text; /sys's say 4,096 and read fewer; a pipe given
    by name has no size."""
    proc = "/proc/self/status"
    if os.path.exists(proc):
        assert "".join(p.text for p in read_pieces(resolve_sources([proc]))).startswith("Name:")
    sysfs = "/sys/kernel/mm/transparent_hugepage/enabled"
    if os.path.exists(sysfs) and os.stat(sysfs).st_size > len(open(sysfs, "rb").read()):
        assert "".join(p.text for p in read_pieces(resolve_sources([sysfs]))) == open(sysfs).read()
    fifo = tmp_path / "pipe.txt"
    os.mkfifo(fifo)
    writer = threading.Thread(target=lambda: fifo.write_text("words through a pipe\n"))
    writer.start()
    try:
        assert "".join(p.text for p in read_pieces(resolve_sources([str(fifo)]), block_bytes=4)) == \
            "words through a pipe\n"
    finally:
        writer.join(timeout=10)
