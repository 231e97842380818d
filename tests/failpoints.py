"""The engine's failpoints, enumerated from the code with `ast`, and the rules every slot transition keeps.

`enumerate_failpoints()` lists every `failpoint("name")` call under `runbook_lib/` (name, module, enclosing
function, line, and what happened before it on the paths that reach it: the journal entry recorded last and the
commands sent since). `analyse()` also checks the rules of tests/unit/test_failpoints.py:

(a) every transition method of `Transitions` (runbook_lib/cluster/transitions.py) holds at least one failpoint. The
    transition methods are the methods `Transitions.act` dispatches to, plus every method they call (transitively)
    that both journals and sends a command that changes the cluster (the BUSYKEY resolution, `_resolve_busy`). A new
    transition kind is picked up from the dispatcher; a renamed one is caught by `EXPECTED_TRANSITIONS`.
(b) in each transition method, on every path from a `journal.record(...)` to the next command sent to the cluster
    (`self.nodes.pipeline`, `self.nodes.each`, `self.rounds.migrate`, `self.rounds.sizes`, a client's
    `execute`/`execute_command`, a call through `self.nodes.client(...)`, or a method of the class that sends one of
    these), a `failpoint(...)` is called.
(c) failpoint names are unique string literals (without ':', which RUNBOOK_FAILPOINT uses for the hit count).
(d) docs/failpoints.md has one row per failpoint, naming its function and the journal entry recorded before it.
(e) in each transition method, on every path between two commands that change the cluster (SETSLOT, MIGRATE, DEL,
    RESTORE, a script that calls one, ... or a method of the class that sends one before any failpoint of its own), a
    failpoint is called. A command repeated by a loop is not paired with itself in the next iteration.

Paths are followed through if/else, loops (back edges included), try, with, break/continue, and end at
return/raise; nested functions and lambdas are not part of their enclosing function. Conditions on plain names are
tracked, so that `self.nodes.pipeline(node, [... for slot in unaware])` (which sends nothing for an empty list)
followed by `if unaware: failpoint(...)`, or loops over `first` and `then` with `if first and then: failpoint(...)`
between them, are understood. Formatting does not matter: only the syntax tree is read.

`python -m tests.failpoints` prints the enumeration and the violations; `--rows` prints a docs/failpoints.md row
skeleton for every point the document lacks.
"""

from __future__ import annotations

import ast
import itertools
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "runbook_lib"
TRANSITIONS = PACKAGE / "cluster" / "transitions.py"
DOC = ROOT / "docs" / "failpoints.md"

TRANSITIONS_CLASS = "Transitions"
DISPATCHER = "act"
EXPECTED_TRANSITIONS = {"_open", "_drain", "_handover", "_close", "_rescue", "_resolve_busy"}
"""Transition methods the rules must find; one missing means a rename (update this set) or a dispatcher moved."""

DIRECT_SENDS = {"pipeline", "each", "migrate", "sizes"}
"""Helpers that send commands to a node, called on an object the class holds (`self.nodes.pipeline`, `self.nodes.each`:
runbook_lib/cluster/nodes.py; `self.rounds.migrate`, `self.rounds.sizes`: runbook_lib/cluster/rounds.py) or on self."""
EMPTY_SENDS_NOTHING = {"pipeline"}
"""Helpers that send nothing for an empty command list (their second argument)."""
CHANGING_HELPERS = {"migrate": "MIGRATE"}
"""Helpers that send commands changing the cluster whatever their arguments say."""
CHANGING_WORDS = {"SETSLOT", "MIGRATE", "RESTORE", "RESTORE-ASKING", "DEL", "UNLINK", "SET", "ADDSLOTS",
                  "ADDSLOTSRANGE", "DELSLOTS", "DELSLOTSRANGE", "FORGET", "MEET", "REPLICATE", "FAILOVER", "RESET",
                  "FLUSHALL", "FLUSHDB", "EXPIRE", "PEXPIRE", "PERSIST", "HSET", "INCR"}
"""Command words that change the cluster (reads: GETKEYSINSLOT, COUNTKEYSINSLOT, DUMP, PTTL, EXISTS, MEMORY USAGE).
EVAL counts by the commands its script calls (a script that cannot be read counts as changing)."""
SCRIPT_WORDS = {"EVAL", "EVALSHA", "FCALL"}
CLIENT_FACTORIES = {"client", "node_client", "cluster_client"}
"""Calls that return a redis client; any method called on their result sends."""
NOISE_WORDS = {"CLUSTER", "ASKING", "KEYS", "USAGE", "COMMAND"}
MAX_PATHS = 4096


@dataclass(frozen=True)
class Failpoint:
    """One `failpoint("name")` call in the code."""

    name: str
    module: str
    """Path from the repository root, e.g. runbook_lib/cluster/transitions.py."""
    function: str
    """Qualified name of the enclosing function, e.g. Transitions._open."""
    line: int
    records: tuple[str, ...] = ()
    """Journal events recorded last before the point on the paths through its function that reach it ("" for a
    path with no record before it in the function)."""
    commands: tuple[str, ...] = ()
    """Commands sent since that record (or since the function's entry), on any path, in the order first met."""
    last_commands: tuple[str, ...] = ()
    """The last command sent before the point on each path ("" for none)."""
    sent: tuple[str, ...] = ()
    """Every command sent before it in its function, on any path (records or not)."""
    conditional: bool = False
    """Inside an if/loop/try: not every call of its function passes it."""
    in_loop: bool = False
    """Inside a loop of its function: passed once per iteration."""

    @property
    def method(self) -> str:
        return self.function.rsplit(".", 1)[-1]

    def before(self) -> str:
        """What happened before it, in words: the journal entries and the commands sent since."""
        recs = [f"`{r}` journaled" for r in self.records if r] + (["function entry"] if "" in self.records else [])
        text = " or ".join(recs) or "function entry"
        if self.commands:
            text += ", then " + ", ".join(self.commands)
        return text


@dataclass(frozen=True)
class Violation:
    rule: str
    function: str
    line: int
    message: str

    def __str__(self) -> str:
        return f"({self.rule}) {self.function} line {self.line}: {self.message}"


# -- events in evaluation order ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Event:
    kind: str  # record | failpoint | send
    text: str  # event name, failpoint name, or the command description
    line: int
    changing: bool = False
    guarded: bool = False
    """A call of a method whose every path to its first command changing the cluster passes a failpoint."""
    leaves_change: bool = True
    """Whether a change is left without a failpoint after it when the call returns (for a plain command: yes)."""
    over: str = ""
    """A name whose emptiness means the command is not sent (`self.nodes.pipeline(n, [... for x in NAME])`)."""


def _is_self_attr(node: ast.AST, names: set[str] | None = None) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        if names is None or node.attr in names:
            return node.attr
    return None


def _held_attr(node: ast.AST, names: set[str] | None = None) -> str | None:
    """`self.<object>.<name>`: a method of an object the class holds (`self.nodes.pipeline`)."""
    if isinstance(node, ast.Attribute) and _is_self_attr(node.value) and (names is None or node.attr in names):
        return node.attr
    return None


def _is_failpoint(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Name) and f.id == "failpoint") or (isinstance(f, ast.Attribute) and f.attr == "failpoint")


def _contains_client_factory(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name) and f.id in CLIENT_FACTORIES:
                return True
            if _is_self_attr(f, CLIENT_FACTORIES) or _held_attr(f, CLIENT_FACTORIES) or (
                    isinstance(f, ast.Attribute) and f.attr == "get" and _is_self_attr(f.value, {"_clients"})):
                return True
    return False


def _calls_self(node: ast.AST) -> bool:
    """Whether an expression calls a method of self or of an object it holds (a reply, not a list of commands)."""
    return any(isinstance(n, ast.Call) and (_is_self_attr(n.func) or _held_attr(n.func)) for n in ast.walk(node))


def _script_words(script: str) -> list[str]:
    return [w.upper() for w in re.findall(r"redis\.p?call\(\s*['\"]([A-Za-z-]+)['\"]", script)]


class _Classifier:
    """Which calls are records, failpoints and sends, for the methods of one class (`senders`: methods that send,
    `changers`: methods that send a command changing the cluster, `guards`: per changing method, whether a failpoint
    precedes its first change and whether it may return with a change not followed by one). `constants`: the
    module's string constants (scripts)."""

    def __init__(self, senders: set[str] | None = None, changers: set[str] | None = None,
                 guards: dict[str, tuple[bool, bool]] | None = None, constants: dict[str, str] | None = None,
                 fn: ast.AST | None = None) -> None:
        self.senders = set(DIRECT_SENDS) | set(senders or ())
        self.changers = set(CHANGING_HELPERS) | set(changers or ())
        self.guards = dict(guards or {})
        self.constants = dict(constants or {})
        self.locals: dict[str, list[ast.AST]] = {}
        """The function's local names -> the expressions assigned to them (a command list built before it is sent)."""
        if fn is not None:
            for n in ast.walk(fn):
                if isinstance(n, ast.Assign):
                    for t in n.targets:
                        for name in (x for x in ast.walk(t) if isinstance(x, ast.Name)):
                            self.locals.setdefault(name.id, []).append(n.value)

    def _expanded(self, call: ast.Call, depth: int = 2) -> list[ast.AST]:
        """The call's arguments and, `depth` levels down, what the local names they use were assigned."""
        nodes, seen = [call], set()
        frontier = [call]
        for _ in range(depth):
            more = []
            for node in frontier:
                for n in ast.walk(node):
                    if isinstance(n, ast.Name) and n.id in self.locals and n.id not in seen:
                        seen.add(n.id)
                        more += [v for v in self.locals[n.id] if not _calls_self(v)]
            nodes += more
            frontier = more
        return nodes

    def words(self, call: ast.Call) -> tuple[list[str], bool]:
        """The command words of a send (in its arguments, or in the local lists they name) and whether it changes
        the cluster."""
        words: list[str] = []
        scripts: list[str | None] = []
        for n in (x for node in self._expanded(call) for x in ast.walk(node)):
            if isinstance(n, ast.Constant) and isinstance(n.value, str):
                v = n.value
                if v == v.upper() and re.fullmatch(r"[A-Z][A-Z-]+", v) and v not in NOISE_WORDS and v not in words:
                    words.append(v)
        if any(w in SCRIPT_WORDS for w in words):
            nodes = [x for node in self._expanded(call) for x in ast.walk(node)]
            names = [n.id for n in nodes if isinstance(n, ast.Name) and n.id in self.constants]
            literal = [n.value for n in nodes if isinstance(n, ast.Constant) and isinstance(n.value, str)
                       and "redis." in n.value]
            scripts = [self.constants[n] for n in names] + literal or [None]
        changing = any(w in CHANGING_WORDS for w in words)
        for script in scripts:
            inner = _script_words(script) if script is not None else []
            if script is None or any(w in CHANGING_WORDS for w in inner):
                changing = True
            words += [w for w in inner if w not in words and w not in NOISE_WORDS]
        return words, changing

    def classify(self, call: ast.Call) -> Event | None:
        f = call.func
        line = call.lineno
        if _is_failpoint(call):
            arg = call.args[0] if call.args else None
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<not a literal>"
            return Event("failpoint", name, line)
        if isinstance(f, ast.Attribute) and f.attr == "record" and (
                (isinstance(f.value, ast.Attribute) and f.value.attr == "journal")
                or (isinstance(f.value, ast.Name) and f.value.id == "journal")):
            arg = call.args[0] if call.args else None
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "?"
            return Event("record", name, line)
        helper = _is_self_attr(f, self.senders) or _held_attr(f, DIRECT_SENDS)
        if helper:
            words, changing = self.words(call)
            if helper in CHANGING_HELPERS:
                changing = True
                words = [CHANGING_HELPERS[helper]] + [w for w in words if w != CHANGING_HELPERS[helper]]
            text = " ".join(words) if helper in DIRECT_SENDS else f"{ast.unparse(f)}()"
            guarded, leaves = self.guards.get(helper, (False, True))
            over = ""
            if helper in EMPTY_SENDS_NOTHING and len(call.args) >= 2 and isinstance(call.args[1], ast.ListComp):
                gens = call.args[1].generators
                if len(gens) == 1 and isinstance(gens[0].iter, ast.Name) and not gens[0].ifs:
                    over = gens[0].iter.id
            return Event("send", text or f"{ast.unparse(f)}()", line, changing or helper in self.changers, guarded,
                         leaves, over)
        if isinstance(f, ast.Attribute) and (f.attr in ("execute", "execute_command")
                                             or _contains_client_factory(f.value)):
            words, changing = self.words(call)
            return Event("send", " ".join(words) or "a command", line, changing)
        return None

    def events(self, node: ast.AST | None) -> list[Event]:
        """Events of an expression (or a simple statement) in evaluation order: a call's callee and arguments first,
        then the call itself; nested functions and lambdas are skipped (a function given itself: its body's)."""
        out: list[Event] = []
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            for stmt in node.body:
                self._walk(stmt, out)
        else:
            self._walk(node, out)
        return out

    def _walk(self, node: ast.AST | None, out: list[Event]) -> None:
        if node is None or isinstance(node, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return
        if isinstance(node, ast.Call):
            self._walk(node.func, out)
            for a in node.args:
                self._walk(a, out)
            for k in node.keywords:
                self._walk(k.value, out)
            event = self.classify(node)
            if event is not None:
                out.append(event)
            return
        if isinstance(node, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            for gen in node.generators:
                self._walk(gen.iter, out)
                for cond in gen.ifs:
                    self._walk(cond, out)
            if isinstance(node, ast.DictComp):
                self._walk(node.key, out)
                self._walk(node.value, out)
            else:
                self._walk(node.elt, out)
            return
        for child in ast.iter_child_nodes(node):
            self._walk(child, out)


# -- paths through a function ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Path:
    record: tuple[str, int] | None = None
    """The last journal record on this path whose gap to a command is still open (no failpoint, no send since)."""
    last_record: str = ""
    change: tuple[str, int, bool] | None = None
    """The last command changing the cluster not yet followed by a failpoint: (description, line, carried over a
    loop's back edge: then the same command in the next iteration does not count)."""
    since: tuple[str, ...] = ()
    """Distinct commands sent since the last record (or the function's entry)."""
    sent: tuple[str, ...] = ()
    """Distinct commands sent since the function's entry."""
    last: str = ""
    empty: frozenset = frozenset()
    nonempty: frozenset = frozenset()
    """Names known empty / non-empty on this path (from if-tests and loops over them)."""


def _constrain(p: _Path, empty=(), nonempty=()) -> _Path | None:
    e, n = p.empty | set(empty), p.nonempty | set(nonempty)
    if e & n:
        return None
    return replace(p, empty=frozenset(e), nonempty=frozenset(n))


def _forget(p: _Path, names: set[str]) -> _Path:
    if not (names & (p.empty | p.nonempty)):
        return p
    return replace(p, empty=p.empty - names, nonempty=p.nonempty - names)


def _conditions(test: ast.AST, truth: bool) -> list[tuple[set, set]]:
    """Alternatives (names empty, names non-empty) under which `test` has this truth value ([(∅, ∅)]: unknown)."""
    if isinstance(test, ast.Name):
        return [(set(), {test.id})] if truth else [({test.id}, set())]
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        return _conditions(test.operand, not truth)
    if isinstance(test, ast.BoolOp):
        parts = [_conditions(v, truth) for v in test.values]
        every = isinstance(test.op, ast.And) == truth
        if every:
            return [(set().union(*(a[0] for a in combo)), set().union(*(a[1] for a in combo)))
                    for combo in itertools.product(*parts)]
        return [alt for part in parts for alt in part]
    return [(set(), set())]


def _assigned_names(s: ast.stmt) -> set[str]:
    targets = []
    if isinstance(s, ast.Assign):
        targets = s.targets
    elif isinstance(s, (ast.AugAssign, ast.AnnAssign)):
        targets = [s.target]
    elif isinstance(s, (ast.For, ast.AsyncFor)):
        targets = [s.target]
    return {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}


@dataclass
class _Flow:
    """What one function's paths meet: failpoints with the paths reaching them, and rule violations."""

    function: str
    reached: dict[tuple[str, int], set[_Path]] = field(default_factory=dict)
    violations: dict[tuple, Violation] = field(default_factory=dict)

    def step(self, paths: set[_Path], event: Event) -> set[_Path]:
        out = set()
        for p in paths:
            if event.kind == "record":
                out.add(replace(p, record=(event.text, event.line), last_record=event.text, since=()))
            elif event.kind == "failpoint":
                self.reached.setdefault((event.text, event.line), set()).add(p)
                out.add(replace(p, record=None, change=None))
            else:
                if event.over and event.over not in p.nonempty:
                    quiet = _constrain(p, empty={event.over})
                    if quiet is not None:
                        out.add(quiet)  # an empty list: nothing sent
                    if event.over in p.empty:
                        continue
                    p = _constrain(p, nonempty={event.over})
                out.add(self._send(p, event))
        return out

    def _send(self, p: _Path, event: Event) -> _Path:
        if p.record is not None:
            self.violations[("b", p.record, event.line)] = Violation(
                "b", self.function, p.record[1],
                f"journal entry {p.record[0]!r} (line {p.record[1]}) is followed by {event.text} (line {event.line}) "
                "with no failpoint between them")
        change = p.change
        if event.changing and not event.guarded and change is not None and not (change[2] and change[1] == event.line):
            self.violations[("e", change[:2], event.line)] = Violation(
                "e", self.function, change[1],
                f"{change[0]} (line {change[1]}) is followed by {event.text} (line {event.line}), both changing the "
                "cluster, with no failpoint between them")
        if event.changing:
            change = (event.text, event.line, False) if event.leaves_change else None
        since = p.since if event.text in p.since else p.since + (event.text,)
        sent = p.sent if event.text in p.sent else p.sent + (event.text,)
        return replace(p, record=None, change=change, since=since, sent=sent, last=event.text)


class _Walker:
    def __init__(self, classifier: _Classifier, flow: _Flow) -> None:
        self.c, self.flow = classifier, flow
        self.returned: set[_Path] = set()

    def expr(self, paths: set[_Path], node: ast.AST | None) -> set[_Path]:
        for event in self.c.events(node):
            paths = self.flow.step(paths, event)
            if len(paths) > MAX_PATHS:
                raise RuntimeError(f"{self.flow.function}: too many paths to follow")
        return paths

    def branch(self, paths: set[_Path], test: ast.AST, truth: bool) -> set[_Path]:
        out = set()
        for p in paths:
            for empty, nonempty in _conditions(test, truth):
                q = _constrain(p, empty, nonempty)
                if q is not None:
                    out.add(q)
        return out

    def block(self, stmts: list[ast.stmt], paths: set[_Path]):
        """(fall-through paths, break paths, continue paths)."""
        brk: set[_Path] = set()
        cont: set[_Path] = set()
        for stmt in stmts:
            if not paths:
                break
            paths, b, c = self.stmt(stmt, paths)
            brk |= b
            cont |= c
        return paths, brk, cont

    def stmt(self, s: ast.stmt, paths: set[_Path]):
        none: set[_Path] = set()
        if isinstance(s, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return paths, none, none
        if isinstance(s, ast.Return):
            self.returned |= self.expr(paths, s)
            return none, none, none
        if isinstance(s, ast.Raise):
            self.expr(paths, s)
            return none, none, none
        if isinstance(s, ast.Break):
            return none, paths, none
        if isinstance(s, ast.Continue):
            return none, none, paths
        if isinstance(s, ast.If):
            paths = self.expr(paths, s.test)
            a, ab, ac = self.block(s.body, self.branch(paths, s.test, True))
            b, bb, bc = self.block(s.orelse, self.branch(paths, s.test, False))
            return a | b, ab | bb, ac | bc
        if isinstance(s, (ast.For, ast.AsyncFor, ast.While)):
            return self.loop(s, paths)
        if isinstance(s, (ast.With, ast.AsyncWith)):
            for item in s.items:
                paths = self.expr(paths, item.context_expr)
            return self.block(s.body, paths)
        if isinstance(s, ast.Try) or type(s).__name__ == "TryStar":
            body, bb, bc = self.block(s.body, paths)
            handlers_in = paths | body
            out, brk, cont = set(), set(bb), set(bc)
            for h in s.handlers:
                hp, hb, hc = self.block(h.body, handlers_in)
                out |= hp
                brk |= hb
                cont |= hc
            ep, eb, ec = self.block(s.orelse, body)
            out |= ep
            brk |= eb
            cont |= ec
            if s.finalbody:
                out, fb, fc = self.block(s.finalbody, out)
                brk |= fb
                cont |= fc
            return out, brk, cont
        if type(s).__name__ == "Match":
            paths = self.expr(paths, s.subject)
            out, brk, cont = set(), set(), set()
            for case in s.cases:
                cp, cb, cc = self.block(case.body, paths)
                out |= cp
                brk |= cb
                cont |= cc
            return out, brk, cont
        paths = self.expr(paths, s)
        names = _assigned_names(s)
        return ({_forget(p, names) for p in paths} if names else paths), none, none

    def loop(self, s, entry: set[_Path]):
        """A loop's exits: without an iteration (a `for` over a name: that name empty), after iterations, or by
        break. A `for` over a plain name known non-empty runs at least once; known empty, never."""
        is_for = not isinstance(s, ast.While)
        infinite = not is_for and isinstance(s.test, ast.Constant) and bool(s.test.value)
        over = s.iter.id if is_for and isinstance(s.iter, ast.Name) else None
        entry = self.expr(entry, s.iter if is_for else s.test)
        skip = {q for p in entry if (q := _constrain(p, empty={over}) if over else p) is not None
                and not (over and over in p.nonempty)} if not infinite else set()
        runs = {q for p in entry if (q := _constrain(p, nonempty={over}) if over else p) is not None}
        if is_for:
            targets = _assigned_names(s)
            runs = {_forget(p, targets) for p in runs}
        head, brk, back_all = set(runs), set(), set()
        for _ in range(8):
            body, b, c = self.block(s.body, head)
            brk |= b
            back = {replace(p, change=p.change and (p.change[0], p.change[1], True)) for p in body | c}
            back_all |= back
            again = back if is_for else self.expr(back, s.test)
            grown = head | again
            if grown == head:
                break
            head = grown
        after = skip | ({p for p in back_all} if is_for else self.expr(back_all, s.test) if not infinite else set())
        done, ob, oc = self.block(s.orelse, after) if s.orelse else (after, set(), set())
        out = {replace(p, change=p.change and (p.change[0], p.change[1], False)) for p in done | brk}
        return out, ob, oc


# -- modules, classes, functions -------------------------------------------------------------------------------------


def _functions(tree: ast.Module):
    """(qualified name, node, class name or None) of every function, methods included."""
    out = []

    def visit(node, prefix: str, cls: str | None):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                out.append((prefix + child.name, child, cls))
                visit(child, prefix + child.name + ".", None)
            elif isinstance(child, ast.ClassDef):
                visit(child, prefix + child.name + ".", child.name)
    visit(tree, "", None)
    return out


def _module_constants(tree: ast.Module) -> dict[str, str]:
    return {t.id: s.value.value for s in tree.body if isinstance(s, ast.Assign) and isinstance(s.value, ast.Constant)
            and isinstance(s.value.value, str) for t in s.targets if isinstance(t, ast.Name)}


def _self_calls(fn: ast.AST) -> set[str]:
    return {n.func.attr for n in ast.walk(fn) if isinstance(n, ast.Call) and _is_self_attr(n.func)}


def _own_calls(fn: ast.AST):
    """Calls in a function's own body (not in nested functions or lambdas)."""
    stack = list(ast.iter_child_nodes(fn))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Call):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _class_senders(methods: dict[str, ast.AST], constants: dict[str, str]) -> tuple[set[str], set[str]]:
    """Methods of a class that send commands, and those that send commands changing the cluster (transitively)."""
    events = {name: _Classifier(constants=constants, fn=fn).events(fn) for name, fn in methods.items()}
    sends = {n for n, ev in events.items() if any(e.kind == "send" for e in ev)} | (DIRECT_SENDS & set(methods))
    changes = {n for n, ev in events.items() if any(e.kind == "send" and e.changing for e in ev)}
    changes |= set(CHANGING_HELPERS) & set(methods)
    while True:
        more_s = {n for n, fn in methods.items() if n not in sends and _self_calls(fn) & sends}
        more_c = {n for n, fn in methods.items() if n not in changes and _self_calls(fn) & changes}
        if not more_s and not more_c:
            return sends, changes
        sends |= more_s
        changes |= more_c


def _guards(methods: dict[str, ast.AST], sends: set[str], changes: set[str],
            constants: dict[str, str]) -> dict[str, tuple[bool, bool]]:
    """For each method that changes the cluster: whether every path to its first changing command passes a failpoint,
    and whether it can return with a changing command not followed by one (callees' answers used, to a fixpoint)."""
    guards: dict[str, tuple[bool, bool]] = {}
    for _ in range(4):
        found = {}
        for name in changes & set(methods):
            flow = _Flow(name)
            walker = _Walker(_Classifier(sends, changes, guards, constants, methods[name]), flow)
            done, _, _ = walker.block(methods[name].body, {_Path(change=("<caller>", -1, False))})
            entry = not any(v.rule == "e" and v.line == -1 for v in flow.violations.values())
            leaves = any(p.change is not None for p in done | walker.returned)
            found[name] = (entry, leaves)
        if found == guards:
            break
        guards = found
    return guards


@dataclass
class Analysis:
    failpoints: list[Failpoint]
    transitions: list[str]
    """Transitions methods the rules (a), (b), (e) apply to."""
    violations: list[Violation]
    problems: list[str]
    """Failpoint calls the enumeration cannot name (not a string literal)."""
    events: set[str] = field(default_factory=set)
    """Journal events the transition methods record (what a journal's tail shows of a transition)."""


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "failpoint(" in p.read_text(encoding="utf-8")
                  and p.name != "journal.py")


def _nesting(fn: ast.AST, call: ast.Call,
             kinds: tuple = (ast.If, ast.For, ast.While, ast.Try, ast.With, ast.AsyncFor, ast.IfExp)) -> bool:
    """Whether a call sits inside a statement of these kinds in its function (default: if/loop/try/with)."""
    def inside(node, nested: bool) -> bool | None:
        for child in ast.iter_child_nodes(node):
            if child is call:
                return nested
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                continue
            found = inside(child, nested or isinstance(child, kinds))
            if found is not None:
                return found
        return None
    return bool(inside(fn, False))


def analyse(paths: list[Path] | None = None, transitions: Path | None = None) -> Analysis:
    """Enumerate the failpoints of `paths` (default: every module under runbook_lib/ that calls one) and check the
    transition rules on the `Transitions` class of `transitions` (default: runbook_lib/cluster/transitions.py)."""
    transitions_path = transitions or TRANSITIONS
    paths = list(paths) if paths is not None else _modules()
    if transitions_path not in paths and transitions_path.exists():
        paths.append(transitions_path)
    found: list[Failpoint] = []
    violations: list[Violation] = []
    problems: list[str] = []
    rule_methods: list[str] = []
    events: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        constants = _module_constants(tree)
        functions = _functions(tree)
        by_class: dict[str | None, dict[str, ast.AST]] = {}
        for qual, fn, cls in functions:
            by_class.setdefault(cls, {})[fn.name] = fn
        senders = {cls: _class_senders(methods, constants) if cls else (set(), set())
                   for cls, methods in by_class.items()}
        guards = {cls: _guards(by_class[cls], *senders[cls], constants) for cls in by_class if cls == TRANSITIONS_CLASS}
        rule_fns: set[str] = set()
        if path == transitions_path:
            methods = by_class.get(TRANSITIONS_CLASS, {})
            sends, changes = senders.get(TRANSITIONS_CLASS, (set(), set()))
            dispatched = _self_calls(methods[DISPATCHER]) & set(methods) if DISPATCHER in methods else set()
            reach, todo = set(dispatched), list(dispatched)
            while todo:
                for callee in _self_calls(methods[todo.pop()]) & set(methods):
                    if callee not in reach:
                        reach.add(callee)
                        todo.append(callee)
            base = _Classifier(constants=constants)
            records = {n for n, fn in methods.items() if any(e.kind == "record" for e in base.events(fn))}
            rule_fns = dispatched | {n for n in reach if n in records and n in changes}
            rule_methods = sorted(rule_fns, key=lambda n: methods[n].lineno)
            events = {e.text for n in rule_fns for e in base.events(methods[n]) if e.kind == "record"}
            missing = EXPECTED_TRANSITIONS - rule_fns
            if missing:
                violations.append(Violation("a", TRANSITIONS_CLASS, 0, f"transition methods not found as such: "
                                            f"{sorted(missing)} (renamed? not dispatched by {DISPATCHER}? update "
                                            "EXPECTED_TRANSITIONS in tests/failpoints.py)"))
        for qual, fn, cls in functions:
            sends, changes = senders.get(cls, (set(), set()))
            flow = _Flow(qual)
            walker = _Walker(_Classifier(sends, changes, guards.get(cls), constants, fn), flow)
            walker.block(fn.body, {_Path()})
            calls = [n for n in _own_calls(fn) if _is_failpoint(n)]
            for call in sorted(calls, key=lambda c: c.lineno):
                arg = call.args[0] if call.args else None
                if not (isinstance(arg, ast.Constant) and isinstance(arg.value, str)):
                    problems.append(f"{rel}:{call.lineno} {qual}: failpoint name is not a string literal")
                    continue
                reaching = flow.reached.get((arg.value, call.lineno), set())
                commands: list[str] = []
                sent: list[str] = []
                for p in sorted(reaching, key=lambda p: (-len(p.since), p.since)):
                    commands += [c for c in p.since if c not in commands]
                for p in sorted(reaching, key=lambda p: (-len(p.sent), p.sent)):
                    sent += [c for c in p.sent if c not in sent]
                found.append(Failpoint(arg.value, rel, qual, call.lineno,
                                       records=tuple(sorted({p.last_record for p in reaching})),
                                       commands=tuple(commands),
                                       last_commands=tuple(sorted({p.last for p in reaching})),
                                       sent=tuple(sent), conditional=_nesting(fn, call),
                                       in_loop=_nesting(fn, call, (ast.For, ast.While, ast.AsyncFor))))
            if cls == TRANSITIONS_CLASS and path == transitions_path and fn.name in rule_fns:
                if not calls:
                    violations.append(Violation("a", qual, fn.lineno, "a transition method without any failpoint"))
                violations.extend(sorted(flow.violations.values(), key=lambda v: (v.rule, v.line)))
    found.sort(key=lambda f: (f.module, f.line))
    return Analysis(found, rule_methods, violations, problems, events)


def enumerate_failpoints() -> list[Failpoint]:
    """Every failpoint in the code, in module and line order."""
    return analyse().failpoints


def rule_violations() -> list[Violation]:
    return analyse().violations


# -- docs/failpoints.md ----------------------------------------------------------------------------------------------

DOC_ROW = re.compile(r"^\|\s*`(?P<name>[A-Za-z0-9_.:-]+)`\s*\|(?P<rest>.*)\|\s*$")


def documented(doc: Path = DOC) -> dict[str, list[str]]:
    """Rows of the document's failpoint tables: name -> its other cells (function, before it, crash, resume)."""
    rows: dict[str, list[str]] = {}
    dupes = []
    for line in doc.read_text(encoding="utf-8").splitlines():
        m = DOC_ROW.match(line)
        if m:
            cells = [c.strip() for c in m["rest"].split("|")]
            if m["name"] in rows:
                dupes.append(m["name"])
            rows[m["name"]] = cells
    if dupes:
        rows["__duplicates__"] = dupes
    return rows


def doc_problems(points: list[Failpoint] | None = None, doc: Path = DOC) -> list[str]:
    """Rule (d): the document's rows against the code: every point has a row and every row a point, the row names
    the point's function and the journal entry the code records before it."""
    points = enumerate_failpoints() if points is None else points
    rows = documented(doc)
    out = [f"{doc.name}: duplicate rows for {rows.pop('__duplicates__')}"] if "__duplicates__" in rows else []
    code = {p.name: p for p in points}
    for name in sorted(set(code) - set(rows)):
        out.append(f"{doc.name} lacks a row for failpoint {name!r} ({code[name].function}, "
                   f"{code[name].module}:{code[name].line}); `python -m tests.failpoints --rows` prints a skeleton")
    for name in sorted(set(rows) - set(code)):
        out.append(f"{doc.name} has a row for {name!r}, which the code no longer has")
    for name in sorted(set(rows) & set(code)):
        p, cells = code[name], rows[name]
        if len(cells) < 4:
            out.append(f"{doc.name} row {name!r}: 5 cells expected (name, function, before it, a crash leaves, "
                       "resume must)")
            continue
        if f"`{p.function}`" not in cells[0]:
            out.append(f"{doc.name} row {name!r}: the function is `{p.function}`, the row says {cells[0]!r}")
        for event in p.records:
            if event and f"`{event}`" not in cells[1]:
                out.append(f"{doc.name} row {name!r}: the code journals `{event}` before it; the 'before it' cell "
                           f"does not name it ({cells[1]!r})")
        if any(not c or c.upper().startswith("TODO") for c in cells[:4]):
            out.append(f"{doc.name} row {name!r}: a cell is empty or TODO")
    return out


def skeleton_row(p: Failpoint) -> str:
    return f"| `{p.name}` | `{p.function}` | {p.before()} | TODO | TODO |"


def main(argv: list[str]) -> int:
    a = analyse()
    if "--rows" in argv:
        rows = documented()
        for p in a.failpoints:
            if p.name not in rows:
                print(skeleton_row(p))
        return 0
    print("failpoints:")
    for p in a.failpoints:
        print(f"  {p.name:<22} {p.function:<24} {p.module}:{p.line}{'  (conditional)' if p.conditional else ''}\n"
              f"      before: {p.before()}")
    print("transition methods:", ", ".join(a.transitions))
    for v in a.violations:
        print("  " + str(v))
    for line in a.problems + doc_problems(a.failpoints):
        print("  " + line)
    return 1 if a.violations or a.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
