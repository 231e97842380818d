"""Failpoints enumerated from the code: every slot transition (`Transitions`) can be crashed between its journal entry
and its commands, and between the commands that change the cluster; names unique; docs/failpoints.md in step.

The rules are stated in tests/failpoints.py; `python -m tests.failpoints` prints the enumeration and what is missing.
"""

from __future__ import annotations

import ast
import textwrap

import pytest

from tests import failpoints as fp


@pytest.fixture(scope="module")
def analysis() -> fp.Analysis:
    return fp.analyse()


def _listing(violations) -> str:
    return "\n".join(str(v) for v in violations)


def test_the_enumeration_finds_every_failpoint_call_in_the_package(analysis):
    calls = []
    for path in fp.PACKAGE.rglob("*.py"):
        if path.name == "journal.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls += [n for n in ast.walk(tree) if isinstance(n, ast.Call) and fp._is_failpoint(n)]
    assert len(analysis.failpoints) + len(analysis.problems) == len(calls) > 0
    assert all(p.function and p.line for p in analysis.failpoints)


def test_rule_a_every_transition_method_has_a_failpoint(analysis):
    assert set(analysis.transitions) >= fp.EXPECTED_TRANSITIONS
    bad = [v for v in analysis.violations if v.rule == "a"]
    if bad:
        pytest.fail("transition methods without a failpoint:\n" + _listing(bad), pytrace=False)


def test_rule_b_a_failpoint_between_every_journal_entry_and_the_next_command(analysis):
    bad = [v for v in analysis.violations if v.rule == "b"]
    if bad:
        pytest.fail("journal entries followed by a command with no failpoint between:\n" + _listing(bad), pytrace=False)


def test_rule_e_a_failpoint_between_the_commands_of_one_transition(analysis):
    bad = [v for v in analysis.violations if v.rule == "e"]
    if bad:
        pytest.fail("commands changing the cluster with no failpoint between:\n" + _listing(bad), pytrace=False)


def test_rule_c_failpoint_names_are_unique_literals(analysis):
    assert not analysis.problems, analysis.problems
    names = [p.name for p in analysis.failpoints]
    dupes = sorted({n for n in names if names.count(n) > 1})
    assert not dupes, "failpoint names used twice: " + ", ".join(
        f"{n} ({', '.join(p.function for p in analysis.failpoints if p.name == n)})" for n in dupes)
    assert all(":" not in n for n in names), "':' separates the hit count in RUNBOOK_FAILPOINT"


def test_rule_d_docs_failpoints_md_lists_every_point_and_no_other(analysis):
    problems = fp.doc_problems(analysis.failpoints)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


# -- the analysis itself, on small pieces of code --------------------------------------------------------------------


def _analyse(tmp_path, body: str) -> fp.Analysis:
    source = textwrap.dedent('''
        from runbook_lib.cluster.journal import failpoint

        class Transitions:
            def act(self, kind, group, states):
                if kind == "a":
                    self._open(group, states)
                elif kind == "b":
                    self._drain(group, states)
    ''') + textwrap.indent(textwrap.dedent(body), "    ")
    path = tmp_path / "transitions.py"
    path.write_text(source)
    saved = fp.EXPECTED_TRANSITIONS
    fp.EXPECTED_TRANSITIONS = {"_open", "_drain"}
    try:
        return fp.analyse([path], transitions=path)
    finally:
        fp.EXPECTED_TRANSITIONS = saved


def _rules(a: fp.Analysis) -> list[tuple[str, str]]:
    return sorted((v.rule, v.function.rsplit(".", 1)[-1]) for v in a.violations)


def test_analysis_accepts_a_failpoint_after_every_record_and_between_commands(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            self.journal.record("slots_open", slots=group)
            failpoint("open_journaled")
            self._check(
                "t",
                self.nodes.pipeline("t", [("CLUSTER", "SETSLOT", s, "IMPORTING", "x") for s in group]),
            )
            failpoint("open_importing")
            self.nodes.pipeline("s", [("CLUSTER", "SETSLOT", s, "MIGRATING", "y") for s in group])

        def _drain(self, group, states):
            keys = self.nodes.pipeline("s", [("CLUSTER", "GETKEYSINSLOT", 1, 10)])
            self.journal.record("keys_migrating")
            failpoint("drain_journaled")
            self.rounds.migrate("s", [("MIGRATE", "h", 1, "", 0, 5, "KEYS", *keys)], [])
            self.journal.record("keys_migrated")
            failpoint("drain_migrated")
    ''')
    assert a.violations == []
    assert [p.name for p in a.failpoints] == ["open_journaled", "open_importing", "drain_journaled", "drain_migrated"]
    importing = a.failpoints[1]
    assert importing.function == "Transitions._open" and importing.records == ("slots_open",)
    assert "SETSLOT IMPORTING" in importing.before() and "`slots_open` journaled" in importing.before()


def test_analysis_reports_a_record_followed_by_a_command_on_one_branch_only(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            self.journal.record("slots_open")
            if group:
                failpoint("open_a")
            else:
                pass
            self.nodes.pipeline("t", [("CLUSTER", "SETSLOT", 1, "IMPORTING", "x")])

        def _drain(self, group, states):
            failpoint("drain_a")
    ''')
    assert _rules(a) == [("b", "_open")]
    assert "'slots_open'" in str(a.violations[0]) and "SETSLOT IMPORTING" in str(a.violations[0])


def test_analysis_follows_loops_raise_and_helpers_that_send(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            for slot in group:
                self._helper(slot)
                self.journal.record("slot_step", slot=slot)
                if slot:
                    failpoint("open_loop")
                    continue
                raise RuntimeError("stop")
            failpoint("open_end")

        def _helper(self, slot):
            self.nodes.each("s", "DEL", [slot], asking=False)

        def _drain(self, group, states):
            self.journal.record("keys_migrated")
            self._helper(1)
    ''')
    # _open: the record at the loop's end is followed by the helper's DEL in the next iteration only through the
    # failpoint (or a raise): fine. _drain: the record goes straight to a helper that sends: (a) and (b)
    assert _rules(a) == [("a", "_drain"), ("b", "_drain")]


def test_analysis_reports_two_changes_without_a_failpoint_but_not_one_loop_statement_repeating(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            failpoint("open_a")
            for node in group:
                self.nodes.pipeline(node, [("CLUSTER", "SETSLOT", 1, "STABLE")])
            self.nodes.pipeline("t", [("CLUSTER", "SETSLOT", 1, "NODE", "t")])

        def _drain(self, group, states):
            failpoint("drain_a")
            while True:
                keys = self.nodes.pipeline("s", [("CLUSTER", "GETKEYSINSLOT", 1, 10)])
                if not keys:
                    break
                self.nodes.pipeline("s", [("MIGRATE", "h", 1, "", 0, 5, "KEYS", *keys)])
                failpoint("drain_round")
            self.nodes.pipeline("s", [("CLUSTER", "SETSLOT", 1, "STABLE")])
    ''')
    assert _rules(a) == [("e", "_open")]
    assert "SETSLOT STABLE" in str(a.violations[0]) and "SETSLOT NODE" in str(a.violations[0])


def test_analysis_picks_up_a_new_transition_from_the_dispatcher_and_a_helper_that_journals_and_changes(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            failpoint("open_a")
            self._settle(group)

        def _settle(self, group):
            self.journal.record("busykey_same_value")
            self.nodes.each("s", "DEL", group, asking=False)

        def _drain(self, group, states):
            failpoint("drain_a")
    ''')
    assert "_settle" in a.transitions
    assert _rules(a) == [("a", "_settle"), ("b", "_settle")]


def test_docs_rows_are_checked_against_the_code(tmp_path):
    point = fp.Failpoint("after_x", "m.py", "Transitions._open", 10, records=("slots_open",))
    doc = tmp_path / "failpoints.md"
    doc.write_text("| failpoint | function | before | leaves | resume |\n|---|---|---|---|---|\n"
                   "| `after_x` | `Transitions._drain` | nothing | a | b |\n"
                   "| `gone` | `Transitions._open` | x | y | z |\n")
    problems = fp.doc_problems([point], doc)
    assert any("`Transitions._open`" in p for p in problems)
    assert any("`slots_open`" in p for p in problems)
    assert any("'gone'" in p and "no longer" in p for p in problems)
    doc.write_text("| `after_x` | `Transitions._open` | `slots_open` journaled | a | b |\n")
    assert fp.doc_problems([point], doc) == []
    doc.write_text("")
    assert "lacks a row for failpoint 'after_x'" in fp.doc_problems([point], doc)[0]


def test_analysis_knows_an_empty_command_list_sends_nothing_and_follows_conditions_on_it(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            self.journal.record("slots_open")
            failpoint("open_a")
            unaware = [s for s in group if s]
            self.nodes.pipeline("t", [("CLUSTER", "SETSLOT", s, "NODE", "x") for s in unaware])
            if unaware:
                failpoint("open_told")
            self.nodes.pipeline("t", [("CLUSTER", "SETSLOT", s, "IMPORTING", "x") for s in group])
            failpoint("open_b")

        def _drain(self, group, states):
            first = [n for n in group if n]
            then = [n for n in group if not n]
            self.journal.record("slot_closing")
            failpoint("drain_a")
            for node in first:
                self.nodes.pipeline(node, [("CLUSTER", "SETSLOT", 1, "STABLE")])
            if first and then:
                failpoint("drain_b")
            for node in then:
                self.nodes.pipeline(node, [("CLUSTER", "SETSLOT", 1, "STABLE")])
            failpoint("drain_c")
    ''')
    assert a.violations == []
    told = next(p for p in a.failpoints if p.name == "open_told")
    assert told.conditional and told.last_commands == ("SETSLOT NODE",)


def test_analysis_reports_the_missing_guard_when_the_condition_does_not_match(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            failpoint("open_a")
            unaware = [s for s in group if s]
            self.nodes.pipeline("t", [("CLUSTER", "SETSLOT", s, "NODE", "x") for s in unaware])
            if states:
                failpoint("open_told")
            self.nodes.pipeline("t", [("CLUSTER", "SETSLOT", s, "IMPORTING", "x") for s in group])

        def _drain(self, group, states):
            failpoint("drain_a")
    ''')
    assert _rules(a) == [("e", "_open")]  # unaware and group non-empty, states empty: NODE then IMPORTING


def test_analysis_reads_the_commands_a_script_calls_and_lists_built_before_they_are_sent(tmp_path):
    a = _analyse(tmp_path, '''
        def _open(self, group, states):
            failpoint("open_a")
            self._settle(group)

        def _settle(self, keys):
            commands = [("EVAL", DELETE_SCRIPT, 1, k) for k in keys]
            self.journal.record("busykey_compare")
            self.nodes.pipeline("s", commands)
            failpoint("settle_a")

        def _drain(self, group, states):
            self.nodes.pipeline("s", [("EVAL", READ_SCRIPT, 1, k) for k in group])
            self.nodes.pipeline("s", [("CLUSTER", "SETSLOT", 1, "STABLE")])
            failpoint("drain_a")
    ''')
    # DELETE_SCRIPT and READ_SCRIPT are unknown names here: a script that cannot be read counts as changing
    assert ("b", "_settle") in _rules(a) and "_settle" in a.transitions
    source = (tmp_path / "transitions.py").read_text()
    (tmp_path / "transitions.py").write_text(source.replace(
        "from runbook_lib.cluster.journal import failpoint\n",
        "from runbook_lib.cluster.journal import failpoint\n\nDELETE_SCRIPT = \"redis.call('DEL', KEYS[1])\"\n"
        "READ_SCRIPT = \"return redis.call('MEMORY', 'USAGE', KEYS[1])\"\n"))
    saved = fp.EXPECTED_TRANSITIONS
    fp.EXPECTED_TRANSITIONS = {"_open", "_drain"}
    try:
        b = fp.analyse([tmp_path / "transitions.py"], transitions=tmp_path / "transitions.py")
    finally:
        fp.EXPECTED_TRANSITIONS = saved
    assert "_settle" in b.transitions and ("b", "_settle") in _rules(b)
    assert ("e", "_drain") not in _rules(b), "a read-only script followed by a change is no pair of changes"
