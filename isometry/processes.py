"""One program over several processes (multi-controller SPMD): every process runs the same
script, JAX joins their devices into one global mesh, and each process feeds and computes on its
own devices (`jax.distributed`; on CPU the collectives between processes go through gloo).

A process is one of `num_processes`, numbered by `process_id`; process 0 is the coordinator
(`coordinator_address` is host:port of process 0) and the only one that writes results. With no
coordinator, nothing here does anything and the program is the single process it always was.

Failures end in one line rather than a hang or an abort: `jax.distributed.initialize` aborts the
whole process (SIGABRT and a C++ stack trace, measured with jaxlib 0.10.2) when a peer does not
show up, so `initialize` first meets the other processes over a plain TCP socket on the
coordinator's port, with a deadline: process 0 waits for every other process to say hello with
its fingerprint (a hash of its settings), then tells each one "ok" or what differs. Only when
all of them are there and agree does it start JAX's own coordination service on that port.
"""
import contextlib
import hashlib
import json
import os
import socket
import time
from typing import Any, Optional

import jax
from jax.experimental import multihost_utils
import numpy as np

# A process that hears nothing from its peers for this long ends (seconds; the default of
# `initialize`'s timeout).
DEFAULT_TIMEOUT = 120


class ProcessesError(RuntimeError):
  """The processes could not meet, or they disagree (one line, for the command line)."""


def fingerprint(value: Any) -> str:
  """A short hash of a JSON-able value (sorted keys), to compare settings across processes."""
  text = json.dumps(value, sort_keys=True, default=str)
  return hashlib.sha256(text.encode()).hexdigest()[:16]


def _split_address(address: str):
  host, sep, port = address.rpartition(":")
  if not sep or not host or not port.isdigit():
    raise ProcessesError(f"coordinator_address must be host:port, got {address!r}")
  return host.strip("[]"), int(port)


def check_settings(coordinator_address: Optional[str], num_processes: Optional[int],
                   process_id: Optional[int], timeout: float) -> bool:
  """Whether the settings ask for several processes; raises ProcessesError where they are
  incomplete or out of range (naming the setting)."""
  given = {"coordinator_address": coordinator_address, "num_processes": num_processes,
           "process_id": process_id}
  missing = [name for name, value in given.items() if value is None]
  if len(missing) == 3:
    return False
  if missing:
    present = [name for name in given if name not in missing]
    raise ProcessesError(f"{missing[0]} is needed too, where {' and '.join(present)} "
                         f"{'is' if len(present) == 1 else 'are'} given")
  _split_address(coordinator_address)
  if num_processes < 1:
    raise ProcessesError(f"num_processes must be >= 1, got {num_processes}")
  if not 0 <= process_id < num_processes:
    raise ProcessesError(f"process_id must be in [0, {num_processes}), got {process_id}")
  if not timeout > 0:
    raise ProcessesError(f"initialization_timeout must be > 0, got {timeout}")
  return True


def _send(conn: socket.socket, message: dict) -> None:
  conn.sendall((json.dumps(message) + "\n").encode())


def _receive(conn: socket.socket, deadline: float) -> dict:
  """One JSON line from conn, read before `deadline` (time.monotonic)."""
  chunks = b""
  while not chunks.endswith(b"\n"):
    conn.settimeout(max(deadline - time.monotonic(), 1e-3))
    chunk = conn.recv(4096)
    if not chunk:
      raise ConnectionError("closed")
    chunks += chunk
  return json.loads(chunks)


def _meet_as_coordinator(port: int, num_processes: int, mine: str, timeout: float) -> None:
  """Process 0: waits for the others' hellos, then answers each with the verdict."""
  deadline = time.monotonic() + timeout
  try:
    server = socket.create_server(("", port), family=socket.AF_INET6, dualstack_ipv6=True) \
        if socket.has_dualstack_ipv6() else socket.create_server(("", port))
  except OSError as e:
    raise ProcessesError(f"process 0 cannot listen on port {port}: {e.strerror}") from None
  peers = {}
  try:
    with server:
      while len(peers) < num_processes - 1:
        remaining = deadline - time.monotonic()
        missing = sorted(set(range(1, num_processes)) - set(peers))
        if remaining <= 0:
          raise ProcessesError(
              f"process(es) {', '.join(map(str, missing))} of {num_processes} did not reach "
              f"the coordinator on port {port} within {timeout:g} s")
        server.settimeout(remaining)
        try:
          conn, _ = server.accept()
        except socket.timeout:
          continue
        try:
          hello = _receive(conn, deadline)
        except (OSError, ValueError):
          conn.close()
          continue
        if hello["process_id"] in peers:
          with contextlib.suppress(OSError):
            _send(conn, {"verdict": f"process id {hello['process_id']} is taken by another "
                                    "process"})
          conn.close()
          continue
        peers[hello["process_id"]] = (conn, hello)
      problems = []
      for pid, (_, hello) in sorted(peers.items()):
        if hello["num_processes"] != num_processes:
          problems.append(f"process {pid} has num_processes {hello['num_processes']}, "
                          f"process 0 has {num_processes}")
        elif not 1 <= pid < num_processes:
          problems.append(f"process id {pid} is out of range")
        elif hello["fingerprint"] != mine:
          problems.append(f"process {pid} was started with other settings than process 0 "
                          "(every process needs the same flags but --process_id)")
      verdict = "; ".join(problems) or "ok"
      for conn, _ in peers.values():
        with contextlib.suppress(OSError):
          _send(conn, {"verdict": verdict})
      # The peers close first, so that the port is free at once for JAX's service.
      for conn, _ in peers.values():
        with contextlib.suppress(OSError, ValueError, ConnectionError):
          _receive(conn, time.monotonic() + 5.0)
  finally:
    for conn, _ in peers.values():
      conn.close()
  if verdict != "ok":
    raise ProcessesError(verdict)


def _meet_as_peer(host: str, port: int, num_processes: int, process_id: int, mine: str,
                  timeout: float) -> None:
  """Process k > 0: says hello to process 0 (retrying until the deadline), waits for the
  verdict (at most another `timeout`)."""
  deadline = time.monotonic() + timeout
  while True:
    try:
      conn = socket.create_connection((host, port), timeout=max(deadline - time.monotonic(), 0.1))
      break
    except OSError:
      if time.monotonic() >= deadline:
        raise ProcessesError(f"process {process_id} cannot reach the coordinator at "
                             f"{host}:{port} within {timeout:g} s") from None
      time.sleep(0.2)
  with conn:
    try:
      _send(conn, {"process_id": process_id, "num_processes": num_processes,
                   "fingerprint": mine})
      verdict = _receive(conn, time.monotonic() + timeout)["verdict"]
    except (OSError, ValueError, ConnectionError, KeyError):
      raise ProcessesError(f"process {process_id} got no answer from the coordinator at "
                           f"{host}:{port} within {timeout:g} s") from None
  if verdict != "ok":
    raise ProcessesError(verdict)


def initialize(coordinator_address: Optional[str] = None, num_processes: Optional[int] = None,
               process_id: Optional[int] = None, *, timeout: float = DEFAULT_TIMEOUT,
               settings: Any = None) -> bool:
  """Joins this process to the others; call it before any jax computation.

  Absent coordinator_address, num_processes and process_id: nothing happens (one process).
  Given them, the processes meet (see the module docstring), compare `settings` (any JSON-able
  value that every process must hold equally: its flags or config), then
  `jax.distributed.initialize` starts, with gloo as the CPU collectives between processes.

  Args:
    coordinator_address: host:port of process 0, reachable from every process.
    num_processes: how many processes there are.
    process_id: this one's number, in [0, num_processes).
    timeout: seconds a process waits for the others to show up (JAX's
      `initialization_timeout` too); an answer to the hello takes at most as long again.
    settings: what must agree across processes.

  Returns:
    Whether this process is one of several.

  Raises:
    ProcessesError: incomplete settings, a peer that does not show up in time, or processes that
      disagree (every process that heard the verdict raises it).
  """
  if not check_settings(coordinator_address, num_processes, process_id, timeout):
    return False
  host, port = _split_address(coordinator_address)
  mine = fingerprint(settings)
  if process_id == 0:
    _meet_as_coordinator(port, num_processes, mine, timeout)
  else:
    _meet_as_peer(host, port, num_processes, process_id, mine, timeout)
  # Cross-process collectives of the CPU backend; without them a CPU computation cannot span
  # processes. Harmless on other platforms.
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  limit = int(max(timeout, 1))
  jax.distributed.initialize(coordinator_address, num_processes, process_id,
                             initialization_timeout=limit,
                             heartbeat_timeout_seconds=max(limit, 60),
                             shutdown_timeout_seconds=max(limit, 60))
  return True


# ------------------------------------------------------------- a program across the processes

def count() -> int:
  """How many processes run this program (1 without `initialize`)."""
  return jax.process_count()


def is_writer() -> bool:
  """Whether this process writes results: process 0 (so every process where there is one)."""
  return jax.process_index() == 0


def put(tree, sharding):
  """A host pytree (numpy, equal on every process) as global arrays with `sharding`: each
  process places only the shards of its own devices (`jax.make_array_from_callback`)."""
  if sharding.is_fully_addressable:
    return jax.device_put(tree, sharding)

  def place(x):
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
  return jax.tree.map(place, tree)


def to_host(tree):
  """A pytree of (global) arrays as numpy on every process. Where an array spans processes
  this is a collective (`process_allgather`): every process must call it."""
  leaves = jax.tree.leaves(tree)
  if all(getattr(x, "is_fully_addressable", True) for x in leaves):
    return jax.device_get(tree)
  return multihost_utils.process_allgather(tree, tiled=True)


# Longest text `allgather_text` carries per process (UTF-8 bytes; longer text is cut).
TEXT_BYTES = 2048


def allgather_text(text: str) -> list:
  """Every process's `text`, in process order (a collective: every process calls it)."""
  if count() == 1:
    return [text]
  encoded = text.encode()[:TEXT_BYTES]
  row = np.zeros(TEXT_BYTES + 4, np.uint8)
  row[:4] = np.frombuffer(np.uint32(len(encoded)).tobytes(), np.uint8)
  row[4:4 + len(encoded)] = np.frombuffer(encoded, np.uint8)
  rows = np.asarray(multihost_utils.process_allgather(row))
  return [bytes(r[4:4 + int(np.frombuffer(r[:4].tobytes(), np.uint32)[0])]).decode(
      errors="replace") for r in rows]


def disagreement(values: list, what: str) -> Optional[str]:
  """None where every process's value (process order) equals process 0's; else one line that
  names the processes that differ and what about."""
  differ = [i for i, v in enumerate(values) if v != values[0]]
  if not differ:
    return None
  return (f"processes disagree on {what}: process(es) {', '.join(map(str, differ))} differ "
          f"from process 0 ({values[differ[0]]!r} against {values[0]!r})")


def any_process(flag: bool) -> bool:
  """Whether `flag` holds on any process (a collective: every process calls it)."""
  if count() == 1:
    return bool(flag)
  return bool(np.any(multihost_utils.process_allgather(np.asarray(flag, np.int32))))


def barrier(name: str) -> None:
  """Returns once every process has reached the barrier `name` (nothing on one process)."""
  if count() > 1:
    multihost_utils.sync_global_devices(name)


def file_digest(path: str) -> str:
  """sha256 of a file's bytes (16 hex digits), or "" where there is no such file."""
  if not os.path.isfile(path):
    return ""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 20), b""):
      digest.update(block)
  return digest.hexdigest()[:16]
