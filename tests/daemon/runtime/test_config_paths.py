"""``[[paths]]`` through any number of repeaters: the chain form (``nodes``), the one-repeater
form (``ends`` + ``repeater``), and the keys a path needs (a repeater signs its reports to ends
it has no link with under its identity key; those ends need its public key)."""
from __future__ import annotations

from pathlib import Path

import pytest

from qnode.daemon.bus.identity import keygen
from qnode.daemon.bus.keys import write_key_file
from qnode.daemon.runtime.config import ConfigError, parse_config

CHAIN = ["a", "r1", "r2", "r3", "b"]
LINKS = ["a-r1", "r1-r2", "r2-r3", "r3-b"]


def _keygen(node: str, directory: Path) -> Path:
    """``node``'s identity key in ``directory`` (made once); the private key's path."""
    if not (directory / f"{node}.key").exists():
        keygen(node, directory)
    return directory / f"{node}.key"


def _node(tmp_path: Path, me: str, *, identity: bool = True, trust: tuple[str, ...] = (),
          path: str | None = None) -> str:
    """``me``'s config with its K links on CHAIN, its trust dir holding the stations' (and
    ``trust``'s) public keys, and ``path`` as its [[paths]] table (default: the chain)."""
    ids = tmp_path / f"ids-{me}"
    key = write_key_file(tmp_path / f"{me}.key", "0123456789abcdef" * 4)
    private = _keygen(me, tmp_path / f"own-{me}")
    k = CHAIN.index(me)
    links = ""
    for j in (k - 1, k):
        if 0 <= j < len(LINKS):
            peer = CHAIN[j + 1] if j == k else CHAIN[j]
            _keygen(f"hs{j}", ids)
            links += (f'[[links]]\nid = "{LINKS[j]}"\npeer = "{peer}"\ntype = "K"\n'
                      f'herald = "hs{j}"\nhmac_key_file = "{key}"\n')
    for n in trust:
        _keygen(n, ids)
    own = f'identity_key_file = "{private}"\n' if identity else ""
    if path is None:
        path = f'[[paths]]\nid = "a-b"\nnodes = {CHAIN!r}\nlinks = {LINKS!r}\n'.replace("'", '"')
    return (f'[node]\nid = "{me}"\nnetwork = "net"\nroles = ["memory"]\n{own}'
            f'trust_dir = "{ids}"\n[broker]\nurl = "mqtt://127.0.0.1"\n{links}{path}')


def test_every_node_of_a_chain_reads_the_same_path(tmp_path):
    for me in CHAIN:
        far = [n for j, n in enumerate(CHAIN[1:-1], 1) if me in ("a", "b")
               and abs(j - CHAIN.index(me)) > 1]
        cfg = parse_config(_node(tmp_path, me, trust=tuple(far)))
        (path,) = cfg.paths
        assert path.nodes == tuple(CHAIN) and path.links == tuple(LINKS)
        assert path.ends == ("a", "b") and path.repeaters == ("r1", "r2", "r3")


def test_the_one_repeater_form_is_a_three_node_chain(tmp_path):
    table = ('[[paths]]\nid = "a-r2"\nends = ["a", "r2"]\nrepeater = "r1"\n'
             'links = ["a-r1", "r1-r2"]\n')
    cfg = parse_config(_node(tmp_path, "r1", path=table, identity=False))
    assert cfg.paths[0].nodes == ("a", "r1", "r2") and cfg.paths[0].links == ("a-r1", "r1-r2")


@pytest.mark.parametrize(("table", "error"), [
    ('nodes = ["a", "r1", "r2", "r3", "b"]\nends = ["a", "b"]\n'
     'links = ["a-r1", "r1-r2", "r2-r3", "r3-b"]', r"paths\[0\].ends: give either nodes"),
    ('nodes = ["a", "b"]\nlinks = ["a-b"]', r"paths\[0\].nodes: must be 3 to 65"),
    ('nodes = ["a", "r1", "r2", "r1", "b"]\nlinks = ["a-r1", "r1-r2", "r2-r3", "r3-b"]',
     r"paths\[0\].nodes: must be 3 to 65 different"),
    ('nodes = ["a", "r1", "r2", "r3", "b"]\nlinks = ["a-r1", "r1-r2", "r2-r3"]',
     r"paths\[0\].links: must be the 4 different link ids"),
    ('nodes = ["a", "r1", "r2", "r3", "b"]\nlinks = ["a-r1", "r2-r3", "r1-r2", "r3-b"]',
     r"paths\[0\].links: link 'r2-r3' must be a K link of this node with 'r1'"),
])
def test_a_broken_path_is_one_line(tmp_path, table, error):
    with pytest.raises(ConfigError, match=error):
        parse_config(_node(tmp_path, "r2", path=f'[[paths]]\nid = "a-b"\n{table}\n'))


def test_two_paths_may_not_share_an_id(tmp_path):
    table = (f'[[paths]]\nid = "a-b"\nnodes = {CHAIN!r}\nlinks = {LINKS!r}\n'
             .replace("'", '"'))
    with pytest.raises(ConfigError, match=r"paths\[1\].id: 'a-b' is used by another path"):
        parse_config(_node(tmp_path, "r2", path=table * 2))


def test_an_end_ends_one_path_per_remote(tmp_path):
    """Both ends must serve a request from the same path (its pair ids): until they agree on
    a choice, an end takes one path per remote node; a repeater may repeat for several."""
    table = "".join(f'[[paths]]\nid = "{pid}"\nnodes = {CHAIN!r}\nlinks = {LINKS!r}\n'
                    .replace("'", '"') for pid in ("a-b", "a-b-2"))
    with pytest.raises(ConfigError, match=r"paths\[1\].nodes: a second path between 'a' and "
                                          r"'b' \(path 'a-b' is one\)"):
        parse_config(_node(tmp_path, "a", trust=("r2", "r3"), path=table))
    assert len(parse_config(_node(tmp_path, "r2", path=table)).paths) == 2


def test_far_repeaters_sign_with_their_identity_and_the_ends_must_trust_them(tmp_path):
    """r2 has a link with neither end: it signs its reports with its identity key. The ends
    check them with r2's public key (and a's with r3's, b's with r1's)."""
    with pytest.raises(ConfigError, match=r"node.identity_key_file: this node repeats for "
                                          r"path 'a-b'"):
        parse_config(_node(tmp_path, "r2", identity=False))
    with pytest.raises(ConfigError, match=r"paths\[0\].nodes: repeater 'r2' reports its swaps"):
        parse_config(_node(tmp_path, "a", trust=("r3",)))
    with pytest.raises(ConfigError, match=r"put r1.pub in node.trust_dir"):
        parse_config(_node(tmp_path, "b", trust=("r2",)))
    assert parse_config(_node(tmp_path, "a", trust=("r2", "r3"))).paths
    # r1 has a link with a but not with b: it signs its reports to b with its identity
    with pytest.raises(ConfigError, match=r"node.identity_key_file"):
        parse_config(_node(tmp_path, "r1", identity=False))
