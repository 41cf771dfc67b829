"""cli/term.py prints what Rich would, where brightrun relies on it.

The read commands print through term.py instead of Rich (~0.05-0.09 s less start-up), so
markup, escaping, styles, wrapping and tables are checked against Rich itself: the same
input must give the same text. Where term differs on purpose it is said below, and the
comparison leaves that part out.
"""

from __future__ import annotations

import io

import pytest
from rich import box as rich_box
from rich.console import Console as RichConsole
from rich.markup import escape as rich_escape
from rich.table import Table as RichTable
from rich.text import Text as RichText

from brightrun_cli.cli import term

STRINGS = [
    "plain", "", "[bold]x[/bold]", "a[b]c", "[1,2]", "[/x]", "\\", "x\\", "x\\\\", "\\[bold]", "[bold]\\[not][/]",
    "naïve [red]日本[/red] ✓", "[link=https://x]l[/link]", "[@click]x", "[#ff0000]hex[/]", "path\\to\\[x]", "[x", "x]",
    "[]", "[ bold ]", "[bold red]a[/bold red]", "[bold][italic]n[/italic][/bold]", "[/]", "\\\\[bold]x", "\\\\\\[bold]x",
    "[foo]unknown style[/foo]", "[dim]a[/] b", "C:\\data\\[train].jsonl", "x=[a-z]+ [/tmp]", "emoji 🚀 [green]ok[/green]",
]


def plain(segments: list[term.Segment]) -> str:
    return "".join(text for text, _ in segments)


@pytest.mark.parametrize("text", STRINGS)
def test_escape_is_richs(text):
    assert term.escape(text) == rich_escape(text)


@pytest.mark.parametrize("text", STRINGS)
def test_escaped_data_before_a_tag_reads_as_rich_reads_it(text):
    markup = term.escape(text) + "[bold]y[/bold]"  # a trailing backslash must not eat the tag
    assert plain(term.parse_markup(markup)) == RichText.from_markup(markup).plain
    if not text.endswith("\\\\"):  # Rich's escape leaves an even run of trailing backslashes as it is
        assert plain(term.parse_markup(markup)) == text + "y"


@pytest.mark.parametrize("text", STRINGS)
def test_markup_reads_as_rich_reads_it(text):
    try:
        expected = RichText.from_markup(text).plain
    except Exception:  # Rich refuses a closing tag with nothing open ("[/x]"); term drops it
        assert "[/" in text and "[/" not in plain(term.parse_markup(text))
        return
    assert plain(term.parse_markup(text)) == expected


def test_styles_follow_the_nesting():
    assert term.parse_markup("[bold]a [red]b[/red] c[/] d") == [("a ", "bold"), ("b", "bold red"), (" c", "bold"), (" d", None)]


# ------------------------------------------------------------------ colours

def printed(monkeypatch, markup: str, *, tty: bool = False, **env: str) -> str:
    for key in ("FORCE_COLOR", "NO_COLOR", "TERM"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)

    class Out(io.StringIO):
        def isatty(self) -> bool:
            return tty

    out = Out()
    monkeypatch.setattr("sys.stdout", out)
    term.Console().print(markup)
    return out.getvalue()


MARKUP = "[bold]b[/bold] [dim]d[/dim] [red]r[/red] [bold green]g[/]"


@pytest.mark.parametrize("how", [{"tty": True}, {"FORCE_COLOR": "1"}])
def test_a_terminal_or_force_color_gets_styles_and_colours(monkeypatch, how):
    out = printed(monkeypatch, MARKUP, **how)
    assert out == "\x1b[1mb\x1b[0m \x1b[2md\x1b[0m \x1b[31mr\x1b[0m \x1b[1;32mg\x1b[0m\n"


def test_no_color_keeps_bold_and_dim_and_drops_colours(monkeypatch):
    out = printed(monkeypatch, MARKUP, tty=True, NO_COLOR="1")
    assert out == "\x1b[1mb\x1b[0m \x1b[2md\x1b[0m r \x1b[1mg\x1b[0m\n"


@pytest.mark.parametrize("how", [{}, {"tty": True, "TERM": "dumb"}, {"FORCE_COLOR": "0"}])
def test_a_pipe_or_a_dumb_terminal_gets_no_escape_codes(monkeypatch, how):
    assert printed(monkeypatch, MARKUP, **how) == "b d r g\n"


def test_colours_are_the_ones_rich_writes(monkeypatch):
    for markup in ("[bold]x[/bold]", "[red]x[/red]", "[bold red]x[/]", "[dim]x[/dim]", "[bright_blue]x[/]", "[italic cyan]x[/]"):
        ours = printed(monkeypatch, markup, tty=True)
        rich = io.StringIO()
        RichConsole(file=rich, force_terminal=True, color_system="standard", width=80).print(markup)
        assert ours == rich.getvalue(), markup


# ------------------------------------------------------------------ wrapping

TEXTS = ["failed: bad line 3", "a b c d e f g h i j k l m n o p", "/data/sets/conversations-2024-final.jsonl is long",
         "wide 日本語テキスト です ok", "supercalifragilistic is long", "x  y   z", "one-two-three four five"]


@pytest.mark.parametrize("text", TEXTS)
def test_wrap_keeps_lines_within_the_width_and_words_whole_where_they_fit(text):
    for width in range(2, 40):  # from 2: a wide character takes two columns
        lines = term.wrap(text, width)
        assert all(term.cell_len(line) <= width for line in lines), (width, lines)
        assert "".join(lines).replace(" ", "") == text.replace(" ", ""), (width, lines)  # nothing lost, nothing added
        words = [line for line in lines if line]
        for word in text.split():
            if term.cell_len(word) <= width:
                assert any(word in line.split() for line in words), (width, word, lines)


@pytest.mark.parametrize("text", TEXTS)
def test_wrap_breaks_where_rich_does_when_every_word_fits(text):
    console = RichConsole(width=200, file=io.StringIO(), color_system=None)
    for width in range(max(term.cell_len(w) for w in text.split()), 40):
        rich = [line.plain.rstrip() for line in RichText(text).wrap(console, width, overflow="fold")]
        assert term.wrap(text, width) == rich, width


def test_wrap_folds_a_word_longer_than_the_line_and_keeps_the_space_after_it():
    assert term.wrap("abcdefgh ij", 3) == ["abc", "def", "gh", "ij"]
    assert term.wrap("failed: bad line 3", 3) == ["fai", "led", ":", "bad", "lin", "e 3"]


def test_wide_characters_take_two_columns():
    assert term.cell_len("日本語") == 6 and term.cell_len("ab") == 2 and term.cell_len("é") == 1
    assert term.wrap("日本語テキスト", 5) == ["日本", "語テ", "キス", "ト"]
    assert all(term.cell_len(line) <= 7 for line in term.wrap("日本語 日本語日本語 ab", 7))


# ------------------------------------------------------------------ tables against Rich

def rich_lines(table: RichTable, width: int) -> list[str]:
    out = io.StringIO()
    RichConsole(width=width, file=out, color_system=None).print(table)
    return [line.rstrip() for line in out.getvalue().splitlines()]


def term_lines(table: term.Table | term.ListTable, width: int) -> list[str]:
    return [plain(line) for line in table.lines(width)]


SMALL = (["name", "n", "note"], [("tiny", "12", "[bold]fast[/bold] one"), ("balanced", "3.5", "the default"),
                                 ("日本語", "100", "wide chars")])
LONG = (["id", "path", "status"], [("01jd4abcdef", "/data/sets/conversations-2024-final.jsonl", "ready"),
                                   ("01jd5", "a b c d e f g h i j k l m n o p", "failed: bad line 3")])
BOXES = {"none": (None, None, {}), "simple_head": (rich_box.SIMPLE_HEAD, term.SIMPLE_HEAD, {}),
         "heavy_head": (rich_box.HEAVY_HEAD, term.HEAVY_HEAD, {}),
         "simple_head_flush": (rich_box.SIMPLE_HEAD, term.SIMPLE_HEAD, {"padding": (0, 1, 0, 0), "pad_edge": False})}


def both_tables(data, box: str, no_wrap: int | None = None) -> tuple[RichTable, term.Table]:
    rich_b, term_b, settings = BOXES[box]
    rich, ours = RichTable(box=rich_b, **settings), term.Table(box=term_b, **settings)
    headers, rows = data
    for i, header in enumerate(headers):
        # term folds a word longer than its column (no cell cut short); Rich's default
        # overflow is an ellipsis, so Rich is asked to fold too
        column = {"no_wrap": i == no_wrap, "justify": "right" if header == "n" else "left"}
        rich.add_column(header, overflow="fold", **column)
        ours.add_column(header, **column)
    for row in rows:
        rich.add_row(*row)
        ours.add_row(*row)
    return rich, ours


def like_rich(lines: list[str], box: str) -> list[str]:
    # Rich puts a blank line above and below a SIMPLE_HEAD table (the box's empty top and
    # bottom rows); term leaves them out on purpose: a list on a terminal needs no frame of
    # blank lines. Lines are compared right-stripped: term drops trailing blanks.
    if box.startswith("simple_head") and lines and not lines[0] and not lines[-1]:
        return lines[1:-1]
    return lines


# Widths from roomy to tight: columns shrink as Rich shrinks them. Narrower still, Rich's
# fold leaves a blank line or a leading space where a word breaks before a space (term does
# not), so the comparison stops at 20.
@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("width", [100, 60, 40, 30, 24, 20])
@pytest.mark.parametrize("data", [SMALL, LONG], ids=["small", "long"])
def test_a_table_reads_as_richs(box, width, data):
    rich, ours = both_tables(data, box)
    assert term_lines(ours, width) == like_rich(rich_lines(rich, width), box)


@pytest.mark.parametrize("box", BOXES)
@pytest.mark.parametrize("width", [100, 60, 40, 30])
def test_a_no_wrap_column_that_fits_reads_as_richs(box, width):
    rich, ours = both_tables(LONG, box, no_wrap=0)
    assert term_lines(ours, width) == like_rich(rich_lines(rich, width), box)


def test_a_title_and_a_grid_read_as_richs():
    rich, ours = RichTable("by", "cost", title="Costs from May", title_justify="left"), term.Table("by", "cost", title="Costs from May", title_justify="left")
    for table in (rich, ours):
        table.add_row("train", "$1.50")
    assert term_lines(ours, 80) == rich_lines(rich, 80)
    rich, ours = RichTable.grid(padding=(0, 2)), term.Table.grid(padding=(0, 2))
    for table in (rich, ours):
        table.add_column()
        table.add_column()
        table.add_row("base model", "builtin:tiny")
        table.add_row("steps", "1,200")
    assert term_lines(ours, 80) == rich_lines(rich, 80)


@pytest.mark.parametrize("box", BOXES)
def test_a_table_wider_than_the_terminal_stays_within_it_when_a_column_may_wrap(box):
    for width in range(16, 60):  # from 16: three one-character columns, their padding and a frame
        _, ours = both_tables(LONG, box)
        assert max(len(line) for line in term_lines(ours, width)) <= width, width


@pytest.mark.parametrize("box", BOXES)
def test_a_no_wrap_column_is_never_cut(box):
    for width in (10, 20, 30):
        _, ours = both_tables(LONG, box, no_wrap=1)
        lines = term_lines(ours, width)
        for _, path, _ in LONG[1]:
            assert any(path in line for line in lines), (width, lines)


def test_a_list_table_with_a_long_foldable_column_stays_within_80_columns():
    table = term.ListTable("ID", "NAME", "STATUS", "PATH", "ROWS", wrap=("NAME", "PATH"), right=("ROWS",))
    for i in range(5):
        table.add_row(f"01jd4abcde{i:02d}", "customer-support-conversations-" * (i + 1), ("ready", "green"),
                      "/very/long/path/to/the/datasets/directory/" + "x" * 40 * i + ".jsonl", f"{10 ** i:,}")
    lines = term_lines(table, 80)
    assert max(term.cell_len(line) for line in lines) <= 80
    assert all(any(f"01jd4abcde{i:02d}" in line for line in lines) for i in range(5))  # ids are never folded
    assert lines[0].split() == ["ID", "NAME", "STATUS", "PATH", "ROWS"]


def test_a_folded_name_breaks_after_its_separators_so_each_piece_reads_as_a_word():
    """`models list` at 80 columns: "customer-suppo" / "rt-conversatio" / ... was unreadable."""
    table = term.ListTable("ID", "NAME", "VERSION", "SCORE", "CONVERGENCE", "VAL LOSS", "COST", "CREATED", wrap=("NAME",))
    table.add_row("01m8znqqy8cc", "customer-support-conversations-v2-2026-12-04", "1.0.0", "4/5", "good", "2→0.6", "$0.00", "12-04 04:38")
    lines = term_lines(table, 80)
    assert [line[13:28].rstrip() for line in lines[1:]] == ["customer-", "support-", "conversations-", "v2-2026-12-04"]
    assert "".join(line[13:28].rstrip() for line in lines[1:]) == "customer-support-conversations-v2-2026-12-04"
    # Spaces and paths break the same way; a part longer than the line is cut; nothing is lost.
    assert term.fold("/home/user/work dir/file.jsonl", 10) == ["/home/", "user/work", "dir/file.", "jsonl"]
    assert term.fold("a" * 20 + "-b", 8) == ["aaaaaaaa", "aaaaaaaa", "aaaa-b"]
    assert term.fold("short", 8) == ["short"]


@pytest.mark.parametrize("columns,terminal", [(None, 0), ("0", 0), (None, 57), ("100", 57), ("0", 57), (" 90", 57), ("wide", 57),
                                              (None, None), ("120", None), ("abc", None)])
def test_the_width_is_richs_and_a_terminal_without_a_size_is_80_columns(monkeypatch, columns, terminal):
    """A pseudo-terminal opened without a size (`script`, some CI runners) reports 0 columns."""
    import os

    def size(fd=1):
        if terminal is None:
            raise OSError("not a terminal")
        return os.terminal_size((terminal, 24))

    monkeypatch.setattr(os, "get_terminal_size", size)
    if columns is None:
        monkeypatch.delenv("COLUMNS", raising=False)
    else:
        monkeypatch.setenv("COLUMNS", columns)
    monkeypatch.delenv("LINES", raising=False)
    width = term.Console().width
    if columns == "0":
        assert width == 80  # on purpose unlike Rich, which then draws at width 0
    else:
        assert width == RichConsole(file=io.StringIO(), force_terminal=True).size.width > 0
