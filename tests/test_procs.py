"""Ports the test servers are given: free, never twice, and where no outgoing socket can take them."""

import socket

from tools.procs import _outgoing_range, free_port


def test_free_ports_are_distinct_bindable_and_outside_the_outgoing_range():
    outgoing = _outgoing_range()
    ports = [free_port() for _ in range(200)]
    assert len(set(ports)) == len(ports)
    assert not [p for p in ports if p in outgoing or p < 20000], ports
    for port in ports[:20]:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_a_port_taken_now_is_never_handed_out():
    taken = []
    try:
        for port in range(20000, 65536):
            if port in _outgoing_range():
                continue
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                s.close()
                continue
            taken.append(s)
            if len(taken) == 600:  # under a 1024-file limit
                break
        in_use = {s.getsockname()[1] for s in taken}
        assert not in_use & {free_port() for _ in range(200)}
    finally:
        for s in taken:
            s.close()
