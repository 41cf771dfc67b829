"""Terminal output for commands that print and exit, without Rich.

Importing Rich's console and table costs ~0.05-0.09 s, more than a read command's own
work. What those commands print is simple: lines with a little Rich-style markup
(`[bold]`, `[dim]`, colours, `escape()`d data), and tables (no box, a simple rule under
the header, or Rich's default heavy-head box), wrapped to the terminal's width. This
module draws exactly that with the standard library, following Rich's decisions: styles
only on a terminal (or FORCE_COLOR), no colours under NO_COLOR (bold and dim stay),
nothing under TERM=dumb; width from COLUMNS, else the terminal, else 80; text wrapped at
spaces, words longer than a line folded. What only Rich draws (the live dashboard, progress
bars) goes to a Rich console (`common.rich_console()`, `common.err_console()`).
"""

from __future__ import annotations

import os
import re
import sys
import unicodedata
from typing import Any, Iterable

_FOLD_PARTS = re.compile(r"[^-_/.@: ]*[-_/.@: ]|[^-_/.@: ]+")  # each part ends after its separator
_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")  # Rich's markup tag, escapes included
_ESCAPE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")
_SGR = {
    "bold": "1", "b": "1", "dim": "2", "d": "2", "italic": "3", "i": "3", "underline": "4", "u": "4", "reverse": "7", "strike": "9",
    "black": "30", "red": "31", "green": "32", "yellow": "33", "blue": "34", "magenta": "35", "cyan": "36", "white": "37",
    "bright_black": "90", "bright_red": "91", "bright_green": "92", "bright_yellow": "93", "bright_blue": "94",
    "bright_magenta": "95", "bright_cyan": "96", "bright_white": "97",
}
_COLOURS = {code for code in _SGR.values() if len(code) == 2}  # 30-37, 90-97; the attributes are one digit

Segment = tuple[str, "str | None"]  # text, style ("bold yellow") or None


def escape(text: str) -> str:
    """Data made safe to put in markup: `[x]` is printed as `[x]`, not read as a style (Rich's rule)."""
    def double(match: re.Match) -> str:
        backslashes, tag = match.groups()
        return f"{backslashes}{backslashes}\\{tag}"

    text = _ESCAPE.sub(double, text)
    return text + "\\" if text.endswith("\\") and not text.endswith("\\\\") else text


def parse_markup(markup: str) -> list[Segment]:
    """`[bold]x[/bold] y` -> [("x", "bold"), (" y", None)], as Rich reads markup: `\\[` is a
    literal bracket, `[/]` closes the newest style, an unknown style name prints nothing."""
    segments: list[Segment] = []
    stack: list[str] = []
    position = 0

    def add(text: str) -> None:
        if text:
            segments.append((text, " ".join(stack) or None))

    for match in _TAG.finditer(markup):
        full, escapes, tag = match.groups()
        start, end = match.span()
        add(markup[position:start])
        position = end
        if escapes:
            backslashes, escaped = divmod(len(escapes), 2)
            add("\\" * backslashes)
            if escaped:
                add(full[len(escapes):])
                continue
        if tag.startswith("/"):
            name = tag[1:].strip()
            if not name:
                if stack:
                    stack.pop()
            elif name in stack:
                del stack[len(stack) - 1 - stack[::-1].index(name)]
        else:
            stack.append(tag.strip())
    add(markup[position:])
    return segments


def cell_len(text: str) -> int:
    """Columns `text` takes on a terminal (wide East Asian characters take two)."""
    if text.isascii():
        return len(text)
    return sum(0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1 for c in text)


def _cut(text: str, width: int) -> list[str]:
    """`text` folded into pieces of at most `width` columns."""
    if text.isascii():
        return [text[i:i + width] for i in range(0, len(text), width)] or [""]
    pieces, piece, used = [], "", 0
    for c in text:
        w = cell_len(c)
        if used + w > width and piece:
            pieces.append(piece)
            piece, used = "", 0
        piece += c
        used += w
    return pieces + [piece]


def fold(text: str, width: int) -> list[str]:
    """A name, id or path folded into pieces of at most `width` columns, each broken after
    a separator (- _ / . @ : or a space) where one falls in the line, so that
    "support-chats-v2-2026-12-04" reads "support-chats-" / "v2-2026-12-04", not
    "support-chat" / "s-v2-2026-12-" / "04"; a part longer than a line is cut."""
    width = max(1, width)
    if cell_len(text) <= width:
        return [text]
    lines: list[str] = []
    line, used = "", 0
    for part in _FOLD_PARTS.findall(text):
        size = cell_len(part)
        if used and used + size > width and used + cell_len(part.rstrip(" ")) > width:
            lines.append(line.rstrip(" "))  # a space at a break is dropped, as wrap does
            line, used = "", 0
        if size > width and cell_len(part.rstrip(" ")) > width:
            pieces = _cut(part, width)
            lines += pieces[:-1]
            line, used = pieces[-1], cell_len(pieces[-1])
            continue
        line += part
        used += size
    return lines + [line] if line else lines


def wrap(text: str, width: int) -> list[str]:
    """One line of text broken at spaces into lines of at most `width` columns (a word
    longer than a line is folded), as Rich wraps: trailing spaces at a break are dropped."""
    width = max(1, width)
    if cell_len(text) <= width:
        return [text]
    lines: list[str] = []
    line, used = "", 0
    for word in re.findall(r"\s*\S+\s*", text) or [text]:
        size = cell_len(word.rstrip())
        if used and used + size > width:
            lines.append(line.rstrip())
            line, used = "", 0
            word = word.lstrip() if lines else word
            size = cell_len(word.rstrip())
        if size > width:
            stripped = word.rstrip()
            pieces = _cut(stripped, width)
            lines += pieces[:-1]
            line = pieces[-1] + word[len(stripped):]  # the space after a folded word still parts it from the next
            used = cell_len(line)
            continue
        line += word
        used += cell_len(word)
    lines.append(line.rstrip())
    return lines


def _split(segments: list[Segment], sizes: list[int]) -> list[list[Segment]]:
    """Styled segments cut into consecutive runs of `sizes` characters."""
    out: list[list[Segment]] = []
    flat = iter(segments)
    text, style = next(flat, ("", None))
    for size in sizes:
        line: list[Segment] = []
        while size > 0:
            if not text:
                text, style = next(flat, ("", None))
                if not text:
                    break
            take = text[:size]
            line.append((take, style))
            text, size = text[len(take):], size - len(take)
        out.append(line)
    return out


def wrap_segments(segments: list[Segment], width: int) -> list[list[Segment]]:
    """Styled text, possibly of several lines, wrapped to `width` with its styles kept."""
    plain = "".join(t for t, _ in segments)
    out: list[list[Segment]] = []
    rest = list(segments)
    for number, line in enumerate(plain.split("\n")):
        if number:
            rest = _split(rest, [1, sum(len(t) for t, _ in rest) - 1])[1]  # drop the newline
        here, rest = _split(rest, [len(line), sum(len(t) for t, _ in rest) - len(line)])
        pieces = wrap(line, width)
        # the wrapped pieces are the line's characters in order, less spaces at the breaks
        sizes, skips, position = [], [], 0
        for piece in pieces:
            start = line.index(piece, position) if piece else position
            skips.append(start - position)
            sizes.append(len(piece))
            position = start + len(piece)
        cursor = here
        for skip, size in zip(skips, sizes):
            _, cursor = _split(cursor, [skip, sum(len(t) for t, _ in cursor) - skip])
            piece, cursor = _split(cursor, [size, sum(len(t) for t, _ in cursor) - size])
            out.append(piece)
    return out


class Text:
    """Plain text (not markup) with an optional style; `append` adds more."""

    def __init__(self, text: str = "", style: str | None = None):
        self.segments: list[Segment] = [(text, style)] if text else []

    def append(self, text: str, style: str | None = None) -> "Text":
        if text:
            self.segments.append((text, style))
        return self

    @property
    def plain(self) -> str:
        return "".join(t for t, _ in self.segments)


class Group:
    """Several renderables printed one after another."""

    def __init__(self, *items: Any):
        self.items = items


def _segments(cell: Any) -> list[Segment]:
    if isinstance(cell, Text):
        return list(cell.segments)
    return parse_markup(str(cell))


class Column:
    """A table column: its header, style and justification; its cells wrap at spaces and fold
    longer words (never cut short with an ellipsis), unless `no_wrap`."""

    def __init__(self, header: Any = "", *, style: str | None = None, justify: str = "left", no_wrap: bool = False,
                 header_style: str | None = None, min_width: int | None = None):
        self.header, self.style, self.justify, self.no_wrap = header, style, justify, no_wrap
        self.header_style, self.min_width = header_style, min_width


BOX_NONE, SIMPLE_HEAD, HEAVY_HEAD = "none", "simple_head", "heavy_head"
# Rich's boxes: (left edge, between columns, right edge) of header and body rows, and the
# (first, fill, cross, last) characters of the rules above the header, under it and at the end.
_BOXES = {
    BOX_NONE: {"head": ("", "", ""), "body": ("", "", ""), "top": None, "under": None, "end": None},
    SIMPLE_HEAD: {"head": (" ", " ", " "), "body": (" ", " ", " "), "top": None, "under": ("", "─", "─", ""), "end": None},
    HEAVY_HEAD: {"head": ("┃", "┃", "┃"), "body": ("│", "│", "│"), "top": ("┏", "━", "┳", "┓"),
                 "under": ("┡", "━", "╇", "┩"), "end": ("└", "─", "┴", "┘")},
}


def value_columns(headers: tuple[str, ...], rows: list[tuple[str, ...]], wrap: tuple[str, ...] = ()) -> list["Column"]:
    """Columns for `headers` whose values are never cut (min_width: the longest value), for
    tables of ids, names and numbers; headers wrap, and so do the columns named in `wrap`."""
    return [Column(h) if h in wrap else Column(h, min_width=max([cell_len(str(r[i])) for r in rows] or [0]))
            for i, h in enumerate(headers)]


class Table:
    """A table as Rich's Table draws the ones brightrun prints: `box` None (columns only),
    SIMPLE_HEAD (a rule under the header) or HEAVY_HEAD (Rich's default frame); cells are
    markup (as Rich reads str cells) or Text; when the table is wider than the terminal the
    widest column that may wrap is narrowed first, its cells wrapped at spaces."""

    def __init__(self, *headers: "str | Column", title: str | None = None, title_justify: str = "center",
                 box: str | None = HEAVY_HEAD, show_header: bool = True, padding: "int | tuple[int, ...]" = 1,
                 pad_edge: bool = True):
        self.columns = [h if isinstance(h, Column) else Column(h) for h in headers]
        self.title, self.title_justify, self.box, self.show_header = title, title_justify, box or BOX_NONE, show_header
        pads = (padding,) * 4 if isinstance(padding, int) else tuple(padding) * (4 // len(padding))
        self.pad_left, self.pad_right, self.pad_edge = pads[3], pads[1], pad_edge
        self.gap: int | None = None  # grid(): this many spaces between columns, nothing else
        self.rows: list[list[Any]] = []

    @classmethod
    def grid(cls, padding: "int | tuple[int, int]" = 0) -> "Table":
        """Columns side by side with the padding's spaces between them: no header, no box."""
        table = cls(box=None, show_header=False, padding=0, pad_edge=False)
        table.gap = padding if isinstance(padding, int) else padding[-1]
        return table

    def add_column(self, header: Any = "", **kwargs: Any) -> None:
        self.columns.append(Column(header, **kwargs))

    def add_row(self, *cells: Any) -> None:
        while len(self.columns) < len(cells):
            self.columns.append(Column(""))
        self.rows.append(list(cells) + [""] * (len(self.columns) - len(cells)))

    def _pads(self) -> list[tuple[int, int]]:
        last = len(self.columns) - 1
        if self.gap is not None:
            return [(0, self.gap if i < last else 0) for i in range(len(self.columns))]
        return [(0 if i == 0 and not self.pad_edge else self.pad_left, 0 if i == last and not self.pad_edge else self.pad_right)
                for i in range(len(self.columns))]

    def _widths(self, cells: list[list[list[Segment]]], room: int, pads: list[tuple[int, int]]) -> list[int]:
        """Each column's width, as Rich's Table._collapse_widths chooses them: while the table
        is too wide, the widest columns that may wrap (padding included) shrink together
        towards the next widest, sharing the excess as Rich rounds it. Columns marked no_wrap
        keep their width (where Rich would then cut every column evenly, they print whole)."""
        content = [max([max(cell_len(part) for part in "".join(t for t, _ in row[i]).split("\n")) for row in cells] or [0])
                   for i in range(len(self.columns))]
        widths = [w + a + b for w, (a, b) in zip(content, pads)]
        # A column's min_width (Rich's) is a floor: its values (ids, "A100-80GB", numbers) are never cut in two.
        floors = [(c.min_width or 0) + a + b for c, (a, b) in zip(self.columns, pads)]
        widths = [max(w, f) for w, f in zip(widths, floors)]
        wrappable = [not c.no_wrap and w > f for c, w, f in zip(self.columns, widths, floors)]
        limit = room + sum(a + b for a, b in pads)
        excess = sum(widths) - limit
        while excess > 0 and any(wrappable):
            top = max(w for w, ok in zip(widths, wrappable) if ok)
            second = max(w if ok and w != top else 0 for w, ok in zip(widths, wrappable))
            if top == second or top <= 1:
                break
            ratios = [1 if ok and w == top else 0 for w, ok in zip(widths, wrappable)]
            widths = _ratio_reduce(excess, ratios, min(excess, top - second), widths)
            widths = [max(w, f) for w, f in zip(widths, floors)]
            wrappable = [ok and w > f for ok, w, f in zip(wrappable, widths, floors)]
            excess = sum(widths) - limit
        return [max(1, w - a - b) for w, (a, b) in zip(widths, pads)]

    def lines(self, max_width: int) -> list[list[Segment]]:
        box = _BOXES[self.box]
        pads = self._pads()
        header = [_segments(c.header) for c in self.columns]
        body = [[_segments(cell) for cell in row] for row in self.rows]
        frame = sum(len(x) for x in box["head"][::2]) + len(box["head"][1]) * max(0, len(pads) - 1) + sum(a + b for a, b in pads)
        widths = self._widths(([header] if self.show_header else []) + body, max_width - frame, pads)
        spans = [w + a + b for w, (a, b) in zip(widths, pads)]

        def rule(chars: tuple[str, str, str, str]) -> list[Segment]:
            first, fill, cross, last = chars
            if not first:  # SIMPLE_HEAD: a line under the cells, the edges blank
                return [(" " * len(box["head"][0]) + fill * (sum(spans) + len(box["head"][1]) * (len(spans) - 1)), None)]
            return [(first + cross.join(fill * n for n in spans) + last, None)]

        def draw(cells: list[list[Segment]], edges: tuple[str, str, str], head: bool) -> list[list[Segment]]:
            blocks = []
            for column, cell, width in zip(self.columns, cells, widths):
                style = (column.header_style or "bold") if head else column.style
                if style:
                    cell = [(t, f"{style} {s}" if s else style) for t, s in cell]
                blocks.append(wrap_segments(cell, width))
            height = max([len(b) for b in blocks] or [1])
            if head:  # a header that wraps sits on the rule under it, as Rich aligns headers
                blocks = [[[] for _ in range(height - len(b))] + b for b in blocks]
            out = []
            for n in range(height):
                line: list[Segment] = [(edges[0], None)]
                for i, (column, block, width, (a, b)) in enumerate(zip(self.columns, blocks, widths, pads)):
                    piece = block[n] if n < len(block) else []
                    fill = " " * max(0, width - sum(cell_len(t) for t, _ in piece))
                    if column.justify == "right":
                        piece = [(fill, None), *piece]
                    elif column.justify == "center":
                        piece = [(fill[:len(fill) // 2], None), *piece, (fill[len(fill) // 2:], None)]
                    else:
                        piece = [*piece, (fill, None)]
                    line += [(" " * a, None), *piece, (" " * b, None), (edges[1] if i < len(blocks) - 1 else edges[2], None)]
                out.append(line)
            return out

        lines: list[list[Segment]] = []
        if self.title:
            total = sum(spans) + frame - sum(a + b for a, b in pads)
            lines.append([(self.title if self.title_justify == "left" else self.title.center(total).rstrip(), "italic")])
        if box["top"]:
            lines.append(rule(box["top"]))
        if self.show_header:
            lines += draw(header, box["head"], True)
            if box["under"]:
                lines.append(rule(box["under"]))
        for row in body:
            lines += draw(row, box["body"], False)
        if box["end"]:
            lines.append(rule(box["end"]))
        return [_rstrip(line) for line in lines]


def _ratio_reduce(total: int, ratios: list[int], most: int, values: list[int]) -> list[int]:
    """`values` less `total` shared out by `ratios`, at most `most` off each (rich._ratio.ratio_reduce)."""
    total_ratio, out = sum(ratios), []
    for ratio, value in zip(ratios, values):
        if ratio and total_ratio > 0:
            cut = min(most, round(ratio * total / total_ratio))
            out.append(value - cut)
            total, total_ratio = total - cut, total_ratio - ratio
        else:
            out.append(value)
    return out


def _rstrip(line: list[Segment]) -> list[Segment]:
    """Trailing blanks off a line (unstyled ones; a styled blank may be a background)."""
    line = list(line)
    while line and line[-1][1] is None and not line[-1][0].rstrip():
        line.pop()
    if line and line[-1][1] is None:
        line[-1] = (line[-1][0].rstrip(), None)
    return line


FOLD_PART_MAX = 24


class ListTable:
    """A list table that reads at 80 columns: no box, one space between columns, no cell cut
    short; columns named in `wrap` fold onto more lines when space runs out. A cell is a
    string (not markup: ids and names print as they are), or (string, style)."""

    def __init__(self, *headers: str, wrap: tuple[str, ...] = (), right: tuple[str, ...] = ()):
        self.headers = headers
        self.wrap = [h in wrap for h in headers]
        self.right = [h in right for h in headers]
        self.rows: list[tuple[tuple[str, str | None], ...]] = []

    def add_row(self, *cells: "str | tuple[str, str | None]") -> None:
        self.rows.append(tuple(c if isinstance(c, tuple) else (c, None) for c in cells))

    def _widths(self, max_width: int) -> list[int]:
        widths = [max([cell_len(h)] + [cell_len(r[i][0]) for r in self.rows]) for i, h in enumerate(self.headers)]
        # A folded value breaks only after a separator, never inside a part ("customer-" /
        # "support-", not "custo" / "mer-su..."), unless a part is longer than FOLD_PART_MAX (a hash).
        parts = [min(FOLD_PART_MAX, max([cell_len(p.rstrip(" ")) for r in self.rows for p in _FOLD_PARTS.findall(r[i][0])] or [0]))
                 if self.wrap[i] else 0 for i in range(len(self.headers))]
        excess = sum(widths) + len(widths) - 1 - max_width
        for floor in (8, 1):  # folded columns keep 8 characters if they can, else their header's width
            for i in sorted(range(len(widths)), key=lambda i: -widths[i]):
                if excess <= 0:
                    break
                if self.wrap[i]:
                    cut = max(0, min(excess, widths[i] - max(floor, cell_len(self.headers[i]), parts[i])))
                    widths[i] -= cut
                    excess -= cut
        return widths

    def lines(self, max_width: int) -> list[list[Segment]]:
        widths = self._widths(max_width)
        last = len(widths) - 1
        header = "".join((h.rjust(w) if self.right[i] else h.ljust(w)) + (" " if i < last else "")
                         for i, (h, w) in enumerate(zip(self.headers, widths)))
        out: list[list[Segment]] = [[(header.rstrip(), "bold")]]
        for row in self.rows:
            parts = [fold(text, width) if self.wrap[i] else [text] for i, ((text, _), width) in enumerate(zip(row, widths))]
            for n in range(max(len(p) for p in parts)):
                line: list[Segment] = []
                for i, ((_, style), width) in enumerate(zip(row, widths)):
                    piece = parts[i][n] if n < len(parts[i]) else ""
                    pad = " " * max(0, width - cell_len(piece))
                    line.append((pad + piece if self.right[i] else piece + pad, style))
                    if i < last:
                        line.append((" ", None))
                out.append(_rstrip(line))
        return out


def _colour_mode() -> str:
    """"none" (plain text), "mono" (bold/dim, no colours: NO_COLOR) or "colour"."""
    env = os.environ
    forced = env.get("FORCE_COLOR", "") not in ("", "0")
    try:
        tty = sys.stdout.isatty()
    except (AttributeError, ValueError):
        tty = False
    if not (forced or tty) or env.get("TERM", "").lower() in ("dumb", "unknown"):
        return "none"
    return "mono" if env.get("NO_COLOR") else "colour"


def _width() -> int:
    """As Rich reads it: COLUMNS when it is digits, else the terminal's, else 80. A width of
    0 counts as unknown: a pseudo-terminal opened without a size (`script`, some CI
    runners and `docker exec`) reports 0 columns, which would put every character on a
    line of its own."""
    width = 0
    for fd in (1, 0, 2):
        try:
            width = os.get_terminal_size(fd).columns
            break
        except OSError:
            continue
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit():
        width = int(columns)
    return width or 80


class Console:
    """`print` for markup strings, Text, Group and the tables above, to stdout (or stderr)."""

    def __init__(self, stderr: bool = False):
        self.stderr = stderr
        self.mode = _colour_mode() if not stderr else "none"
        self.width = _width()
        # A table for a program or a file (`brightrun models list | cat`, `> out.txt`) is not
        # wrapped at all: a value split over two lines is no value to grep or cut; COLUMNS,
        # when set, still says how wide the reader is.
        self.table_width = self.width if self._to_terminal() or os.environ.get("COLUMNS", "").isdigit() else 1_000_000

    def _to_terminal(self) -> bool:
        try:
            return self.file.isatty()
        except (AttributeError, ValueError):
            return False

    @property
    def file(self):
        return sys.stderr if self.stderr else sys.stdout

    def _ansi(self, text: str, style: str | None) -> str:
        if not style or self.mode == "none" or not text:
            return text
        codes = [_SGR[w] for w in style.split() if w in _SGR and (self.mode == "colour" or _SGR[w] not in _COLOURS)]
        return f"\x1b[{';'.join(codes)}m{text}\x1b[0m" if codes else text

    def _write_lines(self, lines: Iterable[list[Segment]]) -> None:
        self.file.write("".join("".join(self._ansi(t, s) for t, s in line) + "\n" for line in lines))

    def print(self, *objects: Any, markup: bool = True, style: str | None = None, soft_wrap: bool = False) -> None:
        if not objects:
            objects = ("",)
        for obj in objects:
            self._print(obj, markup=markup, style=style, soft_wrap=soft_wrap)
        self.file.flush()

    def _print(self, obj: Any, *, markup: bool, style: str | None, soft_wrap: bool) -> None:
        if isinstance(obj, Group):
            for item in obj.items:
                self._print(item, markup=markup, style=style, soft_wrap=soft_wrap)
        elif isinstance(obj, (Table, ListTable)):
            self._write_lines(obj.lines(self.table_width))
        elif isinstance(obj, (str, Text)):
            segments = (parse_markup(obj) if markup else [(obj, None)]) if isinstance(obj, str) else list(obj.segments)
            if style:
                segments = [(t, f"{style} {s}" if s else style) for t, s in segments]
            if soft_wrap:
                self.file.write("".join(self._ansi(t, s) for t, s in segments) + "\n")
            else:
                self._write_lines(wrap_segments(segments, self.width))
        else:
            raise TypeError(f"cannot print a {type(obj).__name__}: Rich renderables go to common.rich_console()")
