"""Read-only Cypher for ``POST /v1/graph/cypher``: a tokenizer and a parser of the subset
users may run, not a list of refused words.

Graph snapshots are opened read-only, so the engine itself refuses CREATE, SET, MERGE and
DELETE, but not everything that reaches outside the graph: measured on LadybugDB 0.22,
``LOAD FROM '/etc/passwd'`` reads a host file, ``COPY (…) TO`` writes one, ``INSTALL``
downloads an extension, and the engine's grammar lets a clause follow an expression with no
space, so ``… WHERE x = 1LOAD FROM '/etc/passwd' …`` read the file past the old word filter.
A statement therefore has to pass two steps here before it is run (in a sandboxed worker,
``query_api.cypher_worker``, as a second line):

1. **Tokens, strictly.** ASCII outside string literals and backquoted names; whitespace is
   space, tab, CR and LF (the engine also takes Unicode spaces and letters: refused here);
   ``//`` and ``/* */`` comments become one space; a string ends where the engine's lexer
   ends it (escapes ``\\ \\' \\" \\b \\f \\n \\r \\t \\xHH \\uHHHH``, nothing else); and
   every place where the engine would glue two tokens differently from us is refused: a
   number touching a letter, digit, ``_``, ``$`` or ``.`` (``1LOAD``, ``1.0LOAD``,
   ``0x1``, ``1e5LOAD``, ``007``), a name touching ``$``, a doubled backquote, a string
   touching a string.
2. **A parser of the read-only subset** (the engine's grammar, ``Cypher.g4``, cut down):
   ``[EXPLAIN|PROFILE] query [;]`` where a query is single queries joined by ``UNION
   [ALL]``, each made of ``MATCH``/``OPTIONAL MATCH`` (patterns, ``WHERE``), ``UNWIND``,
   ``WITH`` and ``CALL`` of a catalogue function with literal arguments, ending in
   ``RETURN`` (``DISTINCT``, ``ORDER BY``, ``SKIP``, ``LIMIT``). Expressions: literals,
   parameters, properties, operators, ``CASE``, function calls (the engine refuses table
   and copy functions there), ``EXISTS``/``COUNT {MATCH …}``, quantifiers, lambdas, path
   patterns. A word the engine knows as a keyword is read as that keyword everywhere except
   right after ``.`` (a property) and right before ``:`` in a map (a key): to use one as a
   name, backquote it.

What the engine receives is the statement's own text with comments blanked and the final
``;`` removed, so it sees exactly the tokens checked here; a string or backquoted name is
never cut or altered (``RETURN 'abc'`` runs as written).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from kprobe.query_api.errors import CypherRefused

# Functions CALL may name: the catalogue, read-only, no file or network access.
CALLABLE = frozenset({"show_tables", "table_info", "show_connection", "db_version",
                      "show_functions", "current_setting"})

# Every keyword of the engine's grammar (LadybugDB src/antlr4/keywords.txt, plus SKIP and
# DECIMAL, which its grammar spells separately). A bare word in this set is a keyword.
KEYWORDS = frozenset("""
ACYCLIC ANY ADD ALL ALTER AND AS ASC ASCENDING ATTACH BEGIN BY CALL CASE CAST CHECKPOINT
COLUMN COMMENT COMMIT COMMIT_SKIP_CHECKPOINT CONTAINS COPY COUNT CREATE CYCLE DATABASE
DBTYPE DEFAULT DELETE DESC DESCENDING DETACH DISTINCT DROP ELSE END ENDS EXISTS EXPLAIN
EXPORT EXTENSION FALSE FROM FORCE GLOB GRAPH GROUP HEADERS HINT IMPORT IF IN INCREMENT
INSTALL IS JOIN KEY LIMIT LOAD LOGICAL MACRO MATCH MAXVALUE MERGE MINVALUE MULTI_JOIN NO
NODE NOT NONE NULL ON ONLY OPTIONAL OR ORDER PRIMARY PROFILE PROJECT READ REL RENAME
RETURN ROLLBACK ROLLBACK_SKIP_CHECKPOINT SEQUENCE SET SHORTEST START STARTS STRUCT TABLE
THEN TO TRAIL TRANSACTION TRUE TYPE UNION UNWIND UNINSTALL UPDATE USE WHEN WHERE WITH WRITE
WSHORTEST XOR SINGLE YIELD USER PASSWORD ROLE MAP SKIP DECIMAL
""".split())  # noqa: SIM905 - the grammar's list, as printed there
# Keywords of the read-only subset (any other keyword in a refusal is named as the reason).
_READ_KEYWORDS = frozenset("""
MATCH OPTIONAL WHERE WITH UNWIND RETURN ORDER BY SKIP LIMIT UNION ALL DISTINCT AS ASC
ASCENDING DESC DESCENDING AND OR XOR NOT IN IS NULL TRUE FALSE CASE WHEN THEN ELSE END
STARTS ENDS CONTAINS COUNT CAST EXISTS ANY NONE SINGLE SHORTEST TRAIL ACYCLIC WSHORTEST
YIELD EXPLAIN PROFILE DECIMAL MAP
""".split())  # noqa: SIM905 - a list of words
# Keywords that are also function names (followed by "(").
_KEYWORD_FUNCTIONS = frozenset({"MAP", "UNION"})

_WS = " \t\r\n"
_DIGITS = "0123456789"
_HEX = "0123456789abcdefABCDEF"
_WORD_START = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ_")
_WORD_PART = _WORD_START | frozenset(_DIGITS)
_SIMPLE_ESCAPES = frozenset("\\'\"bBfFnNrRtT")
_OPERATORS = ("<>", "<=", ">=", "<<", ">>", "=~", "..", "(", ")", "[", "]", "{", "}", ",",
              ".", ":", ";", "|", "*", "+", "-", "/", "%", "^", "=", "<", ">", "!", "&")
_MAX_DEPTH = 200

Kind = Literal["word", "qname", "string", "number", "param", "op", "end"]


@dataclass(frozen=True)
class Token:
    kind: Kind
    text: str
    start: int
    end: int

    @property
    def keyword(self) -> str | None:
        """The keyword this token is (upper case), or None."""
        if self.kind == "word" and self.text.upper() in KEYWORDS:
            return self.text.upper()
        return None


def _refuse(message: str, at: int) -> CypherRefused:
    return CypherRefused(f"{message} (at character {at + 1}); graph queries are read-only "
                         "here: MATCH … WHERE … RETURN, WITH, UNWIND, UNION, CALL of a "
                         "catalogue function")


# -- tokens ----------------------------------------------------------------------------------
def tokenize(text: str) -> tuple[list[Token], str]:
    """The statement's tokens and its text with every comment replaced by one space (token
    positions refer to that text)."""
    out: list[str] = []  # the cleaned text
    start = 0  # where the next piece begins in the cleaned text
    tokens: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in _WS:
            out.append(c)
            start += 1
            i += 1
            continue
        if text.startswith("//", i):
            end = text.find("\n", i)
            i = n if end < 0 else end
            out.append(" ")
            start += 1
            continue
        if text.startswith("/*", i):
            end = text.find("*/", i + 2)
            if end < 0:
                raise _refuse("unterminated comment", i)
            i = end + 2
            out.append(" ")
            start += 1
            continue
        if ord(c) > 127:
            raise _refuse(f"character {c!r} (U+{ord(c):04X}) outside a string or `name`: "
                          "only ASCII is read here", i)
        if ord(c) < 32 or ord(c) == 127:
            raise _refuse(f"control character U+{ord(c):04X}", i)
        if c in "'\"":
            j = _string_end(text, i)
            tokens.append(Token("string", text[i:j], start, start + j - i))
        elif c == "`":
            j = text.find("`", i + 1)
            if j < 0:
                raise _refuse("unterminated `name`", i)
            body = text[i + 1:j]
            if not body:
                raise _refuse("empty `name`", i)
            if any(ord(ch) < 32 or ord(ch) == 127 for ch in body):
                raise _refuse("control character in a `name`", i)
            j += 1
            if j < n and text[j] == "`":
                raise _refuse("doubled backquote in a `name`", j)
            tokens.append(Token("qname", text[i:j], start, start + j - i))
        elif c in _DIGITS or (c == "." and i + 1 < n and text[i + 1] in _DIGITS):
            j = _number_end(text, i)
            tokens.append(Token("number", text[i:j], start, start + j - i))
        elif c in _WORD_START:
            j = i + 1
            while j < n and text[j] in _WORD_PART:
                j += 1
            if j < n and text[j] == "$":
                raise _refuse("'$' touching a name", j)
            tokens.append(Token("word", text[i:j], start, start + j - i))
        elif c == "$":
            j = i + 1
            if j < n and text[j] in _WORD_START:
                while j < n and text[j] in _WORD_PART:
                    j += 1
            elif j < n and text[j] in _DIGITS:
                j = _number_end(text, j)
                if "." in text[i + 1:j] or "e" in text[i + 1:j].lower():
                    raise _refuse("a parameter is $name or $number", i)
            else:
                raise _refuse("a parameter is $name or $number", i)
            if j < n and text[j] == "$":
                raise _refuse("'$' touching a parameter", j)
            tokens.append(Token("param", text[i:j], start, start + j - i))
        else:
            op = next((o for o in _OPERATORS if text.startswith(o, i)), None)
            if op is None or text.startswith("!=", i):
                raise _refuse(f"unexpected character {c!r}"
                              + (" (use <> for 'not equal')" if c == "!" else ""), i)
            j = i + len(op)
            if op == ".." and j < n and text[j] == ".":
                raise _refuse("'...'", i)
            tokens.append(Token("op", op, start, start + len(op)))
        out.append(text[i:j])
        start += j - i
        i = j
    clean = "".join(out)
    tokens.append(Token("end", "", len(clean), len(clean)))
    return tokens, clean


def _string_end(text: str, i: int) -> int:
    quote, j, n = text[i], i + 1, len(text)
    while True:
        if j >= n:
            raise _refuse("unterminated string", i)
        c = text[j]
        if c == quote:
            j += 1
            break
        if c == "\\":
            k = text[j + 1] if j + 1 < n else ""
            if k in _SIMPLE_ESCAPES and k:
                j += 2
            elif k in ("x", "X") and all(ch in _HEX for ch in text[j + 2:j + 4]) and \
                    len(text[j + 2:j + 4]) == 2:
                j += 4
            elif k in ("u", "U") and len(text[j + 2:j + 6]) == 4 and \
                    all(ch in _HEX for ch in text[j + 2:j + 6]):
                j += 6
            else:
                raise _refuse("unknown escape in a string (\\\\ \\' \\\" \\b \\f \\n \\r \\t "
                              "\\xHH \\uHHHH)", j)
            continue
        if ord(c) < 32 and c not in "\t\r\n" or ord(c) == 127:
            raise _refuse(f"control character U+{ord(c):04X} in a string", j)
        j += 1
    if j < n and text[j] in "'\"":
        raise _refuse("a string touching a string", j)
    return j


def _number_end(text: str, i: int) -> int:
    """End of the number at ``i``, as the engine's lexer reads it; refused when the engine
    would read the characters after it as part of the same statement differently."""
    n, j = len(text), i
    while j < n and text[j] in _DIGITS:
        j += 1
    if j - i > 1 and text[i] == "0":
        raise _refuse("a number with a leading zero", i)
    if j < n and text[j] == "." and j + 1 < n and text[j + 1] in _DIGITS:
        j += 1
        while j < n and text[j] in _DIGITS:
            j += 1
    if j < n and text[j] in "eE":
        k = j + 1
        if k < n and text[k] == "-":
            k += 1
        if k < n and text[k] in _DIGITS:
            while k < n and text[k] in _DIGITS:
                k += 1
            j = k
    if j < n:
        nxt = text[j]
        if nxt in _WORD_PART or nxt == "$" or nxt == "`":
            raise _refuse(f"a number touching {nxt!r}: put a space between them", j)
        if nxt == "." and not (text.startswith("..", j) and not text.startswith("...", j)):
            raise _refuse("a number touching '.'", j)
    return j


# -- parser ----------------------------------------------------------------------------------
@dataclass
class _Parser:
    tokens: list[Token]
    i: int = 0
    depth: int = 0
    calls: list[str] = field(default_factory=list)

    # token helpers
    def peek(self, ahead: int = 0) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def take(self) -> Token:
        token = self.peek()
        self.i = min(self.i + 1, len(self.tokens) - 1)
        return token

    def is_kw(self, *words: str, ahead: int = 0) -> bool:
        return self.peek(ahead).keyword in words

    def is_op(self, *ops: str, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "op" and token.text in ops

    def kw(self, *words: str) -> bool:
        if self.is_kw(*words):
            self.take()
            return True
        return False

    def op(self, *ops: str) -> bool:
        if self.is_op(*ops):
            self.take()
            return True
        return False

    def expect_kw(self, *words: str) -> Token:
        if not self.is_kw(*words):
            raise self.error(f"expected {' or '.join(words)}")
        return self.take()

    def expect_op(self, *ops: str) -> Token:
        if not self.is_op(*ops):
            raise self.error(f"expected {' or '.join(repr(o) for o in ops)}")
        return self.take()

    def error(self, message: str) -> CypherRefused:
        token = self.peek()
        if token.keyword is not None and token.keyword not in _READ_KEYWORDS:
            return _refuse(f"{token.keyword} is not allowed here", token.start)
        found = "the end of the statement" if token.kind == "end" else repr(token.text)
        return _refuse(f"{message}, found {found}", token.start)

    def nest(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise self.error("statement nested too deeply")

    # names
    def is_name(self, ahead: int = 0) -> bool:
        token = self.peek(ahead)
        return token.kind == "qname" or (token.kind == "word" and token.keyword is None)

    def name(self, what: str = "a name") -> Token:
        if not self.is_name():
            token = self.peek()
            if token.keyword is not None:
                raise self.error(f"expected {what} ({token.keyword} is a keyword here: "
                                 f"write `{token.text}` to use it as a name)")
            raise self.error(f"expected {what}")
        return self.take()

    def key(self) -> Token:
        """A property or map key: any word (keywords too), a `name`."""
        token = self.peek()
        if token.kind in ("word", "qname"):
            return self.take()
        raise self.error("expected a property name")

    # statement
    def statement(self) -> None:
        self.kw("EXPLAIN", "PROFILE")
        self.query()
        ended = self.op(";")
        if self.peek().kind != "end":
            raise self.error("exactly one statement allowed" if ended else
                             "unexpected text after the statement")

    def query(self) -> None:
        self.single_query()
        while self.kw("UNION"):
            self.kw("ALL")
            self.single_query()

    def single_query(self) -> None:
        while True:
            if self.is_kw("MATCH", "OPTIONAL"):
                self.match()
            elif self.is_kw("UNWIND"):
                self.take()
                self.expression()
                self.expect_kw("AS")
                self.name("a variable")
            elif self.is_kw("CALL"):
                self.call()
            elif self.is_kw("WITH"):
                self.take()
                self.projection_body()
                if self.kw("WHERE"):
                    self.expression()
            elif self.is_kw("RETURN"):
                self.take()
                self.projection_body()
                return
            else:
                raise self.error("expected MATCH, OPTIONAL MATCH, UNWIND, WITH, CALL or "
                                 "RETURN")

    def match(self) -> None:
        if self.kw("OPTIONAL"):
            self.expect_kw("MATCH")
        else:
            self.expect_kw("MATCH")
        self.pattern()
        if self.kw("WHERE"):
            self.expression()

    def call(self) -> None:
        self.expect_kw("CALL")
        token = self.peek()
        if token.kind != "word" or token.text.lower() not in CALLABLE:
            raise _refuse(f"CALL {token.text or '(nothing)'} is not allowed; CALL is limited "
                          f"to {', '.join(sorted(CALLABLE))}", token.start)
        self.take()
        self.calls.append(token.text.lower())
        if not self.is_op("("):
            raise self.error(f"CALL {token.text} needs its arguments in parentheses: "
                             f"CALL {token.text}(…)")
        self.take()
        if not self.is_op(")"):
            while True:
                if self.peek().kind not in ("string", "number"):
                    raise self.error("CALL arguments must be literals")
                self.take()
                if not self.op(","):
                    break
        self.expect_op(")")
        if self.kw("WHERE"):
            self.expression()
        if self.kw("YIELD"):
            while True:
                self.name("a yield item")
                if self.kw("AS"):
                    self.name("a variable")
                if not self.op(","):
                    break

    def projection_body(self) -> None:
        self.kw("DISTINCT")
        more = self.op(",") if self.op("*") else True
        while more:
            self.expression()
            if self.kw("AS"):
                self.name("an alias")
            more = self.op(",")
        if self.kw("ORDER"):
            self.expect_kw("BY")
            while True:
                self.expression()
                self.kw("ASC", "ASCENDING", "DESC", "DESCENDING")
                if not self.op(","):
                    break
        if self.kw("SKIP"):
            self.expression()
        if self.kw("LIMIT"):
            self.expression()

    # patterns
    def pattern(self) -> None:
        while True:
            if self.is_name() and self.is_op("=", ahead=1):
                self.take()
                self.take()
            self.pattern_element()
            if not self.op(","):
                return

    def pattern_element(self) -> None:
        self.nest()
        if self.is_op("(") and self.is_op("(", ahead=1):
            self.take()
            self.pattern_element()
            self.expect_op(")")
        else:
            self.node_pattern()
            while self.is_op("<", "-"):
                self.relationship()
                self.node_pattern()
        self.depth -= 1

    def node_pattern(self) -> None:
        self.expect_op("(")
        if self.is_name():
            self.take()
        elif self.peek().keyword is not None:
            self.name("a variable")  # refused, saying how to use the keyword as a name
        if self.op(":"):
            self.name("a label")
            while self.op("|", ":"):
                self.op(":")
                self.name("a label")
        if self.is_op("{"):
            self.properties()
        self.expect_op(")")

    def relationship(self) -> None:
        left = self.op("<")
        self.expect_op("-")
        if self.op("["):
            if self.is_name():
                self.take()
            if self.op(":"):
                self.name("a relationship type")
                while self.op("|"):
                    self.op(":")
                    self.name("a relationship type")
            if self.op("*"):
                self.recursive()
            if self.is_op("{"):
                self.properties()
            self.expect_op("]")
        self.expect_op("-")
        if self.op(">") and left:
            raise self.error("a relationship has one direction")

    def recursive(self) -> None:
        if self.kw("SHORTEST", "TRAIL", "ACYCLIC"):
            pass
        elif self.kw("ALL"):
            if not self.kw("SHORTEST"):
                self.expect_kw("WSHORTEST")
                self.weight()
        elif self.kw("WSHORTEST"):
            self.weight()
        if self.peek().kind == "number":
            self.integer()
            if self.op("..") and self.peek().kind == "number":
                self.integer()
        elif self.op("..") and self.peek().kind == "number":
            self.integer()
        if self.op("("):
            self.name("a variable")
            self.expect_op(",")
            self.name("a variable")
            if self.op("|"):
                self.expect_kw("WHERE")
                self.expression()
            self.expect_op(")")

    def weight(self) -> None:
        self.expect_op("(")
        self.key()
        self.expect_op(")")

    def integer(self) -> None:
        token = self.take()
        if token.kind != "number" or not token.text.isdigit():
            raise _refuse("expected a whole number", token.start)

    def properties(self) -> None:
        self.expect_op("{")
        if not self.is_op("}"):
            while True:
                self.key()
                self.expect_op(":")
                self.expression()
                if not self.op(","):
                    break
        self.expect_op("}")

    # expressions
    def expression(self) -> None:
        self.nest()
        self.binary(("OR",), lambda: self.binary(("XOR",), lambda: self.binary(
            ("AND",), self.not_expression)))
        self.depth -= 1

    def binary(self, words: tuple[str, ...], operand: object) -> None:
        assert callable(operand)
        operand()
        while self.kw(*words):
            operand()

    def not_expression(self) -> None:
        while self.kw("NOT"):
            pass
        self.arithmetic()
        if self.op("=", "<>", "<", "<=", ">", ">="):
            self.arithmetic()

    def arithmetic(self) -> None:
        self.string_list_null()
        while self.op("|", "&", "<<", ">>", "+", "-", "*", "/", "%", "^"):
            self.string_list_null()

    def string_list_null(self) -> None:
        self.unary()
        if self.op("=~") or self.kw("CONTAINS"):
            self.unary()
        elif self.is_kw("STARTS", "ENDS"):
            self.take()
            self.expect_kw("WITH")
            self.unary()
        elif self.kw("IS"):
            self.kw("NOT")
            self.expect_kw("NULL")
        else:
            while True:
                if self.kw("IN"):
                    self.unary()
                elif self.op("["):
                    if not self.is_op("..", ":"):
                        self.expression()
                    if self.op("..", ":") and not self.is_op("]"):
                        self.expression()
                    self.expect_op("]")
                else:
                    break

    def unary(self) -> None:
        while self.op("-", "+"):
            pass
        self.atom()
        while self.op("."):
            if not self.op("*"):
                self.key()
        self.op("!")

    def atom(self) -> None:
        self.nest()
        token = self.peek()
        if token.kind in ("number", "string", "param") or token.keyword in (
                "TRUE", "FALSE", "NULL"):
            self.take()
        elif self.is_op("["):
            self.take()
            if not self.is_op("]"):
                while True:
                    self.expression()
                    if not self.op(","):
                        break
            self.expect_op("]")
        elif self.is_op("{"):
            self.take()
            while True:
                if self.peek().kind == "string":
                    self.take()
                else:
                    self.key()
                self.expect_op(":")
                self.expression()
                if not self.op(","):
                    break
            self.expect_op("}")
        elif token.keyword == "CASE":
            self.case()
        elif self.is_op("("):
            self.parenthesised_or_path()
        elif token.keyword in ("EXISTS", "COUNT") and self.is_op("{", ahead=1):
            self.take()
            self.take()
            self.expect_kw("MATCH")
            self.pattern()
            if self.kw("WHERE"):
                self.expression()
            self.expect_op("}")
        elif token.keyword in ("ALL", "ANY", "NONE", "SINGLE") and self.is_op("(", ahead=1):
            self.take()
            self.take()
            self.name("a variable")
            self.expect_kw("IN")
            self.expression()
            self.expect_kw("WHERE")
            self.expression()
            self.expect_op(")")
        elif token.keyword == "COUNT" and self.is_op("(", ahead=1):
            self.take()
            self.take()
            if not self.op("*"):
                self.arguments()
            self.expect_op(")")
        elif token.keyword == "CAST" and self.is_op("(", ahead=1):
            self.take()
            self.take()
            self.expression()
            if self.kw("AS"):
                self.data_type()
            else:
                self.expect_op(",")
                self.expression()
            self.expect_op(")")
        elif self.is_op("(", ahead=1) and (self.is_name() or (
                token.keyword in _KEYWORD_FUNCTIONS)):
            self.take()
            self.take()
            self.arguments()
            self.expect_op(")")
        elif self.is_name():
            self.take()
        else:
            raise self.error("expected an expression")
        self.depth -= 1

    def arguments(self) -> None:
        """Inside ``f(`` … ``)``: [DISTINCT] arguments, named (``x := …``) or lambdas."""
        if self.is_op(")"):
            return
        self.kw("DISTINCT")
        while True:
            if self.is_name() and self.is_op(":", ahead=1) and self.is_op("=", ahead=2):
                self.take()
                self.take()
                self.take()
                self.expression()
            elif self.lambda_ahead():
                self.lambda_()
            else:
                self.expression()
            if not self.op(","):
                return

    def lambda_ahead(self) -> bool:
        if self.is_name():
            return self._arrow_at(1)
        if self.is_op("("):
            k = 1
            while self.is_name(ahead=k) and self.is_op(",", ahead=k + 1):
                k += 2
            return self.is_name(ahead=k) and self.is_op(")", ahead=k + 1) and \
                self._arrow_at(k + 2)
        return False

    def _arrow_at(self, ahead: int) -> bool:
        dash, head = self.peek(ahead), self.peek(ahead + 1)
        return (dash.kind == "op" and dash.text == "-" and head.kind == "op"
                and head.text == ">" and head.start == dash.end)

    def lambda_(self) -> None:
        if self.op("("):
            while True:
                self.name("a lambda variable")
                if not self.op(","):
                    break
            self.expect_op(")")
        else:
            self.name("a lambda variable")
        self.expect_op("-")
        self.expect_op(">")
        self.expression()

    def data_type(self) -> None:
        if self.kw("DECIMAL"):
            self.expect_op("(")
            self.integer()
            self.expect_op(",")
            self.integer()
            self.expect_op(")")
        else:
            self.name("a type")
        while self.op("["):
            if self.peek().kind == "number":
                self.integer()
            self.expect_op("]")

    def case(self) -> None:
        self.expect_kw("CASE")
        if not self.is_kw("WHEN"):
            self.expression()
        self.expect_kw("WHEN")
        while True:
            self.expression()
            self.expect_kw("THEN")
            self.expression()
            if not self.kw("WHEN"):
                break
        if self.kw("ELSE"):
            self.expression()
        self.expect_kw("END")

    def parenthesised_or_path(self) -> None:
        """``(`` starts a parenthesised expression or a path pattern ``(a)-[…]->(b)``:
        try the pattern first, go back if it is not one."""
        mark, depth = self.i, self.depth
        try:
            self.node_pattern()
            if self.is_op("<", "-"):
                while self.is_op("<", "-"):
                    self.relationship()
                    self.node_pattern()
                return
        except CypherRefused:
            pass
        self.i, self.depth = mark, depth
        self.expect_op("(")
        self.expression()
        self.expect_op(")")


@dataclass(frozen=True)
class CheckedCypher:
    text: str  # what the engine runs
    calls: tuple[str, ...]  # catalogue functions it CALLs


def check(cypher: str) -> CheckedCypher:
    """Parse ``cypher``; the text to run if it is one read-only statement, else
    CypherRefused with the reason and where."""
    tokens, clean = tokenize(cypher)
    if len(tokens) == 1:
        raise CypherRefused("empty statement")
    parser = _Parser(tokens)
    try:
        parser.statement()
    except RecursionError:
        raise CypherRefused("statement nested too deeply") from None
    end = tokens[-1].start
    last = tokens[-2]
    if last.kind == "op" and last.text == ";":
        end = last.start
    return CheckedCypher(clean[:end].strip(), tuple(parser.calls))


def check_read_only(cypher: str) -> str:
    """The statement to run (comments blanked, final ``;`` removed) if it is one read-only
    statement; else CypherRefused."""
    return check(cypher).text
