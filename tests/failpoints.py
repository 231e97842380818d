"""The engine's failpoints, enumerated from the code with `ast`, and the rules every slot transition keeps.

`enumerate_failpoints()` lists every `failpoint("name")` call under `runbook_lib/` (name, module, enclosing
function, line, and what happened before it on the paths that reach it: the journal entry recorded last and the
commands sent since). `rule_violations()` checks the rules of tests/unit/test_failpoints.py:

(a) every transition method of the Mover holds at least one failpoint. The transition methods are the methods
    `Mover._transition` dispatches to, plus every method they call (transitively) that both journals and sends a
    command that changes the cluster (today `_resolve_busy`, the BUSYKEY resolution). A new transition kind is
    picked up from the dispatcher; a renamed one is caught by `EXPECTED_TRANSITIONS`.
(b) in each transition method, on every path from a `journal.record(...)` to the next command sent to the cluster
    (`self._pipeline`, `self._each`, `self._migrate_rounds`, a client's `execute`/`execute_command`, a call through
    `self.client(...)`, or a Mover method that sends one of these), a `failpoint(...)` is called.
(c) failpoint names are unique and are string literals.
(d) docs/failpoints.md has one row per failpoint, naming its function and the journal entry recorded before it.
(e) in each transition method, on every path between two commands that change the cluster (SETSLOT, MIGRATE, DEL,
    RESTORE, ... or a call of a Mover method that sends one), a failpoint is called; loop iterations are exempt
    (a loop body's last command and its first in the next iteration).

Paths are followed through if/else, loops (back edges included for (b)), try, with, break/continue, and end at
return/raise; nested functions and lambdas are not part of their enclosing function. Formatting does not matter:
only the syntax tree is read.

`python -m tests.failpoints` prints the enumeration and the violations; `--rows` prints a docs/failpoints.md row
skeleton for every point the document lacks.
"""

from __future__ import annotations

import ast
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "runbook_lib"
MOVER = PACKAGE / "cluster" / "mover.py"
DOC = ROOT / "docs" / "failpoints.md"

MOVER_CLASS = "Mover"
DISPATCHER = "_transition"
EXPECTED_TRANSITIONS = {"_open", "_drain", "_handover", "_close", "_rescue", "_resolve_busy"}
"""Transition methods the rules must find; one missing means a rename (update this set) or a dispatcher moved."""

DIRECT_SENDS = {"_pipeline", "_each", "_migrate_rounds"}
"""Mover helpers that send commands to a node."""
CHANGING_HELPERS = {"_migrate_rounds": "MIGRATE"}
"""Helpers that send commands changing the cluster whatever their arguments say."""
CHANGING_WORDS = {"SETSLOT", "MIGRATE", "RESTORE", "RESTORE-ASKING", "DEL", "UNLINK", "SET", "ADDSLOTS",
                  "ADDSLOTSRANGE", "DELSLOTS", "DELSLOTSRANGE", "FORGET", "MEET", "REPLICATE", "FAILOVER", "RESET",
                  "FLUSHALL", "FLUSHDB"}
"""Command words in a send's arguments that make it change the cluster (reads: GETKEYSINSLOT, COUNTKEYSINSLOT,
DUMP, EXISTS, MEMORY USAGE, EVAL of the read-only big-key script)."""
CLIENT_FACTORIES = {"client", "node_client", "cluster_client"}
"""Calls that return a redis client; any method called on their result sends."""
NOISE_WORDS = {"CLUSTER", "ASKING", "KEYS", "MEMORY", "USAGE", "COMMAND"}
TRAIL = 6
"""Events kept per path for the 'before it' description."""


@dataclass(frozen=True)
class Failpoint:
    """One `failpoint("name")` call in the code."""

    name: str
    module: str
    """Path from the repository root, e.g. runbook_lib/cluster/mover.py."""
    function: str
    """Qualified name of the enclosing function, e.g. Mover._open."""
    line: int
    records: tuple[str, ...] = ()
    """Journal events recorded last before the point, on the paths through its function that reach it ("" when a
    path reaches it without a record in the function)."""
    trails: tuple[tuple[str, ...], ...] = ()
    """The last events before the point on each path: "journal:<event>", a command ("SETSLOT IMPORTING"), a helper
    ("self._resolve_busy()"), or "failpoint:<name>"."""

    @property
    def method(self) -> str:
        return self.function.rsplit(".", 1)[-1]

    def before(self) -> str:
        """What happened before it, in words: the journal entries and the commands sent since the last one."""
        parts = []
        for trail in self.trails:
            since = []
            for event in reversed(trail):
                if event.startswith("journal:"):
                    since.insert(0, "`" + event.split(":", 1)[1] + "` journaled")
                    break
                if not event.startswith("failpoint:"):
                    since.insert(0, event)
            text = ", then ".join(since) if since else "function entry"
            if text not in parts:
                parts.append(text)
        return "; or ".join(parts)


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


def _is_self_attr(node: ast.AST, names: set[str] | None = None) -> str | None:
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self":
        if names is None or node.attr in names:
            return node.attr
    return None


def _constants(node: ast.AST) -> list[str]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and isinstance(n.value, str)]


def _command_words(call: ast.Call) -> list[str]:
    words = []
    for value in _constants(call):
        word = value.upper()
        if value == word and re.fullmatch(r"[A-Z][A-Z-]+", value) and word not in NOISE_WORDS and word not in words:
            words.append(word)
    return words


def _describe_send(call: ast.Call, helper: str | None) -> tuple[str, bool]:
    words = _command_words(call)
    changing = any(w in CHANGING_WORDS for w in words)
    if helper in CHANGING_HELPERS:
        changing = True
        words = [CHANGING_HELPERS[helper]] + [w for w in words if w != CHANGING_HELPERS[helper]]
    if helper and helper not in DIRECT_SENDS:
        return f"self.{helper}()", changing
    return (" ".join(words) or (f"self.{helper}()" if helper else "a command")), changing


def _contains_client_factory(node: ast.AST) -> bool:
    for n in ast.walk(node):
        if isinstance(n, ast.Call):
            f = n.func
            if isinstance(f, ast.Name) and f.id in CLIENT_FACTORIES:
                return True
            if _is_self_attr(f, CLIENT_FACTORIES) or (isinstance(f, ast.Attribute) and f.attr == "get"
                                                      and _is_self_attr(f.value, {"_clients"})):
                return True
    return False


class _Classifier:
    """Which calls are records, failpoints and sends, for the methods of one class (`senders`: methods that send,
    `changers`: methods that send a command changing the cluster, each transitively)."""

    def __init__(self, senders: set[str] | None = None, changers: set[str] | None = None,
                 guards: dict[str, tuple[bool, bool]] | None = None) -> None:
        self.senders = set(DIRECT_SENDS) | set(senders or ())
        self.changers = set(CHANGING_HELPERS) | set(changers or ())
        self.guards = dict(guards or {})
        """method -> (entry guarded by a failpoint, a change left unguarded at its exit)"""

    def classify(self, call: ast.Call) -> Event | None:
        f = call.func
        line = call.lineno
        if (isinstance(f, ast.Name) and f.id == "failpoint") or (isinstance(f, ast.Attribute) and f.attr == "failpoint"):
            arg = call.args[0] if call.args else None
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "<not a literal>"
            return Event("failpoint", name, line)
        if isinstance(f, ast.Attribute) and f.attr == "record" and (
                (isinstance(f.value, ast.Attribute) and f.value.attr == "journal")
                or (isinstance(f.value, ast.Name) and f.value.id == "journal")):
            arg = call.args[0] if call.args else None
            name = arg.value if isinstance(arg, ast.Constant) and isinstance(arg.value, str) else "?"
            return Event("record", name, line)
        helper = _is_self_attr(f, self.senders)
        if helper:
            text, changing = _describe_send(call, helper)
            guarded, leaves = self.guards.get(helper, (False, True))
            return Event("send", text, line, changing or helper in self.changers, guarded, leaves)
        if isinstance(f, ast.Attribute) and (f.attr in ("execute", "execute_command")
                                             or _contains_client_factory(f.value)):
            text, changing = _describe_send(call, None)
            return Event("send", text, line, changing)
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
    loop's back edge: then the loop's own next commands do not count, what follows the loop does)."""
    trail: tuple[str, ...] = ()


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
                out.add(_Path((event.text, event.line), event.text, p.change, (p.trail + ("journal:" + event.text,))[-TRAIL:]))
            elif event.kind == "failpoint":
                self.reached.setdefault((event.text, event.line), set()).add(p)
                out.add(_Path(None, p.last_record, None, (p.trail + ("failpoint:" + event.text,))[-TRAIL:]))
            else:
                if p.record is not None:
                    key = ("b", p.record, event.line)
                    self.violations[key] = Violation(
                        "b", self.function, p.record[1],
                        f"journal entry {p.record[0]!r} (line {p.record[1]}) is followed by {event.text} "
                        f"(line {event.line}) with no failpoint between them")
                change = p.change
                if event.changing and not event.guarded:
                    if change is not None and not change[2] and change[1] != event.line:
                        key = ("e", change, event.line)
                        self.violations[key] = Violation(
                            "e", self.function, change[1],
                            f"{change[0]} (line {change[1]}) is followed by {event.text} (line {event.line}), both "
                            "changing the cluster, with no failpoint between them")
                if event.changing:
                    change = (event.text, event.line, False) if event.leaves_change else None
                out.add(_Path(None, p.last_record, change, (p.trail + (event.text,))[-TRAIL:]))
        return out


def _uncarried(p: _Path) -> _Path:
    """A path leaving a loop: a change carried over its back edge pairs with what follows the loop again."""
    if p.change is None or not p.change[2]:
        return p
    return _Path(p.record, p.last_record, (p.change[0], p.change[1], False), p.trail)


class _Walker:
    def __init__(self, classifier: _Classifier, flow: _Flow) -> None:
        self.c, self.flow = classifier, flow
        self.returned: set[_Path] = set()

    def expr(self, paths: set[_Path], node: ast.AST | None) -> set[_Path]:
        for event in self.c.events(node):
            paths = self.flow.step(paths, event)
        return paths

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
            a, ab, ac = self.block(s.body, paths)
            b, bb, bc = self.block(s.orelse, paths)
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
        return self.expr(paths, s), none, none

    def loop(self, s, entry: set[_Path]):
        infinite = isinstance(s, ast.While) and isinstance(s.test, ast.Constant) and bool(s.test.value)
        head = set(entry)
        brk: set[_Path] = set()
        for _ in range(8):
            at = self.expr(head, s.test if isinstance(s, ast.While) else s.iter)
            body, b, c = self.block(s.body, at)
            brk |= b
            # back edge: rule (e) does not pair a command with the loop's commands of the next iteration
            back = {_Path(p.record, p.last_record, p.change and (p.change[0], p.change[1], True), p.trail)
                    for p in body | c}
            grown = head | back
            if grown == head:
                break
            head = grown
        at = self.expr(head, s.test if isinstance(s, ast.While) else s.iter)
        exits = set() if infinite else at
        done, ob, oc = self.block(s.orelse, exits) if s.orelse else (exits, set(), set())
        return {_uncarried(p) for p in done | brk}, ob, oc


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


def _self_calls(fn: ast.AST) -> set[str]:
    return {n.func.attr for n in ast.walk(fn) if isinstance(n, ast.Call) and _is_self_attr(n.func)}


def _guards(methods: dict[str, ast.AST], sends: set[str], changes: set[str]) -> dict[str, tuple[bool, bool]]:
    """For each method that changes the cluster: whether every path to its first changing command passes a failpoint,
    and whether it can return with a changing command not followed by one (callees' answers used, to a fixpoint)."""
    guards: dict[str, tuple[bool, bool]] = {}
    for _ in range(4):
        found = {}
        for name in changes & set(methods):
            flow = _Flow(name)
            walker = _Walker(_Classifier(sends, changes, guards), flow)
            done, _, _ = walker.block(methods[name].body, {_Path(change=("<caller>", -1, False))})
            entry = not any(v.rule == "e" and v.line == -1 for v in flow.violations.values())
            leaves = any(p.change is not None for p in done | walker.returned)
            found[name] = (entry, leaves)
        if found == guards:
            break
        guards = found
    return guards


def _class_senders(methods: dict[str, ast.AST]) -> tuple[set[str], set[str]]:
    """Methods of a class that send commands, and those that send commands changing the cluster (transitively)."""
    base = _Classifier()
    sends = {name for name, fn in methods.items()
             if any(e.kind == "send" for e in base.events(fn))} | (DIRECT_SENDS & set(methods))
    changes = {name for name, fn in methods.items() if any(e.kind == "send" and e.changing for e in base.events(fn))}
    changes |= set(CHANGING_HELPERS) & set(methods)
    while True:
        more_s = {n for n, fn in methods.items() if n not in sends and _self_calls(fn) & sends}
        more_c = {n for n, fn in methods.items() if n not in changes and _self_calls(fn) & changes}
        if not more_s and not more_c:
            return sends, changes
        sends |= more_s
        changes |= more_c


@dataclass
class Analysis:
    failpoints: list[Failpoint]
    transitions: list[str]
    """Mover methods the rules (a), (b), (e) apply to."""
    violations: list[Violation]
    problems: list[str]
    """Failpoint calls the enumeration cannot name (not a string literal)."""
    events: set[str] = field(default_factory=set)
    """Journal events the transition methods record (what a journal's tail shows of a transition)."""


def _modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "failpoint(" in p.read_text(encoding="utf-8")
                  and p.name != "journal.py")


def analyse(paths: list[Path] | None = None, mover: Path | None = None) -> Analysis:
    """Enumerate the failpoints of `paths` (default: every module under runbook_lib/ that calls one) and check the
    transition rules on the Mover of `mover` (default: runbook_lib/cluster/mover.py)."""
    mover = mover or MOVER
    paths = list(paths) if paths is not None else _modules()
    if mover not in paths and mover.exists():
        paths.append(mover)
    found: list[Failpoint] = []
    violations: list[Violation] = []
    problems: list[str] = []
    transitions: list[str] = []
    events: set[str] = set()
    for path in paths:
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        rel = str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else str(path)
        functions = _functions(tree)
        by_class: dict[str | None, dict[str, ast.AST]] = {}
        for qual, fn, cls in functions:
            by_class.setdefault(cls, {})[fn.name] = fn
        senders: dict[str | None, tuple[set[str], set[str]]] = {
            cls: _class_senders(methods) if cls else (set(), set()) for cls, methods in by_class.items()}
        rule_fns: set[str] = set()
        if path == mover:
            methods = by_class.get(MOVER_CLASS, {})
            sends, changes = senders.get(MOVER_CLASS, (set(), set()))
            dispatched = _self_calls(methods[DISPATCHER]) & set(methods) if DISPATCHER in methods else set()
            reach, todo = set(dispatched), list(dispatched)
            while todo:
                for callee in _self_calls(methods[todo.pop()]) & set(methods):
                    if callee not in reach:
                        reach.add(callee)
                        todo.append(callee)
            records = {n for n, fn in methods.items() if any(e.kind == "record" for e in _Classifier().events(fn))}
            rule_fns = dispatched | {n for n in reach if n in records and n in changes}
            transitions = sorted(rule_fns, key=lambda n: methods[n].lineno)
            events = {e.text for n in rule_fns for e in _Classifier().events(methods[n]) if e.kind == "record"}
            missing = EXPECTED_TRANSITIONS - rule_fns
            if missing:
                violations.append(Violation("a", MOVER_CLASS, 0, f"transition methods not found as such: "
                                            f"{sorted(missing)} (renamed? not dispatched by {DISPATCHER}? update "
                                            "EXPECTED_TRANSITIONS in tests/failpoints.py)"))
        guards = {cls: _guards(by_class[cls], *senders[cls]) for cls in by_class if cls == MOVER_CLASS}
        for qual, fn, cls in functions:
            sends, changes = senders.get(cls, (set(), set()))
            flow = _Flow(qual)
            walker = _Walker(_Classifier(sends, changes, guards.get(cls)), flow)
            walker.block(fn.body, {_Path()})
            own = {(n.args[0].value if n.args and isinstance(n.args[0], ast.Constant) else None, n.lineno)
                   for n in _own_calls(fn) if _is_failpoint(n)}
            for (name, line), reaching in sorted(flow.reached.items(), key=lambda kv: kv[0][1]):
                if (name, line) not in own:
                    continue
                if name == "<not a literal>":
                    problems.append(f"{rel}:{line} {qual}: failpoint name is not a string literal")
                    continue
                records = tuple(sorted({p.last_record for p in reaching}))
                trails = tuple(sorted({p.trail for p in reaching}))
                found.append(Failpoint(name, rel, qual, line, records, trails))
            for name, line in own:
                if not any(f.line == line and f.module == rel for f in found) and name != "<not a literal>":
                    found.append(Failpoint(name or "<not a literal>", rel, qual, line))  # unreachable code
            if cls == MOVER_CLASS and path == mover and fn.name in rule_fns:
                if not own:
                    violations.append(Violation("a", qual, fn.lineno, "a transition method without any failpoint"))
                violations.extend(sorted(flow.violations.values(), key=lambda v: (v.rule, v.line)))
    found.sort(key=lambda f: (f.module, f.line))
    return Analysis(found, transitions, violations, problems, events)


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


def _is_failpoint(call: ast.Call) -> bool:
    f = call.func
    return (isinstance(f, ast.Name) and f.id == "failpoint") or (isinstance(f, ast.Attribute) and f.attr == "failpoint")


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
        print(f"  {p.name:<32} {p.function:<24} {p.module}:{p.line}  before: {p.before()}")
    print("transition methods:", ", ".join(a.transitions))
    for v in a.violations:
        print("  " + str(v))
    for line in a.problems + doc_problems(a.failpoints):
        print("  " + line)
    return 1 if a.violations or a.problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
