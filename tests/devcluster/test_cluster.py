"""Port choice and the tool check of the dev cluster (no servers started)."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from tokentrace.devcluster.cluster import pick_ports
from tokentrace.devcluster.procs import DevClusterError, find_tool, free_ports, port_free


@pytest.fixture
def busy_port() -> Iterator[int]:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        yield taken.getsockname()[1]


def test_free_defaults_are_used_as_they_are() -> None:
    (port,) = free_ports(1)
    assert pick_ports(None, port, 1, "Kafka") == ([port], None)


def test_a_taken_default_is_replaced_by_a_free_port_and_said(busy_port: int) -> None:
    ports, note = pick_ports(None, busy_port, 2, "the API")
    assert len(ports) == 2 and busy_port not in ports and all(port_free(p) for p in ports)
    assert note == f"port {busy_port} is taken; the API uses {ports[0]}, {ports[1]} instead"


def test_a_taken_port_the_user_gave_is_an_error(busy_port: int) -> None:
    with pytest.raises(DevClusterError, match=f"Redis port {busy_port} on 127.0.0.1 is in use"):
        pick_ports(busy_port, 6379, 1, "Redis")


def test_the_second_of_consecutive_ports_counts_too(busy_port: int) -> None:
    with pytest.raises(DevClusterError, match=f"the API port {busy_port} "):
        pick_ports(busy_port - 1, 9095, 2, "the API")


def test_port_zero_means_free_ports() -> None:
    ports, note = pick_ports(0, 9092, 3, "the API")
    assert note is None and len(set(ports)) == 3 and 0 not in ports


def test_find_tool_names_the_package(tmp_path: Path) -> None:
    with pytest.raises(DevClusterError, match=r"no `no-such-tool-xyz` found on PATH: .*package `some-package`"):
        find_tool("no-such-tool-xyz", "some-package", path=str(tmp_path))
    assert find_tool("sh", "dash").endswith("/sh")
