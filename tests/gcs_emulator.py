"""A Google Cloud Storage emulator on loopback, for testing jirl with a `gs://bucket/run` workdir.

    from gcs_emulator import gcs_bucket  # noqa: F401  (registers the fixture in a test module)

    def test_something(gcs_bucket):
        workdir = f"{gcs_bucket}/run"          # "gs://jirl-test-<hex>/run"
        subprocess.run(..., env={**os.environ})  # or env=gcs_bucket.env on top of your own env

`gcs_bucket` (module scope) runs `gcp-storage-emulator` (PyPI) in a subprocess on a free loopback
port with one fresh in-memory bucket, points every client jirl uses at it through environment
variables (set in os.environ for the module, restored afterwards; subprocesses inherit them) and
yields the bucket URL: a `str` ("gs://<bucket>") that also carries `.env` (those variables),
`.name` (the bucket) and `.endpoint` (http://127.0.0.1:<port>). It skips only when
gcp-storage-emulator is not installed. `start_emulator()` is the same without pytest.

What each client needs (see `emulator_env`):
  STORAGE_EMULATOR_HOST              gcsfs (etils.epath's gs:// backend when tensorflow is absent),
                                     google-cloud-storage (orbax's gcs_utils.rmtree HNS check,
                                     tensorboardX's gs:// writer): anonymous credentials
  FSSPEC_GCS='{"token": "anon"}'     gcsfs: no credential discovery (fsspec reads it at import;
                                     the fixture also sets fsspec.config.conf["gcs"] in-process)
  GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false
                                     gcsfs (2026.10 here): use the plain GCSFileSystem; the default
                                     ExtendedGcsFileSystem asks the gRPC Storage Control API for
                                     each bucket's type, which an HTTP emulator cannot answer (with
                                     any credentials: tens of seconds of TLS retries per call).
                                     Read at gcsfs import; the fixture re-registers the plain class
                                     with fsspec in-process when gcsfs was imported earlier
  TENSORSTORE_GCS_HTTP_URL           tensorstore's "gcs" kvstore (orbax's array data)
  GOOGLE_AUTH_TOKEN_FOR_TESTING      tensorstore: a fixed bearer token instead of credential
                                     discovery (GCE metadata server probes)

The emulator is patched in its own process (`_patch_emulator`) to behave like GCS where jirl's
clients depend on it and gcp-storage-emulator 2026.7 does not:
  * `x-goog-generation` / `x-goog-metageneration` headers on media downloads: tensorstore takes an
    object's generation from them; without them it sees generation 0 and its next conditional
    write of an OCDBT manifest fails with "Malformed StorageGeneration" (intermittently, when a
    manifest is re-read during a save);
  * `ifGenerationMatch` / `ifGenerationNotMatch` preconditions (412 / 304) on reads, uploads and
    deletes: tensorstore's OCDBT and tensorboardX's gs:// writer rely on them;
  * `POST .../o/<src>/moveTo/o/<dst>` (gcsfs renames with it): the emulator answers 501, which
    gcsfs retries with backoff for ~33 s before falling back to copy + delete.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import json
import os
import secrets
import selectors
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator

import pytest

EMULATOR_MODULE = "gcp_storage_emulator"
HOST = "127.0.0.1"
_READY = "GCS-EMULATOR-READY"


def emulator_available() -> bool:
    try:
        importlib.import_module(EMULATOR_MODULE)
    except ImportError:
        return False
    return True


def emulator_env(endpoint: str) -> dict[str, str]:
    """Environment variables that point gcsfs, google-cloud-storage and tensorstore at `endpoint`."""
    return {
        "STORAGE_EMULATOR_HOST": endpoint,
        "FSSPEC_GCS": json.dumps({"token": "anon"}),
        "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false",
        "TENSORSTORE_GCS_HTTP_URL": endpoint,
        "GOOGLE_AUTH_TOKEN_FOR_TESTING": "emulator",
    }


class GcsBucket(str):
    """ "gs://<bucket>", with the emulator's `.env`, `.name` and `.endpoint`."""

    env: dict[str, str]
    name: str
    endpoint: str

    def __new__(cls, name: str, endpoint: str) -> GcsBucket:
        self = super().__new__(cls, f"gs://{name}")
        self.name, self.endpoint, self.env = name, endpoint, emulator_env(endpoint)
        return self


class Emulator:
    """A running emulator subprocess (see `start_emulator`)."""

    def __init__(self, process: subprocess.Popen, endpoint: str, bucket: GcsBucket, log_path: str):
        self.process, self.endpoint, self.bucket, self.log_path = process, endpoint, bucket, log_path

    def log(self) -> str:
        with open(self.log_path, encoding="utf-8", errors="replace") as f:
            return f.read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        for pipe in (self.process.stdin, self.process.stdout):
            if pipe:
                pipe.close()
        with contextlib.suppress(OSError):
            os.remove(self.log_path)


def start_emulator(bucket: str | None = None, timeout: float = 60.0) -> Emulator:
    """Starts the emulator on a free loopback port with an empty in-memory `bucket`.

    The child binds port 0 itself and reports the port it got, so there is no window in which
    another process can take a port picked for it. `bucket` defaults to a fresh random name
    (tensorstore, orbax and gcsfs cache per-bucket state within a process).
    """
    bucket = bucket or f"jirl-test-{secrets.token_hex(6)}"
    fd, log_path = tempfile.mkstemp(prefix="gcs-emulator-", suffix=".log")
    with os.fdopen(fd, "w") as log:
        process = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), bucket], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, stderr=log, text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + timeout
    line = ""
    with selectors.DefaultSelector() as sel:
        sel.register(process.stdout, selectors.EVENT_READ)
        while not line.startswith(_READY) and process.poll() is None:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if sel.select(left):
                line = process.stdout.readline()
    if not line.startswith(_READY):
        emulator = Emulator(process, "", GcsBucket(bucket, ""), log_path)
        log_text = emulator.log()
        emulator.stop()
        raise RuntimeError(f"the GCS emulator did not start within {timeout:.0f} s "
                           f"(exit code {process.poll()}):\n{log_text[-3000:]}")
    endpoint = f"http://{HOST}:{int(line.split()[1])}"
    return Emulator(process, endpoint, GcsBucket(bucket, endpoint), log_path)


def _reset_client_caches() -> None:
    """Drops gs:// clients cached in this process (etils' fsspec filesystem, gcsfs instances)."""
    with contextlib.suppress(ImportError, AttributeError):
        from etils.epath import backend

        backend.fsspec_backend._get_filesystem.cache_clear()
    if "gcsfs" in sys.modules:
        import gcsfs.core

        gcsfs.core.GCSFileSystem.clear_instance_cache()


@contextlib.contextmanager
def emulator_environment(bucket: GcsBucket) -> Iterator[None]:
    """Sets `bucket.env` in os.environ and configures already-imported clients, then restores."""
    with pytest.MonkeyPatch.context() as mp:
        for key, value in bucket.env.items():
            mp.setenv(key, value)
        import fsspec.config
        import fsspec.registry

        # fsspec read FSSPEC_GCS when it was imported, likely before this fixture ran
        mp.setitem(fsspec.config.conf, "gcs", {**fsspec.config.conf.get("gcs", {}), "token": "anon"})
        if "gcsfs" in sys.modules:  # imported before GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT was set
            import gcsfs.core

            for protocol in ("gs", "gcs"):
                mp.setitem(fsspec.registry._registry, protocol, gcsfs.core.GCSFileSystem)
        _reset_client_caches()
        try:
            yield
        finally:
            _disarm_tensorboardx_writers()
            _reset_client_caches()


def _disarm_tensorboardx_writers() -> None:
    """Stops tensorboardX's gs:// writers from uploading again once the emulator is gone.

    tensorboardX's GCSRecordWriter uploads its whole file again from `__del__`, and SummaryWriter
    keeps its writers alive until interpreter exit (an atexit hook), when that upload, with the
    emulator stopped, retries for 120 s. A closed writer has uploaded everything already. (Found
    by a scan of the heap, ~0.1 s, rather than imported: tensorboardX imports torch when present.)
    """
    record_writer = sys.modules.get("tensorboardX.record_writer")
    if record_writer is None:
        return
    for obj in gc.get_objects():
        if type(obj) is record_writer.GCSRecordWriter:  # not isinstance: no proxies asked
            obj.close = lambda: None


@pytest.fixture(scope="module")
def gcs_bucket() -> Iterator[GcsBucket]:
    """A fresh bucket on a loopback GCS emulator, as "gs://<bucket>" (see the module docstring)."""
    if not emulator_available():
        pytest.skip(f"{EMULATOR_MODULE} is not installed (pip install gcp-storage-emulator)")
    emulator = start_emulator()
    try:
        with emulator_environment(emulator.bucket):
            yield emulator.bucket
    finally:
        emulator.stop()


# ---------------------------------------------------------------------------------------------
# The emulator process: `python gcs_emulator.py BUCKET` (prints "GCS-EMULATOR-READY <port>").


def _patch_emulator() -> None:
    """Adds what jirl's clients need and gcp-storage-emulator lacks (see the module docstring)."""
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    def current_generation(storage, bucket: str, name: str) -> str | None:
        try:
            return str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return None

    def failed(request, response, generation: str | None, *, read: bool) -> bool:
        """Answers 412 / 304 when an ifGeneration(Not)Match precondition does not hold."""
        def param(key):
            values = request.query.get(key)
            return values[0] if values else None

        match, not_match = param("ifGenerationMatch"), param("ifGenerationNotMatch")
        if read and generation is None:
            return False  # the handler answers 404
        if match is not None and match != (generation or "0"):
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "conditionNotMet"}})
            return True
        if not_match is not None and not_match == (generation or "0"):
            if read:
                response.status = HTTPStatus.NOT_MODIFIED
            else:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "conditionNotMet"}})
            return True
        return False

    def read(handler):
        def guarded(request, response, storage, *args, **kwargs):
            bucket, name = request.params["bucket_name"], request.params["object_id"]
            generation = current_generation(storage, bucket, name)
            if failed(request, response, generation, read=True):
                return None
            result = handler(request, response, storage, *args, **kwargs)
            if generation is not None and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
                obj = storage.get_file_obj(bucket, name)
                response["x-goog-generation"] = str(obj["generation"])
                response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))
            return result
        return guarded

    def write(handler):
        def guarded(request, response, storage, *args, **kwargs):
            name = (request.query.get("name") or [None])[0]
            if name is None and (request.query.get("uploadType") or [""])[0] == "multipart":
                name = request.data["meta"].get("name")
            if name is not None:
                generation = current_generation(storage, request.params["bucket_name"], name)
                if failed(request, response, generation, read=False):
                    return None
            return handler(request, response, storage, *args, **kwargs)
        return guarded

    def delete(handler):
        def guarded(request, response, storage, *args, **kwargs):
            generation = current_generation(
                storage, request.params["bucket_name"], request.params["object_id"])
            if generation is not None and failed(request, response, generation, read=False):
                return None
            return handler(request, response, storage, *args, **kwargs)
        return guarded

    def move(request, response, storage, *args, **kwargs):
        bucket, src, dst = (request.params[k] for k in ("bucket_name", "object_id", "dest_object_id"))
        if failed(request, response, current_generation(storage, bucket, dst), read=False):
            return
        try:
            obj = objects._copy(request.base_url, storage, bucket, src, bucket, dst)
        except NotFound:
            response.status = HTTPStatus.NOT_FOUND
            return
        storage.delete_file(bucket, src)
        response.json(obj)

    wrappers = {objects.get: read, objects.download: read, objects.insert: write,
                objects.delete: delete}
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler in wrappers:
                handlers[method] = wrappers[handler](handler)
    move_route = (r"^(?:/storage/v1)?/b/(?P<bucket_name>[-.\w]+)/o/(?P<object_id>.*[^/]+)"
                  r"/moveTo/o/(?P<dest_object_id>.*[^/]+)$", {server.POST: move})
    server.HANDLERS = (move_route, *server.HANDLERS)


def _serve(bucket: str) -> None:
    import functools
    import logging
    import threading
    from http.server import HTTPServer

    from gcp_storage_emulator import server
    from gcp_storage_emulator.handlers import buckets
    from gcp_storage_emulator.storage import Storage

    logging.basicConfig(level=logging.CRITICAL)
    _patch_emulator()
    storage = Storage(use_memory_fs=True)
    buckets.create_bucket(bucket, storage)

    class Server(HTTPServer):
        # One request at a time (the emulator's storage is not thread-safe) but a deep accept
        # queue: tensorstore opens many connections at once, and the default backlog of 5 makes
        # the kernel drop SYNs, which clients retry only after a second.
        request_queue_size = 256

        def handle_error(self, request, client_address):
            if not isinstance(sys.exc_info()[1], (BrokenPipeError, ConnectionResetError)):
                super().handle_error(request, client_address)  # a client that hung up is no error

    httpd = Server((HOST, 0), functools.partial(server.RequestHandler, storage))

    def exit_with_parent():  # stdin is the parent's pipe: EOF when it closes it or dies
        sys.stdin.read()
        os._exit(0)

    threading.Thread(target=exit_with_parent, daemon=True).start()
    print(_READY, httpd.server_address[1], flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    _serve(sys.argv[1])
