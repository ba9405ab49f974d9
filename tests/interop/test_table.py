"""TABLE.md stays in step with the case list, and every cell has its test."""

from __future__ import annotations

import re

from .matrix import CASE_IDS, HERE, PEERS, all_passed, render_table


def test_table_md_is_the_table_of_a_passing_run() -> None:
    # After a change to a case or a peer: python tests/interop/table.py
    expected = render_table(all_passed())
    actual = (HERE / "TABLE.md").read_text()
    assert actual == expected, "TABLE.md is out of date: run python tests/interop/table.py"


def test_every_peer_has_one_parametrized_test_module() -> None:
    used: dict[str, str] = {}
    for module in sorted(HERE.glob("test_*.py")):
        for peer in re.findall(r'params\("([^"]+)"\)', module.read_text()):
            assert peer not in used, f"{peer} is tested in {used[peer]} and {module.name}"
            used[peer] = module.name
    assert sorted(used) == sorted(peer.id for peer in PEERS)


def test_every_case_a_peer_cannot_do_says_why() -> None:
    for peer in PEERS:
        for case, why in {**peer.cannot, **peer.notes}.items():
            assert case in CASE_IDS, f"{peer.id}: unknown case {case}"
            assert why.strip(), f"{peer.id}: no reason for {case}"
        for case, why in peer.cannot.items():
            assert why.startswith("peer cannot "), f"{peer.id}/{case}: say what the peer cannot do"
