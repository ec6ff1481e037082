"""Shared memory for same-host clients (docs/shared-memory.md): results bit-identical to plain
Compute, every reference checked against its region, registration errors, auth, the region's
lifetime (the with block, a cancelled or lost lease, UnregisterSharedMemory), a client that
shrinks its object under the server's mapping, and a server started without --shared-memory."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest

import focalserve
from conftest import REPO, ServerProcess
from focalserve import pb

pytestmark = pytest.mark.skipif(not os.path.isdir("/dev/shm"), reason="no POSIX shared memory (/dev/shm) here")


@pytest.fixture(scope="module")
def shm_server():
    proc = ServerProcess("--shared-memory=on")
    yield proc
    assert proc.stop() == 0, proc.stderr_text()


@pytest.fixture(scope="module")
def shm_client(shm_server):
    with focalserve.Client(shm_server.target, timeout=30) as c:
        yield c


def batch(seed, rows=48, classes=10, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal((rows, classes)) * 3).astype(dtype)
    t = (rng.random((rows, classes)) < 0.2).astype(np.float32)
    y = rng.integers(0, classes, rows)
    return x, t, y


def rpc_error(call, *args, **kwargs) -> focalserve.FocalServeError:
    with pytest.raises(focalserve.FocalServeError) as e:
        call(*args, **kwargs)
    return e.value


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
def test_results_are_bit_identical_to_plain_compute(shm_client, dtype):
    x, t, y = batch(1, dtype=dtype)
    with shm_client.shared_memory(1 << 20) as region:
        X, T, Y = region.put(x), region.put(t), region.put(y)
        for variant, targets, shm_targets in (("sigmoid_focal", t, T), ("softmax_focal", y, Y)):
            plain = shm_client.compute(x, targets, variant, "none", compute_gradient=True, gamma=2.0)
            G = region.empty(x.shape, dtype)
            L = region.empty(plain.losses.shape, plain.losses.dtype)
            r = shm_client.compute(X, shm_targets, variant, "none", compute_gradient=True, gamma=2.0,
                                   gradient_output=G, losses_output=L)
            assert r.loss == plain.loss and r.count == plain.count
            assert r.gradient is G.array and r.losses is L.array
            assert G.array.tobytes() == plain.gradient.tobytes() and L.array.tobytes() == plain.losses.tobytes()
            assert not r.response.gradient.data and r.response.gradient.shared_memory.region == region.name
            # Inputs from shared memory, results in the answer: the same bytes too.
            mixed = shm_client.compute(X, shm_targets, variant, "mean", compute_gradient=True, gamma=2.0)
            reference = shm_client.compute(x, targets, variant, "mean", compute_gradient=True, gamma=2.0)
            assert mixed.loss == reference.loss and mixed.gradient.tobytes() == reference.gradient.tobytes()


def test_a_gradient_written_in_place_leaves_nothing_of_what_was_there(shm_client):
    # The CPU backend writes the gradient straight into the region: ignored rows, which the
    # kernels leave to the zeroed buffer, must come out 0 whatever the region held before.
    x, _, y = batch(7)
    y[::3] = -100
    with shm_client.shared_memory(1 << 20) as region:
        X, Y = region.put(x), region.put(y)
        G = region.empty(x.shape, np.float32)
        G.array[...] = np.nan
        r = shm_client.compute(X, Y, "softmax_focal", "sum", compute_gradient=True, ignore_index=-100,
                               gradient_output=G)
        plain = shm_client.compute(x, y, "softmax_focal", "sum", compute_gradient=True, ignore_index=-100)
        assert r.gradient.tobytes() == plain.gradient.tobytes()
        assert not np.any(r.gradient[::3])


def test_evaluate_reads_shared_memory_and_refuses_shared_outputs(shm_client):
    x, t, _ = batch(2)
    with shm_client.shared_memory(1 << 20) as region:
        X, T = region.put(x), region.put(t)
        shared = shm_client.evaluate([(X, T), (X, T)], "sigmoid_focal", gamma_sweep=[0, 2])
        plain = shm_client.evaluate([(x, t), (x, t)], "sigmoid_focal", gamma_sweep=[0, 2])
        assert shared.response.SerializeToString() != b""
        assert shared.total_loss == plain.total_loss
        assert shared.response.sweep.SerializeToString() == plain.response.sweep.SerializeToString()
        request = focalserve.Client.build_request(X, T, "sigmoid_focal", "none")
        request.losses_output.CopyFrom(region.empty((48, 10), np.float32).ref)
        with pytest.raises(grpc.RpcError) as e:
            shm_client.stub.Evaluate(iter([request]), timeout=30)
    assert e.value.code().name == "INVALID_ARGUMENT"
    assert "losses_output is set; Evaluate answers with sums alone" in e.value.details(), e.value.details()


def test_every_reference_is_checked_against_its_region(shm_client):
    x, t, _ = batch(3)
    with shm_client.shared_memory(64 << 10) as region:
        X, T = region.put(x), region.put(t)

        def refused(edit, fragment, code="INVALID_ARGUMENT"):
            request = focalserve.Client.build_request(X, T, "sigmoid_focal", "none", compute_gradient=True)
            edit(request)
            with pytest.raises(grpc.RpcError) as e:
                shm_client.stub.Compute(request, timeout=30)
            assert e.value.code().name == code and fragment in e.value.details(), e.value.details()

        past = region.byte_size - 16
        refused(lambda r: setattr(r.logits.shared_memory, "offset", past),
                f"logits.shared_memory: offset {past} + byte_size {x.nbytes} is past the end of region")
        refused(lambda r: setattr(r.targets.shared_memory, "byte_size", 2**64 - 1), "targets.shared_memory: offset")
        refused(lambda r: setattr(r.logits.shared_memory, "offset", 2**64 - 1), "past the end of region")
        refused(lambda r: setattr(r.logits.shared_memory, "region", "nowhere"),
                "logits.shared_memory.region names no registered shared-memory region")
        refused(lambda r: setattr(r.logits, "data", b"\0" * 4), "logits.data and logits.shared_memory are both set")
        refused(lambda r: setattr(r.logits.shared_memory, "byte_size", x.nbytes - 4),
                f"has {x.nbytes - 4} bytes; shape [48, 10] of float32 needs {x.nbytes}")
        # The targets are copied out of the region: sized by their (bounded) shape, not by a
        # byte_size that could be a whole sparse object's.
        refused(lambda r: setattr(r.targets.shared_memory, "byte_size", 60000),
                f"targets.shared_memory.byte_size is 60000; shape 48, 10 of float32 needs {t.nbytes}")
        refused(lambda r: (r.targets.ClearField("shape"), r.targets.shape.extend([1 << 40])),
                "targets has 1099511627776 elements; this server takes at most", "RESOURCE_EXHAUSTED")
        small = region.empty((4,), np.float32)
        refused(lambda r: r.gradient_output.CopyFrom(small.ref), "gradient_output.byte_size is 16; the gradient has 1920 bytes (float32)")
        refused(lambda r: (r.gradient_output.CopyFrom(small.ref), setattr(r, "compute_gradient", False)),
                "gradient_output is set without compute_gradient")
        refused(lambda r: (r.losses_output.CopyFrom(small.ref), setattr(r.loss, "reduction", pb.MEAN)),
                "losses_output is set, but only reduction NONE has losses")
        # The server keeps serving after all of them.
        assert shm_client.compute(X, T, "sigmoid_focal").count > 0


def test_outputs_overlapping_inputs_or_each_other_are_refused(shm_client):
    # The server validates class indices once and then reads them as indices: a gradient written
    # over the targets would turn them into anything. Refused, through a second region of the
    # same object too, and the server serves on.
    x, _, y = batch(8)
    with shm_client.shared_memory(1 << 20, name="overlap") as region:
        X, Y = region.put(x), region.put(y.astype(np.int32))
        over_targets = region.empty(x.shape, np.float32, offset=Y.offset)
        e = rpc_error(shm_client.compute, X, Y, "softmax_focal", compute_gradient=True, gradient_output=over_targets)
        assert e.code.name == "INVALID_ARGUMENT" and "gradient_output overlaps an input tensor's bytes" in e.message
        alias = shm_client._register_shared_memory(
            pb.RegisterSharedMemoryRequest(name="overlap-alias", key=region.key, offset=0, byte_size=region.byte_size), 30)
        try:
            request = focalserve.Client.build_request(X, Y, "softmax_focal", compute_gradient=True)
            request.gradient_output.CopyFrom(pb.SharedMemoryRef(region="overlap-alias", offset=X.offset + 64,
                                                                byte_size=x.nbytes))
            with pytest.raises(grpc.RpcError) as rpc:
                shm_client.stub.Compute(request, timeout=30)
            assert "gradient_output overlaps an input tensor's bytes" in rpc.value.details()
        finally:
            shm_client.unregister_shared_memory("overlap-alias")
            alias.cancel()
        G = region.empty(x.shape, np.float32)
        L = region.empty((x.shape[0],), np.float32, offset=G.offset + 8)
        e = rpc_error(shm_client.compute, X, Y, "softmax_focal", "none", compute_gradient=True, gradient_output=G,
                      losses_output=L)
        assert "gradient_output and losses_output overlap" in e.message
        assert shm_client.compute(X, Y, "softmax_focal", compute_gradient=True, gradient_output=G).count > 0


def test_registration_errors_name_the_problem(shm_client):
    def refused(request, fragment, code):
        e = rpc_error(shm_client._register_shared_memory, request, 30)
        assert e.code.name == code and fragment in e.message, e

    obj = shared_memory.SharedMemory(create=True, size=4096)
    key = "/" + obj.name.lstrip("/")
    try:
        refused(pb.RegisterSharedMemoryRequest(name="a b", key=key, byte_size=16), "name must be 1 to 128 characters",
                "INVALID_ARGUMENT")
        refused(pb.RegisterSharedMemoryRequest(name="x" * 129, key=key, byte_size=16), "name must be", "INVALID_ARGUMENT")
        for bad_key in ("noslash", "/a/b", "/..", "/", "/new\nline"):
            refused(pb.RegisterSharedMemoryRequest(name="k", key=bad_key, byte_size=16), "key must be '/' then",
                    "INVALID_ARGUMENT")
        refused(pb.RegisterSharedMemoryRequest(name="k", key="/focalserve-test-absent", byte_size=16),
                "(create it with shm_open first)", "NOT_FOUND")
        refused(pb.RegisterSharedMemoryRequest(name="k", key=key, offset=4000, byte_size=200),
                "offset 4000 + byte_size 200 is past the end of", "INVALID_ARGUMENT")
        refused(pb.RegisterSharedMemoryRequest(name="k", key=key, byte_size=0), "byte_size is 0", "INVALID_ARGUMENT")
        lease = shm_client._register_shared_memory(pb.RegisterSharedMemoryRequest(name="dup", key=key, byte_size=64), 30)
        try:
            refused(pb.RegisterSharedMemoryRequest(name="dup", key=key, byte_size=64), "a region named 'dup' is registered",
                    "ALREADY_EXISTS")
            # An offset inside the object maps as well (not page-aligned).
            inner = shm_client._register_shared_memory(
                pb.RegisterSharedMemoryRequest(name="inner", key=key, offset=100, byte_size=300), 30)
            inner.cancel()
        finally:
            shm_client.unregister_shared_memory("dup")
            lease.cancel()
        e = rpc_error(shm_client.unregister_shared_memory, "dup")
        assert e.code.name == "NOT_FOUND" and "no region named 'dup' is registered" in e.message
    finally:
        obj.close()
        obj.unlink()


def wait_for(predicate, seconds=10.0):
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


def test_regions_live_as_long_as_their_lease(shm_client):
    names = lambda: {r.name for r in shm_client.list_shared_memory()}  # noqa: E731
    with shm_client.shared_memory(4096, name="scoped") as region:
        assert "scoped" in names()
        lease = region._lease
    assert "scoped" not in names()
    # Unregistering ends the lease with OK.
    with pytest.raises(StopIteration):
        next(lease)
    # A cancelled lease lets its region go.
    region = shm_client.shared_memory(4096, name="cancelled")
    region._lease.cancel()
    assert wait_for(lambda: "cancelled" not in names())
    region.close()
    # A client process that dies without closing: its connection goes, and the region with it.
    script = (
        "import sys, os; sys.path.insert(0, sys.argv[1]); import focalserve\n"
        "c = focalserve.Client(sys.argv[2], timeout=30)\n"
        "r = c.shared_memory(4096, name='orphan')\n"
        "print('registered', flush=True)\n"
        "sys.stdin.readline()\n"
        "os._exit(0)\n")
    child = subprocess.Popen([sys.executable, "-c", script,
                              str(REPO / "client" / "python"), shm_client.target],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout.readline().strip() == "registered"
        assert "orphan" in names()
        child.stdin.write("\n")
        child.stdin.flush()
        child.wait(timeout=30)
    finally:
        if child.poll() is None:
            child.kill()
    assert wait_for(lambda: "orphan" not in names()), names()


def test_a_region_shrunk_under_the_server_fails_the_call_and_the_server_serves_on(shm_client):
    x, t, _ = batch(4, rows=4096, classes=16)
    with shm_client.shared_memory(1 << 20, name="shrinking") as region:
        X, T = region.put(x), region.put(t)
        assert shm_client.compute(X, T, "sigmoid_focal").count > 0
        # The owner truncates its object: the server's mapping now faults past 4 KiB.
        fd = os.open("/dev/shm/" + region.key.lstrip("/"), os.O_RDWR)
        try:
            os.ftruncate(fd, 4096)
        finally:
            os.close(fd)
        e = rpc_error(shm_client.compute, X, T, "sigmoid_focal")
        assert e.code.name == "FAILED_PRECONDITION" and "'shrinking' shrank while the request used it" in e.message, e
        assert shm_client.compute(x, t, "sigmoid_focal").count > 0  # the server is alive
        # From then on the region is refused before anything is read.
        e = rpc_error(shm_client.compute, X, T, "sigmoid_focal")
        assert e.code.name == "FAILED_PRECONDITION" and "'shrinking' shrank under the server" in e.message, e
        del X, T  # (this process's views past 4 KiB would fault too; close() only unmaps them)


def test_too_many_regions_is_resource_exhausted(shm_client):
    regions = []
    try:
        with pytest.raises(focalserve.FocalServeError) as e:
            for i in range(70):
                regions.append(shm_client.shared_memory(4096, name=f"many{i}"))
        assert e.value.code.name == "RESOURCE_EXHAUSTED" and "64 shared-memory regions are mapped" in e.value.message
    finally:
        for r in regions:
            r.close()
    with shm_client.shared_memory(4096) as again:  # slots come back
        assert again.name in {r.name for r in shm_client.list_shared_memory()}


def test_auth_applies_to_every_shared_memory_call(tmp_path):
    token_file = tmp_path / "token"
    token_file.write_text("s3cret\n")
    proc = ServerProcess("--shared-memory=on", f"--auth-token-file={token_file}")
    try:
        with focalserve.Client(proc.target, timeout=30) as anonymous:
            for call in (lambda: anonymous.shared_memory(4096), anonymous.list_shared_memory,
                         lambda: anonymous.unregister_shared_memory("x")):
                assert rpc_error(call).code.name == "UNAUTHENTICATED"
        with focalserve.Client(proc.target, timeout=30, token="s3cret") as c:
            x, t, _ = batch(5)
            with c.shared_memory(1 << 16) as region:
                assert c.compute(region.put(x), region.put(t), "sigmoid_focal").loss == c.compute(x, t, "sigmoid_focal").loss
    finally:
        assert proc.stop() == 0, proc.stderr_text()


def test_a_server_without_the_flag_refuses_shared_memory(client):
    e = rpc_error(client.shared_memory, 4096)
    assert e.code.name == "FAILED_PRECONDITION" and "--shared-memory=on" in e.message
    assert rpc_error(client.list_shared_memory).code.name == "FAILED_PRECONDITION"
    x, t, _ = batch(6)
    request = focalserve.Client.build_request(x, t, "sigmoid_focal")
    request.logits.ClearField("data")
    request.logits.shared_memory.region = "r"
    with pytest.raises(grpc.RpcError) as rpc:
        client.stub.Compute(request, timeout=30)
    assert rpc.value.code().name == "INVALID_ARGUMENT" and "logits.shared_memory is set, but this server takes no shared" \
        in rpc.value.details()


def test_async_client_registers_computes_and_releases(shm_server):
    import asyncio

    x, t, _ = batch(9)

    async def run():
        async with focalserve.AsyncClient(shm_server.target, timeout=30) as client:
            plain = await client.compute(x, t, "sigmoid_focal", compute_gradient=True)
            async with client.shared_memory(1 << 16, name="async-region") as region:
                assert "async-region" in {r.name for r in await client.list_shared_memory()}
                G = region.empty(x.shape, np.float32)
                r = await client.compute(region.put(x), region.put(t), "sigmoid_focal", compute_gradient=True,
                                         gradient_output=G)
                assert r.loss == plain.loss and r.gradient is G.array
                assert G.array.tobytes() == plain.gradient.tobytes()
            assert "async-region" not in {r.name for r in await client.list_shared_memory()}
            with pytest.raises(focalserve.FocalServeError) as e:
                async with client.shared_memory(4096, name="bad name"):
                    pass
            assert e.value.code.name == "INVALID_ARGUMENT" and "name must be" in e.value.message

    asyncio.run(run())
